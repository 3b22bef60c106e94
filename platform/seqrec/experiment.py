"""Train and evaluate a list of matching models on a prepared dataset over several seeds.

Used by ``seqrec evaluate`` and ``workloads/evaluate.py``. Every neural model trains with the
shared loop, picks its best epoch on the validation split, and is measured on the test split. The
loop runs in this process (``trainer="local"``, ``seqrec.train.fit``) or on Ray Train workers fed
by Ray Data (``trainer="ray"``, :func:`seqrec.train.distributed.run_training`; each model × seed is
one run under ``<out>/train/``, and its best checkpoint is the model evaluated); item-CF is deterministic and runs once.
Results: ``results.json`` (every run, its history and the mean ± std summary), ``results.csv`` and ``results.md``; plots of SDM's
attention and gate (``plots/``).

A model entry is ``NAME[@OPTION=VALUE,...][#LABEL]``: ``sdm:PSDMMAL``, ``gru4rec``, ``item_cf``,
``sdm:PSDMMAL@heads=2`` (a paper variant with one option changed).

The dataset and ``out`` may be storage URIs (:mod:`seqrec.storage`): this process reads a local copy of the
dataset while Ray Train runs read the URI and keep their runs under ``<out>/train``; the results, plots and
cascade data are written locally and uploaded to ``out``.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seqrec import storage
from seqrec.config import CASCADE_RANKER_OPTIONS, ExperimentSpec, TrainConfig
from seqrec.data.prepare import load_manifest, read_split
from seqrec.evaluate import (
    cascade_metrics,
    default_ks,
    discovery_inputs,
    evaluate_item_cf,
    evaluate_matcher,
    evaluate_ranker,
    fit_item_cf,
    matcher_candidates,
    protocol_of,
    selection_metric,
    two_stage,
)
from seqrec.features import FeatureSpec
from seqrec.inference import seen_penalty_of
from seqrec.models import is_ranker, make_config, model_names
from seqrec.models.ranking import MatcherNegatives
from seqrec.train.factory import build
from seqrec.train.loop import fit
from seqrec.train.validation import validator

ITEM_CF = "item_cf"
DEFAULT_MODELS = ("item_cf", "youtube_dnn", "gru4rec", "narm", "sasrec", "shan", "binn",  # SDM Table 2's rows and SASRec
                  "sdm:SDMMA", "sdm:PSDMMA", "sdm:PSDMMAL", "sdm:PSDMMAL-N", "sdm:PSDMMAL-NoS")
ABLATIONS = {
    "heads": [f"sdm:PSDMMAL@heads={h}#heads={h}" for h in (1, 2, 4, 8)],  # paper Table 3
    "fusion": [f"sdm:PSDMMAL@fusion={f}#fusion={f}" for f in ("multiply", "concat", "add", "gated")],  # Table 4
}


@dataclass
class ModelEntry:
    name: str  # sdm:PSDMMAL | gru4rec | item_cf ...
    options: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            base = self.name.split(":")[-1]
            self.label = base + "".join(f" {k}={v}" for k, v in self.options.items())


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_model(text: str) -> ModelEntry:
    """``NAME[@K=V,...][#LABEL]`` → ModelEntry; raises ValueError naming valid models."""
    text, _, label = text.partition("#")
    name, _, opts = text.strip().partition("@")
    if name != ITEM_CF and name.partition(":")[0] not in {n.partition(":")[0] for n in model_names()}:
        raise ValueError(f"unknown model {name!r}; choose from {[ITEM_CF, *model_names()]}")
    options = {}
    for kv in filter(None, opts.split(",")):
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"model option {kv!r} in {text!r} must be KEY=VALUE, e.g. sdm:PSDMMAL@heads=2")
        options[k.strip()] = _value(v.strip())
    return ModelEntry(name, options, label.strip())


def expand_models(models: list[str] | None, ablations: list[str] | None = None) -> list[ModelEntry]:
    entries = [parse_model(m) for m in (models if models is not None else DEFAULT_MODELS)]
    for a in ablations or []:
        if a not in ABLATIONS:
            raise ValueError(f"unknown ablation {a!r}; choose from {sorted(ABLATIONS)}")
        entries += [parse_model(m) for m in ABLATIONS[a]]
    return entries


