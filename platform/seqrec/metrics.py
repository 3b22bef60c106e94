"""Offline evaluation metrics for matching (candidate generation) and leave-one-out.

Notation: U users, K cut-off, Kmax columns of ``topk``, M max truth size.

Inputs are item codes (see :mod:`seqrec.features`): 0 = padding, 1 = unknown
(an item unseen in training), 2.. = real items.

* ``topk`` (U, Kmax): each user's retrieved items, best first, distinct within a
  row. Entries < 2 — ``-1`` (FAISS: fewer than K found), 0, or 1 — are "no item"
  and never count as hits.
* ``truth`` (U, M): each user's ground-truth set G, padded with 0. Every
  non-zero entry counts in |G|, *including* 1: an item unseen in training is a
  real next item the model could not retrieve, and several distinct unseen raw
  items each appear as a separate 1. A 1 can never be hit. Entries >= 2 are
  distinct within a row.

Matching metrics (SDM paper §4.2), for every cut-off K, with P = the first K
entries of the user's ``topk`` row:

* ``HitRate@K``  = fraction of users with |P ∩ G| >= 1;
* ``Precision@K`` = mean over users of |P ∩ G| / K (K, not the number of
  items actually returned: a short list is penalised);
* ``Recall@K``   = mean over users of |P ∩ G| / |G|;
* ``F1@K``       = mean over users of 2·P·R / (P + R), 0 where P + R = 0
  (the per-user F1, averaged; not the F1 of the averages).

Leave-one-out metrics, one target item per user, rank r = 0-based position of
the target in ``topk`` (none if absent):

* ``Hit@K``  = fraction of users with r < K;
* ``NDCG@K`` = mean of 1 / log2(r + 2) where r < K, else 0 (one relevant item,
  so the ideal DCG is 1).

A target of 1 (unknown) is a miss but counts in the denominator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqrec import features as F

_BUDGET = 1 << 24  # max elements of a (chunk, K, M) comparison block (16 MiB of bools)


def _ids(a, name: str, ndim: int) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer item codes, got dtype {a.dtype}; cast it with .astype(np.int64)")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} has no users (shape {a.shape}); evaluate at least one user")
    return a


def _check_distinct(a: np.ndarray, name: str) -> None:
    """Raise if a row repeats an item code >= FIRST_CODE (repeats would inflate counts)."""
    s = np.sort(a, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= F.FIRST_CODE)  # (U, cols-1)
    if dup.any():
        r, c = np.argwhere(dup)[0]
        raise ValueError(f"{name} row {r} repeats item {s[r, c + 1]}; every row must hold distinct items")


def _pair(topk, truth) -> tuple[np.ndarray, np.ndarray]:
    topk, truth = _ids(topk, "topk", 2), _ids(truth, "truth", 2)
    if topk.shape[0] != truth.shape[0]:
        raise ValueError(f"topk has {topk.shape[0]} users (rows) but truth has {truth.shape[0]}; pass one row per user in both")
    if (truth < 0).any():
        r = int(np.argwhere(truth < 0)[0, 0])
        raise ValueError(f"truth row {r} holds a negative code {truth[r].min()}; pad truth with 0, not negatives")
    _check_distinct(topk, "topk")
    _check_distinct(truth, "truth")
    return topk, truth


def _hit_matrix(topk: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(U, K) bool: topk[u, j] is a real item (>= 2) found in truth[u]; chunked over users."""
    U, K = topk.shape
    M = truth.shape[1]
    out = np.zeros((U, K), dtype=bool)
    step = max(1, _BUDGET // max(1, K * M))
    for s in range(0, U, step):
        p, g = topk[s : s + step], truth[s : s + step]  # (C, K), (C, M)
        out[s : s + step] = (p[:, :, None] == g[:, None, :]).any(axis=2) & (p >= F.FIRST_CODE)  # (C, K, M) -> (C, K)
    return out


def per_user_hits(topk, truth, k: int) -> np.ndarray:
    """(U,) int64: |P ∩ G| per user, P = the first ``k`` entries of each ``topk`` row."""
    topk, truth = _pair(topk, truth)
    if not 1 <= k <= topk.shape[1]:
        raise ValueError(f"k={k} must be in [1, {topk.shape[1]}] (the number of topk columns)")
    return _hit_matrix(topk[:, :k], truth).sum(axis=1, dtype=np.int64)


def _ks(ks: Sequence[int], kmax: int) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks} must be a non-empty list of cut-offs >= 1")
    if kmax < max(ks):
        raise ValueError(f"topk has {kmax} columns but ks asks for K={max(ks)}; retrieve at least max(ks)={max(ks)} items per user")
    return ks


def matching_metrics(topk, truth, ks: Sequence[int] = (20, 50, 100)) -> dict[str, float]:
    """HitRate@K, Precision@K, Recall@K, F1@K (SDM §4.2) for every K in ``ks``; see the module docstring."""
    topk, truth = _pair(topk, truth)
    ks = _ks(ks, topk.shape[1])
    g = (truth != F.PAD).sum(axis=1)  # (U,) |G|, unknown (1) entries included
    if (g == 0).any():
        r = int(np.argmax(g == 0))
        raise ValueError(
            f"truth row {r} is empty (all zeros; {int((g == 0).sum())} of {len(g)} users have no truth); "
            "drop users without ground truth before evaluating"
        )
    hits = _hit_matrix(topk[:, : max(ks)], truth).cumsum(axis=1)  # (U, Kmax'): hits within the first j+1
    out = {}
    for k in ks:
        h = hits[:, k - 1]
        p, r = h / k, h / g
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        out |= {f"HitRate@{k}": float((h > 0).mean()), f"Precision@{k}": float(p.mean()),
                f"Recall@{k}": float(r.mean()), f"F1@{k}": float(f1.mean())}
    return out


def loo_metrics(topk, target, ks: Sequence[int] = (10, 20, 50)) -> dict[str, float]:
    """Leave-one-out Hit@K and NDCG@K for every K in ``ks``; see the module docstring."""
    topk, target = _ids(topk, "topk", 2), _ids(target, "target", 1)
    if topk.shape[0] != target.shape[0]:
        raise ValueError(f"topk has {topk.shape[0]} users (rows) but target has {target.shape[0]}; pass one target per user")
    if (target <= F.PAD).any():
        r = int(np.argmax(target <= F.PAD))
        raise ValueError(f"target[{r}] = {target[r]} is padding/invalid; every user needs a target code >= 1 (1 = unknown)")
    ks = _ks(ks, topk.shape[1])
    kmax = max(ks)
    eq = (topk[:, :kmax] == target[:, None]) & (target[:, None] >= F.FIRST_CODE)  # (U, Kmax')
    rank = np.where(eq.any(axis=1), eq.argmax(axis=1), kmax)  # (U,) first position, kmax = absent
    gain = 1.0 / np.log2(rank + 2.0)
    out = {}
    for k in ks:
        inside = rank < k
        out |= {f"Hit@{k}": float(inside.mean()), f"NDCG@{k}": float(np.where(inside, gain, 0.0).mean())}
    return out
