"""Train and evaluate a list of matching models on a prepared dataset over several seeds.

Used by ``seqrec evaluate`` and ``workloads/evaluate.py``. Every neural model trains with the
shared loop (``seqrec.train.fit``), picks its best epoch on the validation split, and is measured
on the test split; item-CF is deterministic and runs once. Results: ``results.json`` (every run,
its history and the mean ± std summary), ``results.csv`` and ``results.md``; plots of SDM's
attention and gate (``plots/``).

A model entry is ``NAME[@OPTION=VALUE,...][#LABEL]``: ``sdm:PSDMMAL``, ``gru4rec``, ``item_cf``,
``sdm:PSDMMAL@heads=2`` (a paper variant with one option changed).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seqrec.data.prepare import load_manifest, read_split
from seqrec.evaluate import (
    default_ks,
    evaluate_item_cf,
    evaluate_matcher,
    fit_item_cf,
    protocol_of,
    selection_metric,
)
from seqrec.features import FeatureSpec
from seqrec.models import build_model, make_config, model_names
from seqrec.train import TrainConfig, fit

ITEM_CF = "item_cf"
DEFAULT_MODELS = ("item_cf", "youtube_dnn", "gru4rec", "narm", "sdm:SDMMA", "sdm:PSDMMA", "sdm:PSDMMAL", "sdm:PSDMMAL-N", "sdm:PSDMMAL-NoS")
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


def table_columns(protocol: str) -> list[str]:
    if protocol == "loo":
        return [f"{m}@{k}" for m in ("Hit", "NDCG") for k in default_ks(protocol)]
    return [f"{m}@{k}" for m in ("HitRate", "Recall", "Precision", "F1") for k in default_ks(protocol)]


def markdown_table(summary: dict, protocol: str, labels: list[str]) -> str:
    cols = table_columns(protocol)
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label in labels:
        s = summary[label]
        cells = [f"{100 * s[c]['mean']:.2f} ± {100 * s[c]['std']:.2f}" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def item_counts(data_dir: str | Path, n_items: int) -> np.ndarray:
    """(N,) training-window count of every item code, from items.parquet (the unigram sampler's weights)."""
    import pyarrow.parquet as pq

    t = pq.read_table(Path(data_dir) / "items.parquet", columns=["code", "count"])
    counts = np.zeros(n_items, np.float64)
    counts[t["code"].to_numpy()] = t["count"].to_numpy()
    return counts


def run_experiment(
    data_dir: str | Path,
    entries: list[ModelEntry],
    seeds: list[int],
    train_cfg: TrainConfig,
    out_dir: str | Path | None = None,
    model_options: dict | None = None,
    index: str = "exact",
    exclude_seen: bool = False,
    item_cf_options: dict | None = None,
    plots: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train/evaluate every entry × seed; write results to ``out_dir`` (if given) and return the report."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    protocol = protocol_of(manifest)
    select = selection_metric(protocol)
    train, test = read_split(data_dir, "train"), read_split(data_dir, "test")
    val = read_split(data_dir, "val") if manifest["config"]["protocol"]["val"] else None
    if val is not None and val.num_rows == 0:
        val = None
    common = dict(model_options or {})
    # check every configuration before spending time on training
    for e in entries:
        if e.name != ITEM_CF:
            make_config(e.name, spec, **{**common, **e.options})
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}; add #LABEL to an entry")
    say = log or (lambda _s: None)
    runs: list[dict] = []
    first_models: dict[str, torch.nn.Module] = {}
    for e in entries:
        for seed in ([seeds[0]] if e.name == ITEM_CF else seeds):
            t0 = time.perf_counter()
            if e.name == ITEM_CF:
                cf = fit_item_cf(train, spec, **{**(item_cf_options or {}), **e.options})
                fit_s = time.perf_counter() - t0
                test_m = evaluate_item_cf(cf, test, protocol, exclude_seen=exclude_seen)
                run = {"label": e.label, "model": e.name, "seed": None, "options": e.options, "fit_s": fit_s, "test": test_m}
            else:
                torch.manual_seed(seed)
                model = build_model(e.name, spec, **{**common, **e.options})
                if model.config.loss == "sampled" and model.config.sampler == "unigram":
                    model.softmax.set_item_counts(torch.from_numpy(item_counts(data_dir, spec.n_items)))
                cfg = TrainConfig(**{**train_cfg.to_dict(), "seed": seed})
                validate = None if val is None else (
                    lambda m: evaluate_matcher(m, val, spec, protocol, index="exact", exclude_seen=exclude_seen, device=cfg.device)
                )
                say(f"== {e.label} seed {seed}")
                res = fit(model, train, spec, cfg, validate=validate, select=select if validate else None, log=log)
                fit_s = time.perf_counter() - t0
                test_m = evaluate_matcher(model, test, spec, protocol, index=index, exclude_seen=exclude_seen, device=cfg.device)
                run = {
                    "label": e.label, "model": e.name, "seed": seed, "options": e.options, "fit_s": fit_s,
                    "config": model.config.to_dict() | {"features": None},
                    "best_epoch": res.best_epoch, "val_" + select: res.best_metric,
                    "targets_per_s": float(np.mean([h.targets_per_s for h in res.history])),
                    "history": res.to_dict()["history"], "test": test_m,
                }
                first_models.setdefault(e.label, model)
            runs.append(run)
            key = "Hit@20" if protocol == "loo" else "HitRate@50"
            say(f"{e.label} seed {run['seed']}: test {key} {test_m[key]:.4f} ({run['fit_s']:.1f}s)")
    summary = summarize(runs)
    report = {
        "dataset": manifest["source"]["name"] if isinstance(manifest.get("source"), dict) else str(data_dir),
        "data_dir": str(data_dir),
        "protocol": protocol,
        "split": manifest["config"]["protocol"]["split"],
        "content_hash": manifest.get("content_hash"),
        "vocab_hash": manifest.get("vocab_hash"),
        "seeds": seeds,
        "train": train_cfg.to_dict(),
        "model_options": common,
        "index": index,
        "exclude_seen": exclude_seen,
        "selection": select if val is not None else "last epoch (no validation split)",
        "labels": labels,
        "summary": summary,
        "runs": runs,
        "table": markdown_table(summary, protocol, labels),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
        with open(out / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            metrics = sorted(next(iter(summary.values())))
            w.writerow(["model", "runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
            for label in labels:
                s = summary[label]
                w.writerow([label, s[metrics[0]]["n"]] + [f"{s[m][x]:.6f}" for m in metrics for x in ("mean", "std")])
        (out / "results.md").write_text(_markdown_report(report))
        if plots:
            report["plots"] = _plots(first_models, spec, test, out / "plots", say)
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _markdown_report(report: dict) -> str:
    head = (
        f"# Matching results: {report['dataset']} ({report['split']} split, {report['protocol']} protocol)\n\n"
        f"Test split, mean ± std over seeds {report['seeds']} (item-CF is deterministic: one run), in %. "
        f"Best epoch by validation {report['selection']}; retrieval index: {report['index']}; "
        f"seen items excluded: {report['exclude_seen']}.\n\n"
    )
    return head + report["table"] + "\n"


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
