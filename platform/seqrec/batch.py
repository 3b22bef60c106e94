"""The one batch schema: session rows (Arrow) → padded tensors, used by training, evaluation and serving.

Notation: B rows, T short-term session length (the batch's own maximum), L_f long-term
subset length of feature f, H BST history length, M ground-truth size.

Session rows are written by ``seqrec data prepare`` (schema: ``seqrec.data.sessions.row_schema``);
their column names come from :mod:`seqrec.features`. :func:`collate` pads every list column to
the batch's own maximum length with 0 (= padding code), so a batch of short sessions stays small.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.features import FeatureSpec


@dataclass
class Batch:
    """Padded tensors of B session rows (right padding, code 0).

    user:         {user feature: (B,)}  user_id first, then profile codes
    seq:          {item feature: (B, T)} the short-term session, oldest first
    seq_len:      (B,) number of real events in ``seq`` (>= 1 for model input)
    seq_time:     (B, T) int64 timestamps of ``seq``
    seq_behavior: (B, T) behaviour codes of ``seq``
    long_term:    {item feature: (B, L_f)} distinct values of the 7 days before the session, most recent first
    hist_item:    (B, H) item codes of the last behaviours before the session (BST), oldest first
    hist_time:    (B, H) int64
    hist_behavior:(B, H)
    targets:      (B, M) evaluation ground truth (deduplicated item codes), (B, 0) for training rows
    session_start:(B,) int64
    cand_item:    (B, T, K) cascade rows only (seqrec.train.cascade), else None: the matcher's top K item codes
                  after event t-1 of each position t, best first (0-padded; position 0 has none)
    cand_score:   (B, T, K) float32 their matcher scores
    cand_rank:    (B, T, K) int64 their ranks in the matcher's list
    target_score: (B, T) float32 the matcher score of each position's own item
    target_rank:  (B, T) int64 its rank among every item (0 = the matcher's first)
    top_score:    (B, T) float32 the score of the matcher's first item
    cand_covisit: (B, T, K) float32 the candidates' co-visitation scores with the behaviours before t (cross-fitted)
    target_covisit: (B, T) float32 the position's own item's
    """

    user: dict[str, torch.Tensor]
    seq: dict[str, torch.Tensor]
    seq_len: torch.Tensor
    seq_time: torch.Tensor
    seq_behavior: torch.Tensor
    long_term: dict[str, torch.Tensor]
    hist_item: torch.Tensor
    hist_time: torch.Tensor
    hist_behavior: torch.Tensor
    targets: torch.Tensor
    session_start: torch.Tensor
    cand_item: torch.Tensor | None = None
    cand_score: torch.Tensor | None = None
    cand_rank: torch.Tensor | None = None
    target_score: torch.Tensor | None = None
    target_rank: torch.Tensor | None = None
    top_score: torch.Tensor | None = None
    cand_covisit: torch.Tensor | None = None
    target_covisit: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.seq_len.shape[0])

    @property
    def items(self) -> torch.Tensor:
        """(B, T) item codes of the session."""
        return self.seq[F.ITEM_ID]

    def _map(self, fn) -> "Batch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: fn(t) for k, t in v.items()} if isinstance(v, dict) else (None if v is None else fn(v))
        return Batch(**out)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())

    def select(self, index) -> "Batch":
        """Rows ``index`` (int, slice, list or tensor) as a new batch (padding kept)."""
        if isinstance(index, int):
            index = [index]
        return self._map(lambda t: t[index])


def pad_lists(column: pa.ChunkedArray | pa.Array, dtype=np.int64, width: int | None = None) -> np.ndarray:
    """A list<int> column → (rows, width) array, right-padded with 0; width = longest list by default."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    if n == 1:  # one row (a served request): its list as it is, cut or padded to ``width``
        lo, hi = column.offsets.to_numpy(zero_copy_only=False).tolist()
        w = hi - lo if width is None else width
        out = np.zeros((1, w), dtype=dtype)  # (1, T)
        keep = min(hi - lo, w)
        if keep > 0:
            out[0, :keep] = column.values.slice(lo, keep).to_numpy(zero_copy_only=False)
        return out
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.diff(offsets)
    values = column.values.to_numpy(zero_copy_only=False)
    # a sliced ListArray shares the parent's values: keep only this slice's range
    values = values[offsets[0] : offsets[-1]] if n else values[:0]
    w = int(lengths.max()) if (width is None and n) else (width or 0)
    out = np.zeros((n, w), dtype=dtype)  # (B, T)
    if n and w:
        keep = np.minimum(lengths, w)
        rows = np.repeat(np.arange(n), keep)
        pos = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
        src = np.repeat(offsets[:-1] - offsets[0], keep) + pos
        out[rows, pos] = values[src]
    return out


def pad_nested(column: pa.ChunkedArray | pa.Array, rows_width: int, dtype=np.int64, width: int | None = None) -> np.ndarray:
    """A list<list<x>> column → (rows, rows_width, width) array, 0-padded (the cascade columns: per position a list)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.minimum(np.diff(offsets), rows_width)
    inner = column.values.slice(offsets[0], offsets[-1] - offsets[0]) if n else column.values.slice(0, 0)
    flat = pad_lists(inner, dtype=dtype, width=width)  # (positions, K)
    out = np.zeros((n, rows_width, flat.shape[1]), dtype=dtype)  # (B, T, K)
    rows = np.repeat(np.arange(n), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(offsets[:-1] - offsets[0], lengths) + pos
    out[rows, pos] = flat[src]
    return out


def _scalar(column) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False).astype(np.int64)


def collate(table: pa.Table | pa.RecordBatch, spec: FeatureSpec) -> Batch:
    """Session rows → :class:`Batch` (int64 tensors, padded to this batch's own maxima).

    Raises ValueError naming the missing columns when ``table`` is not a session-row table of ``spec``.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    item_names = [f.name for f in spec.item_features]
    user_names = [f.name for f in spec.user_features]
    needed = (
        user_names
        + [F.SEQ_LEN, F.SESSION_START, F.seq_col(F.TIMESTAMP), F.seq_col(F.BEHAVIOR), F.TARGETS]
        + [F.seq_col(f) for f in item_names]
        + [F.long_term_col(f) for f in item_names]
        + [F.hist_col(F.ITEM_ID), F.hist_col(F.TIMESTAMP), F.hist_col(F.BEHAVIOR)]
    )
    have = set(table.schema.names)  # (a few times cheaper than table.column_names)
    missing = [c for c in needed if c not in have]
    if missing:
        raise ValueError(
            f"not a session-row table for this feature spec: missing columns {missing}; "
            "read rows written by `seqrec data prepare` for the same dataset"
        )
    if table.num_rows == 1 and F.CAND_ITEM not in have:  # a served request: see _collate_one
        one = _collate_one(table.select(needed).to_pylist()[0], item_names, user_names)
        if one is not None:
            return one
    t = torch.from_numpy
    seq_len = _scalar(table[F.SEQ_LEN])
    width = int(seq_len.max()) if len(seq_len) else 0
    cascade = {}
    if F.CAND_ITEM in have:  # a cascade row (seqrec.train.cascade)
        cascade = {
            "cand_item": t(pad_nested(table[F.CAND_ITEM], width)),
            "cand_score": t(pad_nested(table[F.CAND_SCORE], width, dtype=np.float32)),
            "cand_rank": t(pad_nested(table[F.CAND_RANK], width)),
            "target_score": t(pad_lists(table[F.TARGET_SCORE], dtype=np.float32, width=width)),
            "target_rank": t(pad_lists(table[F.TARGET_RANK], width=width)),
            "top_score": t(pad_lists(table[F.TOP_SCORE], dtype=np.float32, width=width)),
        }
        if F.CAND_COVISIT in have:
            cascade["cand_covisit"] = t(pad_nested(table[F.CAND_COVISIT], width, dtype=np.float32))
            cascade["target_covisit"] = t(pad_lists(table[F.TARGET_COVISIT], dtype=np.float32, width=width))
    return Batch(
        user={u: t(_scalar(table[u])) for u in user_names},
        seq={f: t(pad_lists(table[F.seq_col(f)], width=width)) for f in item_names},
        seq_len=t(seq_len),
        seq_time=t(pad_lists(table[F.seq_col(F.TIMESTAMP)], width=width)),
        seq_behavior=t(pad_lists(table[F.seq_col(F.BEHAVIOR)], width=width)),
        long_term={f: t(pad_lists(table[F.long_term_col(f)])) for f in item_names},
        hist_item=t(pad_lists(table[F.hist_col(F.ITEM_ID)])),
        hist_time=t(pad_lists(table[F.hist_col(F.TIMESTAMP)])),
        hist_behavior=t(pad_lists(table[F.hist_col(F.BEHAVIOR)])),
        targets=t(pad_lists(table[F.TARGETS])),
        session_start=t(_scalar(table[F.SESSION_START])),
        **cascade,
    )


def _collate_one(row: dict, item_names: list[str], user_names: list[str]) -> Batch | None:
    """:func:`collate` of one session row from its Python values (``Table.to_pylist``): one Arrow conversion for the
    row, not a few per column, which is most of the time of a one-row batch. The same tensors as the general path;
    None when a value is null or ``seq_len`` negative (the general path's conversion decides what they give)."""
    if any(v is None or (type(v) is list and None in v) for v in row.values()) or row[F.SEQ_LEN] < 0:
        return None
    width = row[F.SEQ_LEN]

    def lists(values: list, w: int | None = None) -> torch.Tensor:  # (1, w): cut or 0-padded to w (default: as long)
        return torch.from_numpy(np.array([values if w is None else values[:w] + [0] * (w - len(values))], np.int64))

    def scalar(name: str) -> torch.Tensor:  # (1,); numpy, then torch: half the time of torch.tensor
        return torch.from_numpy(np.array([row[name]], np.int64))

    return Batch(
        user={u: scalar(u) for u in user_names},
        seq={f: lists(row[F.seq_col(f)], width) for f in item_names},
        seq_len=scalar(F.SEQ_LEN),
        seq_time=lists(row[F.seq_col(F.TIMESTAMP)], width),
        seq_behavior=lists(row[F.seq_col(F.BEHAVIOR)], width),
        long_term={f: lists(row[F.long_term_col(f)]) for f in item_names},
        hist_item=lists(row[F.hist_col(F.ITEM_ID)]),
        hist_time=lists(row[F.hist_col(F.TIMESTAMP)]),
        hist_behavior=lists(row[F.hist_col(F.BEHAVIOR)]),
        targets=lists(row[F.TARGETS]),
        session_start=scalar(F.SESSION_START),
    )
