"""Ray Tune searches over a training job (``seqrec tune``).

A trial's config is the search space's values plus ``__job`` (the base ``TrainJob`` as a dict).
The trial splits the values into training options and model options
(:func:`seqrec.tuning.space.split`) and trains in one of two ways:

- ``workers == 0`` (:func:`inprocess_trial`): the single-process loop (:func:`seqrec.train.fit`)
  in the trial's own process. After every epoch it reports the validation metrics, the epoch and
  a checkpoint (:mod:`seqrec.checkpoint`) to Tune. Small searches on one machine are fast this
  way: trials reuse their worker process, so a trial costs little beyond its training
  (``benchmarks/bench_tune.py`` measures it).
- ``workers >= 1`` (:func:`train_trial`): the trial is the driver of a Ray Train run
  (:func:`seqrec.train.distributed.run_training`: ``TorchTrainer`` over N workers fed by Ray
  Data) with a ``TuneReportCallback``, so each epoch's ``ray.train.report`` becomes a Tune
  result. The trial itself holds a quarter CPU; Ray Train places its workers in its own
  placement group. Each trial's run (checkpoints, export) lives in ``<search>/train/trial-<id>``.

Both report an explicit ``epoch``, which ASHA uses as its time axis (``training_iteration``
restarts at 1 when a Ray Train trial resumes from its own checkpoint).

After the search, :func:`write_results` writes ``trials.csv`` / ``trials.md`` (every trial,
sorted by the validation metric), ``best.yaml`` (a ``seqrec train --config`` file),
``search.json`` (the best checkpoint path among others) and ``search.png`` into the
experiment directory ``<storage>/<name>``.

``storage`` and the dataset may be storage URIs (:mod:`seqrec.storage`): Tune keeps the experiment there
(``storage_filesystem``), in-process trials read a local copy of the dataset, and the result files are
written locally and uploaded into the experiment directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path

from seqrec import storage as paths
from seqrec.cluster import free_port, start_ray
from seqrec.tuning.space import check_space, expand, split

SCHEDULERS = ("asha", "fifo")
SEARCHES = ("random", "optuna")
TRIAL_DRIVER_CPU = 0.25  # a Ray Train trial's own share: it only drives the run
DATA_RESERVE_CPU = 1.0  # kept free of trials for Ray Data's read tasks (they ask for 1 CPU each)


def trial_job(config: dict):
    """The ``TrainJob`` one trial trains: the base job with the trial's values applied."""
    from seqrec.config import TrainJob

    base = TrainJob.from_dict(config["__job"])
    job_values, options = split(_values(config))
    return base.replace(**job_values, options={**base.options, **options})


def _values(config: dict) -> dict:
    """The searched values of a trial config (without the ``__`` entries)."""
    return {k: v for k, v in config.items() if not k.startswith("__")}


def inprocess_trial(config: dict) -> None:
    """One Tune trial in this worker process: the engine over the in-memory split, one report per epoch."""
    import torch
    from ray import tune

    from seqrec.checkpoint import dataset_identity
    from seqrec.data.prepare import read_split
    from seqrec.train.engine import Trainer, table_pools
    from seqrec.train.factory import build
    from seqrec.train.validation import select_metric, validator

    torch.set_num_threads(max(1, int(config.get("__cpus", 1))))  # the trial's CPUs, not the machine's
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one "Checkpoint created" line per epoch
    job = trial_job(config)
    data = paths.local_copy(job.data)  # a URI: a local copy (one per machine, shared by its trials)
    model, spec, manifest = build(job.model, data, job.options, seed=job.train.seed)
    train = read_split(data, "train")
    val = read_split(data, "val") if manifest["config"]["protocol"].get("val") else None
    if val is None or val.num_rows == 0:
        raise ValueError(f"{job.data} has no validation split: a search needs one to compare trials")
    if job.scaling.gpu and not torch.cuda.is_available():  # the trial holds one GPU (trial_resources)
        raise RuntimeError("the trial was given a GPU (--gpu) but torch sees no CUDA device in its process")
    # fp32 here: --amp is for Ray Train trials
    trainer = Trainer(model, job.train, device="cuda" if job.scaling.gpu else "cpu",
                      validate=validator(job.model, val, spec, manifest, job.rank_negatives),
                      select=select_metric(job.model, manifest))
    resumed = tune.get_checkpoint()  # an interrupted or failed trial goes on from its last epoch
    if resumed is not None:
        with resumed.as_directory() as d:
            trainer.restore(Path(d) / "checkpoint")

    def on_epoch(res, t: Trainer) -> None:
        with tempfile.TemporaryDirectory() as d:
            t.save(Path(d) / "checkpoint", dataset=dataset_identity(manifest, job.data), job=job.to_dict())
            tune.report(t.history[-1], checkpoint=tune.Checkpoint.from_directory(d))

    cfg = job.train
    trainer.fit(lambda rng: table_pools(train, spec, cfg.batch_size, cfg.group_pool, rng), on_epoch=on_epoch)


