"""Item-based collaborative filtering: the SDM paper's online matching baseline (§5.2).

The user's latest interacted items (*triggers*) recall similar items from an
item-item similarity matrix built from co-occurrences inside sessions.

Notation: R training rows (sessions) of length T (padded with 0 on the right),
N items in the item table (codes 0 = padding, 1 = unknown, 2..N-1 real items),
U users to score, K = ``top_neighbors`` similar items kept per item,
W = ``window``, n = ``n_triggers``, E excluded ids per user.

Fit. Positions ``t < lengths[r]`` holding a real item (code >= 2) are
*occurrences*; ``c_i`` counts the occurrences of item i. Two occurrences
``(a at t, b at t + d)`` of the same row with ``1 <= d <= W`` and ``a != b``
co-occur; ``c_ab`` counts co-occurrences in both directions (``c_ab == c_ba``),
one per pair of positions, so an item repeated in a session counts every time.

* ``similarity="cosine"``: ``sim(a, b) = c_ab / sqrt(c_a c_b)`` (a repeated item
  can push this above 1; it is a ranking weight, not a bounded cosine);
* ``similarity="count"``: ``sim(a, b) = c_ab``.

Per item the K largest similarities are kept (ties: lower code first), as a
sparse table ``neighbors (N, K) int64`` (padded with 0) and ``weights (N, K)
float32`` (padded with 0.0), each row sorted by descending weight. Rows 0 and 1
are all padding.

Score. For a trigger row of length L the triggers are the last ``min(n, L)``
positions, the most recent (position L-1) has age 0::

    score(j) = sum_{age < min(n, L)} decay**age * sim(trigger[L-1-age], j)

Padding and unknown codes in those positions take their slot but add nothing.
Items without similarity to any trigger score 0, so they still rank
(deterministically, by lower code) after the scored ones; codes 0 and 1 score
-inf. ``topk`` ranks by descending score, ties by lower code, and never returns
0, 1 or an excluded id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from seqrec import features as F

SIMILARITIES = ("cosine", "count")


@dataclass(frozen=True)
class ItemCFConfig:
    """Item-CF hyper-parameters (SDM §5.2 online baseline)."""

    window: int = 5  # W: co-occurrence window, in positions, inside one session
    n_triggers: int = 10  # n: latest items of the user that recall
    top_neighbors: int = 200  # K: similar items kept per item
    similarity: str = "cosine"  # cosine | count
    recency_decay: float = 0.9  # weight of a trigger of age a is recency_decay**a

    def __post_init__(self) -> None:
        for name in ("window", "n_triggers", "top_neighbors"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity={self.similarity!r} is not one of {SIMILARITIES}; use 'cosine' or 'count'")
        if not 0.0 < float(self.recency_decay) <= 1.0:
            raise ValueError(
                f"recency_decay={self.recency_decay} must be in (0, 1]; use 1.0 for no decay, e.g. 0.9 to favour recent items"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _check_rows(seqs, lengths, n_items: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated (R, T) int64 codes and (R,) int64 lengths."""
    seqs = np.asarray(seqs)
    lengths = np.asarray(lengths)
    if seqs.ndim != 2:
        raise ValueError(f"{what} must be a 2-d (rows, length) array of item codes, got shape {seqs.shape}")
    if seqs.size and not np.issubdtype(seqs.dtype, np.integer):
        raise ValueError(f"{what} must hold integer item codes, got dtype {seqs.dtype}")
    if lengths.shape != (seqs.shape[0],):
        raise ValueError(
            f"lengths must have shape ({seqs.shape[0]},) to match {what} of shape {seqs.shape}, got {lengths.shape}"
        )
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    seqs = seqs.astype(np.int64, copy=False)
    lengths = lengths.astype(np.int64, copy=False)
    if lengths.size and (lengths.min() < 0 or lengths.max() > seqs.shape[1]):
        raise ValueError(
            f"lengths must be in [0, {seqs.shape[1]}] (the {what} width), got min {lengths.min()} max {lengths.max()}"
        )
    if seqs.size:
        lo, hi = int(seqs.min()), int(seqs.max())
        if hi >= n_items:
            raise ValueError(
                f"{what} holds item code {hi} but n_items={n_items} (codes must be < n_items); "
                "encode with the same item vocabulary the model was fitted on"
            )
        if lo < 0:
            raise ValueError(f"{what} holds negative item code {lo}; codes must be in [0, {n_items})")
    return seqs, lengths


