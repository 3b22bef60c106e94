"""The one training loop every model uses: plain PyTorch, no Ray.

``train_step`` is the unit the distributed trainer (Ray Train) calls too; ``fit`` runs it
single-process over an in-memory table of session rows, with batches grouped by similar session
length (SDM §4.4: less padding), per-epoch validation and best-epoch selection (the paper reports
"the best results from all the training epochs"; we select the epoch on the validation split and
report the test split, so the test set never picks the model).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import Batch, collate
from seqrec.features import FeatureSpec


@dataclass
class TrainConfig:
    """Optimisation options; the paper's defaults are Adam, lr 0.001, gradient clipping at 5."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    group_pool: int = 32  # batches per pool that is sorted by session length; 1 = no grouping
    patience: int | None = 3  # stop after this many epochs without a better validation metric
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be > 0 (or None for no clipping)")
        if self.group_pool < 1:
            raise ValueError(f"group_pool={self.group_pool} must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 or None")

    def to_dict(self) -> dict:
        return asdict(self)


def length_chunks(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices of one pool cut into batches of similar session length (SDM §4.4).

    The pool is sorted by length (stably) and cut into runs of ``batch_size`` rows; the last
    may be smaller. Every row is in exactly one chunk.
    """
    idx = np.argsort(lengths, kind="stable")
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def grouped_batches(pool: pa.Table, spec: FeatureSpec, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """One pool of rows → batches of similar session length, in random order (SDM §4.4).

    The Ray Train loop cuts the pools it streams from Ray Data with the same
    :func:`length_chunks` (inside its ``collate_fn``) and draws the same random order.
    """
    chunks = length_chunks(pool[F.SEQ_LEN].to_numpy(), batch_size)
    for j in rng.permutation(len(chunks)):
        yield collate(pool.take(chunks[j]), spec)


def length_grouped_batches(
    table: pa.Table, spec: FeatureSpec, batch_size: int, rng: np.random.Generator, pool: int = 32
) -> Iterator[Batch]:
    """Shuffled batches of rows with similar session lengths, from an in-memory table.

    Rows are shuffled, cut into pools of ``pool × batch_size`` rows, and each pool goes through
    :func:`grouped_batches`. Every row appears exactly once per pass.
    """
    n = table.num_rows
    perm = rng.permutation(n)
    step = batch_size * pool
    for start in range(0, n, step):
        yield from grouped_batches(table.take(perm[start : start + step]), spec, batch_size, rng)


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
    loss: float
    targets: int
    seconds: float
    targets_per_s: float
    metrics: dict = field(default_factory=dict)


@dataclass
class FitResult:
    history: list[EpochResult]
    best_epoch: int  # 1-based; the last epoch when there is no validation
    best_metric: float | None

    def to_dict(self) -> dict:
        return {"history": [asdict(h) for h in self.history], "best_epoch": self.best_epoch, "best_metric": self.best_metric}


def fit(
    model: torch.nn.Module,
    train: pa.Table,
    spec: FeatureSpec,
    cfg: TrainConfig,
    validate: Callable[[torch.nn.Module], dict] | None = None,
    select: str | None = None,
    log: Callable[[str], None] | None = print,
    on_epoch: Callable[[EpochResult, torch.nn.Module, torch.optim.Optimizer], None] | None = None,
    resume: str | Path | None = None,
) -> FitResult:
    """Train ``model`` on the session rows ``train``; keep the weights of the best validation epoch.

    ``validate(model) -> {metric: value}`` runs after every epoch; ``select`` names the metric to
    maximise (required with ``validate``). Without validation the last epoch is kept.
    ``on_epoch(result, model, optimizer)`` runs after each epoch's validation (a Tune trial reports
    and checkpoints there). ``resume`` is a seqrec checkpoint directory to continue from: its
    weights, optimizer state and epoch, and the early-stopping state in its ``train_state``
    (``{"best", "stale"}``); the remaining epochs draw a fresh batch order.
    """
    if train.num_rows == 0:
        raise ValueError("the training split has no rows; prepare the dataset with more data or another --split")
    if validate is not None and select is None:
        raise ValueError("fit(validate=...) needs select=<metric name> to pick the best epoch")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    opt = make_optimizer(model, cfg)
    history: list[EpochResult] = []
    best, best_epoch, best_state, stale = None, cfg.epochs, None, 0
    start = 1
    if resume is not None:
        from seqrec.checkpoint import MODEL_FILE, load_optimizer, read_meta

        meta = read_meta(resume)
        model.load_state_dict(torch.load(Path(resume) / MODEL_FILE, map_location=device, weights_only=True)["state_dict"])
        load_optimizer(resume, opt, map_location=device)
        start = meta["epoch"] + 1
        best, stale = meta.get("train_state", {}).get("best"), meta.get("train_state", {}).get("stale", 0)
        best_epoch = meta["epoch"]
    rng = np.random.default_rng(cfg.seed if start == 1 else [cfg.seed, start])
    for epoch in range(start, cfg.epochs + 1):
        t0, losses, n = time.perf_counter(), [], 0
        for batch in length_grouped_batches(train, spec, cfg.batch_size, rng, cfg.group_pool):
            loss, k = train_step(model, batch.to(device), opt, cfg.grad_clip)
            losses.append(loss * k)
            n += k
        dt = time.perf_counter() - t0
        res = EpochResult(epoch, sum(losses) / max(n, 1), n, dt, n / dt if dt > 0 else float("nan"))
        if validate is not None:
            model.eval()
            res.metrics = validate(model)
            value = res.metrics[select]
            if best is None or value > best:
                best, best_epoch, stale = value, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(res)
        if on_epoch is not None:
            on_epoch(res, model, opt)
        if log:
            extra = f" {select} {res.metrics[select]:.4f}" if validate is not None else ""
            log(f"epoch {epoch}/{cfg.epochs} loss {res.loss:.4f} {res.targets_per_s:,.0f} targets/s ({dt:.1f}s){extra}")
        if validate is not None and cfg.patience and stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    elif history:
        best_epoch = history[-1].epoch
    model.eval()
    return FitResult(history, best_epoch, best)
