"""Distributed training on Ray Train, fed by Ray Data: the one training loop, run by N workers.

``train_fn_per_worker(config)`` is a plain PyTorch loop; Ray appears only to

* get the worker's dataset shard (``ray.train.get_dataset_shard("train")``) and iterate it with
  ``iter_torch_batches``: Ray Data streams the prepared Parquet shards through a local shuffle
  buffer in pools of ``batch_size × group_pool`` rows, and the collate function
  (:class:`PoolCollate`, run on Ray Data's prefetch threads) cuts each pool into batches of
  similar session length (SDM §4.4, :func:`seqrec.train.loop.length_chunks`, as in the
  single-process loop), each padded to its own longest session. Training starts with the first
  pool, so memory is bounded by the buffers, not by the data;
* prepare the model (DDP over gloo on CPU, NCCL on GPU; ``ray.train.torch.prepare_model``);
* report per-epoch metrics and checkpoints (``ray.train.report``), and get the checkpoint to
  resume from (``ray.train.get_checkpoint()``) after a worker failure or when a run is re-run
  with the same name and storage path.

Every step is :func:`seqrec.train.loop.train_step`, the unit the single-process ``fit`` uses, so
matchers (SDM and baselines) and rankers (BST and baselines) train here unchanged. Checkpoints are
:mod:`seqrec.checkpoint` directories (model config + state, optimizer, epoch, step, history, the
dataset's content and vocabulary hashes), written by rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

AMP = ("auto", "off", "bf16", "fp16")
CACHE = ("auto", "on", "off")
# cache="auto" keeps a training split of at most this much Parquet in Ray's object store after the
# first read; a larger one streams from the files every epoch
CACHE_AUTO_MAX_BYTES = 64 * 2**20


@dataclass
class TrainJob:
    """Everything one ``seqrec train`` run needs; a YAML config file holds these keys."""

    model: str  # sdm:PSDMMAL | sdm | gru4rec | narm | youtube_dnn | bst | din | wdl | wdl_seq
    data: str  # a prepared dataset directory
    options: dict = field(default_factory=dict)  # model options (MatchConfig / RankConfig fields)
    epochs: int = 10
    batch_size: int = 256  # session rows per worker batch
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    seed: int = 0
    group_pool: int = 32  # batches per length-sorted pool
    patience: int | None = 3  # epochs without a better validation metric before stopping
    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    amp: str = "auto"  # auto (bf16 on a GPU that supports it, else off) | off | bf16 | fp16
    shuffle_buffer_rows: int = 8192  # Ray Data local shuffle buffer, rows
    prefetch_batches: int = 2  # pools fetched ahead of the one being trained on
    cache: str = "auto"  # keep the training split in the object store: auto (when small) | on | off (always stream)
    name: str | None = None  # run name; re-running the same name resumes
    storage: str = "runs"  # runs live in <storage>/<name>
    keep_checkpoints: int = 2  # best N by the validation metric (the latest is kept too)
    max_failures: int = 1  # worker-group restarts from the last checkpoint
    rank_negatives: int = 4  # rankers' validation: popularity negatives per positive
    status_every: int = 10  # write <run>/status/worker-<rank>.json every N steps (0 = never)
    wait_for_resources: bool = False  # wait for an autoscaler instead of failing when the cluster is too small

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0 (0 = in the driver process, no Ray Train workers)")
        if self.amp not in AMP:
            raise ValueError(f"amp={self.amp!r}; choose one of {AMP}")
        if self.cache not in CACHE:
            raise ValueError(f"cache={self.cache!r}; choose one of {CACHE}")
        if self.amp in ("bf16", "fp16") and not self.gpu:
            raise ValueError(f"amp={self.amp!r} needs --gpu: mixed precision is for GPU training")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints={self.keep_checkpoints} must be >= 1")
        if self.shuffle_buffer_rows < 0 or self.prefetch_batches < 0:
            raise ValueError("shuffle_buffer_rows and prefetch_batches must be >= 0")
        self.train_config()  # validates epochs, batch size, lr, ...

    def train_config(self):
        from seqrec.train.loop import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, seed=self.seed, group_pool=self.group_pool, patience=self.patience)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainJob":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; valid: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "TrainJob":
        import yaml

        d = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config is a YAML mapping of options, got {type(d).__name__}")
        opts = {**d.get("options", {}), **overrides.pop("options", {})}
        return cls.from_dict({**d, **{k: v for k, v in overrides.items() if v is not None}, "options": opts})

    def run_name(self) -> str:
        return self.name or f"{self.model.replace(':', '-')}-{Path(self.data).name}"


class PoolCollate(ArrowBatchCollateFn):
    """``iter_torch_batches`` collate: one streamed pool (a pyarrow Table) → its length-grouped batches.

    Returns the pool's :class:`seqrec.batch.Batch` es in length order; the training loop draws
    their order. Each batch is padded to its own longest session (``seqrec.batch.collate``).
    Ray Data runs this on its prefetch threads, so collation overlaps the training step.
    """

    def __init__(self, spec, batch_size: int):
        self.spec, self.batch_size = spec, batch_size

    def __call__(self, pool):
        from seqrec import features as F
        from seqrec.batch import collate
        from seqrec.train.loop import length_chunks

        return [collate(pool.take(c), self.spec) for c in length_chunks(pool[F.SEQ_LEN].to_numpy(), self.batch_size)]


def _amp(job: TrainJob, device: torch.device) -> tuple[torch.dtype | None, object]:
    """(autocast dtype, grad scaler) for the job on ``device``."""
    if device.type != "cuda" or job.amp == "off":
        return None, None
    if job.amp == "fp16":
        return torch.float16, torch.amp.GradScaler("cuda")
    if job.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return None, None


def build(job: TrainJob):
    """(model, feature spec, manifest) for the job, with the item tables rankers and unigram samplers need."""
    from seqrec.data.prepare import load_manifest
    from seqrec.evaluate import prepare_ranker
    from seqrec.experiment import item_counts
    from seqrec.features import FeatureSpec
    from seqrec.models import build_model, is_ranker

    manifest = load_manifest(job.data)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    options = dict(job.options)
    if is_ranker(job.model):
        options.setdefault("tz_offset_s", manifest["config"]["protocol"].get("tz_offset_s", 0))
    model = build_model(job.model, spec, **options)
    if is_ranker(job.model):
        prepare_ranker(model, job.data, spec)
    elif model.config.loss == "sampled" and model.config.sampler == "unigram":
        model.softmax.set_item_counts(torch.from_numpy(item_counts(job.data, spec.n_items)))
    return model, spec, manifest


def select_metric(job: TrainJob, manifest) -> str:
    """The validation metric that picks checkpoints: AUC for rankers, the protocol's metric for matchers."""
    from seqrec.evaluate import protocol_of, selection_metric
    from seqrec.models import is_ranker

    return "AUC" if is_ranker(job.model) else selection_metric(protocol_of(manifest))


