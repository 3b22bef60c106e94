"""Scale check: the memory model of docs/scale.md against measured runs at 10^6 / 10^7 items.

    python benchmarks/scale.py --items 1000000,10000000 --reference runs/ml-100k/train/PSDMMAL-seed0/export
    python benchmarks/scale.py --items 1000000,10000000 --reference ... --reuse   # re-measure from the caches

Notation: N items, D vector size, M PQ sub-quantizers, nbits bits per sub-quantizer code, nlist IVF
lists, nprobe lists probed per query, k = 300 the cut-off, Q queries.

**Reference.** A trained SDM export (``--reference``: ``item_embeddings.npy``, rows 0 and 1,
padding and unknown, dropped; ``export.json``). Cluster count K: spherical k-means (faiss) on the
unit directions for K in ``--k-grid``, the K with the highest mean cosine silhouette. Cluster c has
weight w_c (its share of items). If the export's ``dataset.data_dir`` still holds its prepared test
split, the model (rebuilt from ``export/model``) encodes up to 2,000 test rows: the real user
vectors.

**Item vector generators** (all draw the cluster c with probability w_c):

* ``isotropic``: u = normalise(m_c + s_c · z), z ~ N(0, I_D), m_c the mean unit direction of
  cluster c (not renormalised), s_c the RMS per dimension of its residuals u - m_c; the norm is a
  random reference norm times (1 + 0.01 · N(0, 1));
* ``dir-cov``: u = normalise(m_c + L_c z) with L_c L_c^T the covariance of cluster c's direction
  residuals u - m_c (full D × D); the norm as above;
* ``raw-cov``: v = μ_c + R_c z with μ_c and R_c R_c^T the mean and the full covariance of
  cluster c's raw reference vectors (norms and directions come out together, as does their
  correlation).

**Query generators** ("drawn like user vectors"):

* ``cluster-spread``: a cluster by weight, q = normalise(m̂_c + s_q · z), s_q set so that the mean
  cosine to m̂_c matches the real users' mean cosine to their nearest item-cluster direction;
* ``user-gaussian``: q = μ_U + L_U z with μ_U and L_U L_U^T the mean and the full covariance of
  the real user vectors.

Without user vectors the queries are drawn as items.

**Choosing the generators.** Each candidate is drawn at the reference's size (3 seeds), and
statistics are computed on it and on the reference in the same way. The candidate with the lowest
mean discrepancy, mean over statistics of |synthetic − reference| / max(|reference|, 0.1), is
used. Item statistics: norm p1 / p50 / p99; cluster weights (assignment to the nearest reference
cluster direction); mean cosine to that direction; the share of the direction residuals' variance
in the top 1 / 4 / 16 principal components and their participation ratio; nearest-neighbour
cosine p10 / p50 / p90 and pairwise cosine p1 / p50 / p99 within the set; the correlation of the
norm with the cosine to the mean item direction; and, given user vectors, the real users'
scores against the set (top 1, rank 1 %, median; divided by the user's norm). Query statistics:
top 1 / 4 principal component shares and participation ratio of the unit directions, the norm of
their mean, its cosine to the mean item direction, pairwise cosine p1 / p50 / p99, and the
scores against the reference items (top 1, rank 300, median; divided by the query norm). All
statistics of the reference and of every candidate go into the result (``params.generators``).
Without ``--reference`` a Gaussian mixture with stated parameters (``FALLBACK``) is used.

**Index.** For each ``--index`` spec (a faiss ``index_factory`` string, ``{nlist}`` and ``{m}``
filled in; inner product), nlist from ``--nlist`` (``auto`` = the power of two nearest 2·sqrt(N)),
trained on ``--train-per-list`` × nlist vectors with ``--build-threads`` threads, then wrapped in
``IndexRefineFlat`` (the fp32 vectors; ``k_factor`` = 1 means no refine). An HNSW coarse
quantizer searches with efSearch = 2 · nprobe.

**Measured per N**: the item table in fp32 (numpy), bf16 (torch) and int8 (+ one fp32 scale per
row) as array bytes and process RSS delta; per index its build time, its size written by
``faiss.write_index`` (against the serialized model) and the anonymous-memory growth (RssAnon) of a
fresh process that reads it back (against the resident model: ``ivfpq_bytes(resident=True)``); the
refine store the same way, plus its RSS delta in this process; recall@300 against exact
inner-product search (``faiss.knn``) on ``--queries`` queries for every (nprobe, k_factor);
single-query latency on ``--threads`` threads: every query timed ``--repeats`` times, p50 / p99
over all timings (``p50_min_ms``: the p50 over queries of each query's fastest time, a
quiet-machine estimate, reported beside it; the 1-minute load average before and after each sweep
is recorded). The chosen configuration is the fastest (p50) with recall >= 0.95, else the most
accurate. Next to every memory figure: the model's prediction (the functions below, the formulas of
docs/scale.md) and the relative error (measured − predicted) / predicted;
``memory_model_max_rel_error`` is the largest |error| over all of them (tables: array and RSS;
every index: file and fresh-process RSS; refine store: file, fresh-process RSS and RSS delta) at
every N.

**Caches** (``benchmarks/work/scale-<N>/``, keyed by a hash of the generator's parameters, the seed
and the index spec): the vectors (``.npy``), the queries, the exact ground truth, every trained and
filled index (``faiss.write_index``) with its build times, the refine store. ``--reuse`` loads them
instead of recomputing, so a rerun only measures memory, recall and latency again (build times
then come from the cache's record).

The result also holds ``model_at_scale``: the model evaluated at 10^8 items and 10^9 events (the
numbers docs/scale.md quotes), with the prepare throughput taken from
``benchmarks/results/bench_prepare-100m.json`` and the input bytes per event measured here on a
small ``seqrec data synth`` log.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, write_result  # noqa: E402

D_DEFAULT, K_RECALL = 64, 300
FALLBACK = {"clusters": 16, "spread": 0.1, "norm_lognormal_sigma": 0.1}
GIB = 2**30
WORK = Path(__file__).resolve().parent / "work"
ITEM_GENERATORS = ("isotropic", "dir-cov", "raw-cov")
QUERY_GENERATORS = ("cluster-spread", "user-gaussian")
FS_BBS = 32  # fast-scan block: codes are stored in blocks of 32 vectors per list
PAGE = 4096  # bytes per memory page (resident memory is counted in whole touched pages)


# ---------------------------------------------------------------------------------------------
# the model (docs/scale.md quotes these formulas)
# ---------------------------------------------------------------------------------------------

def table_bytes(n: int, d: int, dtype: str) -> int:
    """Embedding table: N·D·b (b = 4 fp32, 2 bf16); int8 adds one fp32 scale per row: N·D + 4N."""
    return {"fp32": 4 * n * d, "bf16": 2 * n * d, "int8": n * d + 4 * n}[dtype]


def ivf_nlist(n: int) -> int:
    """nlist = the power of two nearest 2·sqrt(N) (list length ~ sqrt(N) / 2)."""
    return 2 ** round(math.log2(2 * math.sqrt(n)))


def hnsw_bytes(nodes: int, d: int, hnsw_m: int) -> int:
    """HNSW graph over `nodes` fp32 vectors: vectors 4·D, level 0 with 2·M int32 links, upper levels
    M links for the 1/(M−1) expected extra levels per node, a level (int32) and an offset (int64)."""
    if hnsw_m <= 0:
        return 4 * nodes * d
    links = 2 * hnsw_m + hnsw_m / (hnsw_m - 1)
    return round(nodes * (4 * d + 4 * links + 4 + 8))


def ivfpq_bytes(n: int, d: int, nlist: int, m: int, nbits: int = 8, refine: bool = False,
                fastscan: bool = False, hnsw_m: int = 0, resident: bool = False) -> int:
    """IVF-PQ index: codes N·M·nbits/8 + ids 8N + coarse quantizer (flat: nlist·D·4, or HNSW, see
    hnsw_bytes) + PQ codebooks 2^nbits·D·4 + per-list overhead 8·nlist; fast-scan pads every list to
    a whole block of 32 codes (half a block per list expected: nlist·16·M·nbits/8);
    IndexRefineFlat adds the raw vectors N·D·4. That is the serialized size. resident=True: the
    anonymous memory of the loaded index. Each inverted list holds two heap allocations (its codes and
    its ids), written up to their size and no further: a fast-scan list's code table (faiss AlignedTable)
    is allocated with a power-of-two capacity, but the pages past its size are never touched, so they
    are not resident. What is resident beyond the serialized bytes is the touched part of each
    allocation's last page, half a page each on average: nlist · 2 · PAGE/2 (measured: 2.4–3.7 KB per
    list over PQ32x4fs and PQ64x4fs at 10^6 and 10^7, against 4 KB)."""
    code = m * nbits // 8
    pad = nlist * (FS_BBS // 2) * code if fastscan else 0
    codes = n * code + pad + (nlist * PAGE if resident else 0)
    return round(codes + 8 * n + hnsw_bytes(nlist, d, hnsw_m) + 4 * (2**nbits) * d + 8 * nlist
                 + (4 * n * d if refine else 0))


def query_cost(n: int, nlist: int, nprobe: int, m: int, d: int, k: int, k_factor: int, nbits: int = 8) -> dict:
    """Per query: coarse nlist·D MACs (flat quantizer), nprobe·(N/nlist) codes of M·nbits/8 bytes
    scanned, k·k_factor refine rows of 4D bytes."""
    scanned = nprobe * n / nlist
    return {"coarse_macs": nlist * d, "codes_scanned": scanned, "code_bytes_scanned": scanned * m * nbits / 8,
            "refine_bytes": k * k_factor * 4 * d if k_factor > 1 else 0}


def parse_spec(spec: str) -> dict:
    """nbits, fast-scan and HNSW-quantizer M of an index_factory string like IVF8192_HNSW32,PQ32x4fs."""
    coarse, pq = spec.split(",")[:2]
    m_hnsw = int(coarse.split("_HNSW")[1]) if "_HNSW" in coarse else 0
    nbits = int(pq.split("x")[1].rstrip("fs")) if "x" in pq else 8
    return {"m": int(pq[2:].split("x")[0]), "nbits": nbits, "fastscan": pq.endswith("fs"), "hnsw_m": m_hnsw}


def model_at_scale(bytes_per_event_csv: float, bytes_per_event_parquet: float, prepare_ref: dict, chosen: dict | None) -> dict:
    """The 10^8-item / 10^9-event figures of docs/scale.md; the IVF-PQ part also for the chosen
    configuration of the largest measured N (its spec, nlist rule, nprobe fraction, k_factor)."""
    n, d, m = 10**8, 64, 16
    nl = ivf_nlist(n)
    out = {"items": n, "dim": d}
    for t in ("fp32", "bf16", "int8"):
        out[f"table_{t}_gib"] = table_bytes(n, d, t) / GIB
    out["table_fp32_adam_gib"] = 3 * table_bytes(n, d, "fp32") / GIB  # param + Adam m + v
    for w in (1, 8, 16, 64):
        out[f"table_fp32_adam_per_worker_gib_{w}"] = out["table_fp32_adam_gib"] / w
    b, t, s = 256, 50, 1000  # batch rows, session positions, shared negatives (MatchConfig.num_sampled)
    rows = b * t + s
    out["sparse_rows_per_step"] = rows
    out["sparse_grad_mib_per_step"] = rows * (4 * d + 8) / 2**20  # fp32 row + int64 index
    out["dense_allreduce_gib_per_step"] = 2 * table_bytes(n, d, "fp32") / GIB  # ring: 2(W-1)/W · size
    out["ivf_nlist"] = nl
    out["ivfpq_gib"] = ivfpq_bytes(n, d, nl, m) / GIB
    out["ivfpq_refine_flat_gib"] = ivfpq_bytes(n, d, nl, m, refine=True) / GIB
    out["query_cost_nprobe64"] = query_cost(n, nl, 64, m, d, K_RECALL, 4)
    if chosen:
        p = parse_spec(chosen["spec"])
        frac = chosen["nprobe"] / chosen["nlist"]
        nprobe = max(1, round(frac * nl))
        cost = query_cost(n, nl, nprobe, p["m"], d, K_RECALL, chosen["k_factor"], p["nbits"])
        ns_per_code = chosen["p50_ms"] * 1e6 / (frac * chosen["items"])
        out["chosen"] = {"spec": chosen.get("spec_template", chosen["spec"]).format(nlist=nl, m=p["m"]), "nlist": nl, "nprobe": nprobe,
                         "k_factor": chosen["k_factor"], "measured_at_items": chosen["items"],
                         "index_gib": ivfpq_bytes(n, d, nl, p["m"], p["nbits"], fastscan=p["fastscan"], hnsw_m=p["hnsw_m"]) / GIB,
                         "index_refine_gib": ivfpq_bytes(n, d, nl, p["m"], p["nbits"], True, p["fastscan"], p["hnsw_m"]) / GIB,
                         "query_cost": cost, "measured_ns_per_code_scanned": ns_per_code,
                         "query_ms_one_thread_estimate": cost["codes_scanned"] * ns_per_code / 1e6}
    ev = 10**9
    out["prepare_events"] = ev
    out["prepare_input_gib"] = ev * bytes_per_event_csv / GIB
    out["prepare_shuffle_write_gib"] = ev * bytes_per_event_parquet / GIB
    out["prepare_shuffle_read_gib"] = 3 * ev * bytes_per_event_parquet / GIB  # count, vocab, build each read every bucket
    out["prepare_buckets"] = -(-ev // 2_000_000)
    out["prepare_minutes_same_machine"] = ev / prepare_ref["events_per_s"] / 60
    out["prepare_ref"] = prepare_ref
    return out


# ---------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------

def rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) * 1024


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024


def rel(measured: float, predicted: float) -> float:
    return round((measured - predicted) / predicted, 4)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """L with L L^T = c (symmetric PSD; eigen-decomposition, negative rounding clipped)."""
    e, v = np.linalg.eigh(c)
    return v * np.sqrt(np.clip(e, 0.0, None))


def spherical_kmeans(u: np.ndarray, k: int, seed: int):
    import faiss

    km = faiss.Kmeans(u.shape[1], k, niter=25, spherical=True, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(u, np.float32))
    return km.index.search(np.ascontiguousarray(u, np.float32), 1)[1][:, 0]


def silhouette_cos(u: np.ndarray, labels: np.ndarray) -> float:
    dist = 1.0 - u @ u.T  # (n, n) cosine distance
    ks = np.unique(labels)
    mean_to = np.stack([dist[:, labels == c].mean(axis=1) for c in ks], axis=1)  # (n, K)
    own = np.searchsorted(ks, labels)
    cnt = np.bincount(own, minlength=len(ks))
    a = mean_to[np.arange(len(u)), own] * cnt[own] / np.maximum(cnt[own] - 1, 1)  # exclude self (distance 0)
    other = mean_to.copy()
    other[np.arange(len(u)), own] = np.inf
    b = other.min(axis=1)
    s = (b - a) / np.maximum(a, b)
    return float(np.where(cnt[own] > 1, s, 0.0).mean())


def reference_profile(ref: Path | None, k_grid: list[int], seed: int) -> dict:
    """Clusters (directions, raw means and covariances), norms and user vectors of a trained export."""
    rng = np.random.default_rng(seed)
    vec_file = ref / "item_embeddings.npy" if ref else None
    if vec_file is None or not vec_file.exists():
        k, d = FALLBACK["clusters"], D_DEFAULT
        m = _normalise(rng.standard_normal((k, d)))
        return {"source": "fallback-gaussian-mixture", "params": FALLBACK, "dim": d, "clusters": k,
                "weights": np.full(k, 1 / k), "means": m, "spread": np.full(k, FALLBACK["spread"]),
                "norms": None, "users": None, "query_spread": None, "vectors": None}
    info = json.loads((ref / "export.json").read_text()) if (ref / "export.json").exists() else {}
    v = np.load(vec_file).astype(np.float64)[2:]  # rows 0, 1: padding, unknown
    norms = np.linalg.norm(v, axis=1)
    u = _normalise(v)
    sil = {k: silhouette_cos(u, spherical_kmeans(u, k, seed)) for k in k_grid if k < len(u) // 5}
    k = max(sil, key=sil.get)
    labels = spherical_kmeans(u, k, seed)
    ks = np.unique(labels)
    means = np.stack([u[labels == c].mean(axis=0) for c in ks])  # (K, D) not renormalised
    resid = [u[labels == c] - means[i] for i, c in enumerate(ks)]
    prof = {"source": str(ref), "model": info.get("model"), "epoch": info.get("epoch"), "dim": v.shape[1],
            "reference_items": len(v), "silhouette": {str(a): round(b, 4) for a, b in sil.items()}, "clusters": len(ks),
            "weights": np.array([(labels == c).mean() for c in ks]), "means": means,
            "spread": np.array([np.sqrt((r**2).mean()) for r in resid]),
            "dir_sqrt_cov": np.stack([_sqrt_psd(np.cov(r.T)) for r in resid]),
            "raw_means": np.stack([v[labels == c].mean(axis=0) for c in ks]),
            "raw_sqrt_cov": np.stack([_sqrt_psd(np.cov(v[labels == c].T)) for c in ks]),
            "norms": norms, "vectors": v, "users": None, "query_spread": None,
            "norm_percentiles": dict(zip(("p1", "p50", "p99"), np.percentile(norms, [1, 50, 99]).round(4).tolist())),
            "item_cos_to_centroid_mean": float((u * _normalise(means)[labels]).sum(1).mean())}
    users = encode_reference_users(ref, info)
    if users is not None:
        users = users.astype(np.float64)
        cos = (_normalise(users) @ _normalise(means).T).max(axis=1)  # (U,) cosine to the nearest cluster direction
        prof["users"] = users
        prof["users_encoded"] = len(users)
        prof["user_cos_to_nearest_cluster_mean"] = float(cos.mean())
        prof["user_norm_percentiles"] = dict(zip(("p1", "p50", "p99"),
                                                 np.percentile(np.linalg.norm(users, axis=1), [1, 50, 99]).round(4).tolist()))
        prof["query_spread"] = fit_spread(float(cos.mean()), v.shape[1], rng)
        prof["user_mean"] = users.mean(axis=0)
        prof["user_sqrt_cov"] = _sqrt_psd(np.cov(users.T))
    return prof


def encode_reference_users(ref: Path, info: dict) -> np.ndarray | None:
    data_dir = (info.get("dataset") or {}).get("data_dir")
    if not data_dir or not (Path(data_dir) / "test").exists() or not (ref / "model").exists():
        return None
    try:
        from seqrec.checkpoint import load_checkpoint
        from seqrec.data.prepare import load_manifest, read_split
        from seqrec.features import FeatureSpec
        from seqrec.inference import encode_table

        spec = FeatureSpec.from_dict(load_manifest(data_dir)["feature_spec"])
        model, _ = load_checkpoint(ref / "model")
        table = read_split(data_dir, "test")
        return encode_table(model, table.slice(0, 2000), spec)
    except Exception as e:  # the profile still works from the item vectors alone
        print(f"could not encode the reference's users ({type(e).__name__}: {e}); queries are drawn as items")
        return None


def fit_spread(target_cos: float, d: int, rng) -> float:
    """s such that E[cos(normalise(m + s·z), m)] = target_cos for a unit m (bisection, Monte Carlo)."""
    z = rng.standard_normal((4000, d))
    m = np.zeros(d)
    m[0] = 1.0
    lo, hi = 1e-4, 10.0
    for _ in range(50):
        s = math.sqrt(lo * hi)
        c = _normalise(m + s * z)[:, 0].mean()
        lo, hi = (s, hi) if c > target_cos else (lo, s)
    return math.sqrt(lo * hi)


def generate(prof: dict, n: int, seed: int, kind: str, chunk: int = 500_000) -> np.ndarray:
    """(n, D) float32 item vectors drawn by generator `kind`, in chunks (no float64 copy of the whole)."""
    rng = np.random.default_rng(seed)
    d = prof["dim"]
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        lab = rng.choice(len(prof["weights"]), size=c, p=prof["weights"])
        z = rng.standard_normal((c, d))
        if kind == "raw-cov":
            x = np.empty((c, d))
            for i in range(len(prof["weights"])):
                sel = lab == i
                x[sel] = prof["raw_means"][i] + z[sel] @ prof["raw_sqrt_cov"][i].T
            out[s : s + c] = x
            continue
        if kind == "dir-cov":
            x = np.empty((c, d))
            for i in range(len(prof["weights"])):
                sel = lab == i
                x[sel] = prof["means"][i] + z[sel] @ prof["dir_sqrt_cov"][i].T
        else:
            x = prof["means"][lab] + prof["spread"][lab, None] * z
        x = _normalise(x)
        if prof["norms"] is None:
            r = rng.lognormal(0.0, FALLBACK["norm_lognormal_sigma"], c)
        else:
            r = rng.choice(prof["norms"], size=c) * (1 + 0.01 * rng.standard_normal(c))
        out[s : s + c] = x * r[:, None]
    return out


def queries(prof: dict, q: int, seed: int, kind: str, item_kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if prof.get("users") is None:
        return generate(prof, q, seed + 1, item_kind)
    if kind == "user-gaussian":
        return (prof["user_mean"] + rng.standard_normal((q, prof["dim"])) @ prof["user_sqrt_cov"].T).astype(np.float32)
    lab = rng.choice(len(prof["weights"]), size=q, p=prof["weights"])
    dirs = _normalise(prof["means"])
    return _normalise(dirs[lab] + prof["query_spread"] * rng.standard_normal((q, prof["dim"]))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# how well a generator reproduces the reference
# ---------------------------------------------------------------------------------------------

def _spectrum(x: np.ndarray) -> dict:
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    share = np.cumsum(ev) / ev.sum()
    return {"top1_share": share[0], "top4_share": share[3], "top16_share": share[15],
            "participation_ratio": ev.sum() ** 2 / (ev**2).sum()}


def item_stats(x: np.ndarray, prof: dict) -> dict:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1)
    u = x / n[:, None]
    cent = _normalise(prof["means"])
    lab = (u @ cent.T).argmax(axis=1)
    resid = u - prof["means"][lab]
    s = u @ u.T
    np.fill_diagonal(s, np.nan)
    mu = _normalise(prof["vectors"]).mean(axis=0)
    out = {f"norm_{p}": np.percentile(n, q) for p, q in (("p1", 1), ("p50", 50), ("p99", 99))}
    out.update({f"weight_{c}": float((lab == c).mean()) for c in range(len(cent))})
    out["cos_to_cluster_mean"] = float((u * cent[lab]).sum(axis=1).mean())
    out.update({f"resid_{k}": v for k, v in _spectrum(resid).items()})
    nn = np.nanmax(s, axis=1)
    out.update({f"nn_cos_p{q}": np.percentile(nn, q) for q in (10, 50, 90)})
    out.update({f"pair_cos_p{q}": np.nanpercentile(s, q) for q in (1, 50, 99)})
    out["norm_direction_corr"] = float(np.corrcoef(n, u @ mu / np.linalg.norm(mu))[0, 1])
    if prof.get("users") is not None:
        sc = prof["users"] @ x.T / np.linalg.norm(prof["users"], axis=1, keepdims=True)
        top = -np.sort(-sc, axis=1)
        out["user_score_top1"] = float(np.median(top[:, 0]))
        out["user_score_rank1pct"] = float(np.median(top[:, max(0, len(x) // 100 - 1)]))
        out["user_score_median"] = float(np.median(np.median(sc, axis=1)))
    return {k: round(float(v), 4) for k, v in out.items()}


def query_stats(q: np.ndarray, prof: dict) -> dict:
    q = np.asarray(q, np.float64)
    d = _normalise(q)
    s = d @ d.T
    np.fill_diagonal(s, np.nan)
    mu, im = d.mean(axis=0), _normalise(prof["vectors"]).mean(axis=0)
    sp = _spectrum(d)
    out = {"top1_share": sp["top1_share"], "top4_share": sp["top4_share"], "participation_ratio": sp["participation_ratio"],
           "mean_direction_norm": np.linalg.norm(mu), "cos_mean_to_item_mean": mu @ im / np.linalg.norm(mu) / np.linalg.norm(im)}
    out.update({f"pair_cos_p{p}": np.nanpercentile(s, p) for p in (1, 50, 99)})
    sc = d @ prof["vectors"].T
    top = -np.sort(-sc, axis=1)
    out.update({"item_score_top1": np.median(top[:, 0]), "item_score_rank300": np.median(top[:, min(K_RECALL, sc.shape[1]) - 1]),
                "item_score_median": np.median(np.median(sc, axis=1))})
    return {k: round(float(v), 4) for k, v in out.items()}


def discrepancy(stats: dict, ref: dict) -> float:
    return round(float(np.mean([abs(stats[k] - ref[k]) / max(abs(ref[k]), 0.1) for k in ref])), 4)


def choose_generators(prof: dict, seed: int, reps: int = 3) -> dict:
    """Statistics of the reference and of every candidate generator at the reference's size; the lowest
    mean discrepancy wins (items and queries separately)."""
    if prof.get("vectors") is None:
        return {"items": "isotropic", "queries": None}
    n = len(prof["vectors"])
    ref = item_stats(prof["vectors"], prof)
    out = {"reference_items": ref, "item_candidates": {}}
    for kind in ITEM_GENERATORS:
        runs = [item_stats(generate(prof, n, seed + 100 + r, kind), prof) for r in range(reps)]
        st = {k: round(float(np.mean([r[k] for r in runs])), 4) for k in ref}
        out["item_candidates"][kind] = {"stats": st, "discrepancy": discrepancy(st, ref)}
    out["items"] = min(out["item_candidates"], key=lambda k: out["item_candidates"][k]["discrepancy"])
    out["queries"] = None
    if prof.get("users") is not None:
        qref = query_stats(prof["users"], prof)
        out["reference_users"] = qref
        out["query_candidates"] = {}
        for kind in QUERY_GENERATORS:
            runs = [query_stats(queries(prof, len(prof["users"]), seed + 100 + r, kind, out["items"]), prof) for r in range(reps)]
            st = {k: round(float(np.mean([r[k] for r in runs])), 4) for k in qref}
            out["query_candidates"][kind] = {"stats": st, "discrepancy": discrepancy(st, qref)}
        out["queries"] = min(out["query_candidates"], key=lambda k: out["query_candidates"][k]["discrepancy"])
    return out


# ---------------------------------------------------------------------------------------------
# caches and measurements
# ---------------------------------------------------------------------------------------------

def gen_key(prof: dict, kind: str, seed: int) -> str:
    h = hashlib.sha1(f"{kind}|{seed}|{prof['source']}".encode())
    for k in ("weights", "means", "spread", "dir_sqrt_cov", "raw_means", "raw_sqrt_cov", "norms", "user_mean", "user_sqrt_cov"):
        if prof.get(k) is not None:
            h.update(np.ascontiguousarray(prof[k], np.float64).tobytes())
    return h.hexdigest()[:10]


def cached_array(path: Path, reuse: bool, make):
    if reuse and path.exists():
        return np.load(path), True
    a = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, a)
    return a, False


def fresh_process_rss(path: Path) -> int:
    """Anonymous RSS growth (RssAnon: heap and mmap'd data, not the library code pages that the first read
    touches) of a fresh Python process that reads a faiss index file (no reused heap)."""
    code = ("import faiss, sys\n"
            "def rss():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon:')).split()[1]) * 1024\n"
            "r0 = rss(); ix = faiss.read_index(sys.argv[1]); print(rss() - r0)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def measure_tables(x: np.ndarray) -> dict:
    import torch

    n, d = x.shape
    out = {"fp32": {"array_bytes": int(x.nbytes)}}
    for t in ("bf16", "int8"):
        gc.collect()
        r0 = rss()
        if t == "bf16":
            tab = torch.from_numpy(x).to(torch.bfloat16)
            nbytes = tab.element_size() * tab.nelement()
        else:
            scale = (np.abs(x).max(axis=1) / 127).astype(np.float32)  # (N,) per-row scale
            tab = np.empty(x.shape, np.int8)
            for s in range(0, n, 1_000_000):
                tab[s : s + 1_000_000] = np.rint(x[s : s + 1_000_000] / scale[s : s + 1_000_000, None])
            nbytes = tab.nbytes + scale.nbytes
        out[t] = {"array_bytes": int(nbytes), "rss_delta_bytes": rss() - r0}
        del tab
    for t, m in out.items():
        m["predicted_bytes"] = table_bytes(n, d, t)
        m["rel_error_array"] = rel(m["array_bytes"], m["predicted_bytes"])
        if "rss_delta_bytes" in m:
            m["rel_error_rss"] = rel(m["rss_delta_bytes"], m["predicted_bytes"])
    return out


def build_index(x: np.ndarray, spec: str, nlist: int, m: int, train_per_list: int, seed: int, path: Path, reuse: bool,
                build_threads: int, query_threads: int):
    """The filled IVF index of `spec` (from the cache with reuse) and its build record."""
    import faiss

    meta_path = path.with_suffix(".json")
    if reuse and path.exists() and meta_path.exists():
        return faiss.read_index(str(path)), {**json.loads(meta_path.read_text()), "from_cache": True}
    n, d = x.shape
    rng = np.random.default_rng(seed + 2)
    faiss.omp_set_num_threads(build_threads)
    t0 = time.perf_counter()
    ivf = faiss.index_factory(d, spec.format(nlist=nlist, m=m), faiss.METRIC_INNER_PRODUCT)
    ntrain = min(n, train_per_list * nlist)
    ivf.train(x[np.sort(rng.choice(n, size=ntrain, replace=False))])
    train_s = time.perf_counter() - t0
    for s in range(0, n, 1_000_000):
        ivf.add(x[s : s + 1_000_000])
    build_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(query_threads)
    meta = {"spec": spec.format(nlist=nlist, m=m), "nlist": nlist, "m": m, "train_points": ntrain, "build_threads": build_threads,
            "train_s": round(train_s, 2), "build_s": round(build_s, 2)}
    faiss.write_index(ivf, str(path))
    meta_path.write_text(json.dumps(meta))
    return ivf, {**meta, "from_cache": False}


def list_size_stats(ivf) -> dict:
    import faiss

    inv = faiss.extract_index_ivf(ivf).invlists
    sizes = np.array([inv.list_size(i) for i in range(inv.nlist)])
    return {"min": int(sizes.min()), "p50": float(np.median(sizes)), "max": int(sizes.max()),
            "octaves_p5_p95": round(float(np.log2(max(np.percentile(sizes, 95), 1) / max(np.percentile(sizes, 5), 1))), 2)}


def set_nprobe(ivf, nprobe: int) -> None:
    import faiss

    inner = faiss.extract_index_ivf(ivf)
    inner.nprobe = nprobe
    q = faiss.downcast_index(inner.quantizer)
    if hasattr(q, "hnsw"):
        q.hnsw.efSearch = max(2 * nprobe, 16)


def sweep(ivf, refine, xq: np.ndarray, gt: np.ndarray, grid: list[tuple[int, int]], n: int, d: int, p: dict,
          repeats: int) -> list[dict]:
    import faiss

    from seqrec.retrieval import recall_at_k_vs_exact

    nlist = faiss.extract_index_ivf(ivf).nlist
    rows = []
    for nprobe, kf in grid:
        if nprobe > nlist:
            continue
        set_nprobe(ivf, nprobe)
        index = ivf
        if kf > 1:
            refine.k_factor = kf
            index = refine
        q = len(xq)
        lat, ids = np.empty((repeats, q)), np.empty((q, K_RECALL), np.int64)
        index.search(xq[:5], K_RECALL)  # warm-up
        load0 = os.getloadavg()[0]
        for r in range(repeats):
            for i in range(q):
                t0 = time.perf_counter()
                res = index.search(xq[i : i + 1], K_RECALL)[1][0]
                lat[r, i] = time.perf_counter() - t0
                ids[i] = res
        lat_ms = lat * 1e3
        rc = recall_at_k_vs_exact(np.where(ids >= 0, ids + 2, -1), gt + 2)  # codes >= 2, as the item table's
        rows.append({"nprobe": nprobe, "k_factor": kf, "recall_at_300": round(rc, 4),
                     "p50_ms": round(float(np.percentile(lat_ms, 50)), 3), "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                     "p50_min_ms": round(float(np.percentile(lat_ms.min(axis=0), 50)), 3),
                     "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
                     "model_query_cost": query_cost(n, nlist, nprobe, p["m"], d, K_RECALL, kf, p["nbits"])})
        last = rows[-1]
        print(f"  nprobe={nprobe:4d} k_factor={kf:2d}: recall@300={rc:.4f} p50={last['p50_ms']:.3f} ms "
              f"p99={last['p99_ms']:.3f} ms (min-p50 {last['p50_min_ms']:.3f}; load {last['loadavg_1m']})", flush=True)
    return rows


def input_bytes_per_event(rows: int = 200_000) -> dict:
    """Bytes per event of the taobao-csv and parquet synth layouts (seqrec data synth, small)."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("taobao-csv", "parquet"):
            d = Path(tmp) / layout
            subprocess.run([sys.executable, "-m", "seqrec.cli", "data", "synth", "--rows", str(rows), "--out", str(d),
                            "--layout", layout, "--no-progress"], check=True, capture_output=True)
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name != "synth.json")
            out[layout] = size / rows
    return out


