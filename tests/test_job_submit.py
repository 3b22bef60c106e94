"""`ray job submit --working-dir . -- seqrec train/tune ...` against a real local `ray start --head` (token auth on)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head_node():
    """A separate single-node cluster: `ray start --head --block`, stopped by signalling only this process group.

    (`ray stop` would also stop the test session's own cluster.) Its own temp dir keeps it off
    /tmp/ray/ray_current_cluster, so later `ray.init()` calls do not attach to it.
    """
    ray_bin = Path(sys.executable).parent / "ray"
    env = os.environ | {"RAY_AUTH_MODE": "token"}
    # the token `ray start` needs (Ray 2.60 never generates one there); kept in ~/.ray/auth_token
    token = subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                           text=True, timeout=60).stdout.strip()
    temp = tempfile.mkdtemp(prefix="rjob", dir="/tmp")  # short: Ray's socket paths live under it
    gcs, dash = _free_port(), _free_port()
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address, proc, token)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_dashboard(address: str, proc: subprocess.Popen, token: str, timeout: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"}).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise RuntimeError(f"the dashboard at {address} did not come up in {timeout:.0f}s")


def _submit(address: str, env: dict, entry: list[str], data: Path, storage: Path, name: str) -> str:
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--", *entry, "sdm:PSDMMAL", "--data", str(data), "--storage", str(storage),
           "--name", name, "--workers", "1", "--cpus-per-worker", "0.5", "--epochs", "2", "--batch-size", "32",
           "--option", "hidden=8", "--option", "heads=2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "succeeded" in log and f"[seqrec train] {name} epoch 2/2" in log
    run = storage / name
    summary = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert (run / "export" / "item_embeddings.npy").exists() and (run / "checkpoint_epoch-0002" / "meta.json").exists()
    return log


@pytest.mark.slow  # a second Ray cluster, a job driver and one TorchTrainer.fit (~1-2 minutes on 2 cores)
def test_seqrec_train_submitted_as_a_ray_job(head_node, tiny_prepared, tmp_path):
    address, env = head_node
    _submit(address, env, ["seqrec", "train"], tiny_prepared, tmp_path / "runs", "submitted")


@pytest.mark.slow  # one more job on the same head node
def test_the_train_entry_point_ships_the_package(head_node, tiny_prepared, tmp_path):
    """workloads/train.py: the job's runtime env carries platform/seqrec (py_modules) to every worker."""
    address, env = head_node
    _submit(address, env, ["python", "workloads/train.py"], tiny_prepared, tmp_path / "runs", "shipped")


@pytest.mark.slow  # one more job on the same head node: a 2-trial search
def test_a_search_submitted_as_a_ray_job(head_node, tiny_prepared, tmp_path):
    """workloads/tune.py: seqrec and tune_spaces shipped; the results land in the shared --storage."""
    address, env = head_node
    storage = tmp_path / "tune"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--", "python", "workloads/tune.py", "sdm:PSDMMAL", "--data", str(tiny_prepared), "--space", "small",
           "--samples", "2", "--epochs", "1", "--batch-size", "32", "--set", "heads,hidden=1:8,2:8",
           "--storage", str(storage), "--name", "submitted"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in log, log[-4000:]
    summary = json.loads((storage / "submitted" / "search.json").read_text())
    assert summary["trials"] == 2 and summary["errors"] == 0 and Path(summary["best"]["checkpoint"]).is_dir()
    assert (storage / "submitted" / "trials.md").exists() and (storage / "submitted" / "best.yaml").exists()