def validation(job: TrainJob, model, table, spec, manifest) -> tuple[dict, str]:
    """(metrics on the validation rows, the metric that picks checkpoints)."""
    from seqrec.evaluate import evaluate_matcher, evaluate_ranker, protocol_of
    from seqrec.models import is_ranker

    device = str(next(model.parameters()).device)  # batches go where the model is (a GPU worker's or trial's)
    if is_ranker(job.model):  # negatives drawn by the popularity the ranker carries (items.parquet counts)
        counts = model.item_counts.detach().cpu().numpy().astype(np.float64)
        metrics = evaluate_ranker(model, table, spec, counts, job.rank_negatives, seed=0, device=device)
    else:
        metrics = evaluate_matcher(model, table, spec, protocol_of(manifest), device=device)
    return metrics, select_metric(job, manifest)


def iter_pools(shard, spec, job: TrainJob, rng: np.random.Generator):
    """One epoch of a worker's shard: ``iter_torch_batches`` of ``batch_size × group_pool``-row pools
    through the local shuffle buffer, each collated by :class:`PoolCollate` into its length-grouped
    batches (a list; the caller draws their order)."""
    pool_rows = job.batch_size * job.group_pool
    return shard.iter_torch_batches(
        batch_size=pool_rows, collate_fn=PoolCollate(spec, job.batch_size), prefetch_batches=job.prefetch_batches,
        local_shuffle_buffer_size=max(job.shuffle_buffer_rows, pool_rows) if job.shuffle_buffer_rows else None,
        local_shuffle_seed=int(rng.integers(2**31)))


