"""Serving latency: the Serve app over HTTP (``--layout`` composed or colocated) next to the same pipeline in-process, one run.

    python benchmarks/bench_serve.py                         # ~1M-item catalogue, 20 req/s for 60 s, colocated, 2 replicas
    python benchmarks/bench_serve.py --layout composed --tag composed   # the same through seqrec serve's default layout
    python benchmarks/bench_serve.py --items 20000 --rate 10 --duration 20 --tag small

Artifacts (under benchmarks/work/, reused): a synthetic dataset of ``5 × --items`` events over
``--items`` generated items (``seqrec data synth`` + ``prepare`` with min item count 1; item
popularity is a power law, so the catalogue, the items of the training window, is about half of
them; the result's ``catalogue_size`` says how many), and an SDM
(PSDMMAL) and a BST of the default configurations over it, exported as ``seqrec train`` exports
them, with an approximate FAISS index (``--index``, default HNSW). The models are untrained
(one checkpoint of their initial weights): the latency of a forward pass does not depend on the
weights, and training on a catalogue this size is out of reach of a benchmark.

Requests are test users' recent events (the BST history plus the session, raw ids), cycled. Over
HTTP (``--requests by-user``, the default) the app keeps users' behaviours in a store (``--store``,
default a fresh SQLite file under the work directory): those events are first sent with
``POST /events``, and each measured request is ``{"user_id", "k"}`` only, so the app reads the user's
behaviours from the store (``stage_store_read_p50_ms``, summary ``store_read_ms_p50``);
``--requests events`` sends the events in every request instead, with no store.

* **in-process**: ``seqrec.serving.Pipeline.recommend`` on one request at a time, no Ray (the
  same stage functions the deployments call);
* **HTTP, fixed rate**: ``--rate`` requests per second for ``--duration`` seconds (open loop:
  each request is sent at its scheduled time from a thread pool, so a slow answer does not delay
  the next request; latency is measured from the scheduled time);
* **HTTP, closed loop**: ``--clients`` clients sending back to back for ``--closed-duration`` seconds;
  the CPU time every process of the cluster spent over it, per request (Linux), says where the
  cores go.

Serve runs in ``--serve-mode`` (default fast, as ``seqrec serve``; see ``serve_apps/config.py``). The app runs in
``--layout`` (default colocated: the Ingress alone, running the three stages in its replicas; composed: Ingress →
UserEncoder → Retriever → Ranker deployments, seqrec serve's default) with ``--replicas`` replicas (default 2
colocated, of the Ingress; 1 composed, of each deployment); the summary records both (``layout``, ``replicas``).

Every client is loopback only (127.0.0.1) and bounded in count and time. Summary keys:
``p50_ms``, ``p95_ms``, ``p99_ms``, ``qps``, ``errors``, ``requests`` (the fixed-rate run),
``inprocess_p50_ms``, ``serve_overhead_ratio_p50`` (HTTP p50 ÷ in-process p50),
``catalogue_size``, ``gpu_p99_ms`` (null without a GPU), the closed-loop figures and the
per-stage times (``stage_*_p50_ms``, from the responses' ``timings_ms``), ``store_read_ms_p50``,
``ms_300_candidates_1thread`` (the in-process rank stage: ``--candidates`` through the served ranker, int8 on a CPU,
one thread); in-process, one request at a time:
``inprocess_rows_ms_p50`` (raw events → session row), ``inprocess_encode_ms_p50`` (row → SDM user vector),
``inprocess_user_vector_ms_p50`` (the two, per request), ``inprocess_retrieve_ms_p50``, ``inprocess_rank_ms_p50``;
and the encode stage with the matcher in PyTorch against the served runtime (``encoder_runtime``: SDM in ONNX Runtime
on a CPU), the same rows timed call by call in turn: ``inprocess_encode_ms_p50_torch``,
``inprocess_encode_ms_p50_served``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"


def artifacts(items: int, index: str) -> dict:
    """Dataset + untrained SDM and BST exports over a catalogue of about ``items`` items (cached in WORK)."""

    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import load_manifest, prepare, resolve_config
    from seqrec.data.synth import generate
    from seqrec.export import export_checkpoint
    from seqrec.serving import ensure_index
    from seqrec.train.factory import build

    root = WORK / f"serve-{items}"
    raw, data = root / "events", root / "prep"
    if not (data / "manifest.json").exists():
        rows = max(5 * items, 200_000)
        if not (raw / "synth.json").exists():
            generate(raw, rows, seed=0, items=items, users=max(rows // 100, 1000), progress=False)
        src = open_source(str(raw), "synth", None)
        prepare(src, data, resolve_config(src, min_item_count=1), engine="auto", progress=False, overwrite=True)
    manifest = load_manifest(data)
    out = {"data": data}
    for name, model in (("sdm", "sdm:PSDMMAL"), ("bst", "bst")):
        export = root / name / "export"
        if not (export / "export.json").exists():
            m, _, _ = build(model, data, seed=0)
            ck = save_checkpoint(root / name / "checkpoint", m, epoch=0, step=0, dataset=dataset_identity(manifest, data))
            export_checkpoint(ck, export, data)
        out[name] = export
    t0 = time.perf_counter()
    info = ensure_index(out["sdm"], index)
    out["index"] = info | {"build_s": time.perf_counter() - t0}
    out["catalogue_size"] = int(np.load(out["sdm"] / "item_ids.npy", mmap_mode="r").shape[0]) - 2
    return out


def bodies(data: Path, n: int, k: int) -> list[dict]:
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    builder = RowBuilder(data)
    rows = read_split(data, "test").slice(0, n).to_pylist()
    out = []
    for row in rows:
        req = builder.request_from_row(row)
        out.append({"user_id": req.user_id, "k": k,
                    "events": [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior} for e in req.events]})
    return out


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, float)
    if not len(a):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99))}


def in_process(art: dict, reqs: list[dict], n: int, candidates: int, threads: int = 1) -> dict:
    """One request at a time through ``Pipeline`` with ``threads`` torch threads (a replica's, default 1)."""
    import torch

    from seqrec.serving import Event, Pipeline, Request

    torch.set_num_threads(threads)

    pipe = Pipeline(art["data"], art["sdm"], art["bst"], candidates=candidates)
    lat, stages = [], {"rows_ms": [], "encode_ms": [], "retrieve_ms": [], "rank_ms": []}
    for i in range(n + 5):
        b = reqs[i % len(reqs)]
        req = Request(b["user_id"], [Event(e["item_id"], e["timestamp"], e["behavior"]) for e in b["events"]])
        t0 = time.perf_counter()
        (res,) = pipe.recommend([req], k=b["k"])
        if i >= 5:  # the first few warm up numba and torch
            lat.append((time.perf_counter() - t0) * 1e3)
            for key in stages:
                stages[key].append(res["timings_ms"][key])
    # raw events → user vector of one request (issue 17: <= 3 ms): rows then the matcher, per request
    stages["user_vector_ms"] = [r + e for r, e in zip(stages["rows_ms"], stages["encode_ms"])]
    out = {**percentiles(lat), "requests": len(lat), **{f"{k}_p50": float(np.median(v)) for k, v in stages.items()}}
    return out | encode_runtimes(art, pipe, reqs, n)


def encode_runtimes(art: dict, pipe, reqs: list[dict], n: int) -> dict:
    """The encode stage (row → user vector) with the matcher in PyTorch and as served (``encoder_runtime`` auto:
    SDM in ONNX Runtime on a CPU), on the same rows, called in turn (this machine's speed drifts within a run):
    ``encode_ms_p50_torch``, ``encode_ms_p50_served`` (medians) and the served runtime's name."""
    from seqrec.inference import encode_table
    from seqrec.serving import Event, Request, load_model

    torch_matcher = load_model(art["sdm"], "matcher", runtime="torch").model
    rows = [pipe.rows.rows([Request(b["user_id"], [Event(e["item_id"], e["timestamp"], e["behavior"]) for e in b["events"]])])[0]
            for b in reqs[:n]]
    spec, served = pipe.rows.spec, pipe.matcher.model
    times = {"torch": [], "served": []}
    for i in range(n + 5):
        row = rows[i % len(rows)]
        for name, model in (("torch", torch_matcher), ("served", served))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            encode_table(model, row, spec)
            if i >= 5:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {"encode_ms_p50_torch": float(np.median(times["torch"])), "encode_ms_p50_served": float(np.median(times["served"])),
            "encoder_runtime": pipe.matcher.version["runtime"]}


class Client:
    """HTTP POSTs to the app over loopback, recording latency, status and the response's stage timings."""

    def __init__(self, url: str):
        import requests

        self.url, self.local = url, threading.local()
        self.requests = requests

    def session(self):
        if not hasattr(self.local, "s"):
            self.local.s = self.requests.Session()
        return self.local.s

    def post(self, body: dict, start: float | None = None) -> dict:
        start = time.perf_counter() if start is None else start
        try:
            r = self.session().post(self.url, json=body, timeout=30)
            ok = r.status_code == 200
            timings = r.json().get("timings_ms", {}) if ok else {}
            status = r.status_code
        except Exception as e:  # noqa: BLE001 - counted as an error
            ok, timings, status = False, {}, repr(e)
        return {"ms": (time.perf_counter() - start) * 1e3, "ok": ok, "status": status, "timings": timings, "at": start}


def fixed_rate(client: Client, reqs: list[dict], rate: float, duration: float) -> list[dict]:
    n = int(rate * duration)
    t0 = time.perf_counter() + 0.5
    out: list[dict] = []
    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = []
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(client.post, reqs[i % len(reqs)], due))
        out = [f.result() for f in futures]
    return out


