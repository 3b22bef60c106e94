"""Top-K maximum-inner-product retrieval over item embeddings.

Notation: U users, D embedding dim, N rows of the item table (codes 0..N-1,
including 0 = padding and 1 = unknown), K cut-off, E exclusion columns.

Every function scores a user vector u against item rows by the inner product
<u, v_i> and returns the K best item *codes*, best first. Rows 0 and 1 are never
returned. ``exclude`` (U, E), padded with 0, lists per-user codes that must not
be returned either (e.g. items the user has already seen). With ``penalty`` (a
float >= 0, or (U, E) of them, one per ``exclude`` entry; default inf = left
out) those codes are kept but scored <u, v_i> - penalty instead: a matcher's
learned penalty on the items of its input (``MatchConfig.seen_penalty``). An
item listed twice takes its largest penalty. A penalty never raises a score,
so the top K of the penalized scores is still among the top K + E inner
products (what the FAISS path over-fetches): retrieval stays exact.

* :func:`exact_topk` — brute force with torch matmul, chunked over users. The
  result is fully deterministic: the K items are the K highest scores, ties
  (also at the K-th position) going to the lower code, sorted by descending
  score then ascending code. It needs K eligible items for every user.
* :class:`ItemIndex` — a FAISS inner-product index over codes 2..N-1 (FAISS
  position p holds code p + 2): ``flat`` (exact), ``hnsw`` or ``ivf``
  (approximate). Exclusion over-fetches K + (the largest number of exclusions
  of a user) candidates and filters; where fewer than K remain (an approximate
  index may return fewer than asked), rows are padded with code -1 and score
  -inf. Returned rows are sorted by descending score then ascending code; which
  items win a tie at the K-th position is up to FAISS.
* :func:`recall_at_k_vs_exact` — the recall of an approximate index against
  exact search.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import faiss
import numpy as np
import torch

from seqrec import features as F
from seqrec import metrics, storage

KINDS = ("flat", "hnsw", "ivf")
_EXACT_BUDGET = 1 << 26  # max elements of one (chunk, N) score block in exact_topk (256 MiB float32)
_FILTER_BUDGET = 1 << 24  # max elements of one (chunk, fetch, E) comparison block


def _vecs(x, name: str) -> torch.Tensor:
    """(rows, D) float32 tensor, non-float input cast; keeps a torch tensor's device."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; check the model that produced the embeddings")
    return x


def _check(users: torch.Tensor, d_items: int, k: int) -> None:
    if users.shape[1] != d_items:
        raise ValueError(f"user vectors have dim {users.shape[1]} but item vectors have dim {d_items}; "
                         "use embeddings from the same model")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")


def _exclude(exclude, n_users: int, n_items: int) -> np.ndarray:
    """(U, E) int64 codes, validated; E = 0 when there is nothing to exclude."""
    if exclude is None:
        return np.zeros((n_users, 0), dtype=np.int64)
    if isinstance(exclude, torch.Tensor):
        exclude = exclude.detach().cpu().numpy()
    exclude = np.asarray(exclude)
    if not np.issubdtype(exclude.dtype, np.integer):
        raise TypeError(f"exclude must hold integer item codes, got dtype {exclude.dtype}; cast it with .astype(np.int64)")
    if exclude.ndim != 2 or exclude.shape[0] != n_users:
        raise ValueError(f"exclude must be (users, E) = ({n_users}, E) padded with 0, got shape {exclude.shape}")
    if exclude.size and (exclude.min() < 0 or exclude.max() >= n_items):
        raise ValueError(f"exclude holds codes in [{exclude.min()}, {exclude.max()}] outside the item table [0, {n_items}); "
                         "pad with 0 and pass codes of this item table")
    return exclude.astype(np.int64, copy=False)


def _penalty(penalty, exclude: np.ndarray) -> np.ndarray:
    """(U, E) float32 penalties >= 0 of ``exclude``'s entries (a scalar is broadcast); inf leaves an item out."""
    pen = np.asarray(penalty.detach().cpu().numpy() if isinstance(penalty, torch.Tensor) else penalty, dtype=np.float32)
    if pen.ndim not in (0, 2) or (pen.ndim == 2 and pen.shape != exclude.shape):
        raise ValueError(f"penalty must be a float or (users, E) = {exclude.shape} like exclude, got shape {pen.shape}")
    if np.isnan(pen).any() or (pen < 0).any():
        raise ValueError("penalty must be >= 0 (subtracted from the listed items' scores, inf to leave them out); got "
                         f"{pen.min() if pen.size else pen}: a bonus would need items outside the top K + E")
    return np.broadcast_to(pen, exclude.shape)


