"""Artifacts for serving, cut from a training checkpoint and versioned with it.

``export_checkpoint(ckpt, out, data)`` writes::

    out/model/              the checkpoint without optimizer state (load with seqrec.checkpoint.load_checkpoint):
                            for a matcher this is the user network, for a ranker the ranking model
    out/item_embeddings.npy (N, D) float32 item vectors by item code (matchers only)
    out/item_ids.npy        (N,) int64 raw item id of each code; -1 for 0 (padding) and 1 (unknown)
    out/export.json         model, kind, epoch, metrics, dataset content/vocab hashes, checkpoint path, files

``build_index(export_dir, kind)`` builds the FAISS index over the exported item vectors
(``seqrec index build``) into ``<export>/index/``, with the same version information.

Every path may be a storage URI (:mod:`seqrec.storage`): torch, numpy and FAISS read and write local files
only, so a URI's checkpoint and vectors are read from a local copy, and an export is written to a local
directory and uploaded in place of the one that was there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from seqrec import storage


def raw_item_ids(data_dir: str | os.PathLike, n_items: int) -> np.ndarray:
    """(N,) raw item id of every item code, from the dataset's vocabulary; -1 for codes 0 and 1."""
    import pyarrow.parquet as pq

    t = pq.read_table(storage.local_copy(data_dir, only=["vocab/item_id.parquet"]) / "vocab" / "item_id.parquet",
                      columns=["raw", "code"])
    out = np.full(n_items, -1, np.int64)
    out[t["code"].to_numpy()] = t["raw"].to_numpy()
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, data_dir: str | os.PathLike,
                      source: str | None = None) -> dict:
    """Export ``checkpoint``; ``source`` is the checkpoint export.json names (default ``checkpoint``: a run exports a
    local copy of its stored checkpoint and names the stored one)."""
    from seqrec.checkpoint import META_FILE, MODEL_FILE, load_checkpoint
    from seqrec.data.prepare import load_manifest

    if storage.is_uri(out):  # written here, then uploaded in place of the export that was there
        with storage.local_output(out, replace=True) as local:
            return export_checkpoint(checkpoint, local, data_dir, source)
    given, checkpoint, out = checkpoint, storage.local_copy(checkpoint, only=(MODEL_FILE, META_FILE)), Path(out)
    manifest = load_manifest(storage.local_copy(data_dir, only=["manifest.json"]))
    model, meta = load_checkpoint(checkpoint, vocab_hash=manifest.get("vocab_hash"))
    if out.exists():
        shutil.rmtree(out)
    (out / "model").mkdir(parents=True)
    for f in (MODEL_FILE, META_FILE):
        shutil.copyfile(checkpoint / f, out / "model" / f)
    files = ["model/" + MODEL_FILE, "model/" + META_FILE]
    if meta["kind"] == "matcher":
        vecs = model.item_embeddings().detach().float().cpu().numpy()
        np.save(out / "item_embeddings.npy", vecs)
        np.save(out / "item_ids.npy", raw_item_ids(data_dir, vecs.shape[0]))
        files += ["item_embeddings.npy", "item_ids.npy"]
    info = {
        "model": meta["model"],
        "kind": meta["kind"],
        "epoch": meta["epoch"],
        "metrics": meta["metrics"],
        "dataset": meta["dataset"],
        "checkpoint": str(source or given),
        "files": files,
    }
    (out / "export.json").write_text(json.dumps(info, indent=1, default=str))
    return info


def build_index(export_dir: str | os.PathLike, kind: str = "hnsw", use_gpu: bool = False, **options) -> dict:
    """FAISS index over ``<export>/item_embeddings.npy`` → ``<export>/index/``; returns its description."""
    from seqrec.retrieval import ItemIndex

    local = storage.local_copy(export_dir, only=["export.json", "item_embeddings.npy"])  # a URI: read a local copy
    info_path = local / "export.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{export_dir} is not a seqrec export (no export.json); run `seqrec train` first")
    info = json.loads(info_path.read_text())
    if info["kind"] != "matcher":
        raise ValueError(f"{export_dir} holds a {info['kind']} ({info['model']}); an index needs a matcher's item vectors")
    vecs = np.load(local / "item_embeddings.npy")
    meta = {"model": info["model"], "epoch": info["epoch"], "vocab_hash": info["dataset"].get("vocab_hash"),
            "content_hash": info["dataset"].get("content_hash"), "checkpoint": info["checkpoint"]}
    index = ItemIndex.build(vecs, kind=kind, use_gpu=use_gpu, meta=meta, **options)
    path = storage.join(export_dir, "index")
    index.save(path)
    return {"path": path, "kind": kind, "items": int(vecs.shape[0]), **meta}


__all__ = ["build_index", "export_checkpoint", "raw_item_ids"]
