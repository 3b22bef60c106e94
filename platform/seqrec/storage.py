"""Where seqrec reads and writes: a local path or a storage URI (``s3://bucket/key``, ``gs://bucket/key``).

Every path seqrec takes may be a URI: a prepared dataset (``prepare --out``, ``--data``), a run's
``--storage``, an experiment's ``--out``, an export, a FAISS index, a Tune experiment. A local path
keeps working unchanged: for one, every function here does what the code did before it took URIs.

A URI is resolved by ``pyarrow.fs.FileSystem.from_uri``. S3 settings come from the AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; on a cluster, set on
every node) or from the URI's query (``s3://bucket/key?endpoint_override=127.0.0.1:9000&scheme=http``), which
travels with the URI to every Ray worker. Keys are joined with :func:`join`, which keeps the query last.

A URI is used in one of three ways:

* natively: Ray Train and Ray Tune keep runs and experiments there (``storage_path`` + ``storage_filesystem``,
  :func:`ray_storage`), Ray Data reads Parquet from it (``filesystem=``, :func:`for_ray`), and small files are
  read and written directly (:func:`read_text`, :func:`write_text`);
* read through a local copy (:func:`local_copy`): torch checkpoints (``torch.load``), FAISS indexes
  (``faiss.read_index``), numpy arrays and the prepared dataset's tables are read by libraries and code that
  take local paths only, so a URI is copied once into this machine's cache and read there; the copy is made
  again when the remote listing (names, sizes, modification times) changes;
* written through a local directory (:func:`local_output`, :func:`local_file`, :func:`scratch`): the same
  libraries write local files only, so the files are written to a temporary directory and uploaded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

MARKER = ".seqrec-copy.json"  # in every cache directory: the URI it holds and the listing it was copied at


def is_uri(path) -> bool:
    """True for ``scheme://...`` (s3, gs, hdfs, file, ...); False for a plain local path."""
    text = str(path)
    return "://" in text and len(urlsplit(text).scheme) > 1


def _parts(uri: str):
    s = urlsplit(str(uri))
    return s.scheme, s.netloc, unquote(s.path), s.query


