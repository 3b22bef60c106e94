"""Fetch MovieLens-100k in RecBole's atomic-file layout into a local cache.

The RecBole 1.2.1 wheel on PyPI carries ml-100k under
``recbole/dataset_example/ml-100k/``. :func:`fetch_ml100k` downloads that wheel
with pip (``--no-deps``: RecBole is never installed; it pins ``ray<=2.6.3`` and
cannot share seqrec's environment), extracts ``ml-100k.inter``, ``.item`` and
``.user`` into ``<cache>/ml-100k/`` and records where they came from in
``SOURCE.json``. The cache is ``$SEQREC_CACHE`` or ``~/.cache/seqrec``.
``seqrec data fetch ml-100k`` calls it; ``open_source("ml-100k")`` reads it.
The data is never committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

RECBOLE_VERSION = "1.2.1"
ML100K = "ml-100k"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
SOURCE_FILE = "SOURCE.json"
ENV_CACHE = "SEQREC_CACHE"


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The seqrec cache root: ``cache`` if given, else ``$SEQREC_CACHE``, else ``~/.cache/seqrec``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "seqrec"


def ml100k_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where the fetched ml-100k files live: ``<cache>/ml-100k/``."""
    return cache_dir(cache) / ML100K


def _manual_hint(target: Path) -> str:
    return (
        f"Alternatively copy {', '.join(ML100K_FILES)} (from a RecBole {RECBOLE_VERSION} wheel, "
        f"under {WHEEL_PREFIX}, or from RecBole's dataset downloads) into {target}/ by hand."
    )


def _download_wheel(dest: Path, progress: bool) -> Path:
    """``pip download recbole==1.2.1`` (the wheel only, no dependencies) into ``dest``; returns the wheel path."""
    cmd = [
        sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}",
        "--no-deps", "--only-binary=:all:", "-d", str(dest), "--disable-pip-version-check",
    ]  # fmt: skip
    if not progress:
        cmd += ["--progress-bar", "off", "--quiet"]
    try:
        proc = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:  # pragma: no cover - no python / pip at all
        raise RuntimeError(f"could not run pip ({' '.join(cmd)}): {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}); pip said:\n{tail}\n"
            "Check the network / proxy (pip must reach PyPI or your index; PIP_INDEX_URL is honoured) and retry."
        )
    wheels = sorted(dest.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no recbole-{RECBOLE_VERSION} wheel is in {dest}: {sorted(os.listdir(dest))}")
    return wheels[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_ml100k(wheel: str | os.PathLike, target: str | os.PathLike) -> dict:
    """Extract the three ml-100k atomic files from a RecBole wheel into ``target``; write and return ``SOURCE.json``.

    Files are written to a temporary name and renamed, so a crash never leaves a
    half-written file behind under the final name.
    """
    wheel, target = Path(wheel), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"{wheel} is not a valid wheel (zip): {e}. {_manual_hint(target)}") from e
    with zf:
        names = set(zf.namelist())
        missing = [f for f in ML100K_FILES if WHEEL_PREFIX + f not in names]
        if missing:
            raise RuntimeError(
                f"{wheel.name} lacks {', '.join(WHEEL_PREFIX + f for f in missing)}; "
                f"expected the RecBole {RECBOLE_VERSION} wheel. {_manual_hint(target)}"
            )
        files = {}
        for f in ML100K_FILES:
            tmp = target / (f + ".part")
            with zf.open(WHEEL_PREFIX + f) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target / f)
            files[f] = {"sha256": _sha256(target / f), "bytes": (target / f).stat().st_size}
    source = {
        "dataset": ML100K,
        "wheel": wheel.name,
        "wheel_sha256": _sha256(wheel),
        "member_prefix": WHEEL_PREFIX,
        "files": files,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (target / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return source


def fetch_ml100k(cache_dir: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> Path:
    """Make sure ``<cache>/ml-100k/ml-100k.{inter,item,user}`` exist and return that folder.

    Returns at once when the three files exist (unless ``force``). Otherwise
    downloads the RecBole wheel with pip into a temporary folder and extracts
    them. Raises ``RuntimeError`` with pip's stderr tail and the manual fix when
    pip cannot reach the index or the wheel lacks the files.
    """
    target = ml100k_dir(cache_dir)
    if not force and all((target / f).is_file() for f in ML100K_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqrec-fetch-") as tmp:
        if progress:
            print(f"seqrec: downloading the recbole=={RECBOLE_VERSION} wheel (data only, not installed) ...", file=sys.stderr)
        try:
            wheel = _download_wheel(Path(tmp), progress)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{_manual_hint(target)}") from None
        extract_ml100k(wheel, target)
    if progress:
        print(f"seqrec: ml-100k is in {target}", file=sys.stderr)
    return target


__all__ = ["ML100K_FILES", "cache_dir", "extract_ml100k", "fetch_ml100k", "ml100k_dir"]