def _all_reduce(values: list[float], device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_fn_per_worker(config: dict) -> None:
    """The Ray Train worker loop (see the module docstring)."""
    import pyarrow as pa
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from seqrec.checkpoint import dataset_identity, load_optimizer, save_checkpoint, unwrap
    from seqrec.train.loop import make_optimizer, train_step

    job = TrainJob.from_dict(config["job"])
    run_dir = Path(config["run_dir"])
    _quiet_data()
    _quiet_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job.seed)  # identical initial weights on every rank
    model, spec, manifest = build(job)
    device = ray.train.torch.get_device()
    cfg = job.train_config()
    start_epoch, step, history, best, stale = 1, 0, [], None, 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            payload = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
            meta = json.loads((Path(d) / "meta.json").read_text())
            if meta["dataset"]["vocab_hash"] != manifest.get("vocab_hash"):
                raise ValueError(f"run {run_dir} was trained on another vocabulary than {job.data}; use a new --name")
            model.load_state_dict(payload["state_dict"])
            model.to(device)
            opt = make_optimizer(model, cfg)
            load_optimizer(d, opt, map_location=device)
        start_epoch, step, history = meta["epoch"] + 1, meta["step"], meta["history"]
        best, stale = meta["train_state"]["best"], meta["train_state"]["stale"]
    model = ray.train.torch.prepare_model(model)
    if resumed is None:
        opt = make_optimizer(model, cfg)
    amp_dtype, scaler = _amp(job, device)
    shard = ray.train.get_dataset_shard("train")
    val_table = None
    if rank == 0:
        val_it = ray.train.get_dataset_shard("val")
        parts = list(val_it.iter_batches(batch_format="pyarrow", batch_size=None)) if val_it is not None else []
        val_table = pa.concat_tables(parts) if parts else None
        if val_table is not None and val_table.num_rows == 0:
            val_table = None
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    status = run_dir / "status"
    status.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, cfg.epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        t0, loss_sum, targets, steps = time.perf_counter(), 0.0, 0, 0
        pools = iter_pools(shard, spec, job, rng)
        wait, mark, first = 0.0, time.perf_counter(), None
        for batches in pools:
            wait += time.perf_counter() - mark  # time blocked on Ray Data (read, shuffle, collate)
            first = wait if first is None else first  # the epoch's start-up: until the first pool arrives
            for j in rng.permutation(len(batches)):  # the batches of one pool, in random order
                loss, k = train_step(model, batches[j].to(device), opt, cfg.grad_clip, amp_dtype, scaler)
                loss_sum, targets, steps, step = loss_sum + loss * k, targets + k, steps + 1, step + 1
                if job.status_every and step % job.status_every == 0:
                    (status / f"worker-{rank}.json").write_text(json.dumps({"pid": os.getpid(), "rank": rank, "epoch": epoch, "step": step}))
            mark = time.perf_counter()
        wait += time.perf_counter() - mark  # the end of the shard
        seconds = time.perf_counter() - t0
        loss_sum, targets = _all_reduce([loss_sum, float(targets)], device)
        row = {"epoch": epoch, "loss": loss_sum / max(targets, 1), "targets": int(targets), "seconds": seconds,
               "targets_per_s": targets / seconds if seconds > 0 else float("nan"), "data_wait_s": wait,
               "first_batch_s": first or 0.0, "steps": step, "workers": world}
        metrics, select = ({}, None)
        if rank == 0 and val_table is not None:
            metrics, select = validation(job, unwrap(model), val_table, spec, manifest)
            metrics = {k: float(v) for k, v in metrics.items()}
            if best is None or metrics[select] > best:
                best, stale = metrics[select], 0
            else:
                stale += 1
        row.update(metrics)
        history.append(row)
        report = {**row, "select": select, "best": best}
        if rank == 0:
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("epoch", "workers"):
                        writer.add_scalar(k if k in ("loss", "targets_per_s") else f"val/{k}", v, epoch)
                writer.flush()
            extra = f" {select} {metrics[select]:.4f}" if select else ""
            # sys.stdout, not print: Ray Train patches print into its logger, which echoes each line twice
            sys.stdout.write(f"[seqrec train] {job.run_name()} epoch {epoch}/{cfg.epochs} loss {row['loss']:.4f} "
                             f"{row['targets_per_s']:,.0f} targets/s ({world} worker(s), {seconds:.1f}s, {wait:.1f}s waiting for data){extra}\n")
            sys.stdout.flush()
            # staged under the run directory; Ray copies it to <run>/checkpoint_epoch-N (SYNC upload)
            ck_dir = run_dir / "staging" / f"epoch-{epoch:04d}"
            save_checkpoint(ck_dir, model, opt, epoch=epoch, step=step, dataset=dataset_identity(manifest, job.data),
                            metrics=metrics, history=history, train=job.to_dict(), extra={"train_state": {"best": best, "stale": stale}})
            ray.train.report(_scalars(report), checkpoint=Checkpoint.from_directory(str(ck_dir)),
                             checkpoint_dir_name=f"checkpoint_epoch-{epoch:04d}")
            if job.workers > 0:  # local mode (0 workers) keeps the staged directory: it is the checkpoint
                shutil.rmtree(ck_dir, ignore_errors=True)
        else:
            ray.train.report(_scalars(report))
        stop = cfg.patience is not None and stale >= cfg.patience
        if world > 1:
            from ray.train.collective import broadcast_from_rank_zero

            stop = broadcast_from_rank_zero(stop)
        if stop:
            break
    if writer is not None:
        writer.close()