def _n_excluded(exclude: np.ndarray) -> np.ndarray:
    """(U,) number of distinct real codes (>= 2) per exclude row."""
    s = np.sort(exclude, axis=1)
    first = np.ones_like(s, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return (first & (s >= F.FIRST_CODE)).sum(axis=1)


def exact_topk(user_vecs, item_vecs, k: int, exclude=None, chunk: int = 4096,
               penalty=math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` item codes by inner product: (scores float32 (U, k), ids int64 (U, k)).

    ``exclude`` codes are left out, or with a finite ``penalty`` (module doc) scored lower by it.

    Ties are broken by the lower code, also at the k-th position: ``torch.topk``
    picks k items; in the (rare) rows where the (k+1)-th best score equals the
    k-th, t, the pick is redone as every item scoring > t plus the
    lowest-code items scoring == t. The k items are then sorted by code and
    stable-sorted by descending score. ``chunk`` caps users per matmul; it is lowered so
    one (chunk, N) block stays under 2**26 scores.
    """
    items = _vecs(item_vecs, "item_vecs")
    users = _vecs(user_vecs, "user_vecs").to(items.device)
    _check(users, items.shape[1], k)
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1 (users per matmul)")
    U, N = users.shape[0], items.shape[0]
    exclude = _exclude(exclude, U, N)
    pen = _penalty(penalty, exclude)
    dropped = np.where(np.isinf(pen), exclude, 0)  # the entries left out, not merely penalized
    eligible = N - F.FIRST_CODE - (_n_excluded(dropped) if exclude.shape[1] else np.zeros(U, dtype=np.int64))
    if U and k > eligible.min():
        r = int(np.argmin(eligible))
        raise ValueError(f"k={k} is more than the {int(eligible.min())} eligible items of user row {r} "
                         f"({N} item rows minus padding/unknown and that user's exclusions); lower k")
    excl = torch.from_numpy(exclude).to(items.device)
    pens = torch.from_numpy(np.array(pen, dtype=np.float32)).to(items.device)  # a writable copy of the view
    step = max(1, min(int(chunk), _EXACT_BUDGET // max(N, 1)))
    scores, ids = np.empty((U, k), dtype=np.float32), np.empty((U, k), dtype=np.int64)
    with torch.no_grad():
        for s in range(0, U, step):
            sc = users[s : s + step] @ items.T  # (C, N)
            sc[:, : F.FIRST_CODE] = -math.inf
            if excl.shape[1]:  # padding 0 hits an already masked column; an item listed twice gets its largest penalty
                e = excl[s : s + step]
                sc.scatter_reduce_(1, e, sc.gather(1, e) - pens[s : s + step], reduce="amin")
            val, top = torch.topk(sc, k + 1, dim=1)  # (C, k + 1); k + 1 <= N as k <= N - 2
            kth, top = val[:, k - 1 : k], top[:, :k]  # (C, 1) k-th best score, (C, k)
            amb = (val[:, k] == val[:, k - 1]).nonzero()[:, 0]  # rows where a tie straddles the k-th slot (rare)
            if len(amb):  # take every score > kth, then the lowest codes scoring == kth
                a, t = sc[amb], kth[amb]  # (A, N), (A, 1)
                tie = a == t
                take = (a > t) | (tie & (tie.cumsum(dim=1) <= k - (a > t).sum(dim=1, keepdim=True)))
                top[amb] = take.nonzero()[:, 1].view(-1, k)  # (A, k)
            top = torch.sort(top, dim=1).values  # ascending code, so the stable sort below keeps ties by code
            val = sc.gather(1, top)
            order = torch.sort(val, dim=1, descending=True, stable=True).indices
            scores[s : s + step] = val.gather(1, order).cpu().numpy()
            ids[s : s + step] = top.gather(1, order).cpu().numpy()
    return scores, ids


def recall_at_k_vs_exact(approx_ids, exact_ids) -> float:
    """Mean over users of |approx ∩ exact| / k, both (U, k) codes; -1 (missing) never matches."""
    a, e = np.asarray(approx_ids), np.asarray(exact_ids)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"approx_ids {a.shape} and exact_ids {e.shape} must have the same (users, k) shape")
    return float(metrics.per_user_hits(a, np.where(e < 0, F.PAD, e), a.shape[1]).mean() / a.shape[1])


class ItemIndex:
    """A FAISS inner-product index over item codes 2..N-1 (FAISS position p = code p + 2).

    Build with :meth:`build`, query with :meth:`search`, persist with
    :meth:`save` / :meth:`load`. ``meta`` is a caller-owned JSON-serialisable
    dict stored next to the index (e.g. the checkpoint version it was built from).
    """

    INDEX_FILE, META_FILE = "items.faiss", "index.json"

    def __init__(self, index, kind: str, params: dict, n_items: int, dim: int, meta: dict | None = None):
        self.index, self.kind, self.params = index, kind, dict(params)
        self.n_items, self.dim, self.meta = int(n_items), int(dim), dict(meta or {})
        self.on_gpu = False

    def __repr__(self) -> str:
        return f"ItemIndex(kind={self.kind!r}, n_items={self.n_items}, dim={self.dim}, params={self.params}, on_gpu={self.on_gpu})"

    @classmethod
    def build(cls, item_vecs, kind: str = "flat", *, hnsw_m: int = 32, ef_search: int = 128, ivf_nlist: int | None = None,
              nprobe: int = 16, use_gpu: bool = False, threads: int | None = None, meta: dict | None = None) -> ItemIndex:
        """Index rows 2..N-1 of ``item_vecs`` (N, D); rows 0 and 1 (padding, unknown) are left out.

        ``hnsw``: IndexHNSWFlat(M=hnsw_m, efConstruction=200, efSearch=ef_search).
        ``ivf``: IndexIVFFlat trained on the item vectors, ``ivf_nlist`` lists
        (default round(4·sqrt(n)) clipped to [1, n // 39], so each list has the 39
        training points FAISS asks for), ``nprobe`` probed (at most nlist).
        ``threads`` sets FAISS's OpenMP threads (process-wide); left alone when None.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        try:
            json.dumps(meta or {})
        except TypeError as e:
            raise TypeError(f"meta must be JSON-serialisable (it is saved as JSON): {e}") from None
        _threads(threads)
        x = _vecs(item_vecs, "item_vecs").cpu().numpy()
        N, D = x.shape
        n = N - F.FIRST_CODE
        if n < 1:
            raise ValueError(f"item_vecs has {N} rows; it needs padding, unknown and at least one item (>= 3 rows)")
        x = np.ascontiguousarray(x[F.FIRST_CODE :])  # (n, D)
        if kind == "flat":
            index, params = faiss.IndexFlatIP(D), {}
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(D, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 200
            index.hnsw.efSearch = int(ef_search)
            params = {"hnsw_m": int(hnsw_m), "ef_search": int(ef_search), "ef_construction": 200}
        else:
            nlist = int(ivf_nlist) if ivf_nlist is not None else max(1, min(round(4 * math.sqrt(n)), n // 39))
            if not 1 <= nlist <= n:
                raise ValueError(f"ivf_nlist={nlist} must be in [1, {n}] (the number of items)")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(int(nprobe), nlist)
            params = {"ivf_nlist": nlist, "nprobe": index.nprobe}
        index.add(x)
        self = cls(index, kind, params, N, D, meta)
        return self.to_gpu() if use_gpu else self

    def to_gpu(self) -> ItemIndex:
        """Move the index to all visible GPUs (faiss.index_cpu_to_all_gpus); ValueError when there are none."""
        if self.kind == "hnsw":
            raise ValueError("FAISS has no GPU version of an hnsw index; build kind='flat' or 'ivf' for GPU search")
        if faiss.get_num_gpus() == 0:
            raise ValueError("use_gpu=True but FAISS sees no GPU (faiss-cpu build or no visible device); pass use_gpu=False")
        if not self.on_gpu:
            self.index, self.on_gpu = faiss.index_cpu_to_all_gpus(self.index), True
        return self

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> ItemIndex:
        """Change the search-time knobs without rebuilding: ``ef_search`` (hnsw), ``nprobe`` (ivf)."""
        given = {"ef_search": ef_search, "nprobe": nprobe}
        for name, v in given.items():
            if v is None:
                continue
            if name not in self.params:
                raise ValueError(f"{name} does not apply to a {self.kind!r} index")
            if v < 1:
                raise ValueError(f"{name}={v} must be >= 1")
            v = min(int(v), self.params["ivf_nlist"]) if name == "nprobe" else int(v)
            ps = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
            ps.set_index_parameter(self.index, "efSearch" if name == "ef_search" else "nprobe", v)
            self.params[name] = v
        return self

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, user_vecs, k: int, exclude=None, penalty=math.inf) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item codes by inner product: (scores float32 (U, k), ids int64 (U, k)), -1 / -inf padded;
        ``exclude`` codes left out, or with a finite ``penalty`` (module doc) scored lower by it."""
        users = _vecs(user_vecs, "user_vecs")
        _check(users, self.dim, k)
        if k > self.ntotal:
            raise ValueError(f"k={k} is more than the {self.ntotal} indexed items; lower k")
        q = np.ascontiguousarray(users.cpu().numpy())  # (U, D)
        U = q.shape[0]
        exclude = _exclude(exclude, U, self.n_items)
        pen = _penalty(penalty, exclude)
        extra = int(_n_excluded(exclude).max()) if exclude.shape[1] and U else 0
        fetch = min(k + extra, self.ntotal)
        params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], fetch)) if self.kind == "hnsw" else None
        sc, pos = self.index.search(q, fetch, params=params)  # (U, fetch)
        ids = np.where(pos >= 0, pos + F.FIRST_CODE, -1)
        keep = pos >= 0
        sc = np.where(keep, sc, -np.inf).astype(np.float32)
        if extra:
            step = max(1, _FILTER_BUDGET // (fetch * exclude.shape[1]))
            for s in range(0, U, step):  # (C, fetch, E) -> (C, fetch): each fetched item's largest penalty, 0 if unlisted
                hit = ids[s : s + step, :, None] == exclude[s : s + step, None, :]
                sc[s : s + step] -= np.where(hit, pen[s : s + step, None, :], np.float32(0)).max(axis=2)
            keep &= np.isfinite(sc)
        ids = np.where(keep, ids, -1)
        order = np.lexsort((ids, -sc), axis=1)[:, :k]  # descending score, then ascending code; dropped ones (-inf) last
        return np.take_along_axis(sc, order, 1), np.take_along_axis(ids, order, 1).astype(np.int64)

    def save(self, path) -> Path | str:
        """Write ``items.faiss`` (faiss.write_index, CPU copy) and ``index.json`` into directory ``path``; a storage
        URI (:mod:`seqrec.storage`) is written locally and uploaded in place of the index there (FAISS writes local
        files only)."""
        if storage.is_uri(path):
            with storage.local_output(path, replace=True) as local:
                self.save(local)
            return path
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index, str(d / self.INDEX_FILE))
        info = {"format": 1, "kind": self.kind, "params": self.params, "n_items": self.n_items, "dim": self.dim, "meta": self.meta}
        (d / self.META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        return d

    @classmethod
    def load(cls, path, *, use_gpu: bool = False, threads: int | None = None) -> ItemIndex:
        """Read an index written by :meth:`save` (from a local copy of a storage URI: FAISS reads local files only)."""
        d = storage.local_copy(path)
        if not (d / cls.META_FILE).is_file() or not (d / cls.INDEX_FILE).is_file():
            raise ValueError(f"{d} is not a saved ItemIndex (needs {cls.INDEX_FILE} and {cls.META_FILE}); write one with ItemIndex.save")
        _threads(threads)
        info = json.loads((d / cls.META_FILE).read_text())
        index = faiss.read_index(str(d / cls.INDEX_FILE))
        if index.ntotal != info["n_items"] - F.FIRST_CODE or index.d != info["dim"]:
            raise ValueError(f"{d}: {cls.INDEX_FILE} holds {index.ntotal} vectors of dim {index.d} but {cls.META_FILE} says "
                             f"{info['n_items'] - F.FIRST_CODE} of dim {info['dim']}; the two files are from different builds")
        self = cls(index, info["kind"], info["params"], info["n_items"], info["dim"], info.get("meta"))
        return self.to_gpu() if use_gpu else self


def _threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads} must be >= 1 (or None to leave FAISS's setting alone)")
        faiss.omp_set_num_threads(int(threads))