def summarize(runs: list[dict]) -> dict:
    """{label: {metric: {"mean", "std", "n"}}} over seeds (population std, 0 for one run)."""
    out: dict = {}
    for r in runs:
        for k, v in r["test"].items():
            out.setdefault(r["label"], {}).setdefault(k, []).append(v)
    return {
        label: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for k, v in metrics.items()}
        for label, metrics in out.items()
    }


RANK_COLUMNS = ["AUC", "GAUC", "LogLoss"]


def table_columns(protocol: str, ks=None) -> list[str]:
    ks = tuple(ks or default_ks(protocol))
    if protocol == "loo":
        return [f"{m}@{k}" for m in ("Hit", "NDCG") for k in ks]
    return [f"{m}@{k}" for m in ("HitRate", "Recall", "Precision", "F1") for k in ks]


def markdown_table(summary: dict, columns: list[str], labels: list[str], percent: bool = True) -> str:
    """Rows ``labels`` × ``columns`` as mean ± std (× 100 when ``percent``)."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    scale, fmt = (100.0, ".2f") if percent else (1.0, ".4f")
    for label in labels:
        s = summary[label]
        cells = [f"{scale * s[c]['mean']:{fmt}} ± {scale * s[c]['std']:{fmt}}" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def item_counts(data_dir: str | Path, n_items: int) -> np.ndarray:
    """(N,) training-window count of every item code (the popularity negatives' weights)."""
    from seqrec.data.items import read_items

    counts = read_items(data_dir, _spec(data_dir)).counts
    if len(counts) != n_items:
        raise ValueError(f"the dataset has {len(counts)} item codes, not {n_items}")
    return counts


def _spec(data_dir) -> FeatureSpec:
    return FeatureSpec.from_dict(load_manifest(data_dir)["feature_spec"])


def run_experiment(spec: ExperimentSpec, log: Callable[[str], None] | None = print) -> dict:
    """Train/evaluate every model entry × seed; write results to ``spec.out`` (if given) and return the report.

    Matchers (``spec.model_options``, ``spec.match``) get the matching metrics; rankers
    (``spec.rank_options``, ``spec.rank``) get AUC/GAUC/log loss on ``spec.rank_negatives``
    popularity negatives per positive. With ``spec.pipeline`` the first neural matcher's top
    ``spec.candidates`` are re-ranked by every ranker of the same seed (the two-stage table).
    """
    data_dir = storage.local_copy(spec.data)  # a URI: read here from a local copy (Ray Train runs read the URI)
    out_dir = None if spec.out is None else storage.scratch(spec.out)  # a URI: written here, uploaded at the end
    manifest = load_manifest(data_dir)
    fspec = FeatureSpec.from_dict(manifest["feature_spec"])
    entries = [e if isinstance(e, ModelEntry) else parse_model(e) for e in spec.models] or expand_models(None)
    seeds, trainer, index, exclude_seen = spec.seeds, spec.trainer, spec.index, spec.exclude_seen
    protocol = protocol_of(manifest)
    select = selection_metric(protocol)
    train, test = read_split(data_dir, "train"), read_split(data_dir, "test")
    val = read_split(data_dir, "val") if manifest["config"]["protocol"]["val"] else None
    if val is not None and val.num_rows == 0:
        val = None
    # the matchers' discovery@K on test (window protocols: a day of clicks, as the paper's) needs each test
    # user's 15-day category history: rebuilt from these rows
    disc = discovery_inputs(data_dir, test, [train, val]) if protocol == "window" else None
    common = dict(spec.model_options)
    rank_common = {"tz_offset_s": manifest["config"]["protocol"].get("tz_offset_s", 0),
                   **(CASCADE_RANKER_OPTIONS if spec.cascade is not None else {}),
                   **({"positives": spec.cascade.positives} if spec.cascade is not None else {}),  # what the data holds
                   **spec.rank_options}

    def options_of(e: ModelEntry) -> dict:
        return {**(rank_common if is_ranker(e.name) else common), **e.options}

    # check every configuration before spending time on training
    for e in entries:
        if e.name != ITEM_CF:
            make_config(e.name, fspec, **options_of(e))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; add #LABEL to an entry")
    matcher_entries = [e for e in entries if e.name != ITEM_CF and not is_ranker(e.name)]
    ranker_entries = [e for e in entries if is_ranker(e.name)]
    if spec.pipeline and (not matcher_entries or not ranker_entries):
        raise ValueError("--pipeline needs a neural matcher (e.g. sdm:PSDMMAL) and at least one ranker "
                         "(bst, din, wdl, wdl_seq) in --models")
    counts = item_counts(data_dir, fspec.n_items) if ranker_entries else None
    if trainer == "ray" and any(make_config(e.name, fspec, **options_of(e)).hard_negatives for e in ranker_entries):
        raise ValueError("hard_negatives draws negatives from a matcher trained in this process; use the local trainer for it")
    if spec.cascade is not None and ranker_entries and not matcher_entries:
        raise ValueError("cascade rankers learn on a matcher's candidates: list a neural matcher (e.g. sdm:PSDMMAL) "
                         "before the rankers in --models")
    cascades: dict[int, tuple] = {}  # seed → (cascade training rows, val candidates, test candidates)

    def cascade_of(seed: int) -> tuple:
        """The seed's cascade data: cross-fitted candidates of the training positions and of the validation rows
        (what rankers are picked on), and the seed's matcher's test candidates (the two-stage pipeline's)."""
        if seed not in cascades:
            from seqrec.train.cascade import generate

            m = matcher_entries[0]
            cfg = replace(spec.cascade, matcher=m.name, matcher_options=options_of(m), train=replace(spec.match, seed=seed),
                          depth=spec.candidates)
            where = Path(out_dir or tempfile.mkdtemp(prefix="seqrec-cascade-")) / "cascade" / f"seed-{seed}"
            shutil.rmtree(where, ignore_errors=True)  # an experiment makes its data anew
            info = generate(data_dir, where, cfg, engine="ray" if trainer == "ray" else "local", log=say)
            rows_val = read_split(where, "val") if "val" in info["splits"] else None
            test_cands = matcher_candidates(first_matcher[seed], test, fspec, spec.candidates, "exact", exclude_seen, device)
            cascades[seed] = (read_split(where, "train"), rows_val, test_cands, info)
            if storage.is_uri(spec.out):  # the rankers' Ray Train runs read it from the experiment's storage
                info["out"] = storage.join(spec.out, "cascade", f"seed-{seed}")
                storage.rmtree(info["out"])
                storage.upload(where, info["out"])
                shutil.rmtree(where)
        return cascades[seed]
    device = spec.device
    say = log or (lambda _s: None)
    runs: list[dict] = []
    first_models: dict[str, torch.nn.Module] = {}
    kept: dict[tuple[str, int], torch.nn.Module] = {}  # (label, seed) → model, for the pipeline
    first_matcher: dict[int, torch.nn.Module] = {}  # seed → the first neural matcher (hard negatives)
    for e in entries:
        ranker = is_ranker(e.name)
        for seed in ([seeds[0]] if e.name == ITEM_CF else seeds):
            t0 = time.perf_counter()
            if e.name == ITEM_CF:
                cf = fit_item_cf(train, fspec, **{**spec.item_cf_options, **e.options})
                fit_s = time.perf_counter() - t0
                test_m = evaluate_item_cf(cf, test, protocol, exclude_seen=exclude_seen, discovery_in=disc)
                run = {"label": e.label, "model": e.name, "kind": "matcher", "seed": None, "options": e.options, "fit_s": fit_s,
                       "test": test_m}
            else:
                cfg = replace(spec.rank if ranker else spec.match, seed=seed)
                rows = train
                if ranker and spec.cascade is not None:
                    if seed not in first_matcher:
                        raise ValueError(f"{e.label}: cascade rankers need a neural matcher listed before them in --models")
                    rows, val_rows, test_cands, info = cascade_of(seed)
                    cascade_dir = info["out"]
                    metric = select

                    on_val = None if val_rows is None else validator(e.name, val_rows, fspec, manifest)

                    def evaluate(m, table, on_val=on_val, test_cands=test_cands):
                        if table is test:
                            return cascade_metrics(m, test, fspec, protocol, *test_cands, device=device)
                        return on_val(m)
                elif ranker:
                    metric = "AUC"
                    evaluate = lambda m, table: evaluate_ranker(m, table, fspec, counts, spec.rank_negatives, seed=0, device=device)  # noqa: E731
                else:
                    metric = select
                    evaluate = lambda m, table, final=False: evaluate_matcher(  # noqa: E731
                        m, table, fspec, protocol, index=index if final else "exact", exclude_seen=exclude_seen, device=device,
                        discovery_in=disc if final else None,
                    )
                say(f"== {e.label} seed {seed}")
                if trainer == "ray":  # the workers build and fill their own model
                    model, trained = _train_on_ray(e, cfg, options_of(e), spec, log,
                                                   candidates=cascade_dir if ranker and spec.cascade is not None else None)
                else:
                    model, _, _ = build(e.name, data_dir, options_of(e), seed=seed)
                    if ranker and model.config.hard_negatives:
                        if seed not in first_matcher:
                            raise ValueError(
                                f"{e.label}: hard_negatives={model.config.hard_negatives} needs a neural matcher listed "
                                "before it in --models (e.g. sdm:PSDMMAL bst@hard_negatives=1)"
                            )
                        model.set_negative_source(MatcherNegatives(first_matcher[seed], model.config.hard_negatives))
                    validate = None if val is None else (lambda m: evaluate(m, val))
                    res = fit(model, rows, fspec, cfg, validate=validate, select=metric if validate else None, log=log,
                              device=device)
                    trained = {"best_epoch": res.best_epoch, "best_metric": res.best_metric,
                               "history": [h.row() for h in res.history]}
                fit_s = time.perf_counter() - t0
                test_m = evaluate(model, test) if ranker else evaluate(model, test, final=True)
                penalty = seen_penalty_of(model)  # MatchConfig.seen_penalty
                run = {
                    "label": e.label, "model": e.name, "kind": "ranker" if ranker else "matcher", "seed": seed,
                    "options": e.options, "fit_s": fit_s, "config": model.config.to_dict() | {"features": None},
                    "best_epoch": trained["best_epoch"], "val_" + metric: trained["best_metric"],
                    "targets_per_s": float(np.mean([h["targets_per_s"] for h in trained["history"]])),
                    "history": trained["history"], "test": test_m,
                } | ({"run_dir": trained["run_dir"]} if "run_dir" in trained else {}) \
                  | ({} if penalty is None else {"learned_seen_penalty": penalty})
                first_models.setdefault(e.label, model)
                if not ranker:
                    first_matcher.setdefault(seed, model)
                if spec.pipeline:
                    kept[(e.label, seed)] = model
            runs.append(run)
            key = "AUC" if ranker else ("Hit@20" if protocol == "loo" else "HitRate@50")
            say(f"{e.label} seed {run['seed']}: test {key} {test_m[key]:.4f} ({run['fit_s']:.1f}s)")
    summary = summarize(runs)
    match_labels = [e.label for e in entries if not is_ranker(e.name)]
    rank_labels = [e.label for e in ranker_entries]
    tables = []
    if match_labels:
        tables.append(markdown_table(summary, table_columns(protocol), match_labels))
    if rank_labels:
        tables.append(markdown_table(summary, RANK_COLUMNS, rank_labels, percent=False))
    report = {
        "dataset": manifest["source"]["name"] if isinstance(manifest.get("source"), dict) else str(data_dir),
        "data_dir": spec.data if storage.is_uri(spec.data) else str(data_dir),
        "protocol": protocol,
        "split": manifest["config"]["protocol"]["split"],
        "content_hash": manifest.get("content_hash"),
        "vocab_hash": manifest.get("vocab_hash"),
        "seeds": seeds,
        "trainer": trainer,
        "scaling": spec.scaling.to_dict() if trainer == "ray" else None,
        "train": spec.match.to_dict(),
        "rank_train": spec.rank.to_dict(),
        "model_options": common,
        "rank_options": rank_common,
        "rank_negatives": spec.rank_negatives,
        "index": index,
        "exclude_seen": exclude_seen,
        "selection": (f"{select} (matchers), " + (f"{select} of their top K on the matcher's candidates (cascade rankers)"
                                                   if spec.cascade is not None else "AUC (rankers)")
                      if val is not None else "last epoch (no validation split)"),
        "cascade": None if spec.cascade is None else spec.cascade.to_dict() | {
            "data": {s: info["out"] for s, (_, _, _, info) in cascades.items()}},
        "labels": labels,
        "summary": summary,
        "runs": runs,
        "table": "\n\n".join(tables),
    }
    if spec.pipeline:
        report["two_stage"] = _two_stage(kept, matcher_entries[0], ranker_entries, seeds, test, fspec, protocol,
                                         spec.candidates, index, exclude_seen, device, say)
        report["table"] += "\n\n" + report["two_stage"]["table"]
    if spec.out is not None:
        out = out_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            metrics = sorted({m for v in summary.values() for m in v})
            w.writerow(["model", "runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
            for label in labels:
                s = summary[label]
                n = next(iter(s.values()))["n"]
                w.writerow([label, n] + [f"{s[m][x]:.6f}" if m in s else "" for m in metrics for x in ("mean", "std")])
        (out / "results.md").write_text(_markdown_report(report))
        if spec.plots:
            report["plots"] = [storage.join(spec.out, Path(p).relative_to(out).as_posix()) if storage.is_uri(spec.out) else p
                               for p in _plots(first_models, fspec, test, out / "plots", say)]
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
        if storage.is_uri(spec.out):
            storage.upload(out, spec.out)
            shutil.rmtree(out)
    return report


def _train_on_ray(e: ModelEntry, cfg: TrainConfig, options: dict, spec: ExperimentSpec, log,
                  candidates: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one model × seed on Ray Train (a fresh run under ``<out>/train``); (best model, training summary)."""
    import re

    from seqrec.checkpoint import load_checkpoint
    from seqrec.config import RunConfig, TrainJob
    from seqrec.train.distributed import run_training

    name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", f"{e.label}-seed{cfg.seed}")
    runs = storage.join(spec.out, "train")
    storage.rmtree(storage.join(runs, name))  # an experiment trains from scratch; `seqrec train` resumes
    job = TrainJob(model=e.name, data=str(spec.data), options=options, train=cfg, scaling=spec.scaling,
                   run=RunConfig(name=name, storage=runs), rank_negatives=spec.rank_negatives, candidates=candidates)
    summary = run_training(job, log=log)
    model, meta = load_checkpoint(summary["best_checkpoint"])
    model.eval()
    select = summary["select"]
    return model, {"best_epoch": meta["epoch"], "best_metric": meta["metrics"].get(select) if select else None,
                   "history": summary["history"], "run_dir": summary["run_dir"]}


PIPELINE_KS = (10, 20, 50)
PIPELINE_METRICS = {"window": ("HitRate", "Recall"), "loo": ("Hit", "NDCG")}


def pipeline_columns(protocol: str) -> list[str]:
    return [f"{m}@{k}" for m in PIPELINE_METRICS[protocol] for k in PIPELINE_KS]


def gains(runs: list[dict], matcher: str, rankers: list[str], columns: list[str]) -> dict:
    """Per ranker and metric, over seeds: the ratio of the two-stage mean to the matcher's mean on the same
    candidates, the mean paired difference and its sample std (0 with one seed)."""
    by = {(r["label"], r["seed"]): r["test"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for label in rankers:
        out[label] = {}
        for c in columns:
            m = np.array([by[(matcher, s)][c] for s in seeds])
            r = np.array([by[(label, s)][c] for s in seeds])
            d = r - m
            out[label][c] = {"ratio": float(r.mean() / m.mean()) if m.mean() > 0 else float("nan"),
                             "diff": float(d.mean()), "diff_std": float(d.std(ddof=1)) if len(d) > 1 else 0.0}
    return out


def _two_stage(kept, matcher: ModelEntry, rankers: list[ModelEntry], seeds, test, spec, protocol, candidates, index, exclude_seen,
               device, say) -> dict:
    """Per seed: the matcher's top ``candidates`` re-ranked by each ranker; mean ± std over seeds, the ceiling
    (the share of the ground truth among the candidates) and each ranker's gain over the matcher's own order."""
    ks = PIPELINE_KS
    columns = pipeline_columns(protocol)
    runs, ceiling = [], []
    for seed in seeds:
        res = two_stage(kept[(matcher.label, seed)], {r.label: kept[(r.label, seed)] for r in rankers}, test, spec,
                        protocol, candidates=candidates, ks=ks, index=index, exclude_seen=exclude_seen, device=device)
        ceiling.append({"seed": seed, **res.pop("ceiling")})
        named = {(matcher.label if k == "matcher" else f"{matcher.label} + {k}"): v for k, v in res.items()}
        runs.extend({"label": k, "seed": seed, "test": v} for k, v in named.items())
        say(f"two-stage seed {seed}: " + ", ".join(f"{k} {columns[0]} {v[columns[0]]:.4f}" for k, v in named.items()))
    summary = summarize(runs)
    labels = list(dict.fromkeys(r["label"] for r in runs))
    ceiling_key = f"{'Hit' if protocol == 'loo' else 'Recall'}@{candidates}"
    values = [c[ceiling_key] for c in ceiling]
    gain = gains(runs, matcher.label, labels[1:], columns)
    lines = [f"{label} over {matcher.label} alone on the same candidates: "
             + ", ".join(f"{c} ×{g[c]['ratio']:.3f}" for c in columns) for label, g in gain.items()]
    return {
        "matcher": matcher.label,
        "rankers": [r.label for r in rankers],
        "candidates": candidates,
        "ks": list(ks),
        "ceiling": {"metric": ceiling_key, "mean": float(np.mean(values)), "std": float(np.std(values)), "runs": ceiling},
        "summary": summary,
        "gains": gain,
        "runs": runs,
        "table": markdown_table(summary, columns, labels)
        + f"\n\nCeiling: {ceiling_key} of {matcher.label}'s top {candidates} = {100 * np.mean(values):.2f} ± "
          f"{100 * np.std(values):.2f} (no ranker can do better).\n\n" + "\n".join(lines),
    }


def _markdown_report(report: dict) -> str:
    head = (
        f"# Results: {report['dataset']} ({report['split']} split, {report['protocol']} protocol)\n\n"
        f"Test split, mean ± std over seeds {report['seeds']} (item-CF is deterministic: one run); matching "
        f"metrics in %, ranking metrics (AUC, GAUC, log loss) as fractions on {report['rank_negatives']} popularity "
        f"negatives per positive. Best epoch by validation {report['selection']}; retrieval index: {report['index']}; "
        f"seen items excluded: {report['exclude_seen']}.\n\n"
    )
    tail = ""
    if "two_stage" in report:
        ts = report["two_stage"]
        tail = (f"\n\nTwo-stage: {ts['matcher']} retrieves the top {ts['candidates']}, each ranker re-ranks them; "
                f"the first row is the matcher's own order.\n")
    return head + report["table"] + tail + "\n"


def _plots(models: dict, spec: FeatureSpec, test, out: Path, say) -> list[str]:
    """Attention heads (Fig. 4) and gate values for the first trained SDM with a gated fusion."""
    from seqrec import plots

    for label, m in models.items():
        cfg = m.config
        if getattr(cfg, "long_term", False) and getattr(cfg, "fusion", None) == "gated":
            paths = plots.sdm_figures(m, test, spec, out, title=label)
            say(f"plots of {label}: {', '.join(str(p) for p in paths)}")
            return [str(p) for p in paths]
    return []
