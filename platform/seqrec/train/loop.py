"""Training in this process: the engine (:class:`seqrec.train.engine.Trainer`) over an in-memory table.

``fit`` trains on a table of session rows with batches grouped by similar session length (SDM
§4.4: less padding), validates after every epoch and keeps the best epoch's weights (the paper
reports "the best results from all the training epochs"; we select the epoch on the validation
split and report the test split, so the test set never picks the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from seqrec.batch import Batch
from seqrec.config import TrainConfig
from seqrec.features import FeatureSpec
from seqrec.train.engine import EpochResult, FitResult, Trainer, pool_batches, table_pools


def length_grouped_batches(
    table: pa.Table, spec: FeatureSpec, batch_size: int, rng: np.random.Generator, pool: int = 32
) -> Iterator[Batch]:
    """Shuffled batches of rows with similar session lengths, in the order the engine trains them.

    Rows are shuffled, cut into pools of ``pool × batch_size`` rows, each pool into batches of
    similar length (:func:`seqrec.train.engine.pool_batches`) in a random order. Every row appears
    exactly once per pass.
    """
    for batches in table_pools(table, spec, batch_size, pool, rng):
        for j in rng.permutation(len(batches)):
            yield batches[j]


def grouped_batches(pool: pa.Table, spec: FeatureSpec, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """One pool of rows (kept in its order) → batches of similar session length, in random order (SDM §4.4)."""
    batches = pool_batches(pool, spec, batch_size)
    for j in rng.permutation(len(batches)):
        yield batches[j]


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
    device: str = "cpu",
    shuffle: bool = True,
) -> FitResult:
    """Train ``model`` on the session rows ``train``; keep the weights of the best validation epoch.

    ``validate(model) -> {metric: value}`` runs after every epoch; ``select`` names the metric to
    maximise (required with ``validate``). Without validation the last epoch is kept.
    ``on_epoch(result, model, optimizer)`` runs after each epoch's validation. ``resume`` is a
    seqrec checkpoint directory to continue from (:meth:`Trainer.restore`). ``shuffle=False``
    keeps the table's row order in the pools (as a Ray Train run with ``shuffle_buffer_rows=0``).
    """
    if train.num_rows == 0:
        raise ValueError("the training split has no rows; prepare the dataset with more data or another --split")
    trainer = Trainer(model, cfg, device=device, validate=validate, select=select, log=log)
    if resume is not None:
        trainer.restore(resume)
    hook = None if on_epoch is None else (lambda res, t: on_epoch(res, t.model, t.optimizer))
    return trainer.fit(lambda rng: table_pools(train, spec, cfg.batch_size, cfg.group_pool, rng, shuffle),
                       on_epoch=hook, keep_best=True)


__all__ = ["fit", "grouped_batches", "length_grouped_batches"]