def train_trial(config: dict) -> None:
    """One Tune trial that drives a Ray Train run (``TorchTrainer`` + ``TuneReportCallback``)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from seqrec.train.distributed import run_training

    # a stable name (the trial id): a restored trial resumes its Ray Train run from that run's checkpoint
    job = trial_job(config).replace(name=f"trial-{tune.get_context().get_trial_id()}", storage=config["__train_storage"])
    run_training(job, log=None, callbacks=[TuneReportCallback()])  # built here: it needs the trial's session


def trial_resources(job) -> dict:
    """What one trial asks Ray for (a Ray Train trial's workers come on top, in their own placement group)."""
    sc = job.scaling
    if sc.workers == 0:
        return {"CPU": sc.cpus_per_worker} | ({"GPU": 1} if sc.gpu else {})
    return {"CPU": TRIAL_DRIVER_CPU}


def concurrency(job, resources: dict) -> int:
    """How many trials fit the cluster at once; raises when not even one does.

    A trial takes :func:`trial_resources` plus, with workers, ``workers × cpus_per_worker`` (and
    a GPU each with ``gpu``). With workers, one CPU stays free for Ray Data's read tasks.
    """
    per_cpu = trial_resources(job)["CPU"] + job.scaling.workers * job.scaling.cpus_per_worker
    free_cpu = resources.get("CPU", 0.0) - (DATA_RESERVE_CPU if job.scaling.workers else 0.0)
    fits = [math.floor(free_cpu / per_cpu + 1e-9)]
    if job.scaling.gpu:
        fits.append(math.floor(resources.get("GPU", 0.0) / max(job.scaling.workers, 1) + 1e-9))
    n = min(fits)
    if n < 1 and not job.scaling.wait_for_resources:
        need = f"{per_cpu:g} CPU" + (f" and {max(job.scaling.workers, 1)} GPU" if job.scaling.gpu else "")
        reserve = f" + {DATA_RESERVE_CPU:g} CPU kept for Ray Data" if job.scaling.workers else ""
        raise ValueError(f"one trial needs {need}{reserve}; the Ray cluster has {resources.get('CPU', 0):g} CPU, "
                         f"{resources.get('GPU', 0):g} GPU. Use fewer --workers-per-trial or a smaller --cpus-per-worker, "
                         "or pass --wait-for-resources on an autoscaling cluster")
    return max(n, 1)


def _has_dashboard() -> bool:
    import ray

    try:
        return bool(ray._private.worker.global_worker.node.address_info.get("webui_url"))  # noqa: SLF001
    except AttributeError:  # connected as a client: assume a real cluster, which runs its dashboard
        return True


def search_space(space: dict, search: str) -> dict:
    """``space`` as the search algorithm takes it: Optuna's categories must be scalars, so a joint
    dimension's tuples become strings ("4,64"), which :func:`seqrec.tuning.space.expand` splits back."""
    if search != "optuna":
        return space
    from ray import tune
    from ray.tune.search.sample import Categorical

    out = {}
    for k, v in space.items():
        if isinstance(v, dict) and "grid_search" in v:
            raise ValueError(f"--search optuna cannot take the grid dimension {k!r}: use --search random for grids "
                             "(the paper_* spaces)")
        if "," in k and isinstance(v, Categorical):
            v = tune.choice([",".join(str(x) for x in c) for c in v.categories])
        out[k] = v
    return out


def _reporter(space: dict, select: str):
    """Tune's status table: the searched values, the epoch, the loss and the validation metric (not the base job)."""
    from ray.tune import CLIReporter

    return CLIReporter(parameter_columns=[k for k in space if not k.startswith("__")],
                       metric_columns=["epoch", "loss", select], max_report_frequency=30)


def _search_alg(search: str, select: str, seed: int, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if search == "random":
        # the limit goes to the generator: Tune ignores TuneConfig.max_concurrent_trials with a generator instance
        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        raise ValueError("--search optuna needs Optuna: pip install 'seqrec[optuna]'") from e
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(metric=select, mode="max", seed=seed), max_concurrent=max_concurrent)


def run_search(job, space: dict, samples: int = 1, scheduler: str = "asha", search: str = "random",
               name: str = "search", storage: str | Path = "runs/tune", seed: int = 0,
               max_concurrent: int | None = None, resume: bool = False, space_name: str | None = None, log=print):
    """Search ``space`` around the base ``job``; returns Tune's ``ResultGrid``.

    ``job.scaling.workers`` picks the trial kind (0: in-process; N: a Ray Train run of N workers per
    trial) and ``job.scaling.cpus_per_worker`` the CPUs of each. The space is checked first
    (:func:`check_space`). ASHA stops trials by the validation metric at epoch milestones
    (``grace_period`` 1, ``max_t`` = epochs); ``fifo`` runs every trial to the end. The number of
    trials at once comes from the cluster's resources unless ``max_concurrent`` is given.
    ``resume`` continues the interrupted search ``<storage>/<name>`` (unfinished and failed trials
    go on from their last checkpoints). The base job and ``space_name`` are saved in
    ``<storage>/<name>/seqrec_search.json`` for ``seqrec tune --resume``.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from seqrec.data.prepare import load_manifest
    from seqrec.features import FeatureSpec
    from seqrec.train.validation import select_metric

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r}; choose one of {SCHEDULERS}")
    if search not in SEARCHES:
        raise ValueError(f"search={search!r}; choose one of {SEARCHES}")
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    exp = paths.join(paths.absolute(storage), name)
    where, fs = paths.for_ray(exp)  # a URI: its path on its filesystem, and the filesystem
    if resume:
        if not tune.Tuner.can_restore(where, storage_filesystem=fs):
            raise FileNotFoundError(f"no search to resume at {exp} (it has no tuner.pkl)")
    elif not paths.is_empty(exp):
        raise FileExistsError(f"{exp} already holds a search: pass --resume to continue it, or choose another --name")
    manifest = load_manifest(paths.local_copy(job.data, only=["manifest.json"]))
    check_space(job.model, space, FeatureSpec.from_dict(manifest["feature_spec"]), base_options=job.options)
    select = select_metric(job.model, manifest)
    start_ray(job.scaling.workers)
    if job.scaling.workers and scheduler == "asha" and not _has_dashboard():
        raise ValueError("ASHA stops Ray Train trials early, and Ray Train frees a stopped trial's workers through the "
                         "dashboard's State API, which this Ray cluster does not run: start Ray with the dashboard, "
                         "or use --scheduler fifo")
    if max_concurrent is None:
        max_concurrent = concurrency(job, ray.cluster_resources())
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic status table, with the columns of _reporter
    # a per-epoch checkpoint with num_to_keep=1 forces a state snapshot each time, and Tune warns about it every epoch
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(inprocess_trial if job.scaling.workers == 0 else train_trial, trial_resources(job))
    if resume:
        tuner = tune.Tuner.restore(where, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    else:
        data = paths.absolute(job.data)
        fixed = {"__job": job.to_dict() | {"data": data}, "__cpus": job.scaling.cpus_per_worker,
                 "__train_storage": paths.join(exp, "train")}
        sched = (ASHAScheduler(time_attr="epoch", max_t=job.train.epochs, grace_period=1, reduction_factor=2)
                 if scheduler == "asha" else FIFOScheduler())
        keep = (tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=select, checkpoint_score_order="max")
                if job.scaling.workers == 0 else None)  # Ray Train trials keep their own checkpoints
        tuner = tune.Tuner(
            trainable,
            param_space={**search_space(space, search), **fixed},
            # in-process trials reuse their worker process: a new one costs seconds of imports (torch, seqrec) per trial
            tune_config=tune.TuneConfig(metric=select, mode="max", scheduler=sched, num_samples=samples,
                                        search_alg=_search_alg(search, select, seed, max_concurrent),
                                        reuse_actors=job.scaling.workers == 0),
            run_config=tune.RunConfig(name=name, **paths.ray_storage(storage), checkpoint_config=keep,
                                      verbose=1 if log else 0, progress_reporter=_reporter(space, select)),
        )
    if not resume:
        paths.makedirs(exp)
        paths.write_text(paths.join(exp, "seqrec_search.json"), json.dumps(
            {"job": job.to_dict() | {"data": paths.absolute(job.data)}, "space": space_name}, indent=1))
    if log:
        kind = ("in-process" if job.scaling.workers == 0
                else f"Ray Train ({job.scaling.workers} worker(s) × {job.scaling.cpus_per_worker:g} CPU)")
        log(f"search {name}: {job.model}, {kind} trials, up to {max_concurrent} at once, {scheduler} on validation {select}")
    return tuner.fit()


# ----------------------------------------------------------------------------------------------
# results


def trial_rows(grid, select: str) -> list[dict]:
    """One row per trial: status, epochs, its best validation metric (and the epoch), time, config, checkpoint."""
    rows = []
    for r in grid:
        config = r.config or {}
        values = expand(_values(config))
        df = r.metrics_dataframe
        row = {"trial_id": (r.metrics or {}).get("trial_id") or _trial_id_of(r.path)}
        if df is not None and len(df) and select in df:
            best = df.loc[df[select].idxmax()]
            row.update({select: float(best[select]), "best_epoch": int(best["epoch"]), "epochs": int(df["epoch"].max()),
                        "loss": float(best["loss"])})
            path = best.get("checkpoint_path") if "checkpoint_path" in df else None  # Ray Train trials
            if not isinstance(path, str):
                ck = r.get_best_checkpoint(select, "max") if r.best_checkpoints else None
                path = ck.path if ck is not None else None
            row["checkpoint"] = path
        else:
            row.update({select: float("nan"), "best_epoch": None, "epochs": 0, "loss": float("nan"), "checkpoint": None})
        row["status"] = "error" if r.error else "done"
        row["time_s"] = float((r.metrics or {}).get("time_total_s", float("nan")))
        row.update({f"config/{k}": v for k, v in values.items()})
        rows.append(row)
    return sorted(rows, key=lambda x: -x[select] if x[select] == x[select] else math.inf)


def _trial_id_of(path: str | None) -> str | None:
    """A trial's id from its directory name (``<trainable>_<expid>_<index>_<values>_<time>``)."""
    import re

    m = re.search(r"_([0-9a-f]{5}_\d{5})_", Path(path).name) if path else None
    return m.group(1) if m else None


def _statuses(grid) -> dict:
    """Tune's status of every trial (TERMINATED, ERROR, PENDING, ...) by trial id, as saved in the experiment
    directory: an interrupted search saves its pending trials as such there (the in-memory grid may not say)."""
    import logging

    from ray.tune import ExperimentAnalysis

    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = log.level
    log.setLevel(logging.ERROR)  # "Failed to fetch metrics" for trials that never reported: expected here
    try:
        return {t.trial_id: t.status for t in ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials}
    finally:
        log.setLevel(level)


def unfinished(grid) -> int:
    """Trials of ``grid`` that neither ended nor failed: the search was interrupted (``--resume`` goes on)."""
    return sum(st not in ("TERMINATED", "ERROR") for st in _statuses(grid).values())


def write_results(grid, job, space_name: str, out: str | Path, select: str, search: dict | None = None) -> dict:
    """trials.csv, trials.md, best.yaml, search.json and search.png in ``out``; returns search.json's content.
    ``out`` may be a storage URI: the files are written to a local directory, then uploaded there."""
    import shutil

    import pandas as pd
    import yaml

    shown, out = str(out), paths.scratch(out)  # where the files go, and where they are written first

    rows = trial_rows(grid, select)
    if not rows:
        raise RuntimeError(f"the search {shown} has no trials")
    status = _statuses(grid)
    summary_unfinished = sum(st not in ("TERMINATED", "ERROR") for st in status.values())
    for row in rows:
        st = status.get(row["trial_id"], "TERMINATED")
        if row["status"] != "error":
            row["status"] = ("unfinished" if st not in ("TERMINATED", "ERROR")
                             else "stopped early" if row["epochs"] < job.train.epochs else "done")  # by ASHA or patience
        row["checkpoint"] = paths.uri_of(row["checkpoint"], shown)  # a URI search: Tune names it on its filesystem
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "trials.csv", index=False)
    (out / "trials.md").write_text(markdown_trials(rows, select) + markdown_by_value(df, select))
    done = [r for r in rows if r[select] == r[select]]
    summary = {"model": job.model, "data": str(job.data), "space": space_name, "select": select, "trials": len(rows),
               "unfinished": summary_unfinished,
               "errors": sum(r["status"] == "error" for r in rows),
               "stopped_early": sum(r["status"] == "stopped early" for r in rows),
               "workers_per_trial": job.scaling.workers, **(search or {})}
    if done:
        best = done[0]
        values = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("config/")}
        best_job = trial_job({"__job": job.to_dict(), **values})
        best_job = best_job.replace(name=None, storage="runs")
        header = (f"# best trial {best['trial_id']} of the search {paths.basename(shown)}: validation {select} "
                  f"{best[select]:.4f} at epoch {best['best_epoch']}\n# train it: seqrec train --config "
                  f"{paths.join(shown, 'best.yaml')}\n")
        (out / "best.yaml").write_text(header + yaml.safe_dump(_plain(best_job.to_dict()), sort_keys=False))
        summary.update({"best": {select: best[select], "epoch": best["best_epoch"], "trial_id": best["trial_id"],
                                 "config": values, "checkpoint": best["checkpoint"]},
                        "best_yaml": paths.join(shown, "best.yaml")})
        plot = plot_search(df, select, out / "search.png", family=job.model.partition(":")[0],
                           title=f"{job.model}: {space_name} on {paths.basename(job.data)}")
        summary["plot"] = paths.join(shown, "search.png") if plot else None
    (out / "search.json").write_text(json.dumps(_plain(summary), indent=1, default=str))
    if paths.is_uri(shown):
        paths.upload(out, shown)
        shutil.rmtree(out)
    return summary