@functools.lru_cache(maxsize=64)
def _filesystem(scheme: str, netloc: str, query: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a URI's scheme, host (bucket) and options, and the path of its root; cached, so that a
    region lookup (S3 without AWS_REGION) happens once per bucket, not once per file (and the AWS environment is
    read when a bucket is first used in a process)."""
    root = urlunsplit((scheme, netloc, "/", query, ""))
    fs, path = pafs.FileSystem.from_uri(root)
    return fs, path


def resolve(path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path (made absolute) or a URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    scheme, netloc, key, query = _parts(path)
    fs, root = _filesystem(scheme, netloc, query)
    key = key.strip("/")
    return fs, (posixpath.join(root, key) if key else root).rstrip("/") or "/"


def join(base, *parts) -> str:
    """``base`` / ``parts``: a local path (as ``str(Path(base, *parts))``) or a URI with its query kept last."""
    if not is_uri(base):
        return str(Path(base, *map(str, parts)))
    s = urlsplit(str(base))
    path = posixpath.join(s.path or "/", *[str(p).strip("/") for p in parts if str(p).strip("/")])
    return urlunsplit((s.scheme, s.netloc, path, s.query, s.fragment))


def basename(path) -> str:
    """The last component of a path or URI (without the URI's query)."""
    if not is_uri(path):
        return Path(path).name
    return posixpath.basename(_parts(path)[2].rstrip("/")) or _parts(path)[1]


def absolute(path) -> str:
    """A local path made absolute; a URI as it is."""
    return str(path) if is_uri(path) else str(Path(path).expanduser().resolve())


def uri_of(fs_path: str, like) -> str:
    """The URI of ``fs_path``, a path on the filesystem of the URI ``like`` (as Ray Train reports its checkpoints:
    ``bucket/runs/name/checkpoint_epoch-0001``); ``fs_path`` itself when ``like`` is a local path."""
    if fs_path is None or not is_uri(like) or is_uri(fs_path):
        return fs_path
    scheme, netloc, _, query = _parts(like)
    fs, root = _filesystem(scheme, netloc, query)
    inside = fs_path == root or fs_path.startswith(root.rstrip("/") + "/")
    key = fs_path[len(root):] if inside else fs_path
    return join(urlunsplit((scheme, netloc, "/", query, "")), key)


# --- small files and listings --------------------------------------------------------------


def exists(path) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode()


def write_bytes(path, data: bytes) -> None:
    """Write a file (its directory is created)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:
        f.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def files(path, suffix: str = "") -> list[tuple[str, int]]:
    """(name, size) of the files directly in the directory ``path`` whose names end with ``suffix``, sorted by
    name; empty when there is no such directory."""
    fs, p = resolve(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted((i.base_name, i.size) for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))


def is_empty(path) -> bool:
    """True when ``path`` does not exist or is an empty directory."""
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        return True
    return info.type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(p, recursive=False))


def makedirs(path) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def rmtree(path) -> None:
    """Delete a directory and everything under it; nothing when it does not exist."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def upload(local_dir, path) -> None:
    """Copy the local directory ``local_dir`` into ``path`` (files already there and not in ``local_dir`` stay)."""
    fs, p = resolve(path)
    if not any(Path(local_dir).iterdir()):
        return
    pafs.copy_files(str(Path(local_dir).resolve()), p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


# --- reading through a local copy ----------------------------------------------------------


def cache_root() -> Path:
    """Where local copies of URIs live: ``$SEQREC_CACHE/storage`` (default ``~/.cache/seqrec/storage``)."""
    return Path(os.environ.get("SEQREC_CACHE") or "~/.cache/seqrec").expanduser() / "storage"


def _key(uri: str, *extra) -> str:
    return hashlib.sha256("\n".join([uri, *map(str, extra)]).encode()).hexdigest()[:20]


def _wanted(rel: str, only: Iterable[str] | None) -> bool:
    """``rel`` is kept by ``only``: equal to an entry, under an entry (a directory), or matching a glob entry."""
    if only is None:
        return True
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") or fnmatch.fnmatchcase(rel, o) for o in only)


def local_copy(path, only: Iterable[str] | None = None) -> Path:
    """A local path with the content of ``path``: ``Path(path)`` itself when it is local; for a URI, a copy of the
    file or directory in this machine's cache (:func:`cache_root`), made again when the remote listing has
    changed since. ``only`` keeps the files (relative paths) equal to, under, or matching (a glob) one of its
    entries, e.g. ``["manifest.json"]`` or ``["export.json", "*/export/*"]``. Concurrent callers on one machine
    (the Ray Train workers of a node) wait for one copy."""
    if not is_uri(path):
        return Path(path)
    from filelock import FileLock

    only = None if only is None else sorted(only)
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    if info.type == pafs.FileType.File:
        entries = {info.base_name: info}
        base = posixpath.dirname(p)
    else:
        base = p
        entries = {posixpath.relpath(i.path, p): i for i in fs.get_file_info(pafs.FileSelector(p, recursive=True))
                   if i.type == pafs.FileType.File}
        entries = {rel: i for rel, i in entries.items() if _wanted(rel, only)}
    listing = {rel: [i.size, i.mtime_ns] for rel, i in sorted(entries.items())}
    dest = cache_root() / _key(str(path), only)
    want = {"uri": str(path), "only": only, "files": listing}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        marker = dest / MARKER
        if not (marker.exists() and json.loads(marker.read_text()) == want):
            tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
            for rel in listing:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(posixpath.join(base, rel), str(tmp / rel), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
            (tmp / MARKER).write_text(json.dumps(want))
            if dest.exists():
                old = dest.with_name(dest.name + f".old-{os.getpid()}")
                dest.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(dest)
    return dest / info.base_name if info.type == pafs.FileType.File else dest


def work_dir(path) -> Path:
    """A local directory that belongs to ``path`` on this machine: ``path`` itself when local; for a URI a fixed
    directory under the cache (what a run keeps only where it runs: staged checkpoints, status files)."""
    if not is_uri(path):
        return Path(path)
    d = cache_root() / "work" / _key(str(path))
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).write_text(json.dumps({"uri": str(path), "work": True}))
    return d


# --- writing through a local directory -----------------------------------------------------


def scratch(path) -> Path:
    """Where to write what belongs in ``path``: ``Path(path)`` when local; for a URI a new temporary directory,
    which the caller uploads (:func:`upload`) and removes."""
    return Path(path) if not is_uri(path) else Path(tempfile.mkdtemp(prefix="seqrec-upload-"))


@contextlib.contextmanager
def local_output(path, replace: bool = False) -> Iterator[Path]:
    """A local directory to write ``path``'s content into: ``Path(path)`` itself when local; for a URI a temporary
    directory, uploaded to ``path`` when the block ends without an error (with ``replace``, what ``path`` held is
    deleted first), then removed."""
    if not is_uri(path):
        yield Path(path)
        return
    tmp = scratch(path)
    try:
        yield tmp
        if replace:
            rmtree(path)
        upload(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_file(path) -> Iterator[Path]:
    """A local file name to write ``path`` to (a plot, say): ``Path(path)`` when local; for a URI a temporary file,
    uploaded when the block ends without an error."""
    if not is_uri(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="seqrec-upload-") as d:
        local = Path(d) / basename(path)
        yield local
        write_bytes(path, local.read_bytes())


# --- Ray -----------------------------------------------------------------------------------


def for_ray(path) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) for a Ray Data reader or a Tune restore: an absolute local path and None (Ray's own
    resolution, as before), or the path on the URI's filesystem and that filesystem (with the URI's options)."""
    if not is_uri(path):
        return absolute(path), None
    fs, p = resolve(path)
    return p, fs


def ray_storage(path) -> dict:
    """``storage_path`` (and ``storage_filesystem`` for a URI) of a Ray Train / Ray Tune ``RunConfig``."""
    p, fs = for_ray(path)
    return {"storage_path": p} | ({"storage_filesystem": fs} if fs is not None else {})


__all__ = [
    "absolute", "basename", "cache_root", "exists", "files", "for_ray", "is_empty", "is_uri", "join", "local_copy",
    "local_file", "local_output", "makedirs", "ray_storage", "read_bytes", "read_text", "resolve", "rmtree", "scratch",
    "upload", "uri_of", "work_dir", "write_bytes", "write_text",
]