def run_size(n: int, prof: dict, gens: dict, args, grid: list[tuple[int, int]]) -> tuple[dict, dict, dict]:
    import faiss

    tag = f"1e{round(math.log10(n))}" if 10 ** round(math.log10(n)) == n else str(n)
    key = gen_key(prof, gens["items"], args.seed)
    work = WORK / f"scale-{n}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"N = {n} (cache {work}, key {key})", flush=True)
    gc.collect()
    r0 = rss()
    t0 = time.perf_counter()
    x, x_cached = cached_array(work / f"x_{key}.npy", args.reuse, lambda: generate(prof, n, args.seed, gens["items"]))
    gen_s = time.perf_counter() - t0
    fp32_rss = rss() - r0
    d = x.shape[1]
    tables = measure_tables(x)
    tables["fp32"]["rss_delta_bytes"] = fp32_rss
    tables["fp32"]["rel_error_rss"] = rel(fp32_rss, tables["fp32"]["predicted_bytes"])
    synth_norms = np.linalg.norm(x[:100_000], axis=1)
    qkey = f"{key}_{gens['queries']}_{args.queries}"
    xq, _ = cached_array(work / f"q_{qkey}.npy", args.reuse, lambda: queries(prof, args.queries, args.seed, gens["queries"], gens["items"]))
    t0 = time.perf_counter()

    def exact():
        faiss.omp_set_num_threads(args.build_threads)
        out = np.concatenate([faiss.knn(xq[s : s + 100], x, K_RECALL, metric=faiss.METRIC_INNER_PRODUCT)[1]
                              for s in range(0, len(xq), 100)])
        faiss.omp_set_num_threads(args.threads)
        return out

    gt, gt_cached = cached_array(work / f"gt_{qkey}.npy", args.reuse, exact)
    exact_s = time.perf_counter() - t0
    nlists = [ivf_nlist(n)] if args.nlist == "auto" else [int(v) for v in args.nlist.split(",")]

    # the refine store: the fp32 vectors in an IndexFlatIP (one copy, shared by every index spec)
    r1 = rss()
    t1 = time.perf_counter()
    refine_flat = faiss.IndexFlatIP(d)
    refine_flat.add(x)
    refine_add_s = time.perf_counter() - t1
    rss_ref = rss() - r1
    ref_path = work / f"refine_{key}.faissindex"
    if not (args.reuse and ref_path.exists()):
        faiss.write_index(refine_flat, str(ref_path))
    p_ref = table_bytes(n, d, "fp32")
    size_ref = ref_path.stat().st_size
    fresh_ref = fresh_process_rss(ref_path)
    refine_store = {"file_bytes": size_ref, "fresh_process_rss_bytes": fresh_ref, "rss_delta_bytes": rss_ref, "predicted_bytes": p_ref,
                    "add_s": round(refine_add_s, 2), "rel_error_file": rel(size_ref, p_ref), "rel_error_fresh_rss": rel(fresh_ref, p_ref),
                    "rel_error_rss": rel(rss_ref, p_ref)}
    errs = [abs(tables[t]["rel_error_array"]) for t in tables] + [abs(tables[t]["rel_error_rss"]) for t in tables]
    errs += [abs(refine_store["rel_error_file"]), abs(refine_store["rel_error_fresh_rss"]), abs(refine_store["rel_error_rss"])]

    indexes, all_rows = [], []
    for spec in args.index.split(";"):
        p = parse_spec(spec.format(nlist=1, m=args.pq_m))
        for nlist in nlists:
            name = spec.format(nlist=nlist, m=args.pq_m)
            path = work / f"ivf_{key}_{name.replace(',', '-')}_t{args.train_per_list}.faissindex"
            print(f" index {name}", flush=True)
            ivf, meta = build_index(x, spec, nlist, args.pq_m, args.train_per_list, args.seed, path, args.reuse,
                                    args.build_threads, args.threads)
            size = path.stat().st_size
            fresh = fresh_process_rss(path)
            pred = ivfpq_bytes(n, d, nlist, args.pq_m, p["nbits"], fastscan=p["fastscan"], hnsw_m=p["hnsw_m"])
            pred_res = ivfpq_bytes(n, d, nlist, args.pq_m, p["nbits"], fastscan=p["fastscan"], hnsw_m=p["hnsw_m"], resident=True)
            rec = {**meta, "file_bytes": size, "fresh_process_rss_bytes": fresh, "predicted_bytes": pred,
                   "predicted_resident_bytes": pred_res, "rel_error_file": rel(size, pred),
                   "rel_error_fresh_rss": rel(fresh, pred_res), "list_sizes": list_size_stats(ivf)}
            errs += [abs(rec["rel_error_file"]), abs(rec["rel_error_fresh_rss"])]
            refine = faiss.IndexRefine(ivf, refine_flat)  # shares the one fp32 store
            rows = sweep(ivf, refine, xq, gt, grid, n, d, p, args.repeats)
            for r in rows:
                r.update({"spec": name, "spec_template": spec, "nlist": nlist})
            rec["sweep"] = rows
            indexes.append(rec)
            all_rows += rows
            del refine, ivf
            gc.collect()
    ok = [r for r in all_rows if r["recall_at_300"] >= 0.95]
    best = min(ok, key=lambda r: r["p50_ms"]) if ok else max(all_rows, key=lambda r: (r["recall_at_300"], -r["p50_ms"]))
    best_index = next(i for i in indexes if i["spec"] == best["spec"])
    run = {"items": n, "cache": str(work), "vectors_from_cache": x_cached, "ground_truth_from_cache": gt_cached,
           "generate_or_load_s": round(gen_s, 2), "exact_gt_s": round(exact_s, 2), "tables": tables,
           "refine_store": refine_store, "indexes": indexes, "chosen": best,
           "synth_norm_percentiles": dict(zip(("p1", "p50", "p99"), np.percentile(synth_norms, [1, 50, 99]).round(4).tolist())),
           "peak_rss_bytes_so_far": peak_rss()}
    summary = {
        f"table_fp32_gib_{tag}": round(tables["fp32"]["array_bytes"] / GIB, 3),
        f"table_fp32_rss_rel_error_{tag}": tables["fp32"]["rel_error_rss"],
        f"ivfpq_index_spec_{tag}": best["spec"],
        f"ivfpq_build_s_{tag}": best_index["build_s"],
        f"ivfpq_index_mib_{tag}": round(best_index["file_bytes"] / 2**20, 1),
        f"ivfpq_index_rel_error_{tag}": best_index["rel_error_file"],
        f"ivfpq_index_rss_rel_error_{tag}": best_index["rel_error_fresh_rss"],
        f"ivfpq_index_resident_mib_{tag}": round(best_index["fresh_process_rss_bytes"] / 2**20, 1),
        f"ivfpq_recall@300_{tag}": best["recall_at_300"],
        f"ivfpq_query_ms_{tag}": best["p50_ms"],
        f"ivfpq_query_p99_ms_{tag}": best["p99_ms"],
        f"ivfpq_query_p50_min_ms_{tag}": best["p50_min_ms"],
        f"ivfpq_query_loadavg_{tag}": best["loadavg_1m"],
        f"ivfpq_nprobe_{tag}": best["nprobe"],
        f"ivfpq_nlist_{tag}": best["nlist"],
        f"ivfpq_refine_k_factor_{tag}": best["k_factor"],
        f"ivfpq_meets_recall_{tag}": bool(ok),
        f"ivfpq_meets_latency_{tag}": bool(ok) and best["p50_ms"] <= 1.0,
        f"memory_model_max_rel_error_{tag}": round(max(errs), 4),
    }
    return run, summary, {**best, "items": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="1000000,10000000", help="comma-separated catalogue sizes N")
    ap.add_argument("--reference", default=None, help="a trained SDM export directory (item_embeddings.npy, export.json)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--index", default="IVF{nlist}_HNSW32,PQ{m}x4fs",
                    help="';'-separated faiss index_factory specs ({nlist}, {m} filled in), each wrapped in a flat refine")
    ap.add_argument("--nlist", default="auto", help="comma-separated nlist values, or auto (power of two nearest 2·sqrt(N))")
    ap.add_argument("--pq-m", type=int, default=32, help="PQ sub-quantizers")
    ap.add_argument("--train-per-list", type=int, default=40, help="IVF/PQ training sample = this × nlist vectors")
    ap.add_argument("--nprobe", default="256,512,1024,2048")
    ap.add_argument("--k-factor", default="1,16,32", help="refine k_factor (1 = no refine)")
    ap.add_argument("--k-grid", default="4,8,16,32,64", help="cluster counts tried on the reference")
    ap.add_argument("--threads", type=int, default=1, help="faiss / torch threads for the timed queries")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count(), help="faiss threads for training, adding, exact search")
    ap.add_argument("--repeats", type=int, default=2, help="timings per query")
    ap.add_argument("--reuse", action="store_true", help="load vectors, ground truth and indexes from benchmarks/work/scale-<N>/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    wall0 = time.perf_counter()

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sizes = [int(float(s)) for s in args.items.split(",")]
    grid = [(p, k) for k in map(int, args.k_factor.split(",")) for p in map(int, args.nprobe.split(","))]
    ref = Path(args.reference) if args.reference else None
    if ref is not None and not (ref / "item_embeddings.npy").exists():
        raise SystemExit(f"--reference {ref} has no item_embeddings.npy; pass a matcher export directory (seqrec train --export)")
    prof = reference_profile(ref, [int(k) for k in args.k_grid.split(",")], args.seed)
    gens = choose_generators(prof, args.seed)
    hidden = ("weights", "means", "spread", "norms", "vectors", "users", "dir_sqrt_cov", "raw_means", "raw_sqrt_cov",
              "user_mean", "user_sqrt_cov")
    profile_out = {k: v for k, v in prof.items() if k not in hidden}
    profile_out["weights"] = np.round(prof["weights"], 4).tolist()
    profile_out["spread_per_dim"] = np.round(prof["spread"], 4).tolist()
    print("profile:", json.dumps(profile_out), flush=True)
    print("generators:", json.dumps(gens), flush=True)

    prep = json.loads((RESULTS / "bench_prepare-100m.json").read_text())
    ref_run = next(r for r in prep["runs"] if r.get("rows") == 100_000_000)
    bpe = input_bytes_per_event()
    prepare_ref = {"events": ref_run["events"], "wall_s": ref_run["wall_s"], "events_per_s": ref_run["events_per_s"],
                   "peak_rss_gib": ref_run["peak_rss_gib"], "buckets": ref_run["buckets"], "cores": prep["machine"]["cores"],
                   "bytes_per_event": {k: round(v, 2) for k, v in bpe.items()}}
    params = {**vars(args), "command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
              "profile": profile_out, "generators": gens, "k": K_RECALL}
    name = "scale" + (f"_{args.tag}" if args.tag else "")
    runs, summary, best = [], {}, None
    for n in sizes:  # the result is written after every N, so a long last N leaves the earlier ones on disk
        run, s, best = run_size(n, prof, gens, args, grid)
        runs.append(run)
        summary.update(s)
        summary.update(generator_summary(prof, gens, args))
        summary["memory_model_max_rel_error"] = max(v for k, v in summary.items() if k.startswith("memory_model_max_rel_error_"))
        summary["sizes_done"] = [r["items"] for r in runs]
        summary["peak_rss_gib"] = round(peak_rss() / GIB, 2)
        summary["wall_s"] = round(time.perf_counter() - wall0, 1)
        scale = model_at_scale(bpe["taobao-csv"], bpe["parquet"], prepare_ref, best)
        write_result(name, summary, params, runs + [{"kind": "model_at_scale", **scale}], machine_info())


def generator_summary(prof: dict, gens: dict, args) -> dict:
    out = {"vectors": prof["source"], "vectors_generator": gens["items"], "queries_generator": gens["queries"], "threads": args.threads}
    if "reference_items" in gens:
        ri, si = gens["reference_items"], gens["item_candidates"][gens["items"]]["stats"]
        out["vectors_stat_discrepancy"] = gens["item_candidates"][gens["items"]]["discrepancy"]
        for k in ("norm_p50", "resid_top4_share", "resid_top16_share", "resid_participation_ratio", "nn_cos_p50",
                  "norm_direction_corr", "user_score_top1"):
            if k in ri:
                out[f"ref_{k}"], out[f"synth_{k}"] = ri[k], si[k]
    if gens.get("queries"):
        rq, sq = gens["reference_users"], gens["query_candidates"][gens["queries"]]["stats"]
        out["queries_stat_discrepancy"] = gens["query_candidates"][gens["queries"]]["discrepancy"]
        for k in ("participation_ratio", "cos_mean_to_item_mean", "item_score_rank300"):
            out[f"ref_user_{k}"], out[f"synth_query_{k}"] = rq[k], sq[k]
    return out


if __name__ == "__main__":
    main()
