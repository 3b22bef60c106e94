"""The one training engine: plain PyTorch, no Ray.

:class:`Trainer` owns everything an epoch loop decides: the epochs, the batch order, each step,
validation, the best epoch and patience, resuming, and what a checkpoint holds. Its drivers are thin:

* :func:`seqrec.train.loop.fit`: in this process, over an in-memory table of session rows;
* :func:`seqrec.train.distributed.train_fn_per_worker`: a Ray Train worker, over its Ray Data shard
  (it adds only ``get_dataset_shard``, ``prepare_model``, the report hook and the stop broadcast);
* :func:`seqrec.tuning.run.inprocess_trial`: a Tune trial, which reports and checkpoints each epoch.

The data comes as *pools*: each pool is a list of batches of similar session length (SDM §4.4,
:func:`pool_batches`); the engine trains a pool's batches in a random order. Every epoch draws its
randomness (batch order, shuffle seed, dropout, sampled negatives) from ``(seed, epoch, rank)``
alone, so a resumed run trains its remaining epochs as an uninterrupted one would, and a run in
this process and a one-worker Ray Train run over the same pools give the same losses
(``tests/test_engine.py``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import Batch, collate
from seqrec.checkpoint import MODEL_FILE, load_optimizer, read_meta, save_checkpoint, unwrap
from seqrec.config import TrainConfig
from seqrec.features import FeatureSpec


def length_chunks(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices of one pool cut into batches of similar session length (SDM §4.4).

    The pool is sorted by length (stably) and cut into runs of ``batch_size`` rows; the last
    may be smaller. Every row is in exactly one chunk.
    """
    idx = np.argsort(lengths, kind="stable")
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def pool_batches(pool: pa.Table, spec: FeatureSpec, batch_size: int) -> list[Batch]:
    """One pool of session rows → its batches of similar session length, in length order, each padded
    to its own longest session. The engine draws their order."""
    return [collate(pool.take(c), spec) for c in length_chunks(pool[F.SEQ_LEN].to_numpy(), batch_size)]


def table_pools(table: pa.Table, spec: FeatureSpec, batch_size: int, pool: int, rng: np.random.Generator,
                shuffle: bool = True) -> Iterable[list[Batch]]:
    """One epoch over an in-memory table: rows shuffled (in table order without ``shuffle``), cut into pools of
    ``pool × batch_size`` rows, each cut by :func:`pool_batches`. Every row appears once. Like the Ray Data
    ingest, the epoch draws one shuffle seed from ``rng`` first, then the engine draws each pool's batch order."""
    seed = int(rng.integers(2**31))
    order = np.random.default_rng(seed).permutation(table.num_rows) if shuffle else np.arange(table.num_rows)
    step = batch_size * pool
    for start in range(0, table.num_rows, step):
        yield pool_batches(table.take(order[start : start + step]), spec, batch_size)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(
    model: torch.nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    amp_dtype: torch.dtype | None = None,
    scaler: "torch.amp.GradScaler | None" = None,
) -> tuple[float, int]:
    """One optimisation step on ``batch``; returns (loss, number of targets). ``model`` may be DDP-wrapped.

    ``amp_dtype`` (bfloat16 / float16) runs the forward pass under ``torch.autocast``; float16
    needs a ``scaler`` (``torch.amp.GradScaler``) so small gradients do not underflow.
    """
    model.train()
    device_type = batch.seq_len.device.type
    with torch.autocast(device_type=device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(batch)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(out.loss).backward()
        scaler.unscale_(optimizer)
    else:
        out.loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    loss = float(out.loss.detach())
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss}; lower the learning rate (lr) or check the input data")
    return loss, out.n_targets


