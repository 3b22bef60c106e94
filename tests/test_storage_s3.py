"""Storage URIs (seqrec.storage) against a real S3-compatible server: moto's standalone server over HTTP on
127.0.0.1, started by the ``s3_server`` fixture. Data, runs, exports, indexes and searches live on ``s3://``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from seqrec import storage
from seqrec.cli import main

TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2, "heads": 2}


def listing(uri: str) -> set[str]:
    """Names directly under ``uri``."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    return {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}


def test_paths_files_and_local_copies_on_s3(s3_server, tmp_path):
    root = s3_server.uri("ops")
    a = storage.join(root, "a")
    assert storage.join(root, "a", "b.txt") == s3_server.uri("ops", "a", "b.txt")  # the query stays last
    assert storage.basename(a) == "a" and storage.absolute(a) == a and storage.is_uri(a)
    # a local path: what the code did before it took URIs
    assert storage.join("runs", "x") == str(Path("runs", "x")) and storage.local_copy(tmp_path) == tmp_path
    assert storage.absolute("runs") == str(Path("runs").resolve()) and not storage.is_uri("runs")

    storage.write_text(storage.join(a, "b.txt"), "hello")
    storage.write_text(storage.join(a, "c", "d.txt"), "deep")
    assert storage.read_text(storage.join(a, "b.txt")) == "hello" and storage.files(a) == [("b.txt", 5)]
    assert storage.is_empty(storage.join(root, "none")) and not storage.is_empty(a) and storage.files(storage.join(root, "none")) == []
    fs, path = storage.resolve(a)
    assert path == f"{s3_server.BUCKET}/ops/a" and storage.uri_of(path, root) == a

    def files(d: Path) -> list[str]:
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != storage.MARKER)

    copy = storage.local_copy(a)
    assert files(copy) == ["b.txt", "c/d.txt"] and (copy / "b.txt").read_text() == "hello"
    inode = (copy / "b.txt").stat().st_ino
    assert storage.local_copy(a) == copy and (copy / "b.txt").stat().st_ino == inode  # unchanged: not fetched again
    storage.write_text(storage.join(a, "b.txt"), "changed!")
    assert (storage.local_copy(a) / "b.txt").read_text() == "changed!"  # the listing changed: copied again
    assert files(storage.local_copy(a, only=["c"])) == ["c/d.txt"]
    assert storage.local_copy(storage.join(a, "b.txt")).read_text() == "changed!"  # one file
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.local_copy(storage.join(root, "missing"))

    (tmp_path / "up" / "e").mkdir(parents=True)
    (tmp_path / "up" / "e" / "f.txt").write_text("F")
    storage.upload(tmp_path / "up", storage.join(root, "up"))
    assert storage.read_text(storage.join(root, "up", "e", "f.txt")) == "F"
    storage.rmtree(storage.join(root, "up"))
    assert not storage.exists(storage.join(root, "up"))
    with storage.local_output(storage.join(root, "out"), replace=True) as d:
        (d / "x.txt").write_text("x")
    assert listing(storage.join(root, "out")) == {"x.txt"}


@pytest.fixture(scope="module")
def s3_data(s3_server, tiny_prepared):
    """The tiny dataset prepared again, straight to S3 (`seqrec data prepare --out s3://...`)."""
    uri = s3_server.uri("data", "tiny")
    argv = ["data", "prepare", str(tiny_prepared.parent / "events"), "--format", "synth", "--min-item-count", "2",
            "--engine", "local", "--no-progress", "--out", uri]
    assert main(argv) == 0
    return uri


def test_prepare_writes_the_same_dataset_to_s3(s3_server, s3_data, tiny_prepared, capsys):
    local = json.loads((tiny_prepared / "manifest.json").read_text())
    remote = json.loads(storage.read_text(storage.join(s3_data, "manifest.json")))
    assert (remote["content_hash"], remote["vocab_hash"]) == (local["content_hash"], local["vocab_hash"])
    assert {"manifest.json", "train", "val", "test", "vocab", "items.parquet", "users.parquet"} <= listing(s3_data)
    capsys.readouterr()
    assert main(["data", "stats", s3_data]) == 0
    assert f"content hash: {local['content_hash'][:16]}" in capsys.readouterr().out
    # an existing dataset is kept unless --overwrite
    again = ["data", "prepare", str(tiny_prepared.parent / "events"), "--format", "synth", "--engine", "local",
             "--no-progress", "--out", s3_data]
    assert main(again) == 2 and "--overwrite" in capsys.readouterr().err