def _plain(x):
    """YAML/JSON-safe values (tuples and numpy scalars to plain Python)."""
    import numpy as np

    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def markdown_trials(rows: list[dict], select: str) -> str:
    """The trials as a Markdown table, best first."""
    keys = [k for k in rows[0] if k.startswith("config/")]
    cols = ["#", *[k.split("/", 1)[1] for k in keys], select, "best epoch", "epochs", "status", "time (s)"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for i, r in enumerate(rows, 1):
        cells = [str(i), *[_fmt(r.get(k)) for k in keys], _fmt(r[select], 4), _fmt(r["best_epoch"]), str(r["epochs"]),
                 r["status"], _fmt(r["time_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_by_value(df, select: str) -> str:
    """Over seeds (a grid with a ``seed`` dimension, as the paper_* spaces): mean ± std of each other
    value combination, best first; empty when the search has no seed dimension."""
    if "config/seed" not in df or df["config/seed"].nunique() < 2:
        return ""
    keys = [c for c in df.columns if c.startswith("config/") and c != "config/seed" and df[c].nunique() > 1]
    if not keys:
        return ""
    g = df[df[select].notna()].groupby(keys)[select].agg(["mean", "std", "count"]).sort_values("mean", ascending=False)
    names = [k.split("/", 1)[1] for k in keys]
    lines = ["", f"By value, over seeds ({select}: mean ± std):", "",
             "| " + " | ".join([*names, select, "seeds"]) + " |", "|---" * (len(names) + 2) + "|"]
    for idx, r in g.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        lines.append("| " + " | ".join([*map(str, idx), f"{r['mean']:.4f} ± {0.0 if r['std'] != r['std'] else r['std']:.4f}",
                                        str(int(r["count"]))]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


# the dimensions the paper's tables vary, per model family: (x axis, bar colour), then a second panel's x
PLOTS = {"sdm": (("heads", "fusion"), ("hidden", None)), "bst": (("blocks", "heads"), ("id_dim", None))}


def plot_search(df, select: str, path: Path, family: str = "sdm", title: str = "") -> Path | None:
    """Bars of the validation metric (mean ± std over trials) by heads × fusion and by hidden size
    (SDM; BST: blocks × heads and embedding size). Only dimensions that vary in the search are
    drawn; returns None when none does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = []
    for x, hue in PLOTS.get(family, ()):
        cx, ch = f"config/{x}", f"config/{hue}" if hue else None
        if cx not in df or df[cx].nunique() < 2:
            if ch and ch in df and df[ch].nunique() >= 2:
                cx, ch = ch, None  # only the colour dimension varies: it becomes the x axis
            else:
                continue
        if ch and (ch not in df or df[ch].nunique() < 2):
            ch = None
        panels.append((cx, ch))
    if not panels:
        panels = _generic_panels(df)
    if not panels:
        return None
    ok = df[df[select].notna()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (cx, ch) in zip(axes[0], panels):
        xs = sorted(ok[cx].dropna().unique(), key=_sort_key)
        hues = sorted(ok[ch].dropna().unique(), key=_sort_key) if ch else [None]
        width = 0.8 / len(hues)
        for j, h in enumerate(hues):
            sub = ok if h is None else ok[ok[ch] == h]
            stats = [sub[sub[cx] == x][select] for x in xs]
            means = [s.mean() if len(s) else np.nan for s in stats]
            stds = [s.std() if len(s) > 1 else 0.0 for s in stats]  # sample std, as in trials.md
            pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
            ax.bar(pos, means, width, yerr=stds, capsize=3, label=None if h is None else f"{ch.split('/', 1)[1]}={h}")
        ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs])
        ax.set_xlabel(cx.split("/", 1)[1])
        ax.set_ylabel(f"validation {select}")
        finite = ok[select]
        lo, hi = float(finite.min()), float(finite.max())
        pad = max((hi - lo) * 0.5, 1e-3)
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        if ch:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title} (best epoch per trial; mean ± std over trials)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _generic_panels(df) -> list[tuple[str, None]]:
    """One panel per varying discrete config column (at most two)."""
    cols = [c for c in df.columns if c.startswith("config/") and c != "config/seed" and 1 < df[c].nunique() <= 12]
    return [(c, None) for c in cols[:2]]


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


__all__ = ["concurrency", "free_port", "inprocess_trial", "markdown_trials", "plot_search", "run_search", "search_space",
           "start_ray", "train_trial", "trial_job", "trial_resources", "trial_rows", "unfinished", "write_results"]
