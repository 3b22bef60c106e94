"""Distributed training on Ray Train, fed by Ray Data: the engine (:class:`seqrec.train.engine.Trainer`) on N workers.

``train_fn_per_worker(config)`` is a thin driver around the engine; Ray appears only to

* get the worker's dataset shard (``ray.train.get_dataset_shard("train")``) and iterate it with
  ``iter_torch_batches``: Ray Data streams the prepared Parquet shards through a local shuffle
  buffer in pools of ``batch_size × group_pool`` rows, and the collate function
  (:class:`PoolCollate`, run on Ray Data's prefetch threads) cuts each pool into batches of
  similar session length (:func:`seqrec.train.engine.pool_batches`, as in this process).
  Training starts with the first pool, so memory is bounded by the buffers, not by the data;
* prepare the model (DDP over gloo on CPU, NCCL on GPU; ``ray.train.torch.prepare_model``);
* report per-epoch metrics and checkpoints (``ray.train.report``), get the checkpoint to resume
  from (``ray.train.get_checkpoint()``), and broadcast rank 0's decision to stop.

Checkpoints are the engine's (:meth:`Trainer.save`), written by rank 0.

The dataset and the run's storage may be storage URIs (:mod:`seqrec.storage`): Ray Data reads the splits and
Ray Train keeps the run there (``storage_filesystem``); what reads local files only (the model build's tables,
the export) reads a local copy, and for a URI run the staged checkpoints and status files stay in a local
directory of the node (:func:`seqrec.storage.work_dir`) while TensorBoard's files are uploaded every epoch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from seqrec import storage
from seqrec.config import ScalingConfig, TrainJob

# cache="auto" keeps a training split of at most this much Parquet in Ray's object store after the
# first read; a larger one streams from the files every epoch
CACHE_AUTO_MAX_BYTES = 64 * 2**20


class PoolCollate(ArrowBatchCollateFn):
    """``iter_torch_batches`` collate: one streamed pool (a pyarrow Table) → its length-grouped batches
    (:func:`seqrec.train.engine.pool_batches`). Ray Data runs this on its prefetch threads, so
    collation overlaps the training step."""

    def __init__(self, spec, batch_size: int):
        self.spec, self.batch_size = spec, batch_size

    def __call__(self, pool):
        from seqrec.train.engine import pool_batches

        return pool_batches(pool, self.spec, self.batch_size)


def _amp(scaling: ScalingConfig, device: torch.device) -> tuple[torch.dtype | None, object]:
    """(autocast dtype, grad scaler) for the job on ``device``."""
    if device.type != "cuda" or scaling.amp == "off":
        return None, None
    if scaling.amp == "fp16":
        return torch.float16, torch.amp.GradScaler("cuda")
    if scaling.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return None, None


def iter_pools(shard, spec, job: TrainJob, rng: np.random.Generator):
    """One epoch of a worker's shard: ``iter_torch_batches`` of ``batch_size × group_pool``-row pools
    (the worker's share of the global batch) through the local shuffle buffer, each collated by
    :class:`PoolCollate` into its length-grouped batches (a list; the engine draws their order)."""
    batch = job.scaling.per_worker(job.train.batch_size)
    pool_rows = batch * job.train.group_pool
    buffer = job.scaling.shuffle_buffer_rows
    return shard.iter_torch_batches(
        batch_size=pool_rows, collate_fn=PoolCollate(spec, batch), prefetch_batches=job.scaling.prefetch_batches,
        local_shuffle_buffer_size=max(buffer, pool_rows) if buffer else None,
        local_shuffle_seed=int(rng.integers(2**31)))


def _all_reduce(values: list[float], device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_fn_per_worker(config: dict) -> None:
    """The Ray Train worker: the engine with Ray's shard, model wrapper, reports and stop broadcast."""
    import pyarrow as pa
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint
    from torch.utils.tensorboard import SummaryWriter

    from seqrec.checkpoint import dataset_identity
    from seqrec.train.engine import Trainer
    from seqrec.train.factory import build
    from seqrec.train.validation import select_metric, validator

    job = TrainJob.from_dict(config["job"])
    run_dir = config["run_dir"]
    work = storage.work_dir(run_dir)  # the run directory, or for a URI this node's local directory of the run
    _quiet_data()
    _quiet_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model, spec, manifest = build(job.model, storage.local_copy(job.data), job.options, seed=job.train.seed)  # same weights on every rank
    device = ray.train.torch.get_device()
    validate = select = None
    if rank == 0:
        val_it = ray.train.get_dataset_shard("val")
        parts = list(val_it.iter_batches(batch_format="pyarrow", batch_size=None)) if val_it is not None else []
        val_table = pa.concat_tables(parts) if parts else None
        if val_table is not None and val_table.num_rows:
            validate = validator(job.model, val_table, spec, manifest, job.rank_negatives)
            select = select_metric(job.model, manifest, cascade=job.candidates is not None)
    amp_dtype, scaler = _amp(job.scaling, device)
    # sys.stdout, not print: Ray Train patches print into its logger, which echoes each line twice
    log = (lambda line: (sys.stdout.write(f"[seqrec train] {line}\n"), sys.stdout.flush())) if rank == 0 else None
    trainer = Trainer(model, job.train, device=device, validate=validate, select=select, rank=rank, world=world,
                      amp_dtype=amp_dtype, scaler=scaler, log=log, name=job.run_name())
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            meta = trainer.restore(d)
        if meta["dataset"]["vocab_hash"] != manifest.get("vocab_hash"):
            raise ValueError(f"run {run_dir} was trained on another vocabulary than {job.data}; use a new --name")
    trainer.wrap(ray.train.torch.prepare_model)
    shard = ray.train.get_dataset_shard("train")
    writer = SummaryWriter(str(work / "tensorboard")) if rank == 0 else None
    status = work / "status"
    status.mkdir(parents=True, exist_ok=True)

    def on_step(t: Trainer) -> None:
        if job.run.status_every and t.step % job.run.status_every == 0:
            (status / f"worker-{rank}.json").write_text(json.dumps({"pid": os.getpid(), "rank": rank, "epoch": t.epoch + 1,
                                                                     "step": t.step}))

    def on_epoch(res, t: Trainer) -> None:
        row = t.history[-1]
        report = _scalars({**row, "select": select, "best": t.best})
        if rank != 0:
            ray.train.report(report)
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "workers"):
                writer.add_scalar(k if k in ("loss", "targets_per_s") else f"val/{k}", v, res.epoch)
        writer.flush()
        if storage.is_uri(run_dir):
            storage.upload(work / "tensorboard", storage.join(run_dir, "tensorboard"))
        # staged under the run directory; Ray copies it to <run>/checkpoint_epoch-N (SYNC upload)
        ck_dir = t.save(work / "staging" / f"epoch-{res.epoch:04d}", dataset=dataset_identity(manifest, job.data),
                        job=job.to_dict())
        ray.train.report(report, checkpoint=Checkpoint.from_directory(str(ck_dir)),
                         checkpoint_dir_name=f"checkpoint_epoch-{res.epoch:04d}")
        if job.scaling.workers > 0:  # local mode (0 workers) keeps the staged directory: it is the checkpoint
            shutil.rmtree(ck_dir, ignore_errors=True)

    def agree(stop: bool) -> bool:
        if world == 1:
            return stop
        from ray.train.collective import broadcast_from_rank_zero

        return broadcast_from_rank_zero(stop)

    try:
        trainer.fit(lambda rng: iter_pools(shard, spec, job, rng), on_epoch=on_epoch, on_step=on_step,
                    reduce=lambda v: _all_reduce(v, device), agree=agree)
    finally:
        if writer is not None:
            writer.close()