def test_an_export_and_its_index_on_s3_serve_what_the_local_ones_serve(s3_server, s3_data, tiny_prepared, tiny_artifacts):
    from seqrec.checkpoint import load_checkpoint
    from seqrec.data.prepare import read_split
    from seqrec.export import build_index, export_checkpoint
    from seqrec.retrieval import ItemIndex
    from seqrec.serving import Pipeline

    sdm, bst = s3_server.uri("exports", "sdm"), s3_server.uri("exports", "bst")
    info = export_checkpoint(tiny_artifacts["sdm"] / "ck", sdm, s3_data)
    export_checkpoint(tiny_artifacts["bst"] / "ck", bst, s3_data)
    assert json.loads(storage.read_text(storage.join(sdm, "export.json")))["files"] == info["files"]
    assert listing(sdm) == {"export.json", "model", "item_embeddings.npy", "item_ids.npy"}
    built = build_index(sdm, kind="flat")
    assert built["path"] == storage.join(sdm, "index") and listing(built["path"]) == {"items.faiss", "index.json"}

    vecs = np.load(tiny_artifacts["sdm"] / "export" / "item_embeddings.npy")
    users = vecs[2:7] + 0.5  # any five query vectors
    got = ItemIndex.load(built["path"]).search(users, 10)
    assert np.array_equal(got[1], ItemIndex.load(tiny_artifacts["sdm"] / "export" / "index").search(users, 10)[1])
    vocab = json.loads((tiny_prepared / "manifest.json").read_text())["vocab_hash"]
    model, meta = load_checkpoint(storage.join(sdm, "model"), vocab_hash=vocab)  # straight from its URI
    assert meta["model"] == "sdm" and np.allclose(model.item_embeddings().detach().numpy(), vecs)

    # served from local copies of the URIs (what `seqrec serve` does with them) = served from the local files
    on_s3 = Pipeline(storage.local_copy(s3_data), storage.local_copy(sdm), storage.local_copy(bst), candidates=50)
    here = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
    requests = [here.rows.request_from_row(r) for r in read_split(tiny_prepared, "test").slice(0, 5).to_pylist()]
    answers = [[i["item_id"] for i in a["items"]] for a in on_s3.recommend(requests, k=10)]
    assert answers == [[i["item_id"] for i in a["items"]] for a in here.recommend(requests, k=10)]
    assert all(len(a) == 10 for a in answers)


def test_a_search_lives_on_s3(ray_cluster, s3_server, s3_data):
    """In-process trials on the S3 dataset; Tune keeps the experiment, its trials' checkpoints and seqrec's results there."""
    import pandas as pd

    from seqrec.checkpoint import load_checkpoint
    from seqrec.config import TrainJob

    where = s3_server.uri("tune")
    flags = ["--option", "id_dim=4", "--option", "side_dim=2", "--option", "profile_dim=2", "--batch-size", "64"]
    assert main(["tune", "sdm:PSDMMAL", "--data", s3_data, "--space", "small", "--samples", "2", "--epochs", "1",
                 "--set", "heads,hidden=1:8,2:8", "--storage", where, "--name", "tiny", "--max-concurrent", "2", *flags]) == 0
    exp = storage.join(where, "tiny")
    assert {"trials.csv", "trials.md", "best.yaml", "search.json", "search.png", "seqrec_search.json"} <= listing(exp)
    df = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(exp, "trials.csv"))))
    assert len(df) == 2 and set(df["status"]) <= {"done", "stopped early"}
    best = json.loads(storage.read_text(storage.join(exp, "search.json")))["best"]
    assert best["checkpoint"].startswith("s3://")
    model, meta = load_checkpoint(storage.join(best["checkpoint"], "checkpoint"))
    assert (model.config.heads, model.config.hidden) == (best["config"]["heads"], 8) and meta["epoch"] == 1
    assert TrainJob.from_yaml(storage.join(exp, "best.yaml")).data == s3_data
    assert main(["tune", "sdm:PSDMMAL", "--data", s3_data, "--storage", where, "--name", "tiny", *flags]) == 2  # not mixed in


