"""Matching quality of every model and SDM variant (SDM Table 2 style), and the paper's ablations.

    python benchmarks/quality_matching.py --dataset ml-100k --split user-day      # ~15 min on 2 cores
    python benchmarks/quality_matching.py --dataset ml-100k --split loo
    python benchmarks/quality_matching.py --dataset ml-100k --protocol recbole    # loo, every model sees the last 50 events
    python benchmarks/quality_matching.py --dataset synth --rows 150000 --split dataset-day
    python benchmarks/quality_matching.py --dataset ml-100k --split user-day --ablation heads --ablation fusion --models none

Prepares the dataset under benchmarks/work/ (fetching ml-100k into the seqrec cache if
needed), then runs ``seqrec.experiment.run_experiment`` — the code behind ``seqrec evaluate`` —
and writes ``benchmarks/results/quality_matching_<dataset>_<split>[_<suffix>].json`` with the
mean per model in ``summary`` (the protocol's metrics; for the day splits also ``discovery@K``,
among them ``discovery@50``: the share of a test user's clicked categories that are new to the user
over the past 15 days and found in the top K, SDM §4.2.2 offline; see ``seqrec.metrics.discovery``),
mean ± std in ``table``, every run (with its training history) in ``runs``, and the expectation
checks of issue #3 (PSDMMAL(-N) ahead of the baselines on HitRate@50 and Recall@50; PSDMMAL
ahead of PSDMMA on synthetic data) as measured booleans.
The per-run outputs (results.md/csv, plots) go to benchmarks/work/quality_<...>/.

``--protocol recbole`` is RecBole's: leave-one-out, every model's input the last 50 events before
the target (``seqrec data prepare --input last-n --input-events 50``: SDM's short-term input is the
session's part of them, the rest its long-term input), full ranking over all items, history not
masked. It writes ``..._loo.json`` (``..._loo_last<N>.json`` for another N), the table the peers are compared
in; the session protocol's leave-one-out writes ``..._loo_session.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, machine_info, write_result  # noqa: E402

from seqrec.config import ExperimentSpec, TrainConfig  # noqa: E402
from seqrec.experiment import DEFAULT_MODELS, expand_models, run_experiment  # noqa: E402

WORK = REPO / "benchmarks" / "work"
BASELINES = ("item_cf", "youtube_dnn", "gru4rec", "narm", "sasrec", "shan", "binn")


def prepared(dataset: str, split: str, rows: int, input_events: int | None = None, horizon_hours: float = 0) -> Path:
    """The prepared dataset; ``input_events``: RecBole's last-N input (``--input last-n``), else the session protocol;
    ``horizon_hours``: training rows with horizon targets (``--train-horizon-hours``)."""
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import prepare, resolve_config

    if dataset == "ml-100k":
        from seqrec.data.fetch import fetch_ml100k

        fetch_ml100k(None)
        src, out = open_source("ml-100k"), WORK / f"ml-100k-{split}"
    else:
        from seqrec.data.synth import generate

        raw = WORK / f"synth-{rows}"
        if not (raw / "synth.json").exists():
            generate(raw, rows, seed=0, progress=False)
        src, out = open_source(str(raw), "synth", None), WORK / f"synth-{rows}-{split}"
    opts = {}
    if input_events is not None:
        out = out.with_name(f"{out.name}-last{input_events}")
        opts = dict(input="last-n", input_events=input_events)
    if horizon_hours:
        out = out.with_name(f"{out.name}-horizon{horizon_hours:g}h")
        opts["train_horizon_s"] = int(round(horizon_hours * 3600))
    if not (out / "manifest.json").exists():
        prepare(src, out, resolve_config(src, split=split, **opts), engine="local", progress=False, overwrite=True)
    return out


def expectations(summary: dict, protocol: str) -> dict:
    """The issue's expectations, evaluated on the measured means (reported, never forced)."""
    keys = ("Hit@50", "NDCG@20") if protocol == "loo" else ("HitRate@50", "Recall@50")
    out = {}
    for sdm in ("PSDMMAL", "PSDMMAL-N"):
        if sdm not in summary:
            continue
        for k in keys:
            others = {b: summary[b][k]["mean"] for b in BASELINES if b in summary}
            if others:
                out[f"{sdm}_ahead_of_every_baseline_{k}"] = all(summary[sdm][k]["mean"] > v for v in others.values())
    if "PSDMMAL" in summary and "PSDMMA" in summary:
        k = keys[0]
        out[f"PSDMMAL_minus_PSDMMA_{k}"] = round(summary["PSDMMAL"][k]["mean"] - summary["PSDMMA"][k]["mean"], 4)
    return out