class ItemCF:
    """Item-item co-occurrence similarity and trigger-based recall.

    ``ItemCF(config).fit(seqs, lengths, n_items)``, then ``scores`` / ``topk``;
    ``state_dict`` / ``from_state`` save and restore a fitted model.
    """

    def __init__(self, config: ItemCFConfig | None = None) -> None:
        self.config = config if config is not None else ItemCFConfig()
        self.n_items: int | None = None
        self.neighbors: np.ndarray | None = None  # (N, K) int64, 0-padded
        self.weights: np.ndarray | None = None  # (N, K) float32, 0-padded, rows non-increasing
        self.item_counts: np.ndarray | None = None  # (N,) int64 occurrences c_i

    # ------------------------------------------------------------------ fit
    def fit(self, seqs: np.ndarray, lengths: np.ndarray, n_items: int) -> "ItemCF":
        """Build the top-K similarity table from (R, T) sessions padded with 0 on the right."""
        n_items = int(n_items)
        if n_items <= F.FIRST_CODE:
            raise ValueError(
                f"n_items={n_items} must be > {F.FIRST_CODE} (codes 0 and 1 are padding and unknown; "
                "pass the item table size including them)"
            )
        seqs, lengths = _check_rows(seqs, lengths, n_items, "seqs")
        cfg = self.config
        N = n_items
        R, T = seqs.shape

        valid = (np.arange(T)[None, :] < lengths[:, None]) & (seqs >= F.FIRST_CODE)  # (R, T)
        counts = np.bincount(seqs[valid], minlength=N).astype(np.int64)  # (N,) c_i

        # Unordered pairs {a, b}, a < b, keyed a*N + b; one np.unique per offset bounds peak memory.
        keys, cnts = [], []
        for d in range(1, min(cfg.window, T - 1) + 1):
            a, b = seqs[:, :-d], seqs[:, d:]  # (R, T-d) each
            m = valid[:, :-d] & valid[:, d:] & (a != b)
            lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
            if lo.size:
                k, c = np.unique(lo * N + hi, return_counts=True)
                keys.append(k)
                cnts.append(c)
        if not keys:
            raise ValueError(
                f"no co-occurring pairs were found in {R} rows (window={cfg.window}): every row has fewer than 2 "
                "distinct real items (codes >= 2) within the window; check the window and the data (lengths, padding)"
            )
        key, inv = np.unique(np.concatenate(keys), return_inverse=True)  # (P,)
        c_ab = np.bincount(inv.reshape(-1), weights=np.concatenate(cnts)).astype(np.int64)  # (P,)
        a, b = key // N, key % N

        # Both directions: (M,) with M = 2P.
        rows = np.concatenate([a, b])
        cols = np.concatenate([b, a])
        c2 = np.concatenate([c_ab, c_ab]).astype(np.float64)
        if cfg.similarity == "cosine":
            w = c2 / np.sqrt(counts[rows].astype(np.float64) * counts[cols])
        else:
            w = c2
        w = w.astype(np.float32)  # sort on the stored values so ties are exactly the stored ties

        order = np.lexsort((cols, -w, rows))  # by row, then descending weight, then lower code
        rows, cols, w = rows[order], cols[order], w[order]
        deg = np.bincount(rows, minlength=N)  # (N,)
        start = np.cumsum(deg) - deg  # (N,) first sorted entry of each row
        rank = np.arange(rows.size) - start[rows]  # (M,) position inside its row
        keep = rank < cfg.top_neighbors

        K = cfg.top_neighbors
        self.neighbors = np.zeros((N, K), np.int64)
        self.weights = np.zeros((N, K), np.float32)
        self.neighbors[rows[keep], rank[keep]] = cols[keep]
        self.weights[rows[keep], rank[keep]] = w[keep]
        self.item_counts = counts
        self.n_items = N
        return self

    # --------------------------------------------------------------- scoring
    def _require_fit(self) -> None:
        if self.neighbors is None:
            raise RuntimeError("ItemCF is not fitted: call fit() or ItemCF.from_state() first")

    def scores(self, trigger: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(U, N) float32 scores of every item for (U, T) trigger rows padded with 0 on the right."""
        self._require_fit()
        trigger, lengths = _check_rows(trigger, lengths, self.n_items, "trigger")
        return self._scores(trigger, lengths)

    def _scores(self, trigger: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """``scores`` on validated int64 inputs."""
        U, N = trigger.shape[0], self.n_items
        cell, val = self._sparse_scores(trigger, lengths)
        out = np.zeros(U * N, np.float32)  # (U N,)
        out[cell] = val
        out = out.reshape(U, N)
        out[:, : F.FIRST_CODE] = -np.inf
        return out

    def _sparse_scores(self, trigger: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positive scores only: (C,) sorted unique cells ``u*N + j`` and their (C,) float32 scores (> 0)."""
        N, n = self.n_items, self.config.n_triggers
        U = trigger.shape[0]

        age = np.arange(n)  # (n,)
        pos = lengths[:, None] - 1 - age[None, :]  # (U, n) position of the trigger of each age, < 0: none
        codes = np.zeros((U, n), np.int64)  # (U, n) trigger codes, 0 where none
        has = pos >= 0
        codes[has] = trigger[np.nonzero(has)[0], pos[has]]
        ok = codes >= F.FIRST_CODE  # padding / unknown triggers add nothing
        decay = np.float64(self.config.recency_decay) ** age  # (n,)

        nb = self.neighbors[codes]  # (U, n, K)
        w = self.weights[codes].astype(np.float64) * (decay * ok)[:, :, None]  # (U, n, K)
        flat = (np.arange(U, dtype=np.int64)[:, None, None] * N + nb).reshape(-1)  # (U n K,) cell u*N + j
        w = w.reshape(-1)
        nz = w != 0.0  # drop padding slots and masked triggers
        cell, inv = np.unique(flat[nz], return_inverse=True)  # (C,)
        val = np.bincount(inv.reshape(-1), weights=w[nz], minlength=cell.size).astype(np.float32)  # float64 sums
        pos_ = val > 0  # a float32 underflow to 0 is an unscored item
        return cell[pos_], val[pos_]

    def topk(
        self,
        trigger: np.ndarray,
        lengths: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        chunk_size: int = 1024,
    ) -> np.ndarray:
        """(U, k) int64 item codes by descending score, ties by lower code; never 0, 1 or an id in ``exclude``.

        Same order as a stable descending sort of ``scores`` with excluded ids
        removed, but without the dense (U, N) matrix: the scored items (at most
        n*K per user) are ranked first, then the unscored ones (score 0) fill up
        by lowest code. ``exclude`` is (U, E) item codes (0-padded) to leave out,
        e.g. the user's history. Users go ``chunk_size`` at a time (memory
        ~ chunk_size * (n K + k + E)). Raises ValueError when a row has fewer than
        k eligible items.
        """
        self._require_fit()
        N = self.n_items
        trigger, lengths = _check_rows(trigger, lengths, N, "trigger")
        U = trigger.shape[0]
        k = int(k)
        if not 1 <= k <= N - F.FIRST_CODE:
            raise ValueError(f"k={k} must be in [1, {N - F.FIRST_CODE}] (the number of real items, n_items={N} - 2)")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        if exclude is None:
            exclude = np.zeros((U, 0), np.int64)
        exclude = np.asarray(exclude)
        if exclude.ndim != 2 or exclude.shape[0] != U:
            raise ValueError(f"exclude must have shape ({U}, E) to match trigger {trigger.shape}, got {exclude.shape}")
        if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
            raise ValueError(f"exclude must hold integer item codes, got dtype {exclude.dtype}")
        exclude = exclude.astype(np.int64, copy=False)
        if exclude.size and (exclude.min() < 0 or exclude.max() >= N):
            bad = int(exclude.max()) if exclude.max() >= N else int(exclude.min())
            raise ValueError(f"exclude holds item code {bad} outside [0, {N}) (n_items={N})")

        out = np.zeros((U, k), np.int64)
        for s in range(0, U, int(chunk_size)):
            e = min(U, s + int(chunk_size))
            out[s:e] = self._topk_chunk(trigger[s:e], lengths[s:e], k, exclude[s:e], s)
        return out

    def _topk_chunk(self, trigger, lengths, k: int, exclude: np.ndarray, first_row: int) -> np.ndarray:
        """``topk`` of u validated rows; ``first_row`` only names rows in errors."""
        N = self.n_items
        u = trigger.shape[0]
        rows = np.arange(u, dtype=np.int64)

        # Excluded cells, sorted unique; codes 0 and 1 are never candidates anyway.
        ex = exclude >= F.FIRST_CODE  # (u, E)
        ex_cell = np.unique(rows[:, None].repeat(exclude.shape[1], 1)[ex] * N + exclude[ex])  # (X,)
        n_ok = (N - F.FIRST_CODE) - np.bincount(ex_cell // N, minlength=u)  # (u,) eligible items
        if (n_ok < k).any():
            bad = int(np.argmax(n_ok < k))
            raise ValueError(
                f"user row {first_row + bad} has only {int(n_ok[bad])} items left after excluding codes 0, 1 and "
                f"its exclude list, fewer than k={k}; lower k or shorten the exclude list"
            )

        # 1) Scored items, minus the excluded ones: by row, descending score, lower code; the first k per row.
        cell, val = self._sparse_scores(trigger, lengths)  # (C,)
        cell_ok = ~np.isin(cell, ex_cell, assume_unique=True)
        cell, val = cell[cell_ok], val[cell_ok]
        r, j = cell // N, cell % N
        order = np.lexsort((j, -val, r))
        r, j = r[order], j[order]
        n_pos = np.bincount(r, minlength=u)  # (u,) scored eligible items per row
        rank = np.arange(r.size) - (np.cumsum(n_pos) - n_pos)[r]
        top = rank < k
        out = np.zeros((u, k), np.int64)
        out[r[top], rank[top]] = j[top]
        n_top = np.minimum(n_pos, k)  # (u,)

        # 2) Fill the rest with unscored eligible items by lowest code: they are among the first
        #    k + (scored + excluded) real codes of the row, so a (u, Wd) window of candidates suffices.
        need = k - n_top  # (u,)
        if need.any():
            n_ex = np.bincount(ex_cell // N, minlength=u)
            Wd = int(min(N - F.FIRST_CODE, (need + n_pos + n_ex).max()))
            cand = F.FIRST_CODE + np.arange(Wd, dtype=np.int64)  # (Wd,)
            cand_cell = (rows[:, None] * N + cand[None, :]).reshape(-1)  # (u Wd,)
            taken = np.isin(cand_cell, cell, assume_unique=True) | np.isin(cand_cell, ex_cell, assume_unique=True)
            free = ~taken.reshape(u, Wd)  # (u, Wd)
            nth = np.cumsum(free, axis=1)  # (u, Wd) 1-based rank among free candidates
            pick = free & (nth <= need[:, None])
            pr, pc = np.nonzero(pick)
            out[pr, n_top[pr] + nth[pr, pc] - 1] = cand[pc]
        return out

    # ------------------------------------------------------------ save/load
    def state_dict(self) -> dict:
        """Plain numpy arrays, ``n_items`` (int) and the config (dict of plain values).

        ``torch.save`` it as is (load with ``weights_only=False``, or convert the
        arrays with ``torch.from_numpy`` first to keep the default safe loading);
        for ``np.savez`` pass ``config=json.dumps(state["config"])``.
        """
        self._require_fit()
        return {
            "config": self.config.to_dict(),
            "n_items": int(self.n_items),
            "neighbors": self.neighbors,  # (N, K) int64
            "weights": self.weights,  # (N, K) float32
            "item_counts": self.item_counts,  # (N,) int64
        }

    @classmethod
    def from_state(cls, state) -> "ItemCF":
        """Rebuild from ``state_dict()`` output, a loaded ``np.savez`` archive or a ``torch.load`` result.

        ``config`` may be a dict, a JSON string or a 0-d string array (what
        ``np.load`` returns for a string saved with ``np.savez``); arrays may be
        numpy arrays or CPU tensors.
        """
        missing = [k for k in ("config", "n_items", "neighbors", "weights", "item_counts") if k not in state]
        if missing:
            raise ValueError(f"ItemCF state is missing {missing}; save it with ItemCF.state_dict()")
        cfg = state["config"]
        if isinstance(cfg, np.ndarray):
            cfg = cfg.item()
        if isinstance(cfg, (str, bytes)):
            cfg = json.loads(cfg)
        model = cls(ItemCFConfig(**cfg))
        N = int(np.asarray(state["n_items"]))
        nb = np.asarray(state["neighbors"]).astype(np.int64, copy=False)
        w = np.asarray(state["weights"]).astype(np.float32, copy=False)
        c = np.asarray(state["item_counts"]).astype(np.int64, copy=False)
        K = model.config.top_neighbors
        if nb.shape != (N, K) or w.shape != (N, K) or c.shape != (N,):
            raise ValueError(
                f"ItemCF state shapes do not match n_items={N}, top_neighbors={K}: neighbors {nb.shape}, "
                f"weights {w.shape}, item_counts {c.shape} (expected ({N}, {K}), ({N}, {K}), ({N},))"
            )
        model.n_items, model.neighbors, model.weights, model.item_counts = N, nb, w, c
        return model
