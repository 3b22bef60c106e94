"""In-process Tune trials (workers=0): one report per epoch, and ASHA stops the bad trials early."""

from __future__ import annotations

import pytest
from ray import tune

from seqrec.config import TrainJob
from seqrec.tuning.run import run_search, trial_job


def base(data, **kw) -> TrainJob:
    return TrainJob.from_dict({"model": "sdm:PSDMMAL", "data": str(data), "options": {"hidden": 8, "heads": 2, "id_dim": 4,
                       "side_dim": 2, "profile_dim": 2}, "epochs": 3, "batch_size": 64, "workers": 0, "patience": None, **kw})


def test_trial_values_override_the_base_job(tiny_prepared):
    job = trial_job({"__job": base(tiny_prepared).to_dict(), "heads,hidden": (4, 16), "lr": 0.01, "fusion": "add"})
    assert (job.train.lr, job.train.epochs) == (0.01, 3)
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


TINY = ["--option", "id_dim=4", "--option", "side_dim=2", "--option", "profile_dim=2", "--batch-size", "64"]


def test_a_tiny_search_from_the_cli_writes_the_table_the_yaml_and_the_plot_and_the_yaml_trains(ray_cluster, tiny_prepared, tmp_path):
    import json

    import pandas as pd

    from seqrec.checkpoint import load_checkpoint
    from seqrec.cli import main

    code = main(["tune", "sdm:PSDMMAL", "--data", str(tiny_prepared), "--space", "small", "--samples", "4", "--epochs", "2",
                 "--set", "heads,hidden=1:8,2:8", "--storage", str(tmp_path), "--name", "tiny", "--max-concurrent", "2", *TINY])
    assert code == 0
    exp = tmp_path / "tiny"
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 4 and set(df["status"]) <= {"done", "stopped early"}
    assert list(df["Recall@50"]) == sorted(df["Recall@50"], reverse=True)  # best first
    assert set(df["config/hidden"]) == {8} and set(df["config/heads"]) <= {1, 2}
    md = (exp / "trials.md").read_text().splitlines()
    assert md[0].startswith("| # | heads | hidden | fusion | Recall@50") and len(md) == 2 + 4
    assert (exp / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((exp / "search.json").read_text())
    best = summary["best"]
    assert best["Recall@50"] == pytest.approx(df["Recall@50"].iloc[0])
    model, meta = load_checkpoint(f"{best['checkpoint']}/checkpoint")  # the best trial's best epoch
    assert (model.config.heads, model.config.hidden, model.config.fusion) == (best["config"]["heads"], 8, best["config"]["fusion"])
    assert meta["epoch"] == best["epoch"] and meta["metrics"]["Recall@50"] == pytest.approx(best["Recall@50"])
    job = TrainJob.from_yaml(exp / "best.yaml")
    assert job.options == {"id_dim": 4, "side_dim": 2, "profile_dim": 2, **best["config"]} and job.train.epochs == 2
    # the YAML trains
    assert main(["train", "--config", str(exp / "best.yaml"), "--epochs", "1", "--storage", str(tmp_path / "runs")]) == 0
    run = json.loads((tmp_path / "runs" / "sdm-PSDMMAL-prep" / "run.json").read_text())
    assert run["job"]["options"]["heads"] == best["config"]["heads"] and (tmp_path / "runs" / "sdm-PSDMMAL-prep" / "export").is_dir()
    # the same name again is refused, not mixed into the finished search
    with pytest.raises(FileExistsError, match="--resume"):
        run_search(base(tiny_prepared), {"fusion": "add"}, storage=tmp_path, name="tiny")


def test_optuna_draws_joint_dimensions_as_strings(ray_cluster, tiny_prepared, tmp_path):
    pytest.importorskip("optuna")  # the test extra installs it
    from seqrec.tuning.run import search_space
    from seqrec.tuning.space import joint
    from tune_spaces.sdm import divisible

    space = {**joint(divisible, heads=(1, 2), hidden=(8,)), "fusion": tune.choice(["add", "gated"])}
    assert search_space(space, "optuna")["heads,hidden"].categories == ["1,8", "2,8"]
    with pytest.raises(ValueError, match="grid dimension 'seed'"):
        search_space({"seed": tune.grid_search([0, 1])}, "optuna")
    grid = run_search(base(tiny_prepared, epochs=1), space, samples=2, search="optuna", storage=tmp_path, name="optuna",
                      max_concurrent=2, log=None)
    assert not grid.errors and len(grid) == 2
    for r in grid:
        assert trial_job(r.config).options["heads"] in (1, 2) and trial_job(r.config).options["hidden"] == 8


def test_trials_that_cannot_fit_the_cluster_are_refused_with_the_numbers():
    from seqrec.tuning.run import concurrency

    assert concurrency(base("x", workers=0, cpus_per_worker=1.0), {"CPU": 2.0}) == 2
    assert concurrency(base("x", workers=1, cpus_per_worker=0.5), {"CPU": 2.0}) == 1  # 0.25 + 0.5, 1 CPU kept for data
    assert concurrency(base("x", workers=2, cpus_per_worker=0.5), {"CPU": 8.0}) == 5
    with pytest.raises(ValueError, match=r"one trial needs 2.25 CPU \+ 1 CPU kept for Ray Data; the Ray cluster has 2 CPU"):
        concurrency(base("x", workers=2, cpus_per_worker=1.0), {"CPU": 2.0})
    with pytest.raises(ValueError, match="1 GPU"):
        concurrency(base("x", workers=0, gpu=True), {"CPU": 2.0})


def test_asha_over_train_trials_needs_the_dashboard(ray_cluster, tiny_prepared, tmp_path, monkeypatch):
    import seqrec.tuning.run as run

    monkeypatch.setattr(run, "_has_dashboard", lambda: False)
    with pytest.raises(ValueError, match="State API.*--scheduler fifo"):
        run.run_search(base(tiny_prepared, workers=1, cpus_per_worker=0.5), {"fusion": "add"}, storage=tmp_path, name="nodash")


@pytest.mark.slow
def test_asha_stops_a_ray_train_trial_early_and_frees_its_workers(ray_cluster, tiny_prepared, tmp_path):
    """W = 1: each trial is a TorchTrainer run whose per-epoch reports reach Tune through TuneReportCallback."""
    import time

    from ray.util import placement_group_table

    from seqrec.tuning.run import trial_rows

    space = {"lr": tune.grid_search([3e-3, 1e-9])}
    grid = run_search(base(tiny_prepared, workers=1, cpus_per_worker=0.5), space, storage=tmp_path, name="train",
                      max_concurrent=1, log=None)
    assert not grid.errors and len(grid) == 2
    rows = {r["config/lr"]: r for r in trial_rows(grid, "Recall@50")}
    assert rows[3e-3]["epochs"] == 3 and rows[1e-9]["epochs"] == 1, rows  # ASHA stopped the one that does not learn
    ck = rows[3e-3]["checkpoint"]  # the Ray Train run's own best checkpoint, under the search directory
    assert ck.startswith(str(tmp_path / "train" / "train" / "trial-")) and "checkpoint_epoch-" in ck
    from seqrec.checkpoint import load_checkpoint

    _, meta = load_checkpoint(ck)
    assert meta["metrics"]["Recall@50"] == pytest.approx(rows[3e-3]["Recall@50"])
    deadline = time.time() + 60  # Ray Train's cleaner frees the stopped run's placement group
    while time.time() < deadline and any(pg["state"] == "CREATED" for pg in placement_group_table().values()):
        time.sleep(1)
    assert not [pg for pg in placement_group_table().values() if pg["state"] == "CREATED"]


@pytest.mark.slow
def test_an_interrupted_search_resumes_where_it_stopped(tiny_prepared, tmp_path):
    """SIGINT to `seqrec tune` after the first trial; `--resume` trains the rest and not the first again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    args = [sys.executable, "-m", "seqrec.cli", "tune", "sdm:PSDMMAL", "--data", str(tiny_prepared), "--space", "small",
            "--set", "heads,hidden=1:8,2:8", "--set", "fusion=add,gated,concat", "--samples", "3", "--epochs", "3",
            "--scheduler", "fifo", "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "resume", *TINY]
    env = os.environ | {"RAY_ADDRESS": "local"}  # its own cluster
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "resume"
    deadline = time.time() + 300
    first = None
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in exp.glob("inprocess_trial_*/result.json") if len(p.read_text().splitlines()) == 3]
        if done:
            first = done[0]
            break
        time.sleep(0.5)
    assert first is not None, proc.communicate()[0][-3000:] if proc.poll() is not None else "no trial finished in time"
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert "continue it with: seqrec tune --resume" in out, out[-3000:]
    before = first.read_text()
    resumed = subprocess.run([sys.executable, "-m", "seqrec.cli", "tune", "--resume", "--name", "resume", "--storage",
                              str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    df = pd.read_csv(exp / "trials.csv")
    assert len(df) == 3 and set(df["status"]) == {"done"} and set(df["epochs"]) == {3}, df
    assert first.read_text() == before  # the finished trial was not trained again


def test_fit_resumes_from_a_trial_checkpoint(tiny_prepared, tmp_path):
    """What a resumed in-process trial does: the weights, optimizer and epoch of its last checkpoint, then the rest."""
    import torch

    from seqrec.checkpoint import save_checkpoint
    from seqrec.data.prepare import read_split
    from seqrec.train.factory import build
    from seqrec.train.loop import fit

    job = base(tiny_prepared, epochs=1)
    model, spec, _ = build(job.model, job.data, job.options)
    train = read_split(job.data, "train")
    saved = {}

    def keep(res, m, opt):
        save_checkpoint(tmp_path / "ck", m, opt, epoch=res.epoch, step=0, dataset={},
                        extra={"train_state": {"best": 0.5, "stale": 1}})
        saved["weights"] = {k: v.clone() for k, v in m.state_dict().items()}

    fit(model, train, spec, job.train, log=None, on_epoch=keep)
    fresh, _, _ = build(job.model, job.data, job.options)
    seen = []

    def record(res, m, opt):
        seen.append(res.epoch)

    import dataclasses

    cfg = dataclasses.replace(job.train, epochs=3)
    out = fit(fresh, train, spec, cfg, log=None, on_epoch=record, resume=tmp_path / "ck")
    assert seen == [2, 3] and [h.epoch for h in out.history] == [2, 3]
    untouched, _, _ = build(job.model, job.data, job.options)
    resumed_only, _, _ = build(job.model, job.data, job.options)
    fit(resumed_only, train, spec, dataclasses.replace(cfg, epochs=1), log=None, resume=tmp_path / "ck")  # nothing left to train
    assert all(torch.equal(resumed_only.state_dict()[k], saved["weights"][k]) for k in saved["weights"])
    assert not all(torch.equal(untouched.state_dict()[k], saved["weights"][k]) for k in saved["weights"])


def test_a_grid_over_seeds_gets_a_table_by_value_and_a_plot(tmp_path):
    import pandas as pd

    from seqrec.tuning.run import markdown_by_value, plot_search

    df = pd.DataFrame({"config/heads": [1, 1, 4, 4, 8, 8], "config/seed": [0, 1, 0, 1, 0, 1],
                       "Recall@50": [0.20, 0.22, 0.30, 0.26, 0.25, float("nan")]})
    md = markdown_by_value(df, "Recall@50").splitlines()
    assert md[3:] == ["| heads | Recall@50 | seeds |", "|---|---|---|", "| 4 | 0.2800 ± 0.0283 | 2 |",
                      "| 8 | 0.2500 ± 0.0000 | 1 |", "| 1 | 0.2100 ± 0.0141 | 2 |"]
    assert markdown_by_value(df.drop(columns="config/seed"), "Recall@50") == ""
    assert plot_search(df, "Recall@50", tmp_path / "p.png", family="sdm") == tmp_path / "p.png"
    assert plot_search(df[["config/seed", "Recall@50"]], "Recall@50", tmp_path / "q.png") is None  # nothing but seeds varies
