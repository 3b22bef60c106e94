"""Scale check: the memory model of docs/scale.md against measured runs at 10^6 / 10^7 items.

    python benchmarks/scale.py --items 1000000 --reference runs/ml-100k/train/PSDMMAL-seed0/export
    python benchmarks/scale.py --items 10000000 --reference ...      # ~9 GiB peak; see docs/scale.md

Notation: N items, D vector size, M PQ sub-quantizers (bytes per code), nlist IVF lists,
nprobe lists probed per query, k = 300 the cut-off, Q queries.

**Vectors.** Synthetic item vectors whose norm distribution and cluster structure are taken
from a trained SDM's exported ``item_embeddings.npy`` (``--reference``, an export directory;
rows 0 and 1, padding and unknown, dropped):

* cluster count K: spherical k-means (faiss) on the unit directions for K in ``--k-grid``, the K
  with the highest mean cosine silhouette;
* cluster c: weight w_c (its share of items), mean direction m_c (the centroid of the unit
  directions, not renormalised) and an isotropic spread s_c = RMS of the residual u - m_c per
  dimension; a synthetic item is u = normalise(m_c + s_c · z), z ~ N(0, I_D) (isotropic residuals
  use all D dimensions, which makes PQ and IVF harder than the real, low-rank residuals);
* norm: drawn from the reference's empirical norm distribution (a random reference norm times
  (1 + 0.01 · N(0, 1)));
* queries ("drawn like user vectors"): if the export's ``dataset.data_dir`` still holds its
  prepared test split, the model (rebuilt from ``export/model``) encodes up to 2,000 test rows;
  each real user vector's cosine to its nearest item-cluster direction gives the spread: a
  synthetic query picks a cluster by weight and is u = normalise(m̂_c + s_q · z) with s_q set so the
  mean cosine to m̂_c matches the real users'. Without the data the queries are drawn as items.

Without ``--reference`` (or when it holds no item vectors) the generator falls back to a
Gaussian mixture with stated parameters (``FALLBACK``): K = 16 random unit directions, equal
weights, spread s = 0.1 per dimension, norms lognormal(0, 0.1); the result says which was used.

**Measured per N**: the item table in fp32 (numpy), bf16 (torch) and int8 (+ one fp32 scale per
row) as array bytes and process RSS delta; IVF-PQ (``IVF{nlist},PQ{M}`` inner product, trained
on a sample of ``--train-per-list`` × nlist vectors) build time, serialized size
(``faiss.serialize_index``) and RSS delta, alone and wrapped in ``IndexRefineFlat``; recall@300
against exact inner-product search (``faiss.knn``) on ``--queries`` queries for a grid of
(nprobe, k_factor); single-query latency on one thread (p50 / p99) for each grid point. The chosen
configuration is the fastest (p50) with recall >= 0.95. Next to every memory figure: the model's
prediction (the functions below, the same formulas as docs/scale.md) and the relative error
(measured − predicted) / predicted.

The result also holds ``model_at_scale``: the model evaluated at 10^8 items and 10^9 events (the
numbers docs/scale.md quotes), with the prepare throughput taken from
``benchmarks/results/bench_prepare-100m.json`` and the input bytes per event measured here on a
small ``seqrec data synth`` log.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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


# ---------------------------------------------------------------------------------------------
# the model (docs/scale.md quotes these formulas)
# ---------------------------------------------------------------------------------------------

def table_bytes(n: int, d: int, dtype: str) -> int:
    """Embedding table: N·D·b (b = 4 fp32, 2 bf16); int8 adds one fp32 scale per row: N·D + 4N."""
    return {"fp32": 4 * n * d, "bf16": 2 * n * d, "int8": n * d + 4 * n}[dtype]


def ivf_nlist(n: int) -> int:
    """nlist = the power of two nearest 2·sqrt(N) (list length ~ sqrt(N) / 2)."""
    return 2 ** round(math.log2(2 * math.sqrt(n)))


def ivfpq_bytes(n: int, d: int, nlist: int, m: int, nbits: int = 8, refine: bool = False) -> int:
    """IVF-PQ index: codes N·M + ids 8N + coarse centroids nlist·D·4 + PQ codebooks 2^nbits·D·4
    + per-list overhead 8·nlist (its size); IndexRefineFlat adds the raw vectors N·D·4."""
    codes = n * m * nbits // 8
    return codes + 8 * n + 4 * nlist * d + 4 * (2**nbits) * d + 8 * nlist + (4 * n * d if refine else 0)


def query_cost(n: int, nlist: int, nprobe: int, m: int, d: int, k: int, k_factor: int) -> dict:
    """Per query: coarse nlist·D MACs, nprobe·(N/nlist) codes of M bytes scanned (M table lookups
    each), k·k_factor refine rows of 4D bytes."""
    scanned = nprobe * n / nlist
    return {"coarse_macs": nlist * d, "codes_scanned": scanned, "code_bytes_scanned": scanned * m,
            "refine_bytes": k * k_factor * 4 * d if k_factor > 1 else 0}


def model_at_scale(bytes_per_event_csv: float, bytes_per_event_parquet: float, prepare_ref: dict) -> dict:
    """The 10^8-item / 10^9-event figures of docs/scale.md."""
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


def rel(measured: float, predicted: float) -> float:
    return round((measured - predicted) / predicted, 4)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


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
    """Norms, clusters and query spread of a trained export (or the FALLBACK mixture)."""
    rng = np.random.default_rng(seed)
    vec_file = ref / "item_embeddings.npy" if ref else None
    if vec_file is None or not vec_file.exists():
        k, d = FALLBACK["clusters"], D_DEFAULT
        m = _normalise(rng.standard_normal((k, d)))
        return {"source": "fallback-gaussian-mixture", "params": FALLBACK, "dim": d, "clusters": k,
                "weights": np.full(k, 1 / k), "means": m, "spread": np.full(k, FALLBACK["spread"]),
                "norms": None, "query_spread": None}
    info = json.loads((ref / "export.json").read_text()) if (ref / "export.json").exists() else {}
    v = np.load(vec_file).astype(np.float32)[2:]  # rows 0, 1: padding, unknown
    norms = np.linalg.norm(v, axis=1)
    u = _normalise(v)
    sil = {k: silhouette_cos(u, spherical_kmeans(u, k, seed)) for k in k_grid if k < len(u) // 5}
    k = max(sil, key=sil.get)
    labels = spherical_kmeans(u, k, seed)
    ks = np.unique(labels)
    means = np.stack([u[labels == c].mean(axis=0) for c in ks])  # (K, D) not renormalised
    spread = np.array([np.sqrt(((u[labels == c] - means[i]) ** 2).mean()) for i, c in enumerate(ks)])
    weights = np.array([(labels == c).mean() for c in ks])
    prof = {"source": str(ref), "model": info.get("model"), "epoch": info.get("epoch"), "dim": v.shape[1],
            "reference_items": len(v), "silhouette": {str(a): round(b, 4) for a, b in sil.items()}, "clusters": len(ks),
            "weights": weights, "means": means, "spread": spread, "norms": norms, "query_spread": None,
            "norm_percentiles": dict(zip(("p1", "p50", "p99"), np.percentile(norms, [1, 50, 99]).round(4).tolist())),
            "item_cos_to_centroid_mean": float((u * _normalise(means)[labels]).sum(1).mean())}
    users = encode_reference_users(ref, info)
    if users is not None:
        uu = _normalise(users)
        cos = (uu @ _normalise(means).T).max(axis=1)  # (U,) cosine to the nearest cluster direction
        prof["users_encoded"] = len(users)
        prof["user_cos_to_nearest_cluster_mean"] = float(cos.mean())
        prof["user_norm_percentiles"] = dict(zip(("p1", "p50", "p99"),
                                                 np.percentile(np.linalg.norm(users, axis=1), [1, 50, 99]).round(4).tolist()))
        prof["query_spread"] = fit_spread(float(cos.mean()), v.shape[1], rng)
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


def generate(prof: dict, n: int, seed: int, chunk: int = 1_000_000) -> np.ndarray:
    """(n, D) float32 item vectors from the profile, generated in chunks (no float64 copy of the whole)."""
    rng = np.random.default_rng(seed)
    d = prof["dim"]
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        lab = rng.choice(len(prof["weights"]), size=c, p=prof["weights"])
        x = prof["means"][lab] + prof["spread"][lab, None] * rng.standard_normal((c, d))
        x = _normalise(x)
        if prof["norms"] is None:
            r = rng.lognormal(0.0, FALLBACK["norm_lognormal_sigma"], c)
        else:
            r = rng.choice(prof["norms"], size=c) * (1 + 0.01 * rng.standard_normal(c))
        out[s : s + c] = x * r[:, None]
    return out


def queries(prof: dict, q: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if prof["query_spread"] is None:
        return generate(prof, q, seed + 1)
    lab = rng.choice(len(prof["weights"]), size=q, p=prof["weights"])
    dirs = _normalise(prof["means"])
    return _normalise(dirs[lab] + prof["query_spread"] * rng.standard_normal((q, prof["dim"]))).astype(np.float32)


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


def measure_index(x: np.ndarray, xq: np.ndarray, m: int, train_per_list: int, seed: int) -> tuple:
    import faiss

    n, d = x.shape
    nlist = ivf_nlist(n)
    rng = np.random.default_rng(seed + 2)
    t0 = time.perf_counter()
    gt = faiss.knn(xq, x, K_RECALL, metric=faiss.METRIC_INNER_PRODUCT)[1]  # (Q, k) exact
    exact_s = time.perf_counter() - t0
    gc.collect()
    r0 = rss()
    t0 = time.perf_counter()
    ivf = faiss.index_factory(d, f"IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
    sample = x[np.sort(rng.choice(n, size=min(n, train_per_list * nlist), replace=False))]
    ivf.train(sample)
    del sample
    train_s = time.perf_counter() - t0
    ivf.add(x)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_ivf = rss() - r0
    size_ivf = int(faiss.serialize_index(ivf).nbytes)
    r1 = rss()
    t1 = time.perf_counter()
    ref = faiss.IndexRefineFlat(ivf, faiss.swig_ptr(x))  # copies x into the refine store; ivf is not re-filled
    refine_add_s = time.perf_counter() - t1
    rss_ref = rss() - r1
    size_ref = int(faiss.serialize_index(ref).nbytes) - size_ivf  # the serialized refine index holds the base too
    out = {"nlist": nlist, "m": m, "nbits": 8, "train_points": min(n, train_per_list * nlist), "exact_gt_s": round(exact_s, 2),
           "ivfpq_train_s": round(train_s, 2), "ivfpq_build_s": round(build_s, 2), "refine_add_s": round(refine_add_s, 2)}
    p_ivf = ivfpq_bytes(n, d, nlist, m)
    # rss_delta: RSS after build minus before; freed training/ground-truth buffers are reused, so it under-reads
    out["ivfpq"] = {"serialized_bytes": size_ivf, "rss_delta_bytes": rss_ivf, "predicted_bytes": p_ivf,
                    "rel_error_serialized": rel(size_ivf, p_ivf), "rel_error_rss": rel(rss_ivf, p_ivf)}
    return out, ivf, ref, gt, size_ref, rss_ref


def sweep(ivf, refine, xq: np.ndarray, gt: np.ndarray, grid: list[tuple[int, int]], n: int, d: int, m: int) -> list[dict]:
    import faiss

    from seqrec.retrieval import recall_at_k_vs_exact

    rows = []
    for nprobe, kf in grid:
        faiss.extract_index_ivf(ivf).nprobe = nprobe
        index = ivf
        if kf > 1:
            refine.k_factor = kf
            index = refine
        lat, ids = [], np.empty((len(xq), K_RECALL), np.int64)
        index.search(xq[:5], K_RECALL)  # warm-up
        for i in range(len(xq)):
            t0 = time.perf_counter()
            ids[i] = index.search(xq[i : i + 1], K_RECALL)[1][0]
            lat.append(time.perf_counter() - t0)
        lat_ms = np.array(lat) * 1e3
        r = recall_at_k_vs_exact(np.where(ids >= 0, ids + 2, -1), gt + 2)  # codes >= 2, as the item table's
        rows.append({"nprobe": nprobe, "k_factor": kf, "recall_at_300": round(r, 4),
                     "p50_ms": round(float(np.percentile(lat_ms, 50)), 3), "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                     "model_query_cost": query_cost(n, faiss.extract_index_ivf(ivf).nlist, nprobe, m, d, K_RECALL, kf)})
        last = rows[-1]
        print(f"  nprobe={nprobe:4d} k_factor={kf}: recall@300={r:.4f} p50={last['p50_ms']:.3f} ms p99={last['p99_ms']:.3f} ms",
              flush=True)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default="1000000,10000000", help="comma-separated catalogue sizes N")
    ap.add_argument("--reference", default=None, help="a trained SDM export directory (item_embeddings.npy, export.json)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--pq-m", type=int, default=16, help="PQ sub-quantizers (code bytes per vector)")
    ap.add_argument("--train-per-list", type=int, default=64, help="IVF/PQ training sample = this × nlist vectors")
    ap.add_argument("--nprobe", default="16,32,64,128,256,512")
    ap.add_argument("--k-factor", default="1,4,8", help="IndexRefineFlat k_factor (1 = no refine)")
    ap.add_argument("--k-grid", default="4,8,16,32,64", help="cluster counts tried on the reference")
    ap.add_argument("--threads", type=int, default=1, help="faiss / torch threads (build and query)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

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
    profile_out = {k: v for k, v in prof.items() if k not in ("weights", "means", "spread", "norms")}
    profile_out["weights"] = np.round(prof["weights"], 4).tolist()
    profile_out["spread_per_dim"] = np.round(prof["spread"], 4).tolist()
    print("profile:", json.dumps(profile_out), flush=True)

    runs, summary = [], {}
    max_err = 0.0
    for n in sizes:
        tag = f"1e{round(math.log10(n))}" if 10 ** round(math.log10(n)) == n else str(n)
        print(f"N = {n}", flush=True)
        gc.collect()
        r0 = rss()
        t0 = time.perf_counter()
        x = generate(prof, n, args.seed)
        gen_s = time.perf_counter() - t0
        fp32_rss = rss() - r0
        tables = measure_tables(x)
        tables["fp32"]["rss_delta_bytes"] = fp32_rss
        tables["fp32"]["rel_error_rss"] = rel(fp32_rss, tables["fp32"]["predicted_bytes"])
        synth_norms = np.linalg.norm(x[:100_000], axis=1)
        xq = queries(prof, args.queries, args.seed)
        idx, ivf, refine, gt, size_ref, rss_ref = measure_index(x, xq, args.pq_m, args.train_per_list, args.seed)
        p_ref = ivfpq_bytes(n, x.shape[1], idx["nlist"], args.pq_m, refine=True) - ivfpq_bytes(n, x.shape[1], idx["nlist"], args.pq_m)
        idx["refine_store"] = {"serialized_bytes": size_ref, "rss_delta_bytes": rss_ref, "predicted_bytes": p_ref,
                               "rel_error_serialized": rel(size_ref, p_ref), "rel_error_rss": rel(rss_ref, p_ref)}
        rows = sweep(ivf, refine, xq, gt, grid, n, x.shape[1], args.pq_m)
        ok = [r for r in rows if r["recall_at_300"] >= 0.95]
        best = min(ok, key=lambda r: r["p50_ms"]) if ok else max(rows, key=lambda r: r["recall_at_300"])
        errs = [abs(tables[t]["rel_error_array"]) for t in tables] + [abs(idx["ivfpq"]["rel_error_serialized"]),
                                                                     abs(idx["refine_store"]["rel_error_serialized"])]
        max_err = max(max_err, *errs)
        runs.append({"items": n, "generate_s": round(gen_s, 2), "tables": tables, "index": idx, "sweep": rows, "chosen": best,
                     "synth_norm_percentiles": dict(zip(("p1", "p50", "p99"), np.percentile(synth_norms, [1, 50, 99]).round(4).tolist()))})
        summary.update({
            f"table_fp32_gib_{tag}": round(tables["fp32"]["array_bytes"] / GIB, 3),
            f"table_fp32_rss_rel_error_{tag}": tables["fp32"]["rel_error_rss"],
            f"ivfpq_build_s_{tag}": idx["ivfpq_build_s"],
            f"ivfpq_index_mib_{tag}": round(idx["ivfpq"]["serialized_bytes"] / 2**20, 1),
            f"ivfpq_index_rel_error_{tag}": idx["ivfpq"]["rel_error_serialized"],
            f"ivfpq_recall@300_{tag}": best["recall_at_300"],
            f"ivfpq_query_ms_{tag}": best["p50_ms"],
            f"ivfpq_query_p99_ms_{tag}": best["p99_ms"],
            f"ivfpq_nprobe_{tag}": best["nprobe"],
            f"ivfpq_refine_k_factor_{tag}": best["k_factor"],
            f"ivfpq_meets_recall_{tag}": bool(ok),
        })
        del x, ivf, refine, gt
        gc.collect()
    summary["memory_model_max_rel_error"] = round(max_err, 4)
    summary["vectors"] = prof["source"]
    summary["threads"] = args.threads

    prep = json.loads((RESULTS / "bench_prepare-100m.json").read_text())
    ref_run = next(r for r in prep["runs"] if r.get("rows") == 100_000_000)
    bpe = input_bytes_per_event()
    prepare_ref = {"events": ref_run["events"], "wall_s": ref_run["wall_s"], "events_per_s": ref_run["events_per_s"],
                   "peak_rss_gib": ref_run["peak_rss_gib"], "buckets": ref_run["buckets"], "cores": prep["machine"]["cores"],
                   "bytes_per_event": {k: round(v, 2) for k, v in bpe.items()}}
    scale = model_at_scale(bpe["taobao-csv"], bpe["parquet"], prepare_ref)
    params = {**vars(args), "profile": profile_out, "k": K_RECALL}
    name = "scale" + (f"_{args.tag}" if args.tag else "")
    doc_runs = runs + [{"kind": "model_at_scale", **scale}]
    write_result(name, summary, params, doc_runs, machine_info())


if __name__ == "__main__":
    main()
