"""What any IVF index over scale.py's vectors can reach on one thread: the probe-recall ceiling and the scan floor.

    python benchmarks/scale.py --items 1000000,10000000 --reference RUN/export --reuse   # builds the cache first
    python benchmarks/ivf_bound.py                                                       # ~1 min (the scan timings take seconds)

For each catalogue size N with a cache under ``benchmarks/work/scale-<N>/`` (the vectors, the 500 queries, their
exact top-300 by inner product, and the IVF index that ``benchmarks/scale.py`` built), it measures:

* **probe recall@300 at nprobe p**: the share of each query's exact top-300 items that lie in the p inverted lists
  the query ranks first against the coarse centroids (exact ranking: the best an HNSW coarse quantizer can do).
  Any IVF index over these lists finds at most those items, whatever it stores per vector (Flat, SQ8, PQ, PQ with a
  perfect refine), so this is the ceiling of recall at nprobe p; the vectors each query then scans are the sizes of
  its p lists (``scanned``).
* **scan cost per code, one thread, one query at a time** (what a served query pays): the index's own 4-bit PQ
  fast-scan over the lists a query probes at the nprobe that reaches 0.95, timed through ``search_preassigned``
  with the exact coarse assignment (so the coarse search is left out) and divided by the codes in those lists
  (the top-300 selection included); and an exact inner-product scan of fp32 vectors (``faiss.IndexFlatIP``) over
  the first 10^6 vectors, per vector. The fast-scan figure with all the timing queries in one call
  (``..._batched``) is lower: codes that several queries probe are read once for all of them, which a query
  served alone cannot share.
* **the floor**: the vectors the smallest 0.95-reaching nprobe scans, times the cheaper of the two per-vector
  costs (``floor_ms``); and what reading those codes alone costs at this thread's measured memory read
  bandwidth (``bandwidth_floor_ms``; ``read_gb_per_s``: numpy summing a 256 MiB array, best of 3). No IVF over
  this quantizer with these codes answers a query at recall 0.95 faster on one thread (the coarse search and any
  refine come on top).

An earlier version timed the fast-scan with nprobe = nlist but left an HNSW coarse quantizer at efSearch 16, which
returns only a few hundred valid lists: it scanned ~5% of the codes and divided by all of them (0.42 ns/code at
10^7, 17x too low). Timing on preassigned lists and counting the codes actually scanned removes that error.

Summary keys, per size (``_1e6``, ``_1e7``): ``probe_recall@300_at_<share>`` for scanned shares 1%, 5%, 10%, 25%;
``nprobe_for_0.95``, ``scanned_share_for_0.95``, ``flat_ns_per_vector``, ``fastscan_ns_per_code`` (and
``_batched``), ``floor_ms``, ``bandwidth_floor_ms``, ``code_bytes``; and ``read_gb_per_s``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"
K = 300
TARGET = 0.95
SHARES = (0.01, 0.05, 0.10, 0.25)


def one(path: Path) -> Path:
    """The one cache file matching the glob ``path`` (an error naming them when several or none match)."""
    found = sorted(path.parent.glob(path.name))
    if len(found) != 1:
        raise ValueError(f"{len(found)} files match {path}: {[f.name for f in found]}; narrow it (--index-glob)")
    return found[0]


def list_of_items(ivf, n: int) -> np.ndarray:
    """(N,) the inverted list each item id lies in (read from the index's lists)."""
    import faiss

    out = np.full(n, -1, np.int32)
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            out[faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()] = lst
    if (out < 0).any():
        raise ValueError(f"{int((out < 0).sum())} items are in no list: the index does not hold the cached vectors")
    return out


def probe_curve(ivf, q: np.ndarray, gt: np.ndarray, where: np.ndarray) -> list[dict]:
    """Recall ceiling and vectors scanned at nprobe = 1, 2, 4, ..., nlist (exact coarse ranking)."""
    cents = ivf.quantizer.reconstruct_n(0, ivf.nlist)  # (nlist, D)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
    order = np.argsort(-(q @ cents.T), axis=1)  # (Q, nlist): each query's lists, best first
    rank = np.empty_like(order)
    rank[np.arange(len(q))[:, None], order] = np.arange(ivf.nlist)[None, :]  # rank[q, list]
    gt_rank = np.take_along_axis(rank, where[gt], axis=1)  # (Q, K): the rank of each true neighbour's list
    cum = np.cumsum(sizes[order], axis=1)  # (Q, nlist): vectors scanned when probing the first p lists
    rows, p = [], 1
    while p <= ivf.nlist:
        rows.append({"nprobe": p, "recall_ceiling": float((gt_rank < p).mean()), "scanned": float(cum[:, p - 1].mean())})
        p *= 2
    return rows


def ns_per_vector(fn, n_vectors: int, queries: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(queries)
        best = min(best, (time.perf_counter() - t0) / len(queries))
    return best / n_vectors * 1e9


def read_bandwidth(mib: int = 256, repeats: int = 3) -> float:
    """Bytes/s one thread reads from memory (numpy summing a `mib` MiB array as uint64, best of `repeats`)."""
    a = np.ones(mib << 17, np.uint64)  # mib MiB
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best


def scan_ns_per_code(ivf, q: np.ndarray, nprobe: int, sizes: np.ndarray, batched: bool = False) -> float:
    """ns per code of the IVF scan over each query's `nprobe` best lists (exact coarse ranking, passed to
    ``search_preassigned``, so the coarse search is not timed), one query per call unless `batched`."""
    cents = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    scores = q @ cents.T
    assign = np.argsort(-scores, axis=1)[:, :nprobe].astype(np.int64)
    dis = np.take_along_axis(scores, assign, axis=1).astype(np.float32)
    codes = float(sizes[assign].sum())
    ivf.nprobe = nprobe  # search_preassigned checks the assignment's width against it
    ivf.search_preassigned(q[:1], K, assign[:1], dis[:1])  # warm-up
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        if batched:
            ivf.search_preassigned(q, K, assign, dis)
        else:
            for i in range(len(q)):
                ivf.search_preassigned(q[i : i + 1], K, assign[i : i + 1], dis[i : i + 1])
        best = min(best, time.perf_counter() - t0)
    return best / codes * 1e9


def measure(n: int, threads: int, timing_queries: int, index_glob: str, read_bps: float) -> tuple[dict, dict]:
    import faiss

    cache = WORK / f"scale-{n}"
    x = np.load(one(cache / "x_*.npy"), mmap_mode="r")
    q = np.load(one(cache / "q_*.npy")).astype(np.float32)
    gt = np.load(one(cache / "gt_*.npy"))[:, :K]
    index = faiss.read_index(str(one(cache / index_glob)))
    ivf = faiss.extract_index_ivf(index)
    where = list_of_items(ivf, x.shape[0])
    curve = probe_curve(ivf, q, gt, where)
    need = next((r for r in curve if r["recall_ceiling"] >= TARGET), curve[-1])
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
    faiss.omp_set_num_threads(threads)
    flat = faiss.IndexFlatIP(x.shape[1])
    m = min(1_000_000, x.shape[0])
    flat.add(np.ascontiguousarray(x[:m], dtype=np.float32))
    tq = q[:timing_queries]
    one_at_a_time = lambda search: lambda qq: [search(qq[i:i + 1], K) for i in range(len(qq))]  # noqa: E731
    flat_ns = ns_per_vector(one_at_a_time(flat.search), m, tq[:8], repeats=1)
    fast_ns = scan_ns_per_code(ivf, tq, need["nprobe"], sizes)
    fast_ns_batch = scan_ns_per_code(ivf, tq, need["nprobe"], sizes, batched=True)
    code_bytes = ivf.code_size if hasattr(ivf, "code_size") else 0
    cheapest = min(flat_ns, fast_ns)
    tag = f"1e{int(round(np.log10(n)))}"
    summary = {f"probe_recall@300_at_{int(s * 100)}pct_{tag}": round(float(np.interp(s * n, [r["scanned"] for r in curve],
                                                                                       [r["recall_ceiling"] for r in curve])), 4)
               for s in SHARES}
    summary.update({
        f"nprobe_for_0.95_{tag}": need["nprobe"], f"nlist_{tag}": ivf.nlist,
        f"scanned_share_for_0.95_{tag}": round(need["scanned"] / n, 4),
        f"flat_ns_per_vector_{tag}": round(flat_ns, 3), f"fastscan_ns_per_code_{tag}": round(fast_ns, 3),
        f"fastscan_ns_per_code_batched_{tag}": round(fast_ns_batch, 3),
        f"floor_ms_{tag}": round(need["scanned"] * cheapest / 1e6, 3),
        f"bandwidth_floor_ms_{tag}": round(need["scanned"] * code_bytes / read_bps * 1e3, 3),
        f"code_bytes_{tag}": code_bytes,
    })
    run = {"items": n, "index": str(one(cache / index_glob).name), "nlist": ivf.nlist, "queries": len(q),
           "timing_queries": timing_queries, "curve": curve, "flat_scan_vectors": m}
    return summary, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="1000000,10000000", help="sizes with a scale.py cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-queries", type=int, default=40)
    ap.add_argument("--index-glob", default="ivf_*PQ64x4fs*.faissindex",
                    help="which cached IVF index (scale.py --index) to read its lists from (default: the PQ64x4fs one, "
                         "the one that reaches recall 0.95)")
    args = ap.parse_args()
    read_bps = read_bandwidth()
    summary, runs = {"target_recall": TARGET, "threads": args.threads, "read_gb_per_s": round(read_bps / 1e9, 2)}, []
    for n in (int(v) for v in args.items.split(",")):
        s, r = measure(n, args.threads, args.timing_queries, args.index_glob, read_bps)
        summary.update(s)
        runs.append(r)
        print(s, flush=True)
    params = {"command": "python benchmarks/ivf_bound.py " + " ".join(sys.argv[1:]), "k": K, **vars(args)}
    write_result("scale_ivf_bound", summary, params, runs, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
