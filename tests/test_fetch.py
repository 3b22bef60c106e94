"""Fetching ml-100k from the RecBole wheel: extraction logic (fast, fake wheel) and one real fetch (slow, network)."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from seqrec.data import fetch
from seqrec.data.loaders import MovieLensRecBole, open_source

FIX = Path(__file__).parent / "fixtures" / "recbole" / "ml-mini"


def _fake_wheel(folder: Path, with_files=("inter", "item", "user", "kg", "link")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"recbole-{fetch.RECBOLE_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recbole/__init__.py", "")
        for ext in with_files:
            src = FIX / f"ml-mini.{ext}"
            z.writestr(f"{fetch.WHEEL_PREFIX}ml-100k.{ext}", src.read_bytes() if src.exists() else b"x\n")
    return wheel


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    calls = []

    def download(dest: Path, progress: bool) -> Path:
        calls.append(dest)
        return _fake_wheel(dest)

    monkeypatch.setattr(fetch, "_download_wheel", download)
    return calls


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQREC_CACHE", raising=False)
    assert fetch.cache_dir() == Path.home() / ".cache" / "seqrec"
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path / "env"))
    assert fetch.cache_dir() == tmp_path / "env"
    assert fetch.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert fetch.ml100k_dir(tmp_path) == tmp_path / "ml-100k"


def test_fetch_extracts_three_files_and_is_idempotent(tmp_path, fake_download):
    out = fetch.fetch_ml100k(tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "ml-100k"
    assert sorted(p.name for p in out.iterdir()) == ["SOURCE.json", "ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert (out / "ml-100k.inter").read_bytes() == (FIX / "ml-mini.inter").read_bytes()
    source = json.loads((out / "SOURCE.json").read_text())
    assert source["wheel"] == f"recbole-{fetch.RECBOLE_VERSION}-py3-none-any.whl"
    assert set(source["files"]) == set(fetch.ML100K_FILES)
    assert all(len(v["sha256"]) == 64 for v in source["files"].values())
    assert len(fake_download) == 1
    assert fetch.fetch_ml100k(tmp_path / "cache", progress=False) == out and len(fake_download) == 1  # no download
    fetch.fetch_ml100k(tmp_path / "cache", force=True, progress=False)
    assert len(fake_download) == 2
    assert MovieLensRecBole(out).read_all().events.num_rows == 42


def test_fetch_uses_env_cache_and_open_source_finds_it(tmp_path, monkeypatch, fake_download):
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    out = fetch.fetch_ml100k(progress=False)
    assert out == tmp_path / "env" / "ml-100k"
    assert isinstance(open_source("ml-100k"), MovieLensRecBole)


def test_wheel_without_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_download_wheel", lambda dest, progress: _fake_wheel(dest, with_files=("inter",)))
    with pytest.raises(RuntimeError,
                       match=r"lacks recbole/dataset_example/ml-100k/ml-100k.item.*copy ml-100k.inter, ml-100k.item, ml-100k.user"):
        fetch.fetch_ml100k(tmp_path, progress=False)
    assert not any((tmp_path / "ml-100k" / f).exists() for f in fetch.ML100K_FILES)  # nothing half-extracted


def test_pip_failure_reports_stderr_and_the_manual_fix(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="",
                                           stderr="WARNING: retrying\n"
                                                  "ERROR: No matching distribution found for recbole==1.2.1 (network unreachable)\n")

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError) as ei:
        fetch.fetch_ml100k(tmp_path, progress=False)
    msg = str(ei.value)
    assert "No matching distribution found for recbole==1.2.1" in msg and "exit 1" in msg
    assert "copy ml-100k.inter, ml-100k.item, ml-100k.user" in msg and str(tmp_path / "ml-100k") in msg
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "pip", "download", "recbole==1.2.1"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd


@pytest.mark.slow
def test_real_fetch(tmp_path):
    out = fetch.fetch_ml100k(tmp_path, progress=False)
    src = MovieLensRecBole(out)
    res = src.read_all()
    ev = res.events
    assert ev.num_rows == 100_000 and res.rejects.num_rows == 0
    assert len(set(ev.column("user_id").to_pylist())) == 943
    assert len(set(ev.column("item_id").to_pylist())) == 1682
    assert sum(1 for _ in open(out / "ml-100k.item")) - 1 == 1682
    assert sum(1 for _ in open(out / "ml-100k.user")) - 1 == 943
    mtime = (out / "ml-100k.inter").stat().st_mtime_ns
    assert fetch.fetch_ml100k(tmp_path, progress=False) == out
    assert (out / "ml-100k.inter").stat().st_mtime_ns == mtime  # idempotent: nothing downloaded or rewritten