@pytest.mark.slow  # a TorchTrainer.fit run (~30 s on 2 idle cores), as the local runs' tests in test_train_distributed.py
def test_a_training_run_lives_on_s3(ray_cluster, s3_server, s3_data, tiny_prepared):
    from seqrec.checkpoint import load_checkpoint
    from seqrec.config import TrainJob
    from seqrec.train.distributed import run_training

    job = TrainJob.from_dict(dict(model="sdm:PSDMMAL", data=s3_data, options=TINY, epochs=2, batch_size=32, group_pool=4,
                                  workers=1, cpus_per_worker=0.5, storage=s3_server.uri("runs"), shuffle_buffer_rows=0,
                                  patience=None, name="sdm"))
    s = run_training(job, log=None)
    run = s["run_dir"]
    assert run == s3_server.uri("runs", "sdm")
    assert {"checkpoint_epoch-0001", "checkpoint_epoch-0002", "export", "run.json", "training_curve.png",
            "tensorboard"} <= listing(run)
    saved = json.loads(storage.read_text(storage.join(run, "run.json")))
    assert saved["best_checkpoint"] == s["best_checkpoint"] and s["best_checkpoint"].startswith(run.split("?")[0])
    vocab = json.loads((tiny_prepared / "manifest.json").read_text())["vocab_hash"]
    model, meta = load_checkpoint(s["best_checkpoint"], vocab_hash=vocab)
    assert meta["epoch"] in (1, 2) and meta["dataset"]["data_dir"] == s3_data
    exported = json.loads(storage.read_text(storage.join(run, "export", "export.json")))
    assert exported["kind"] == "matcher" and exported["checkpoint"] == s["best_checkpoint"]  # the stored one, by URI
    assert any(n.startswith("events.out.tfevents.") for n in listing(storage.join(run, "tensorboard")))
    assert main(["index", "build", "--run", run, "--kind", "flat"]) == 0
    assert listing(storage.join(run, "export", "index")) == {"items.faiss", "index.json"}


@pytest.mark.slow  # the README main command in miniature: an experiment on Ray Train, then `seqrec serve --once` (minutes)
def test_the_main_command_runs_with_data_runs_and_exports_on_s3(s3_server, s3_data):
    """`seqrec evaluate --pipeline --cascade --trainer ray --out s3://...` and `seqrec serve --data s3://... --run s3://...
    --once`, each in its own process and Ray cluster, as the documented S3 variant of the main command runs."""
    import os
    import subprocess
    import sys

    from seqrec.cluster import free_port

    out = s3_server.uri("runs", "main")
    env = os.environ | {"RAY_ADDRESS": "local"}
    sdm = "sdm:PSDMMAL@id_dim=4,side_dim=2,profile_dim=2,heads=2"
    evaluate = subprocess.run(
        [sys.executable, "-m", "seqrec.cli", "evaluate", "--data", s3_data, "--models", sdm, "bst@id_dim=8,side_dim=4,mlp=16-8,heads=2",
         "--pipeline", "--cascade", "--candidates", "100", "--seeds", "1", "--epochs", "1", "--rank-epochs", "1", "--hidden", "8",
         "--trainer", "ray", "--workers", "1", "--cpus-per-worker", "0.5", "--no-plots", "--quiet", "--out", out],
        env=env, capture_output=True, text=True, timeout=900)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert {"results.json", "results.md", "results.csv", "train", "cascade"} <= listing(out)
    report = json.loads(storage.read_text(storage.join(out, "results.json")))
    assert all(r["run_dir"].startswith(storage.join(out, "train").split("?")[0]) for r in report["runs"] if "run_dir" in r)
    assert "two_stage" in report and report["data_dir"] == s3_data
    serve = subprocess.run([sys.executable, "-m", "seqrec.cli", "serve", "--data", s3_data, "--run", out, "--once",
                            "--keep-ranker", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=600)
    assert serve.returncode == 0, serve.stdout[-3000:] + serve.stderr[-3000:]
    assert "served 10 items for user" in serve.stdout and "ranker bst epoch 1" in serve.stdout
    assert "does not cover the ranker" not in serve.stdout  # its two-stage row was found by the run's URI
