"""The one training engine: its drivers (this process, a Ray Train worker) train the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import TrainConfig, TrainJob
from seqrec.data.prepare import read_split
from seqrec.train.engine import Trainer, table_pools
from seqrec.train.factory import build
from seqrec.train.loop import fit

TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2, "heads": 2}


def test_a_local_run_and_a_one_worker_ray_run_give_the_same_losses(ray_cluster, tiny_prepared, tmp_path):
    """Same seed, batch, pools (no row shuffle: pools in file order) and per-epoch randomness: the Ray Train
    driver and the in-process driver run the same engine, so their loss histories agree to rounding."""
    from seqrec.train.distributed import run_training

    job = TrainJob.from_dict({"model": "sdm:PSDMMAL", "data": str(tiny_prepared), "options": TINY, "epochs": 3,
                              "batch_size": 32, "group_pool": 4, "patience": None, "seed": 3, "workers": 1,
                              "cpus_per_worker": 1.0, "shuffle_buffer_rows": 0, "storage": str(tmp_path / "runs"),
                              "name": "parity"})
    ray_losses = [h["loss"] for h in run_training(job, log=None)["history"]]
    model, spec, _ = build(job.model, job.data, job.options, seed=job.train.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (1 CPU): the same order of floating-point sums
    try:
        res = fit(model, read_split(tiny_prepared, "train"), spec, job.train, log=None, shuffle=False)
    finally:
        torch.set_num_threads(threads)
    local_losses = [h.loss for h in res.history]
    assert len(ray_losses) == len(local_losses) == 3
    assert local_losses == pytest.approx(ray_losses, rel=1e-5), (local_losses, ray_losses)
    assert local_losses[-1] < local_losses[0]


def _trainer(tiny_prepared, cfg, validate=None):
    model, spec, _ = build("gru4rec", tiny_prepared, {"hidden": 8}, seed=cfg.seed)
    return Trainer(model, cfg, validate=validate, select="m" if validate else None), spec


def test_a_resumed_run_trains_its_remaining_epochs_as_an_uninterrupted_one(tiny_prepared, tmp_path):
    """Every epoch's randomness comes from (seed, epoch, rank): stopping after epoch 1 and resuming from its
    checkpoint gives the uninterrupted run's weights and history."""
    train = read_split(tiny_prepared, "train")
    cfg = TrainConfig(epochs=3, batch_size=64, seed=1, patience=None)

    def pools(spec):
        return lambda rng: table_pools(train, spec, cfg.batch_size, cfg.group_pool, rng)

    full, spec = _trainer(tiny_prepared, cfg)
    full.fit(pools(spec))
    first, _ = _trainer(tiny_prepared, TrainConfig(**{**cfg.to_dict(), "epochs": 1}))
    first.fit(pools(spec))
    first.save(tmp_path / "ck", dataset={})
    rest, _ = _trainer(tiny_prepared, cfg)
    rest.restore(tmp_path / "ck")
    assert (rest.epoch, rest.step) == (1, first.step)
    rest.fit(pools(spec))
    assert [h["loss"] for h in rest.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, rest.model.state_dict()[k], atol=1e-6), k


def test_patience_stops_and_the_best_epoch_is_kept(tiny_prepared):
    """A metric that peaks at epoch 2 and then falls: with patience 2 the run stops after epoch 4, and the
    checkpointed state names epoch 2 as the best."""
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    cfg = TrainConfig(epochs=6, batch_size=64, patience=2)
    trainer, spec = _trainer(tiny_prepared, cfg, validate=lambda m: {"m": next(scores)})
    train = read_split(tiny_prepared, "train")
    res = trainer.fit(lambda rng: table_pools(train, spec, cfg.batch_size, cfg.group_pool, rng))
    assert [h.epoch for h in res.history] == [1, 2, 3, 4]
    assert (res.best_epoch, res.best_metric) == (2, 0.5)
    assert trainer.state() == {"best": 0.5, "stale": 2, "best_epoch": 2}


def test_a_trainer_that_validates_needs_a_metric_to_select(tiny_prepared):
    model, _, _ = build("gru4rec", tiny_prepared, {"hidden": 8})
    with pytest.raises(ValueError, match="needs select=<metric name>"):
        Trainer(model, TrainConfig(), validate=lambda m: {})


def test_every_epoch_draws_from_its_own_seed():
    t = Trainer(torch.nn.Linear(2, 2), TrainConfig(seed=4))
    a, b = (t.epoch_rng(2).integers(1 << 30, size=4),
            Trainer(torch.nn.Linear(2, 2), TrainConfig(seed=4)).epoch_rng(2).integers(1 << 30, size=4))
    assert np.array_equal(a, b) and not np.array_equal(a, t.epoch_rng(3).integers(1 << 30, size=4))
