"""Self-describing checkpoints: one directory rebuilds the model, resumes its training, and names its data.

Layout of a checkpoint directory::

    model.pt       {"model": name, "config": config.to_dict(), "state_dict": ...}  (torch.save)
    optimizer.pt   the optimizer's state_dict (absent in exports)
    meta.json      format, seqrec version, model name, epoch, step, metrics, per-epoch history,
                   training options, and the dataset it was trained on: manifest content hash,
                   vocab hash (the id ↔ code mapping serving must use) and source

``load_checkpoint`` rebuilds the model from ``model.pt`` alone (no code outside seqrec needs to
know its configuration) and refuses a checkpoint whose vocabulary differs from the dataset it is
used with. Files are written to temporary names and renamed, so a process killed while saving
never leaves a half-written checkpoint under the final names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from seqrec import storage

FORMAT = "seqrec-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.pt", "optimizer.pt", "meta.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / FSDP wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


def dataset_identity(manifest: dict, data_dir: str | os.PathLike | None = None) -> dict:
    """What a checkpoint records of its dataset: content and vocabulary hashes, source name, location."""
    source = manifest.get("source")
    return {
        "content_hash": manifest.get("content_hash"),
        "vocab_hash": manifest.get("vocab_hash"),
        "source": source.get("name") if isinstance(source, dict) else source,
        "data_dir": None if data_dir is None else storage.absolute(data_dir),
        "feature_spec": manifest.get("feature_spec"),
    }


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int,
    step: int,
    dataset: dict,
    metrics: dict | None = None,
    history: list | None = None,
    train: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint directory (created if missing); ``model`` may be DDP-wrapped."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    payload = {"model": m.name, "config": m.config.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()}}
    _atomic_write(path / MODEL_FILE, lambda p: torch.save(payload, p))
    if optimizer is not None:
        _atomic_write(path / OPTIMIZER_FILE, lambda p: torch.save(optimizer.state_dict(), p))
    from seqrec import __version__

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seqrec_version": __version__,
        "model": m.name,
        "kind": "ranker" if hasattr(m, "score") else "matcher",
        "epoch": epoch,
        "step": step,
        "metrics": metrics or {},
        "history": history or [],
        "train": train or {},
        "dataset": dataset,
        "parameters": sum(p.numel() for p in m.parameters()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    _atomic_write(path / META_FILE, lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
    return path


def read_meta(path: str | os.PathLike) -> dict:
    path = storage.local_copy(path, only=(MODEL_FILE, META_FILE))  # a URI: read from a local copy
    f = path / META_FILE
    if not f.exists() or not (path / MODEL_FILE).exists():
        raise FileNotFoundError(f"{path} is not a seqrec checkpoint: it needs {MODEL_FILE} and {META_FILE}")
    meta = json.loads(f.read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{f}: format {meta.get('format')!r} v{meta.get('format_version')} is not {FORMAT} v{FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike, map_location="cpu", vocab_hash: str | None = None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, meta). With ``vocab_hash``, refuse a checkpoint trained on another vocabulary."""
    from seqrec.models import model_from_dict

    given, path = path, storage.local_copy(path, only=(MODEL_FILE, META_FILE))  # a URI: torch.load reads a local copy
    meta = read_meta(path)
    have = meta.get("dataset", {}).get("vocab_hash")
    if vocab_hash is not None and have != vocab_hash:
        raise ValueError(
            f"checkpoint {given} was trained on vocabulary {have}, the dataset has {vocab_hash}: item and user codes "
            "would not mean the same items; retrain on this dataset or use the dataset the checkpoint names"
        )
    payload = torch.load(path / MODEL_FILE, map_location=map_location, weights_only=True)
    model = model_from_dict({"model": payload["model"], "config": payload["config"]})
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta


def load_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer, map_location="cpu") -> bool:
    """Restore ``optimizer`` from a checkpoint; False when the checkpoint has no optimizer state."""
    f = Path(path) / OPTIMIZER_FILE
    if not f.exists():
        return False
    optimizer.load_state_dict(torch.load(f, map_location=map_location, weights_only=True))
    return True


__all__ = ["FORMAT", "dataset_identity", "load_checkpoint", "load_optimizer", "read_meta", "save_checkpoint", "unwrap"]
