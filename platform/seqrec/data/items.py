"""The item table of a prepared dataset (``items.parquet``): the one reader every stage uses.

Each row is an item code with its raw id, its training-window count and its side-feature codes.
Rankers take the side features and the popularity (:meth:`ItemTable.side`, :attr:`counts`), the
unigram sampler and the popularity negatives take the counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqrec import features as F
from seqrec.features import FeatureSpec


@dataclass
class ItemTable:
    """Per item code (N = ``spec.n_items``): ``side`` (N, n_side) side-feature codes, ``counts`` (N,) training counts."""

    side: np.ndarray
    counts: np.ndarray


def read_items(data_dir: str | os.PathLike, spec: FeatureSpec) -> ItemTable:
    """The dataset's item table as dense arrays indexed by item code (padding and unknown rows: unknown side, count 0)."""
    import pyarrow.parquet as pq

    side_names = [f.name for f in spec.item_side]
    t = pq.read_table(Path(data_dir) / "items.parquet", columns=["code", "count", *side_names])
    code = t["code"].to_numpy().astype(np.int64)
    if code.max(initial=-1) >= spec.n_items:
        raise ValueError(f"items.parquet has item code {code.max()} but the feature spec has {spec.n_items} items: "
                         "the dataset and the model's feature spec do not match")
    side = np.zeros((spec.n_items, len(side_names)), np.int64)
    for j, n in enumerate(side_names):
        side[code, j] = t[n].to_numpy()
    side[F.UNKNOWN] = F.UNKNOWN  # an unknown item has unknown side features
    counts = np.zeros(spec.n_items, np.float64)
    counts[code] = t["count"].to_numpy()
    return ItemTable(side, counts)


__all__ = ["ItemTable", "read_items"]
