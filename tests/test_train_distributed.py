"""Ray Train: DDP equivalence, a killed worker, a stopped and re-run job, exports (real worker processes)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from seqrec.checkpoint import load_checkpoint, read_meta
from seqrec.config import TrainJob
from seqrec.train.distributed import run_training

TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2, "heads": 2}


@pytest.fixture(autouse=True)
def _fast_health_checks(monkeypatch):
    # the Ray Train controller notices a dead worker at the next health check (default every 2 s)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def job(data, tmp_path, **kw) -> TrainJob:
    base = dict(model="sdm:PSDMMAL", data=str(data), options=TINY, epochs=2, batch_size=32, group_pool=4, workers=1,
                cpus_per_worker=0.5, storage=str(tmp_path / "runs"), shuffle_buffer_rows=0, patience=None, status_every=1)
    return TrainJob.from_dict({**base, **kw})


@pytest.mark.slow  # several TorchTrainer.fit runs (~30 s each on 2 idle cores)
def test_two_workers_follow_the_one_worker_loss_curve(ray_cluster, tiny_prepared, tmp_path):
    """Same global batch (32: 2 × 16 vs 1 × 32) and seed: DDP averages the two halves' gradients."""
    one = run_training(job(tiny_prepared, tmp_path, name="w1", workers=1, batch_size=32, epochs=3), log=None)
    # and the 2-worker run streams its split from the files each epoch instead of caching it
    two = run_training(job(tiny_prepared, tmp_path, name="w2", workers=2, batch_size=32, epochs=3, cache="off"), log=None)
    assert one["cached"] and not two["cached"]
    l1 = [h["loss"] for h in one["history"]]
    l2 = [h["loss"] for h in two["history"]]
    assert len(l1) == len(l2) == 3 and l1[-1] < l1[0] and l2[-1] < l2[0]
    for a, b in zip(l1, l2):
        assert b == pytest.approx(a, rel=0.05), (l1, l2)
    assert two["history"][0]["workers"] == 2
    # the same number of training targets per epoch (every row seen once, split between the workers)
    assert abs(one["history"][0]["targets"] - two["history"][0]["targets"]) <= 0.02 * one["history"][0]["targets"]


@pytest.mark.slow  # several TorchTrainer.fit runs (~30 s each on 2 idle cores)
def test_outputs_of_a_run(ray_cluster, tiny_prepared, tmp_path):
    from seqrec.cli import main

    s = run_training(job(tiny_prepared, tmp_path, name="out", epochs=2), log=None)
    run = Path(s["run_dir"])
    assert sorted(p.name for p in run.glob("checkpoint_epoch-*")) == ["checkpoint_epoch-0001", "checkpoint_epoch-0002"]
    model, meta = load_checkpoint(s["best_checkpoint"], vocab_hash=json.loads((tiny_prepared / "manifest.json").read_text())["vocab_hash"])
    assert meta["epoch"] in (1, 2) and (Path(s["best_checkpoint"]) / "optimizer.pt").exists()
    saved = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2] and "Recall@50" in saved["history"][0]
    assert saved["history"][0]["data_wait_s"] >= 0 and saved["cached"]  # a tiny split is kept in the object store
    export = run / "export"
    assert json.loads((export / "export.json").read_text())["kind"] == "matcher"
    vecs = __import__("numpy").load(export / "item_embeddings.npy")
    assert vecs.shape == tuple(model.item_embeddings().shape)
    assert (run / "training_curve.png").stat().st_size > 5000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert main(["index", "build", "--run", str(run), "--kind", "flat"]) == 0
    assert (export / "index" / "items.faiss").exists()


