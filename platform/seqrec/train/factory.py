"""The one model factory: a model by name for a prepared dataset, ready to train.

Every trainer (this process, Ray Train workers, Tune trials), the tests and the benchmarks build
models here, so a model gets the same dataset-dependent parts wherever it trains: the feature spec
from the manifest, a ranker's item table (side features and popularity) and time zone, and the
unigram sampler's item counts, and a ranker's item-CF co-visitation table (``covisit``).
"""

from __future__ import annotations

import os

import torch

from seqrec.data.items import read_items
from seqrec.data.prepare import load_manifest
from seqrec.features import FeatureSpec
from seqrec.models import build_model, is_ranker


def build(model: str, data: str | os.PathLike, options: dict | None = None, *, seed: int | None = None):
    """(model, feature spec, manifest) of ``model`` (``sdm:PSDMMAL``, ``bst``, ...) for the dataset ``data``.

    ``seed`` seeds torch first, so the initial weights depend on it alone (every data-parallel worker
    starts from the same weights)."""
    manifest = load_manifest(data)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    options = dict(options or {})
    ranker = is_ranker(model)
    if ranker:
        options.setdefault("tz_offset_s", manifest["config"]["protocol"].get("tz_offset_s", 0))
    if seed is not None:
        torch.manual_seed(seed)
    m = build_model(model, spec, **options)
    if getattr(m.config, "horizon_weight", 0) > 0 and not manifest["config"]["protocol"].get("train_horizon_s"):
        raise ValueError(f"horizon_weight={m.config.horizon_weight} trains on the training rows' horizon targets, and "
                         f"{data} has none: prepare it with `seqrec data prepare --train-horizon-hours H`")
    if ranker:
        items = read_items(data, spec)
        m.set_item_table(torch.from_numpy(items.side), torch.from_numpy(items.counts))
        if getattr(m.config, "covisit", False):  # the item-CF table of the training split (read whole: one pass)
            from seqrec.data.prepare import read_split
            from seqrec.evaluate import fit_item_cf
            from seqrec.models.ranking import COVISIT

            m.set_covisitation(fit_item_cf(read_split(data, "train"), spec, **COVISIT.to_dict()))
    elif m.config.loss == "sampled" and m.config.sampler == "unigram":
        m.softmax.set_item_counts(torch.from_numpy(read_items(data, spec).counts))
    return m, spec, manifest


__all__ = ["build"]
