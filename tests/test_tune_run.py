"""In-process Tune trials (workers=0): one report per epoch, and ASHA stops the bad trials early."""

from __future__ import annotations

import pytest
from ray import tune

from seqrec.train.distributed import TrainJob
from seqrec.tuning.run import run_search, trial_job


def base(data, **kw) -> TrainJob:
    return TrainJob(**{"model": "sdm:PSDMMAL", "data": str(data), "options": {"hidden": 8, "heads": 2, "id_dim": 4,
                       "side_dim": 2, "profile_dim": 2}, "epochs": 3, "batch_size": 64, "workers": 0, "patience": None, **kw})


def test_trial_values_override_the_base_job(tiny_prepared):
    job = trial_job({"__job": base(tiny_prepared).to_dict(), "heads,hidden": (4, 16), "lr": 0.01, "fusion": "add"})
    assert (job.lr, job.epochs) == (0.01, 3)
    assert job.options == {"hidden": 16, "heads": 4, "id_dim": 4, "side_dim": 2, "profile_dim": 2, "fusion": "add"}


def test_asha_stops_the_trials_that_do_not_learn(ray_cluster, tiny_prepared, tmp_path):
    """Trials run one at a time (good, good, bad, bad): the bad ones fall below the good ones' epoch-1 metric
    and ASHA stops them there; the first good one trains all 3 epochs (the second meets its rung-2 cutoff)."""
    space = {"lr": tune.grid_search([3e-3, 3e-3, 1e-9, 1e-9])}
    grid = run_search(base(tiny_prepared), space, storage=tmp_path, name="asha", max_concurrent=1)
    assert not grid.errors and len(grid) == 4
    df = grid.get_dataframe()
    epochs = dict(zip(df["trial_id"], df["epoch"]))
    lrs = dict(zip(df["trial_id"], df["config/lr"]))
    good = [t for t in epochs if lrs[t] > 1e-6]
    bad = [t for t in epochs if lrs[t] < 1e-6]
    assert max(epochs[t] for t in good) == 3 and [epochs[t] for t in bad] == [1, 1], (epochs, lrs)
    best = grid.get_best_result()
    assert best.config["lr"] == pytest.approx(3e-3) and best.checkpoint is not None
    with best.checkpoint.as_directory() as d:
        from seqrec.checkpoint import load_checkpoint

        model, meta = load_checkpoint(f"{d}/checkpoint")
        assert meta["epoch"] in (1, 2, 3) and model.config.hidden == 8


def test_a_search_rejects_an_invalid_space_before_any_trial(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="hidden=9 must be divisible by heads=2"):
        run_search(base(tiny_prepared), {"hidden": tune.choice([8, 9])}, storage=tmp_path, name="bad")
    assert not (tmp_path / "bad").exists()
