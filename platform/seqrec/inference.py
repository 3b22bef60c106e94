"""Running a trained model over session rows: what offline evaluation and serving both call.

Rows are the prepared (or served, ``seqrec.serving.RowBuilder``) session rows, an Arrow table;
models are the pure PyTorch matchers (``encode_users``) and rankers (``score``). Layer: above
data and models, below evaluation and serving (it imports neither, nor Ray).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import collate, pad_lists
from seqrec.features import FeatureSpec


def seen_items(table: pa.Table) -> np.ndarray:
    """(U, E) the item codes each row has already seen (session, long-term, history), 0-padded."""
    parts = [pad_lists(table[c]) for c in (F.seq_col(F.ITEM_ID), F.long_term_col(F.ITEM_ID), F.hist_col(F.ITEM_ID))]
    return np.concatenate(parts, axis=1)


def session_items(table: pa.Table) -> np.ndarray:
    """(U, T) the item codes of each row's short-term session, 0-padded."""
    return pad_lists(table[F.seq_col(F.ITEM_ID)])


@torch.no_grad()
def encode_table(model, table: pa.Table, spec: FeatureSpec, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """(U, D) user vectors (last position) for every row of ``table``, in row order."""
    model.eval()
    out = []
    for start in range(0, table.num_rows, batch_size):
        batch = collate(table.slice(start, batch_size), spec).to(device)
        out.append(model.encode_users(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden), np.float32)


@torch.no_grad()
def score_table(model, table: pa.Table, spec: FeatureSpec, candidates: np.ndarray, budget: int = 16_384, device: str = "cpu",
                match: np.ndarray | None = None) -> np.ndarray:
    """(U, C) ranker logits of ``candidates`` for every row of ``table`` (codes < 2 get -inf).

    ``match`` (U, C): the candidates' matcher scores, the candidates in the matcher's order (a ranker with
    ``match_features`` reads them). Rows are scored in batches of about ``budget`` (row, candidate) pairs.
    """
    model.eval()
    out = np.full(candidates.shape, -np.inf, np.float32)
    step = max(1, budget // max(1, candidates.shape[1]))
    for start in range(0, table.num_rows, step):
        rows = slice(start, start + step)
        c = torch.from_numpy(np.maximum(candidates[rows], 0)).to(device)
        batch = collate(table.slice(start, step), spec).to(device)
        m = None if match is None else torch.from_numpy(np.ascontiguousarray(match[rows], np.float32)).to(device)
        out[rows] = (model.score(batch, c) if m is None else model.score(batch, c, match=m)).float().cpu().numpy()
    out[candidates < F.FIRST_CODE] = -np.inf
    return out


def chunk_candidates(candidates: np.ndarray, width: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each row's real candidates (codes >= 2, packed at the row's start) into rows of ``width``.

    Returns (source row (K,), chunked candidates (K, width), flat index (K, width) into
    ``candidates.ravel()``, -1 on padding), so rows with few candidates are not padded to the longest.
    """
    n = (candidates >= F.FIRST_CODE).sum(1)
    per_row = -(-n // width)  # chunks per row (ceil)
    row = np.repeat(np.arange(len(candidates)), per_row)
    first = np.repeat(np.cumsum(per_row) - per_row, per_row)
    j = (np.arange(len(row)) - first) * width  # first candidate of each chunk within its row
    col = j[:, None] + np.arange(width)[None, :]
    ok = col < n[row][:, None]
    flat = np.where(ok, row[:, None] * candidates.shape[1] + col, -1)
    chunks = np.where(ok, candidates.ravel()[np.maximum(flat, 0)], 0)
    return row, chunks, flat


__all__ = ["chunk_candidates", "encode_table", "score_table", "seen_items", "session_items"]