@dataclass
class EpochResult:
    epoch: int
    loss: float  # mean training loss per target, over all workers
    targets: int
    seconds: float
    targets_per_s: float
    metrics: dict = field(default_factory=dict)  # validation metrics (rank 0)
    data_wait_s: float = 0.0  # time blocked waiting for the next pool
    first_batch_s: float = 0.0  # the epoch's start-up: until the first pool arrived
    steps: int = 0  # optimisation steps so far (this worker)
    workers: int = 1

    def row(self) -> dict:
        """The flat record a run's history, its reports and its checkpoints keep."""
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "metrics"}, **{k: float(v) for k, v in self.metrics.items()}}


@dataclass
class FitResult:
    history: list[EpochResult]  # the epochs trained by this call
    best_epoch: int  # 1-based; the last epoch when there is no validation
    best_metric: float | None

    def to_dict(self) -> dict:
        return {"history": [asdict(h) for h in self.history], "best_epoch": self.best_epoch, "best_metric": self.best_metric}


class Trainer:
    """The epoch loop, its state, and the checkpoints that carry that state (see the module docstring).

    ``validate(model) -> {metric: value}`` runs after every epoch where it is given (rank 0 of a
    Ray Train run); ``select`` names the metric to maximise. ``rank`` and ``world`` place this
    process in a data-parallel group; ``amp_dtype`` and ``scaler`` turn on mixed precision.
    State: ``epoch`` (the last finished), ``step``, ``history`` (rows), ``best``, ``best_epoch``, ``stale``.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, *, device: str | torch.device = "cpu",
                 validate: Callable[[torch.nn.Module], dict] | None = None, select: str | None = None,
                 rank: int = 0, world: int = 1, amp_dtype: torch.dtype | None = None, scaler=None,
                 log: Callable[[str], None] | None = None, name: str = ""):
        if validate is not None and select is None:
            raise ValueError("a Trainer with validate=... needs select=<metric name> to pick the best epoch")
        self.cfg, self.device = cfg, torch.device(device)
        self.validate, self.select = validate, select
        self.rank, self.world = rank, world
        self.amp_dtype, self.scaler = amp_dtype, scaler
        self.log, self.name = log, name
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.epoch, self.step = 0, 0
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stale = 0

    # --- state and checkpoints -----------------------------------------------------------------

    def restore(self, path: str | Path) -> dict:
        """Continue from a seqrec checkpoint: weights, optimizer, epoch, step, history and the early-stopping
        state. Call before :meth:`wrap`. Returns the checkpoint's meta."""
        meta = read_meta(path)
        payload = torch.load(Path(path) / MODEL_FILE, map_location=self.device, weights_only=True)
        unwrap(self.model).load_state_dict(payload["state_dict"])
        load_optimizer(path, self.optimizer, map_location=self.device)
        state = meta.get("train_state", {})
        self.epoch, self.step, self.history = meta["epoch"], meta.get("step", 0), list(meta.get("history", []))
        self.best, self.stale = state.get("best"), state.get("stale", 0)
        self.best_epoch = state.get("best_epoch", meta["epoch"])
        return meta

    def state(self) -> dict:
        """The early-stopping state a checkpoint carries (``train_state``)."""
        return {"best": self.best, "stale": self.stale, "best_epoch": self.best_epoch}

    def save(self, path: str | Path, *, dataset: dict, job: dict | None = None) -> Path:
        """A checkpoint of the state after the last epoch (:mod:`seqrec.checkpoint`): the model, the optimizer,
        epoch, step, the last validation metrics, the history, the training options and the dataset."""
        last = self.history[-1] if self.history else {}
        metrics = {k: v for k, v in last.items() if k not in EpochResult.__dataclass_fields__}
        return save_checkpoint(path, self.model, self.optimizer, epoch=self.epoch, step=self.step, dataset=dataset,
                               metrics=metrics, history=self.history, train=job, extra={"train_state": self.state()})

    def wrap(self, fn: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Wrap the model for data parallelism (``ray.train.torch.prepare_model``); the optimizer keeps its parameters."""
        self.model = fn(self.model)

    # --- the loop ------------------------------------------------------------------------------

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, epoch, self.rank])

    def fit(self, pools: Callable[[np.random.Generator], Iterable[list[Batch]]], *,
            on_epoch: Callable[[EpochResult, "Trainer"], None] | None = None,
            on_step: Callable[["Trainer"], None] | None = None,
            reduce: Callable[[list[float]], list[float]] | None = None,
            agree: Callable[[bool], bool] | None = None, keep_best: bool = False) -> FitResult:
        """Train from the epoch after :attr:`epoch` to ``cfg.epochs``; ``pools(rng)`` gives one epoch's pools.

        ``reduce`` sums ``[loss × targets, targets]`` over workers; ``agree`` makes every worker take
        rank 0's decision to stop; ``on_epoch(result, trainer)`` runs after validation (logs, reports,
        checkpoints); ``on_step`` after each step. With ``keep_best`` the best validation epoch's weights
        are loaded at the end (a run in one process; Ray Train keeps the best checkpoint instead).
        """
        cfg = self.cfg
        results: list[EpochResult] = []
        best_state = None
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            rng = self.epoch_rng(epoch)
            torch.manual_seed(int(rng.integers(2**62)))  # dropout and sampled negatives, by (seed, epoch, rank)
            t0 = time.perf_counter()
            loss_sum, targets, wait, first = 0.0, 0, 0.0, None
            mark = t0
            for batches in pools(rng):
                wait += time.perf_counter() - mark  # time blocked on the data (read, shuffle, collate)
                first = wait if first is None else first
                for j in rng.permutation(len(batches)):  # a pool's batches, in random order
                    loss, k = train_step(self.model, batches[j].to(self.device), self.optimizer, cfg.grad_clip,
                                         self.amp_dtype, self.scaler)
                    loss_sum, targets, self.step = loss_sum + loss * k, targets + k, self.step + 1
                    if on_step is not None:
                        on_step(self)
                mark = time.perf_counter()
            wait += time.perf_counter() - mark  # the end of the data
            seconds = time.perf_counter() - t0
            if reduce is not None:
                loss_sum, n = reduce([loss_sum, float(targets)])
                targets = int(n)
            res = EpochResult(epoch, loss_sum / max(targets, 1), targets, seconds,
                              targets / seconds if seconds > 0 else float("nan"), data_wait_s=wait,
                              first_batch_s=first or 0.0, steps=self.step, workers=self.world)
            if self.validate is not None:
                model = unwrap(self.model)
                model.eval()
                res.metrics = {k: float(v) for k, v in self.validate(model).items()}
                value = res.metrics[self.select]
                if self.best is None or value > self.best:
                    self.best, self.best_epoch, self.stale = value, epoch, 0
                    if keep_best:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    self.stale += 1
            self.epoch = epoch
            self.history.append(res.row())
            results.append(res)
            if self.log is not None:
                self.log(self.describe(res))
            if on_epoch is not None:
                on_epoch(res, self)
            stop = self.validate is not None and bool(cfg.patience) and self.stale >= cfg.patience
            if agree is not None:
                stop = agree(stop)
            if stop:
                break
        if best_state is not None:
            unwrap(self.model).load_state_dict(best_state)
        if self.validate is None or self.best_epoch is None:
            self.best_epoch = self.epoch
        unwrap(self.model).eval()
        return FitResult(results, self.best_epoch, self.best)

    def describe(self, res: EpochResult) -> str:
        """The one log line of an epoch."""
        extra = f" {self.select} {res.metrics[self.select]:.4f}" if self.select in res.metrics else ""
        where = f"{self.world} worker(s), " if self.world > 1 or self.name else ""
        return (f"{self.name + ' ' if self.name else ''}epoch {res.epoch}/{self.cfg.epochs} loss {res.loss:.4f} "
                f"{res.targets_per_s:,.0f} targets/s ({where}{res.seconds:.1f}s, {res.data_wait_s:.1f}s waiting for data){extra}")


__all__ = ["EpochResult", "FitResult", "Trainer", "length_chunks", "make_optimizer", "pool_batches", "table_pools", "train_step"]