def run_training(job: TrainJob, log=print, callbacks: list | None = None) -> dict:
    """Run ``job`` on Ray Train (connecting to or starting Ray); returns the run summary (also ``<run>/run.json``).

    ``callbacks`` are Ray Train ``UserCallback`` s (a Tune trial passes ``TuneReportCallback``).

    After training: the best checkpoint (by the validation metric; the last one without a
    validation split) is exported to ``<run>/export`` (:func:`seqrec.export.export_checkpoint`),
    and the training curve is drawn to ``<run>/training_curve.png``.
    """
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from seqrec.data.prepare import load_manifest
    from seqrec.export import export_checkpoint

    _quiet_data()
    manifest = load_manifest(job.data)  # fails early, with a clear message, on a wrong --data
    build(job)  # and so does a bad model option, before any worker starts
    storage = Path(job.storage).resolve()
    name = job.run_name()
    run_dir = storage / name
    data = Path(job.data).resolve()
    resources = {"CPU": job.cpus_per_worker} | ({"GPU": 1} if job.gpu else {})
    check_resources(job, resources)
    datasets = {"train": ray.data.read_parquet(str(data / "train"))}
    cached = use_cache(job, data / "train")
    if cached:
        datasets["train"] = datasets["train"].materialize()
    has_val = manifest["config"]["protocol"].get("val") and any((data / "val").glob("*.parquet"))
    if has_val:
        datasets["val"] = ray.data.read_parquet(str(data / "val"))
    select = select_metric(job, manifest) if has_val else None
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"job": job.to_dict() | {"data": str(data)}, "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=job.keep_checkpoints, checkpoint_score_attribute=select,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=job.max_failures),
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
    with best_ck.as_directory() as d:
        exported = export_checkpoint(d, run_dir / "export", job.data)
    summary = {
        "run_dir": str(run_dir),
        "job": job.to_dict() | {"data": str(data)},
        "select": select,
        "best_checkpoint": best_ck.path,
        "best_metrics": best_metrics,
        "last_checkpoint": result.checkpoint.path,
        "history": history,
        "export": exported,
        "wall_s": wall,
        "cached": cached,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    summary["training_curve"] = str(plot_history(history, run_dir / "training_curve.png", title=name, select=select))
    (run_dir / "run.json").write_text(json.dumps(summary, indent=1, default=str))
    if log:
        extra = f", best {select} {best_metrics.get(select, float('nan')):.4f}" if select else ""
        log(f"trained {job.model} on {job.workers} worker(s) in {wall:.0f}s{extra}; run: {run_dir}")
    return summary


def use_cache(job: TrainJob, train_dir: Path) -> bool:
    """Whether to keep the training split in Ray's object store instead of streaming it every epoch.

    Ray Data re-reads a streamed split each epoch. For a small split that start-up dominates the
    epoch (ml-100k: about 5 of 7 seconds per epoch waiting for data on 2 cores), so ``auto``
    caches splits up to ``CACHE_AUTO_MAX_BYTES`` of Parquet; larger ones stream, with memory
    bounded by the buffers. The cached split is still split across workers and shuffled the same way.
    """
    if job.cache != "auto":
        return job.cache == "on"
    return sum(f.stat().st_size for f in train_dir.glob("*.parquet")) <= CACHE_AUTO_MAX_BYTES


def check_resources(job: TrainJob, per_worker: dict) -> None:
    """Fail now, naming the shortfall, when the cluster cannot hold the worker group.

    Ray Train would otherwise wait for the placement group forever (it retries the worker-group
    start-up timeout without limit). On an autoscaling cluster, ``wait_for_resources`` waits.
    Connects to the cluster (``RAY_ADDRESS``, or the latest ``ray start``), or starts a local one.
    """
    import ray

    from seqrec.cluster import start_ray

    start_ray(job.workers)
    if job.workers == 0:  # local mode: the loop runs in this process
        return
    total = ray.cluster_resources()
    need = {k: v * job.workers for k, v in per_worker.items()}
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short and not job.wait_for_resources:
        have = ", ".join(f"{k} {need_v:g} needed, {have_v:g} in the cluster" for k, (need_v, have_v) in short.items())
        raise ValueError(
            f"{job.workers} worker(s) × {per_worker} do not fit the Ray cluster ({have}); use fewer --workers or a "
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


__all__ = ["AMP", "CACHE", "PoolCollate", "TrainJob", "build", "check_resources", "iter_pools", "select_metric", "plot_history", "run_training", "train_fn_per_worker", "validation"]
