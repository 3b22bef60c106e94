"""Ranking quality (BST Table 4 style) and the two-stage table, on ml-100k and synthetic data.

    python benchmarks/quality_ranking.py --dataset ml-100k --split loo --threads 1
    python benchmarks/quality_ranking.py --dataset synth --rows 150000 --split dataset-day --threads 1

Prepares the dataset under benchmarks/work/ (as ``quality_matching.py``), then runs
``seqrec.experiment.run_experiment`` — the code behind ``seqrec evaluate --pipeline`` — with a
matcher (SDM PSDMMAL) and the rankers WDL, WDL(+Seq), DIN and BST with b = 1, 2, 3, over N seeds.
Writes two files:

* ``benchmarks/results/quality_ranking_<dataset>.json``: AUC, GAUC and log loss per ranker
  (mean in ``summary``, mean ± std in ``params.table``, every run with its history in ``runs``),
  and the paper's expected order (BST ≥ DIN ≥ WDL(+Seq) ≥ WDL) as measured booleans;
* ``benchmarks/results/two_stage_<dataset>.json``: SDM's own top K against SDM's top
  ``--candidates`` re-ranked by each ranker, HitRate/Recall@K (Hit/NDCG@K on leave-one-out), K in
  {10, 20, 50}; ``summary`` has ``<ranker>_over_matcher_<metric>`` (the ratio of the means over seeds,
  on the same candidates), ``<ranker>_minus_matcher_<metric>`` (the mean paired difference) with its
  sample std over seeds (``..._std``), and the ceiling (the share of the ground truth among the candidates);
  with ``--cascade``, ``params.cascade.positions_per_s``: each seed's candidate stage speed as it ran here
  (alongside other work; the generation speed is measured alone by ``bench_candidates.py``).

With ``--cascade`` the rankers train on SDM's cross-fitted candidates (``seqrec.train.cascade``) and are
picked and measured on its candidates, with the cascade defaults (``seqrec.config.CASCADE_RANKER_OPTIONS``);
``--rank-option`` sets ranker options for all of them (e.g. ``covisit=false``); ``--positives window`` stores each
training position's label-window items (the rest of its session) in the list and trains the rankers with them as
positives too (``CascadeConfig.positives``, the rankers' ``positives``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402
from quality_matching import WORK, prepared  # noqa: E402

from seqrec.config import CascadeConfig, ExperimentSpec, TrainConfig  # noqa: E402
from seqrec.experiment import expand_models, parse_model, run_experiment  # noqa: E402

RANKERS = ("wdl#WDL", "wdl_seq#WDL(+Seq)", "din#DIN", "bst#BST b=1", "bst@blocks=2#BST b=2", "bst@blocks=3#BST b=3")
ORDER = ("BST b=1", "DIN", "WDL(+Seq)", "WDL")


def generation_rates(dirs: dict) -> dict:
    """{seed: training positions per second of the candidate stage} from each seed's ``cascade.json``."""
    import json

    return {seed: json.loads((Path(d) / "cascade.json").read_text())["positions_per_s"] for seed, d in dirs.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["ml-100k", "synth"], required=True)
    p.add_argument("--split", choices=["dataset-day", "user-day", "loo"], required=True)
    p.add_argument("--rows", type=int, default=150_000, help="synthetic events (default 150,000)")
    p.add_argument("--matcher", default="sdm:PSDMMAL#SDM", help="the first stage (default sdm:PSDMMAL)")
    p.add_argument("--rankers", nargs="+", default=list(RANKERS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8, help="ranker max epochs (default 8)")
    p.add_argument("--match-epochs", type=int, default=40,
                   help="the matcher's max epochs (default 40, as the main command; validation picks the epoch: with 10, "
                        "every ml-100k seed's best was the last)")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="ranker sessions per batch (default 32)")
    p.add_argument("--mlp", default="1024-512-256", help="ranker MLP widths (default: the paper's 1024-512-256)")
    p.add_argument("--negatives", type=int, default=4, help="popularity negatives per positive in the AUC evaluation")
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--cascade", action="store_true", help="rankers train on SDM's cross-fitted candidates")
    p.add_argument("--folds", type=int, default=2, help="--cascade: cross-fitting folds (default 2)")
    p.add_argument("--cascade-candidates", type=int, default=20, help="--cascade: negatives stored per training position (default 20)")
    p.add_argument("--positives", choices=["next", "window"], default="next",
                   help="--cascade: a training position's positives: the next item, or also every item of its label "
                        "window (the rest of the session) in the matcher's list (default next)")
    p.add_argument("--rank-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a ranker option for every ranker, e.g. match_features=true; repeatable")
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepared(args.dataset, args.split, args.rows)
    entries = expand_models([args.matcher, *args.rankers])
    rank_options = parse_model("bst@" + ",".join(args.rank_option)).options if args.rank_option else {}
    seeds = list(range(args.seeds))
    ds = args.dataset.replace("-", "") + (f"_{args.suffix}" if args.suffix else "")
    report = run_experiment(ExperimentSpec(
        str(data), entries, seeds, str(WORK / f"quality_ranking_{ds}"),
        match=TrainConfig(epochs=args.match_epochs, batch_size=128, patience=args.patience),
        rank=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=args.patience),
        model_options={"hidden": 64}, rank_options={"mlp": args.mlp, **rank_options},
        rank_negatives=args.negatives, pipeline=True, candidates=args.candidates, plots=False,
        cascade=CascadeConfig(folds=args.folds, candidates=args.cascade_candidates, positives=args.positives)
        if args.cascade else None,
    ))
    rankers = [e.label for e in entries[1:]]
    s = report["summary"]
    summary = {label: {k: round(s[label][k]["mean"], 5) for k in ("AUC", "GAUC", "LogLoss")} for label in rankers}
    order = [x for x in ORDER if x in s]
    summary["expectations"] = {
        f"{a}_AUC_ge_{b}": s[a]["AUC"]["mean"] >= s[b]["AUC"]["mean"] for a, b in zip(order[:-1], order[1:])
    }
    params = {k: report.get(k) for k in ("dataset", "protocol", "split", "content_hash", "vocab_hash", "seeds", "train",
                                          "rank_train", "rank_options", "rank_negatives", "selection")}
    params["command"] = "python benchmarks/quality_ranking.py " + " ".join(sys.argv[1:])
    params["rows"] = args.rows if args.dataset == "synth" else None

    tables = report["table"].split("\n\n")
    params["table"] = next(t for t in tables if "| AUC |" in t)
    runs = [r for r in report["runs"] if r["kind"] == "ranker"]
    machine = machine_info()
    write_result(f"quality_ranking_{ds}", summary, params, runs, machine)
    ts = report["two_stage"]
    matcher = ts["matcher"]
    two = {label: {k: round(v["mean"], 5) for k, v in m.items()} for label, m in ts["summary"].items()}
    names = [e.name for e in entries[1:]]
    for e in entries[1:]:  # <ranker>_over_matcher_<metric>: the model's name, or its label when the name repeats
        key = e.name if names.count(e.name) == 1 else re.sub(r"[^a-z0-9]+", "_", e.label.lower()).strip("_")
        for metric, g in ts["gains"][f"{matcher} + {e.label}"].items():
            m = metric.lower()
            two[f"{key}_over_matcher_{m}"] = round(g["ratio"], 4)
            two[f"{key}_minus_matcher_{m}"] = round(g["diff"], 5)
            two[f"{key}_minus_matcher_{m}_std"] = round(g["diff_std"], 5)
    two["ceiling"] = {ts["ceiling"]["metric"]: round(ts["ceiling"]["mean"], 5)}
    params["cascade"] = report.get("cascade")
    if params["cascade"]:  # each seed's candidate stage speed (cascade.json); the cost figure is bench_candidates.py's
        params["cascade"]["positions_per_s"] = generation_rates(params["cascade"]["data"])
    tparams = dict(params, table=ts["table"], candidates=ts["candidates"], ks=ts["ks"], matcher=matcher, ceiling=ts["ceiling"])
    tparams["matcher_run"] = [{k: r[k] for k in ("label", "seed", "best_epoch", "test")} for r in report["runs"] if r["kind"] == "matcher"]
    write_result(f"two_stage_{ds}", two, tparams, ts["runs"], machine)
    print(params["table"] + "\n\n" + ts["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
