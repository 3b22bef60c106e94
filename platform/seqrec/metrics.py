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

Discovery (the offline form of SDM §4.2.2's online metric, "new categories / all
categories a user clicks per day", new = not clicked in the past 15 days), for
every cut-off K, with ``item_category`` (N,) the category code of every item code
and ``history`` (U, H) the category codes each user clicked in the 15 days before
the recommendation moment (0-padded):

* C = the distinct categories (codes >= 2) of the user's ground-truth items
  (unknown items, code 1, have no known category and are left out);
* ``discovery@K`` = mean over the users with C non-empty of
  |{c in C : c is not in the user's history and a ground-truth item of
  category c is in P}| / |C|.

It is the share of the categories the user goes on to click that are new to the
user *and* that the recommender found (an item of it in the top K): 0 for a
recommender that only repeats known categories, at most the share of new
categories among C.

Ranking metrics (CTR-style, one score per (user, item) sample), n samples with
``labels`` in {0, 1} (bool, int or float), real-valued ``scores`` / ``logits``
and integer user ``groups``:

* ``AUC``  = probability that a random positive scores above a random negative,
  a tie counting 1/2 (Mann–Whitney U with average ranks over tied scores;
  one sort, O(n log n));
* ``GAUC`` = the AUC within each group (user), averaged with weights = the
  group's number of samples, over the groups holding at least one positive and
  one negative (DIN, Zhou et al. 2018); single-class groups are skipped and
  ``GAUC_users`` counts the groups used;
* ``LogLoss`` = mean binary cross-entropy of sigmoid(logits), probabilities
  clipped to [eps, 1 - eps].
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


def discovery(topk, truth, item_category, history, ks: Sequence[int] = (20, 50, 100)) -> dict[str, float]:
    """``discovery@K`` for every K in ``ks``: per user, the distinct categories of its ground-truth items that
    have an item in the top K and are absent from the user's 15-day ``history``, over its distinct ground-truth
    categories; averaged over the users with at least one known ground-truth category (see the module docstring).

    ``item_category`` (N,) maps item codes to category codes (0/1: unknown); ``history`` (U, H) holds each user's
    recent category codes, 0-padded (H may be 0). nan when no user has a known ground-truth category.
    """
    topk, truth = _pair(topk, truth)
    ks = _ks(ks, topk.shape[1])
    cat = _ids(item_category, "item_category", 1)
    hist = np.asarray(history.detach().cpu().numpy() if hasattr(history, "detach") else history)
    if hist.ndim != 2 or hist.shape[0] != truth.shape[0] or (hist.size and not np.issubdtype(hist.dtype, np.integer)):
        raise ValueError(f"history must be an integer (U, H) array with U = {truth.shape[0]} users, got shape {hist.shape} "
                         f"and dtype {hist.dtype}; pad rows with 0")
    top = max(int(topk.max()), int(truth.max()))
    if top >= len(cat):
        raise ValueError(f"item code {top} is out of item_category's range ({len(cat)} items); pass the category of "
                         "every item code of the dataset")
    U = truth.shape[0]
    rows = np.arange(U, dtype=np.int64)[:, None]
    t_cat = np.where(truth >= F.FIRST_CODE, cat[np.maximum(truth, 0)], 0)  # (U, M) category of every truth item
    width = int(max(t_cat.max(initial=0), hist.max(initial=0), 1)) + 1
    keys = np.unique((rows * width + t_cat)[t_cat >= F.FIRST_CODE])  # distinct (user, truth category)
    n_cat = np.bincount(keys // width, minlength=U)  # (U,) |C|
    new = keys[~np.isin(keys, (rows * width + hist)[hist >= F.FIRST_CODE])]  # (user, category) new to the user
    kmax = max(ks)
    hits = _hit_matrix(topk[:, :kmax], truth)  # (U, Kmax')
    h_cat = np.where(hits, cat[np.maximum(topk[:, :kmax], 0)], 0)  # (U, Kmax') category of every hit
    ok = n_cat > 0
    out = {}
    for k in ks:
        found = np.unique((rows * width + h_cat[:, :k])[h_cat[:, :k] >= F.FIRST_CODE])
        n_new = np.bincount(found[np.isin(found, new)] // width, minlength=U)
        out[f"discovery@{k}"] = float((n_new[ok] / n_cat[ok]).mean()) if ok.any() else float("nan")
    return out


# --------------------------------------------------------------------------- ranking metrics


def _vec(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {a.shape}")
    return a


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}; pass one value per sample in both")


def _labels(labels) -> np.ndarray:
    """(n,) int64 0/1 labels from bool, int or float 0/1 values."""
    y = _vec(labels, "labels")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numeric 0/1 (bool, int or float), got dtype {y.dtype}")
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels must be 0 or 1, got {y[i].item()!r} at index {i} ({int(bad.sum())} invalid values)")
    return y.astype(np.int64)


def _scores(scores, name: str) -> np.ndarray:
    s = _vec(scores, name)
    if s.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite, got {s[i].item()!r} at index {i} ({int(bad.sum())} non-finite values)")
    return s


def _labels_scores(labels, scores, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    y, s = _labels(labels), _scores(scores, name)
    _same_length(y, s, "labels", name)
    return y, s


def auc(labels, scores) -> float:
    """ROC AUC (Mann–Whitney U, ties count 1/2): P(score of a random positive > score of a random negative)."""
    y, s = _labels_scores(labels, scores)
    n, pos = len(y), int(y.sum())
    neg = n - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"AUC needs at least one positive and one negative label, got {pos} positives and {neg} negatives")
    order = np.argsort(s)  # stability is irrelevant: ties are averaged
    s, y = s[order], y[order]
    start = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie run
    count = np.diff(np.r_[start, n])
    rank2 = 2 * start + count + 1  # 2 x the 1-based average rank of the run (exact integers)
    r2 = int((np.add.reduceat(y, start) * rank2).sum())  # 2 x rank sum of the positives
    return (r2 - pos * (pos + 1)) / (2 * pos * neg)


def _gauc(labels, scores, groups) -> tuple[float, int, int, int, int]:
    """(gauc or nan, groups used, groups, positives, samples): the work behind :func:`gauc`."""
    y, s = _labels_scores(labels, scores)
    g = _vec(groups, "groups")
    if g.dtype.kind not in "biu":
        raise TypeError(f"groups must hold integer group (user) ids, got dtype {g.dtype}; cast it with .astype(np.int64)")
    _same_length(y, g, "labels", "groups")
    n = len(y)
    if n == 0:
        return float("nan"), 0, 0, 0, 0
    order = np.lexsort((s, g))  # by group, then score
    g, s, y = g[order], s[order], y[order]
    gnew = np.r_[True, g[1:] != g[:-1]]
    gstart = np.flatnonzero(gnew)  # first sample of each group
    tnew = gnew | np.r_[True, s[1:] != s[:-1]]
    tstart = np.flatnonzero(tnew)  # first sample of each (group, score) tie run
    tcount = np.diff(np.r_[tstart, n])
    run_group = np.cumsum(gnew)[tstart] - 1  # group index of each tie run
    rank2 = 2 * (tstart - gstart[run_group]) + tcount + 1  # 2 x average rank within the group
    run_r2 = np.add.reduceat(y, tstart) * rank2  # int64
    r2 = np.add.reduceat(run_r2, np.flatnonzero(gnew[tstart]))  # (G,) 2 x positives' rank sum
    size = np.diff(np.r_[gstart, n])
    pos = np.add.reduceat(y, gstart)
    neg = size - pos
    used = (pos > 0) & (neg > 0)
    k = int(used.sum())
    if k == 0:
        return float("nan"), 0, len(gstart), int(pos.sum()), n
    p, q, w = pos[used], neg[used], size[used]
    a = (r2[used] - p * (p + 1)) / (2.0 * p * q)
    return float((w * a).sum() / w.sum()), k, len(gstart), int(pos.sum()), n


def gauc(labels, scores, groups) -> tuple[float, int]:
    """Group AUC (DIN): per-group AUC weighted by group size over groups with both classes; (gauc, groups used)."""
    value, used, n_groups, pos, n = _gauc(labels, scores, groups)
    if used == 0:
        raise ValueError(
            f"GAUC needs at least one group with both a positive and a negative label; none of the {n_groups} groups "
            f"has both ({pos} positives, {n - pos} negatives in total)"
        )
    return value, used


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, ``probs`` clipped to [eps, 1 - eps]."""
    if not 0 < eps < 0.5:
        raise ValueError(f"eps={eps} must be in (0, 0.5)")
    y, p = _labels_scores(labels, probs, "probs")
    if len(y) == 0:
        raise ValueError("log_loss needs at least one sample, got 0")
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"probs must be in [0, 1], got {p[i].item()!r} at index {i} ({int(bad.sum())} values outside); "
            "pass probabilities, not logits"
        )
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def ranking_metrics(labels, logits, groups) -> dict[str, float | int]:
    """AUC, GAUC (+ GAUC_users), LogLoss of sigmoid(logits), samples, positives; see the module docstring.

    GAUC is nan and GAUC_users 0 when no group holds both classes.
    """
    y, s = _labels_scores(labels, logits, "logits")
    value, used = _gauc(y, s, groups)[:2]
    return {
        "AUC": auc(y, s),
        "GAUC": value,
        "GAUC_users": used,
        "LogLoss": log_loss(y, _sigmoid(s)),
        "samples": int(len(y)),
        "positives": int(y.sum()),
    }