def run_training(job: TrainJob, log=print, callbacks: list | None = None) -> dict:
    """Run ``job`` on Ray Train (connecting to or starting Ray); returns the run summary (also ``<run>/run.json``).

    ``callbacks`` are Ray Train ``UserCallback`` s (a Tune trial passes ``TuneReportCallback``).

    After training: the best checkpoint (by the validation metric; the last one without a
    validation split) is exported to ``<run>/export`` (:func:`seqrec.export.export_checkpoint`),
    and the training curve is drawn to ``<run>/training_curve.png``.
    """
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

    from seqrec.config import CASCADE_RANKER_OPTIONS
    from seqrec.data.prepare import load_manifest
    from seqrec.export import export_checkpoint
    from seqrec.models import is_ranker
    from seqrec.train.factory import build

    if job.candidates is not None and is_ranker(job.model):  # a cascade ranker's defaults, under the job's options
        job = job.replace(options={**CASCADE_RANKER_OPTIONS, **job.options})
    from seqrec.train.validation import select_metric

    _quiet_data()
    local_data = storage.local_copy(job.data)  # a URI: what reads local files here reads a copy
    manifest = load_manifest(local_data)  # fails early, with a clear message, on a wrong --data
    build(job.model, local_data, job.options)  # and so does a bad model option, before any worker starts
    if job.candidates is not None:  # and cascade data that does not fit the job
        _check_cascade(job, manifest)
    name = job.run_name()
    run_dir = storage.join(storage.absolute(job.run.storage), name)
    data = storage.absolute(job.data)
    sc = job.scaling
    resources = {"CPU": sc.cpus_per_worker} | ({"GPU": 1} if sc.gpu else {})
    check_resources(job, resources)
    if sc.shuffle_buffer_rows == 0:  # no shuffle asked for: the pools come in file order
        ray.data.DataContext.get_current().execution_options.preserve_order = True
    source = data
    if job.candidates is not None:  # a cascade ranker: the rows with the matcher's candidates
        source = storage.absolute(job.candidates)
    datasets = {"train": _read_parquet(storage.join(source, "train"))}
    cached = use_cache(job, storage.join(source, "train"))
    if cached:
        datasets["train"] = datasets["train"].materialize()
    has_val = manifest["config"]["protocol"].get("val") and storage.files(storage.join(source, "val"), ".parquet")
    if has_val:
        datasets["val"] = _read_parquet(storage.join(source, "val"))
    select = select_metric(job.model, manifest, cascade=job.candidates is not None) if has_val else None
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"job": job.to_dict() | {"data": data}, "run_dir": run_dir},
        scaling_config=RayScaling(num_workers=sc.workers, use_gpu=sc.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            **storage.ray_storage(job.run.storage),  # a URI: Ray Train keeps the run there (storage_filesystem)
            checkpoint_config=CheckpointConfig(num_to_keep=job.run.keep_checkpoints, checkpoint_score_attribute=select,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if select and result.best_checkpoints:
        best_ck, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(select, float("-inf")))
    else:
        best_ck, best_metrics = result.checkpoint, result.metrics
    if best_ck is None:
        raise RuntimeError(f"run {run_dir} reported no checkpoint; see the worker logs")
    with result.checkpoint.as_directory() as last:
        history = json.loads((Path(last) / "meta.json").read_text())["history"]
    best_path = storage.uri_of(best_ck.path, job.run.storage)
    with best_ck.as_directory() as d:  # a URI run: a local copy of the checkpoint
        exported = export_checkpoint(d, storage.join(run_dir, "export"), local_data, source=best_path)
    summary = {
        "run_dir": run_dir,
        "job": job.to_dict() | {"data": data},
        "select": select,
        "best_checkpoint": best_path,
        "best_metrics": best_metrics,
        "last_checkpoint": storage.uri_of(result.checkpoint.path, job.run.storage),
        "history": history,
        "export": exported,
        "wall_s": wall,
        "cached": cached,
    }
    storage.makedirs(run_dir)
    with storage.local_file(storage.join(run_dir, "training_curve.png")) as png:
        plot_history(history, png, title=name, select=select)
    summary["training_curve"] = storage.join(run_dir, "training_curve.png")
    storage.write_text(storage.join(run_dir, "run.json"), json.dumps(summary, indent=1, default=str))
    if log:
        extra = f", best {select} {best_metrics.get(select, float('nan')):.4f}" if select else ""
        log(f"trained {job.model} on {sc.workers} worker(s) in {wall:.0f}s{extra}; run: {run_dir}")
    return summary


def _check_cascade(job: TrainJob, manifest: dict) -> None:
    """``job.candidates`` holds cascade data of this dataset (``load_cascade``) that a ranker can train on as asked."""
    from seqrec.models import is_ranker
    from seqrec.train.cascade import load_cascade

    if not is_ranker(job.model):
        raise ValueError(f"--candidates trains a ranker on a matcher's candidates; {job.model} is a matcher")
    info = load_cascade(storage.local_copy(job.candidates, only=["cascade.json"]), manifest)  # this dataset's, or an error
    made, wanted = info.get("positives", "next"), job.options.get("positives", "next")
    if wanted == "window" and made != "window":  # the window's items are not in the data: it would train as "next"
        raise ValueError(f"the ranker option positives=window needs cascade data that stores the label window "
                         f"(`seqrec data candidates --positives window`); {job.candidates} was made with positives={made}")


def _read_parquet(path: str):
    """A split's Parquet shards as a Ray Dataset, from a local directory or a storage URI."""
    import ray.data

    where, fs = storage.for_ray(path)
    return ray.data.read_parquet(where, filesystem=fs)


def use_cache(job: TrainJob, train_dir: str | Path) -> bool:
    """Whether to keep the training split in Ray's object store instead of streaming it every epoch.

    Ray Data re-reads a streamed split each epoch. For a small split that start-up dominates the
    epoch (docs/training.md, "Caching the training split", has the measurement), so ``auto``
    caches splits up to ``CACHE_AUTO_MAX_BYTES`` of Parquet; larger ones stream, with memory
    bounded by the buffers. The cached split is still split across workers and shuffled the same way.
    """
    if job.scaling.cache != "auto":
        return job.scaling.cache == "on"
    return sum(size for _, size in storage.files(train_dir, ".parquet")) <= CACHE_AUTO_MAX_BYTES


def check_resources(job: TrainJob, per_worker: dict) -> None:
    """Fail now, naming the shortfall, when the cluster cannot hold the worker group.

    Ray Train would otherwise wait for the placement group forever (it retries the worker-group
    start-up timeout without limit). On an autoscaling cluster, ``wait_for_resources`` waits.
    Connects to the cluster (``RAY_ADDRESS``, or the latest ``ray start``), or starts a local one.
    """
    import ray

    from seqrec.cluster import start_ray

    workers = job.scaling.workers
    start_ray(workers)
    if workers == 0:  # local mode: the loop runs in this process
        return
    total = ray.cluster_resources()
    need = {k: v * workers for k, v in per_worker.items()}
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short and not job.scaling.wait_for_resources:
        have = ", ".join(f"{k} {need_v:g} needed, {have_v:g} in the cluster" for k, (need_v, have_v) in short.items())
        raise ValueError(
            f"{workers} worker(s) × {per_worker} do not fit the Ray cluster ({have}); use fewer --workers or a "
            "smaller --cpus-per-worker, drop --gpu, or pass --wait-for-resources on an autoscaling cluster"
        )


def plot_history(history: list[dict], path: Path, title: str = "", select: str | None = None) -> Path:
    """The training curve: loss per epoch, and the validation metric when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    if select and all(select in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h[select] for h in history], "s--", color="tab:orange", label=f"validation {select}")
        ax2.set_ylabel(f"validation {select}", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _quiet_data() -> None:
    """No Ray Data progress bars: a training log is one line per epoch."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _quiet_reports() -> None:
    """No INFO line per ``ray.train.report`` in the job log (Ray 2.60 logs each with its metrics dict,
    on a logger named after the module's file)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str)) or v is None}


__all__ = ["CACHE_AUTO_MAX_BYTES", "PoolCollate", "TrainJob", "check_resources", "iter_pools", "plot_history", "run_training",
           "train_fn_per_worker", "use_cache"]