def _kill_when(status: Path, rank: int, epoch: int, killed: list, sig=signal.SIGKILL, timeout=300) -> threading.Thread:
    """Kill worker ``rank``'s process once it reports a step inside ``epoch`` (its status file) and Ray Train has
    registered the previous epoch's checkpoint (a checkpoint counts once the controller lists it in
    ``checkpoint_manager_snapshot.json``; a crash before that resumes from the one before)."""

    def registered() -> bool:
        try:
            return f"checkpoint_epoch-{epoch - 1:04d}" in (status.parent / "checkpoint_manager_snapshot.json").read_text()
        except OSError:
            return False

    def watch():
        end = time.time() + timeout
        f = status / f"worker-{rank}.json"
        while time.time() < end:
            try:
                s = json.loads(f.read_text())
            except (OSError, ValueError):
                s = None
            if s and s["epoch"] == epoch and registered():
                os.kill(s["pid"], sig)
                killed.append(s)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # several TorchTrainer.fit runs (~30 s each on 2 idle cores)
def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_cluster, tiny_prepared, tmp_path):
    j = job(tiny_prepared, tmp_path, name="ft", workers=2, batch_size=32, epochs=3, max_failures=2, cache="off")
    killed: list = []
    watcher = _kill_when(tmp_path / "runs" / "ft" / "status", rank=1, epoch=2, killed=killed)
    s = run_training(j, log=None)
    watcher.join(timeout=1)
    assert killed, "the worker was never seen in epoch 2"
    hist = s["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    per_epoch = hist[0]["steps"]
    assert hist[-1]["steps"] == 3 * per_epoch  # epoch 2 restarted from the epoch-1 checkpoint, not counted twice
    for ck in sorted((tmp_path / "runs" / "ft").glob("checkpoint_epoch-*")):
        model, meta = load_checkpoint(ck)  # every kept checkpoint loads
        assert meta["step"] == meta["epoch"] * per_epoch
    assert json.loads((tmp_path / "runs" / "ft" / "status" / "worker-1.json").read_text())["pid"] != killed[0]["pid"]


@pytest.mark.slow  # several TorchTrainer.fit runs (~30 s each on 2 idle cores)
def test_a_stopped_run_continues_when_run_again(ray_cluster, tiny_prepared, tmp_path):
    import ray.train

    j = job(tiny_prepared, tmp_path, name="again", workers=1, epochs=3, max_failures=0, keep_checkpoints=3)
    killed: list = []
    watcher = _kill_when(tmp_path / "runs" / "again" / "status", rank=0, epoch=2, killed=killed)
    with pytest.raises(ray.train.TrainingFailedError):
        run_training(j, log=None)  # no restarts allowed: the run stops
    watcher.join(timeout=1)
    first = read_meta(tmp_path / "runs" / "again" / "checkpoint_epoch-0001")
    s = run_training(j, log=None)  # the same name and storage: resume
    assert [h["epoch"] for h in s["history"]] == [1, 2, 3]
    assert s["history"][0] == first["history"][0]  # epoch 1 was not trained again
    assert read_meta(tmp_path / "runs" / "again" / "checkpoint_epoch-0001")["created"] == first["created"]


def test_a_worker_group_larger_than_the_cluster_fails_at_once(ray_cluster, tiny_prepared, tmp_path):
    """Ray Train would wait for the placement group forever; seqrec names the shortfall instead."""
    with pytest.raises(ValueError, match=r"CPU 6 needed, 2 in the cluster.*--wait-for-resources"):
        run_training(job(tiny_prepared, tmp_path, name="big", workers=3, batch_size=30, cpus_per_worker=2.0), log=None)
    with pytest.raises(ValueError, match=r"GPU 1 needed, 0 in the cluster"):
        run_training(job(tiny_prepared, tmp_path, name="gpu", gpu=True), log=None)
    assert not (tmp_path / "runs" / "big").exists()


@pytest.mark.slow  # two TorchTrainer.fit runs
def test_evaluate_trains_each_model_through_ray_train(ray_cluster, tiny_prepared, tmp_path):
    """`seqrec evaluate --trainer ray`: each model is a Ray Train run, and the model tested is its best checkpoint."""
    from seqrec.cli import main
    from seqrec.data.prepare import load_manifest, read_split
    from seqrec.evaluate import evaluate_matcher, protocol_of
    from seqrec.features import FeatureSpec

    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(tiny_prepared), "--models", "sdm:PSDMMAL@hidden=8,heads=2", "bst@mlp=16-8,heads=2",
                 "--pipeline", "--seeds", "1", "--epochs", "2", "--rank-epochs", "1", "--batch-size", "32",
                 "--trainer", "ray", "--workers", "2", "--cpus-per-worker", "0.5", "--out", str(out), "--no-plots", "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["trainer"] == "ray" and report["scaling"]["workers"] == 2
    sdm, bst = report["runs"]
    for run in (sdm, bst):
        run_dir = Path(run["run_dir"])
        assert run_dir.parent == out / "train" and (run_dir / "export" / "export.json").exists()
        assert run["history"][0]["workers"] == 2 and run["history"][0]["targets"] > 0
    assert [h["epoch"] for h in sdm["history"]] == [1, 2] and [h["epoch"] for h in bst["history"]] == [1]
    assert 0.0 <= bst["test"]["AUC"] <= 1.0 and "two_stage" in report
    # the matcher that was tested is the run's best checkpoint
    manifest = load_manifest(tiny_prepared)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    best = json.loads((Path(sdm["run_dir"]) / "run.json").read_text())["best_checkpoint"]
    model, meta = load_checkpoint(best)
    assert meta["epoch"] == sdm["best_epoch"]
    again = evaluate_matcher(model, read_split(tiny_prepared, "test"), spec, protocol_of(manifest))
    assert again["HitRate@50"] == pytest.approx(sdm["test"]["HitRate@50"])


def test_training_jobs_validate_their_options(tiny_prepared, tmp_path):
    with pytest.raises(ValueError, match="cache='yes'"):
        TrainJob.from_dict({"model": "bst", "data": str(tiny_prepared), "cache": "yes"})
    with pytest.raises(ValueError, match="amp='bf16' needs --gpu"):
        TrainJob.from_dict({"model": "bst", "data": str(tiny_prepared), "amp": "bf16"})
    with pytest.raises(ValueError, match="unknown training options \\['epoch'\\]"):
        TrainJob.from_dict({"model": "bst", "data": "x", "epoch": 3})
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: bst\ndata: %s\nepochs: 4\noptions: {mlp: 16-8}\n" % tiny_prepared)
    j = TrainJob.from_yaml(cfg, epochs=None, workers=2, options={"heads": 4})
    assert (j.model, j.train.epochs, j.scaling.workers, j.options) == ("bst", 4, 2, {"mlp": "16-8", "heads": 4})


def test_experiments_on_ray_train_check_their_options_before_training(tiny_prepared, tmp_path):
    from seqrec.config import ExperimentSpec, ScalingConfig, TrainConfig
    from seqrec.experiment import expand_models, run_experiment

    entries = expand_models(["sdm:PSDMMAL@hidden=8", "bst@mlp=16-8"])
    cfg = TrainConfig(epochs=1, batch_size=32)

    def spec(**kw):
        return ExperimentSpec(**{"data": str(tiny_prepared), "models": entries, "seeds": [0], "match": cfg, "rank": cfg,
                                 "out": str(tmp_path), **kw})

    with pytest.raises(ValueError, match="batch size 32 does not split evenly over 3 workers"):
        run_experiment(spec(trainer="ray", scaling=ScalingConfig(workers=3)), log=None)
    with pytest.raises(ValueError, match="needs an output directory"):
        run_experiment(spec(out=None, trainer="ray"), log=None)
    with pytest.raises(ValueError, match="trainer='spark'"):
        run_experiment(spec(trainer="spark"), log=None)
    with pytest.raises(ValueError, match="hard_negatives draws negatives"):
        run_experiment(spec(models=expand_models(["sdm:PSDMMAL", "bst@hard_negatives=1"]), trainer="ray"), log=None)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