def headline(summary: dict, protocol: str) -> dict:
    """The issue's flat summary keys (lower case), from the measured means and seed stds.

    * leave-one-out: ``best_sdm_hit@10`` / ``best_sdm_ndcg@10``, the best SDM variant's mean (``best_sdm`` names it,
      chosen by Hit@10), next to ``best_peer_*``: the best non-SDM model of the same run;
    * day splits: ``psdmmal_minus_psdmma_<metric>`` for HitRate@50 and Recall@50, the difference of the means, with
      ``..._2std``: twice the larger of the two models' seed stds, and ``..._beats_by_2std`` whether the difference
      exceeds it (the issue's "by more than 2 std").
    """
    out: dict = {}
    sdm = {label: m for label, m in summary.items() if label.split("@")[0].startswith(("SDM", "PSDM"))}
    if protocol == "loo" and sdm:
        best = max(sdm, key=lambda label: sdm[label]["Hit@10"]["mean"])
        out.update({"best_sdm": best, "best_sdm_hit@10": round(sdm[best]["Hit@10"]["mean"], 5),
                    "best_sdm_ndcg@10": round(sdm[best]["NDCG@10"]["mean"], 5)})
        peers = {label: m for label, m in summary.items() if label in BASELINES}
        if peers:
            peer = max(peers, key=lambda label: peers[label]["Hit@10"]["mean"])
            out.update({"best_peer": peer, "best_peer_hit@10": round(peers[peer]["Hit@10"]["mean"], 5),
                        "best_peer_ndcg@10": round(peers[peer]["NDCG@10"]["mean"], 5)})
    if protocol != "loo" and "PSDMMAL" in summary and "PSDMMA" in summary:
        for k in ("HitRate@50", "Recall@50"):
            a, b = summary["PSDMMAL"][k], summary["PSDMMA"][k]
            key, two_std = f"psdmmal_minus_psdmma_{k.lower()}", 2 * max(a["std"], b["std"])
            out.update({key: round(a["mean"] - b["mean"], 5), f"{key}_2std": round(two_std, 5),
                        f"{key}_beats_by_2std": bool(a["mean"] - b["mean"] > two_std)})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["ml-100k", "synth"], required=True)
    p.add_argument("--split", choices=["dataset-day", "user-day", "loo"], help="required with --protocol session")
    p.add_argument("--protocol", choices=["session", "recbole"], default="session",
                   help="session: the paper's input (session + 7 days; default); recbole: leave-one-out with the "
                   "last --input-events events as every model's input, full ranking, history not masked")
    p.add_argument("--input-events", type=int, default=50, help="N of --protocol recbole (default 50, as RecBole)")
    p.add_argument("--rows", type=int, default=150_000, help="synthetic events (default 150,000)")
    p.add_argument("--models", nargs="+", help="model entries (default: all); 'none' for ablations only")
    p.add_argument("--ablation", action="append", default=[], choices=["heads", "fusion"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--train-horizon-hours", type=float, default=0,
                   help="prepare training rows with horizon targets: the items within H hours after each session")
    p.add_argument("--horizon-weight", type=float, default=0,
                   help="the neural matchers' horizon_weight (needs --train-horizon-hours; default 0: next items only)")
    p.add_argument("--suffix", default="", help="appended to the result name")
    args = p.parse_args()
    if args.horizon_weight and not args.train_horizon_hours:
        p.error("--horizon-weight trains on horizon targets: give --train-horizon-hours too")
    recbole = args.protocol == "recbole"
    if recbole and args.split not in (None, "loo"):
        p.error(f"--protocol recbole is leave-one-out; drop --split {args.split} or use --split loo")
    if not recbole and args.split is None:
        p.error("--split is required with --protocol session")
    args.split = "loo" if recbole else args.split
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepared(args.dataset, args.split, args.rows, args.input_events if recbole else None, args.train_horizon_hours)
    models = [] if args.models == ["none"] else (args.models or list(DEFAULT_MODELS))
    entries = expand_models(models, args.ablation)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience)
    name = f"quality_matching_{args.dataset.replace('-', '')}_{args.split.replace('-', '')}"
    # leave-one-out is compared with the peers under RecBole's protocol: that run owns ..._loo.json (the issue's
    # summary keys); the session protocol's leave-one-out is ..._loo_session.json
    if recbole:
        name += "" if args.input_events == 50 else f"_last{args.input_events}"
    elif args.split == "loo":
        name += "_session"
    name += f"_{args.suffix}" if args.suffix else ""
    report = run_experiment(ExperimentSpec(str(data), entries, list(range(args.seeds)), str(WORK / name), match=cfg,
                                           model_options={"hidden": args.hidden, **(
                                               {"horizon_weight": args.horizon_weight} if args.horizon_weight else {})}))
    summary = {label: {k: round(v["mean"], 5) for k, v in m.items()} for label, m in report["summary"].items()}
    summary["expectations"] = expectations(report["summary"], report["protocol"])
    summary.update(headline(report["summary"], report["protocol"]))
    params = {k: report[k] for k in ("dataset", "protocol", "split", "content_hash", "vocab_hash", "seeds", "train",
                                      "model_options", "index", "exclude_seen", "selection")}
    params["command"] = "python benchmarks/quality_matching.py " + " ".join(sys.argv[1:])
    from seqrec.data.prepare import load_manifest

    proto = load_manifest(data)["config"]["protocol"]
    params["input"] = {"protocol": args.protocol, "input": proto.get("input", "session"),
                       "input_events": proto.get("input_events") if proto.get("input") == "last-n" else None}
    params["table"] = report["table"]
    params["rows"] = args.rows if args.dataset == "synth" else None
    runs = [{k: v for k, v in r.items()} for r in report["runs"]]
    plots = []
    for png in report.get("plots", []):  # keep the figures the README shows next to the JSON
        dst = RESULTS / "plots" / f"{name}_{Path(png).name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dst)
        plots.append(str(dst.relative_to(REPO)))
    params["plots"] = plots
    print(report["table"])
    write_result(name, summary, params, runs, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