def closed_loop(client: Client, reqs: list[dict], clients: int, duration: float, max_requests: int = 100_000) -> tuple[list[dict], float]:
    end = time.perf_counter() + duration
    results: list[dict] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        i = c
        while time.perf_counter() < end and len(results) < max_requests:
            res = client.post(reqs[i % len(reqs)])
            with lock:
                results.append(res)
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def process_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and every process it started (the Ray
    cluster: GCS, raylet, Serve controller, proxy or HAProxy, replicas), by name; Linux /proc only
    ({} elsewhere). A replica is named by its deployment (``ray::ServeReplica:recommend:Ranker`` → Ranker)."""
    import os

    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, str, float]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        name = argv[0].decode(errors="replace") if argv and argv[0] else stat.split("(", 1)[1].split(")")[0]
        name = name.split(":")[-1] if name.startswith("ray::ServeReplica") else Path(name.split()[0]).name
        procs[int(d.name)] = (int(fields[1]), name.split(".")[0], (int(fields[11]) + int(fields[12])) / tick)
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:  # descendants of this process
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _, _) in procs.items() if ppid == parent and pid not in mine]
        mine.update(kids)
        frontier += kids
    out: dict[str, float] = {}
    for pid in mine & procs.keys():
        name = "benchmark (client, driver)" if pid == os.getpid() else procs[pid][1]
        out[name] = out.get(name, 0.0) + procs[pid][2]
    return out


def summarize(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    out = {**percentiles([r["ms"] for r in ok]), "requests": len(results), "errors": len(results) - len(ok),
           "qps": len(ok) / wall if wall > 0 else None}
    for stage in ("store_read", "encode", "retrieve", "rank", "encode_compute", "retrieve_compute", "rank_compute", "total"):
        vals = [r["timings"][stage] for r in ok if stage in r["timings"]]
        out[f"stage_{stage}_p50_ms"] = float(np.median(vals)) if vals else None
    # the slowest 1%: when each was sent (s after the first), its latency at the client and the app's own time for it
    # (timings_ms.total: store read to answer, inside the Ingress), so a tail can be placed in the app or around it
    first = min((r["at"] for r in results), default=0.0)
    out["tail"] = [{"at_s": round(r["at"] - first, 3), "ms": round(r["ms"], 1),
                    **{k: round(v, 1) for k, v in r["timings"].items()}}
                   for r in sorted(ok, key=lambda r: -r["ms"])[: max(1, len(ok) // 100)]]
    statuses: dict = {}
    for r in results:
        if not r["ok"]:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    out["error_statuses"] = statuses
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2_000_000, help="items to generate (default 2M; the catalogue is about half of them)")
    ap.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="ivf", help="FAISS index (default ivf)")
    ap.add_argument("--rate", type=float, default=20.0, help="fixed-rate requests per second (default 20)")
    ap.add_argument("--duration", type=float, default=60.0, help="fixed-rate seconds (default 60)")
    ap.add_argument("--clients", type=int, default=4, help="closed-loop clients (default 4)")
    ap.add_argument("--closed-duration", type=float, default=20.0, help="closed-loop seconds (default 20)")
    ap.add_argument("--inprocess", type=int, default=200, help="in-process requests (default 200)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--gpu", action="store_true", help="models on the GPU and a GPU index (use --index flat or ivf)")
    ap.add_argument("--serve-mode", choices=["fast", "standard"], default="fast",
                    help="Serve's mode on the benchmark's cluster (serve_apps/config.py SERVE_MODES; default fast, as seqrec serve)")
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads per replica (the app's `threads`; default 1)")
    ap.add_argument("--layout", choices=["composed", "colocated"], default="colocated",
                    help="the app's layout (default colocated, the latency layout: the Ingress runs the stages; composed: "
                    "a deployment per stage, seqrec serve's default)")
    ap.add_argument("--replicas", type=int, help="replicas of each deployment (colocated: of the Ingress; default: 2 "
                    "colocated, one per core; 1 composed)")
    ap.add_argument("--requests", choices=["by-user", "events"], default="by-user",
                    help="by-user (default): users' events go to the store first (POST /events), requests carry only "
                    "user_id; events: every request carries the user's events, no store")
    ap.add_argument("--store", help="the app's store URL with --requests by-user (default: a fresh SQLite file in the work dir)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args()
    if args.replicas is None:
        args.replicas = 2 if args.layout == "colocated" else 1
    if args.replicas < 1:
        ap.error(f"--replicas {args.replicas}: at least 1")

    import ray
    from ray import serve

    from seqrec.cluster import free_port
    from serve_apps.config import config, deploy, start_local_cluster

    t0 = time.perf_counter()
    art = artifacts(args.items, args.index)
    setup_s = time.perf_counter() - t0
    reqs = bodies(art["data"], 200, args.k)
    print(f"catalogue {art['catalogue_size']:,} items, {art['index']['kind']} index; artifacts ready in {setup_s:.0f}s")
    local = in_process(art, reqs, args.inprocess, args.candidates, args.threads)
    print(f"in-process: p50 {local['p50_ms']:.1f} ms, p99 {local['p99_ms']:.1f} ms")
    port = args.port or free_port()
    if ray.is_initialized():  # preparing a new catalogue ran Ray Data in this process; Serve gets its own cluster
        ray.shutdown()
    env = start_local_cluster(args.serve_mode)
    store = None
    if args.requests == "by-user":
        store = args.store
        if store is None:
            db = Path(art["data"]).parent / "bench-events.sqlite"
            for f in db.parent.glob(db.name + "*"):  # a fresh store: the events below are all it holds
                f.unlink()
            store = f"sqlite:///{db}"
    cfg = config({"data": str(art["data"]), "matcher": str(art["sdm"]), "ranker": str(art["bst"]),
                  "candidates": args.candidates, "gpu": args.gpu, "threads": args.threads, "store": store,
                  "layout": args.layout, "replicas": args.replicas}, port=port)
    t1 = time.perf_counter()
    deploy(cfg, timeout_s=600)
    start_s = time.perf_counter() - t1
    client = Client(f"http://127.0.0.1:{port}/recommend")
    if store is not None:  # the users' behaviours into the store, then requests by user_id only
        events = Client(f"http://127.0.0.1:{port}/events")
        for i in range(0, len(reqs), 20):
            r = events.post({"users": [{"user_id": b["user_id"], "events": b["events"]} for b in reqs[i:i + 20]]})
            if not r["ok"]:
                raise RuntimeError(f"POST /events failed while warming the store: {r['status']}")
        reqs = [{"user_id": b["user_id"], "k": b["k"]} for b in reqs]
    for b in reqs[:20]:  # warm-up, not measured
        client.post(b)
    # the client's own full collections must not show as the app's latency: with the dataset's requests and events in
    # this process, one took ~0.6 s of the client's CPU 25 s into the run (a burst of 300-800 ms answers, the p99)
    gc.collect()
    gc.freeze()
    t2 = time.perf_counter()
    print(f"fixed-rate run from {time.strftime('%H:%M:%S')} ({time.time():.1f})", flush=True)
    fixed = summarize(fixed_rate(client, reqs, args.rate, args.duration), time.perf_counter() - t2)
    brief = lambda res: json.dumps({k: v for k, v in res.items() if "stage" not in k and k != "tail"})  # noqa: E731
    print(f"HTTP at {args.rate:g}/s for {args.duration:g}s: {brief(fixed)}")
    cpu0 = process_cpu_s()
    closed_results, wall = closed_loop(client, reqs, args.clients, args.closed_duration)
    cpu1 = process_cpu_s()
    closed = summarize(closed_results, wall)
    n = max(len(closed_results), 1)
    cpu = {k: round((v - cpu0.get(k, 0.0)) * 1e3 / n, 2) for k, v in sorted(cpu1.items(), key=lambda kv: cpu0.get(kv[0], 0.0) - kv[1])}
    cpu = {k: v for k, v in cpu.items() if v >= 0.05}
    print(f"CPU ms per request (closed loop): {json.dumps(cpu)}")
    print(f"HTTP closed loop, {args.clients} clients: {brief(closed)}")
    serve.shutdown()
    ray.shutdown()

    summary = {
        "p50_ms": fixed["p50_ms"], "p95_ms": fixed["p95_ms"], "p99_ms": fixed["p99_ms"], "qps": fixed["qps"],
        "errors": fixed["errors"], "requests": fixed["requests"],
        "inprocess_p50_ms": local["p50_ms"], "inprocess_p99_ms": local["p99_ms"],
        "serve_overhead_ratio_p50": fixed["p50_ms"] / local["p50_ms"] if fixed["p50_ms"] and local["p50_ms"] else None,
        "catalogue_size": art["catalogue_size"], "index": art["index"]["kind"],
        "requests_by": args.requests, "store": store, "store_read_ms_p50": fixed.get("stage_store_read_p50_ms"),
        "ms_300_candidates_1thread": local.get("rank_ms_p50"),
        "gpu_p99_ms": fixed["p99_ms"] if args.gpu else None,  # the GPU layout (--gpu: models and index on the GPU)
        "closed_loop_clients": args.clients, "closed_loop_qps": closed["qps"], "closed_loop_p50_ms": closed["p50_ms"],
        "closed_loop_p99_ms": closed["p99_ms"], "closed_loop_errors": closed["errors"],
        **{k: v for k, v in fixed.items() if k.startswith("stage_")},
        **{f"inprocess_{k}": v for k, v in local.items() if k.endswith("_ms_p50")},
        "inprocess_encode_ms_p50_torch": local["encode_ms_p50_torch"], "inprocess_encode_ms_p50_served": local["encode_ms_p50_served"],
        "encoder_runtime": local["encoder_runtime"],
        "app_start_s": start_s, "serve_mode": args.serve_mode, "layout": args.layout, "replicas": args.replicas,
        "cpu_ms_per_request": round(sum(cpu.values()), 1), "cpu_ms_per_request_by_process": cpu,
    }
    write_result(f"bench_serve{('_' + args.tag) if args.tag else ''}", summary,
                 params={**vars(args), "cluster_env": env,
                         "index_params": {k: v for k, v in art["index"].items() if k not in ("checkpoint",)},
                         "models": "untrained default PSDMMAL and BST (latency does not depend on the weights)"},
                 runs=[{"mode": "fixed_rate", **fixed}, {"mode": "closed_loop", **closed}, {"mode": "in_process", **local}],
                 machine=machine_info())


if __name__ == "__main__":
    main()
