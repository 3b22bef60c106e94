"""Throughput and peak memory of ``seqrec data prepare`` vs a naive pandas ``groupby().apply()``.

    python benchmarks/bench_prepare.py                      # 1M and 10M rows (about 10 minutes on 2 cores)
    python benchmarks/bench_prepare.py --sizes 1000000      # quick

For every size the synthetic generator writes a Parquet log (all side features and profile)
and, optionally, the same events in UserBehavior.csv's 5-column layout (the real Taobao
format). Then, each in a fresh process as a user would run them:

* ``seqrec data prepare`` with its default engine (``auto``: in-process for one bucket,
  the Ray Data pipeline beyond; at 10M rows that is Ray, with a local Ray instance
  started by the command, so its start-up time and memory are included);
* ``seqrec data prepare --engine ray`` at 1M too, to show what Ray costs on small data;
* the naive reference (``seqrec.data.reference``: pandas ``groupby(user).apply()`` of a
  per-user Python function, the slow, obviously correct implementation the tests compare
  against), which reads the same Parquet file and writes its rows to Parquet, at the
  sizes in ``--naive-sizes`` (it takes about a minute per million rows).

Wall time is measured around each command (interpreter start and imports included);
``in_process_s`` is the time inside it; at 1M rows a ``seqrec-warm-process`` run also times a
second ``prepare`` call in one process (imports, numba's kernel load and Arrow's start-up paid).
Memory is the peak summed RSS (and PSS) of the command and every descendant process, Ray's raylet and workers included.

Summary keys (issue #2): ``speedup_vs_naive_1m`` (naive wall / seqrec wall at 1M rows),
``events_per_s_10m`` and ``peak_rss_gib_10m`` (the slower / larger of the Parquet and
Taobao-CSV runs at 10M), ``projected_minutes_100m`` (100M events at the 10M rate; memory
does not grow with input size, it is bounded by --rows-per-bucket per task).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, run_measured, write_result  # noqa: E402

NAIVE = r"""
import sys, time, json
import pyarrow as pa, pyarrow.parquet as pq
from seqrec.data.loaders import open_source
from seqrec.data.prepare import resolve_config
from seqrec.data.reference import reference_prepare
src = open_source(sys.argv[1])
cfg = resolve_config(src)
t0 = time.perf_counter()
files = json.load(open(f"{sys.argv[1]}/synth.json"))["files"]
df = pa.concat_tables([pq.read_table(f"{sys.argv[1]}/{f}") for f in files]).to_pandas()
rows = reference_prepare(df, cfg, src.item_side, src.user_profile)
for split, r in rows.items():
    pq.write_table(pa.Table.from_pylist(r), f"{sys.argv[2]}/{split}.parquet")
print(json.dumps({"in_process_s": time.perf_counter() - t0, "rows_out": {k: len(v) for k, v in rows.items()}}))
"""


WARM = r"""
import sys, json, time
from seqrec.data.loaders import open_source
from seqrec.data.prepare import prepare
src = open_source(sys.argv[1])
times = []
for _ in range(2):
    t0 = time.perf_counter()
    prepare(src, sys.argv[2], engine="local", progress=False, overwrite=True)
    times.append(time.perf_counter() - t0)
print(json.dumps({"first_s": times[0], "in_process_s": times[1]}))
"""


SYNTH_RUNS: list[dict] = []  # generator runs of this invocation (reported with the others)


def synth(work: Path, rows: int, layout: str) -> Path:
    out = work / f"synth-{rows}-{layout}"
    meta = out / "synth.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if m.get("rows") == rows and m.get("layout") == layout:
            return out
    shutil.rmtree(out, ignore_errors=True)
    r = run_measured([sys.executable, "-m", "seqrec.cli", "data", "synth", "--rows", str(rows), "--out", str(out),
                      "--layout", layout, "--no-progress"])
    if r["returncode"]:
        raise SystemExit(r["output_tail"])
    r.pop("output_tail")
    SYNTH_RUNS.append({"kind": "synth", "rows": rows, "layout": layout, **r})
    return out


def prepare_run(src: Path, out: Path, engine: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    r = run_measured([sys.executable, "-m", "seqrec.cli", "data", "prepare", str(src), "--out", str(out),
                      "--engine", engine, "--no-progress"], env=env)
    if r["returncode"]:
        raise SystemExit(f"prepare failed:\n{r['output_tail']}")
    m = json.loads((out / "manifest.json").read_text())
    r.update(engine_used=m["engine"], in_process_s=m["timings_s"]["total"], timings_s=m["timings_s"],
             events=m["counts"]["rows_read"], rows_out={s: m["counts"].get(f"{s}_rows") for s in ("train", "val", "test")},
             buckets=m["counts"].get("buckets", 1))
    r["events_per_s"] = round(r["events"] / r["wall_s"])
    r.pop("output_tail")
    return r


def naive_run(src: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    r = run_measured([sys.executable, "-c", NAIVE, str(src), str(out)])
    if r["returncode"]:
        raise SystemExit(f"naive reference failed:\n{r['output_tail']}")
    r.update(json.loads(r.pop("output_tail").strip().splitlines()[-1]))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated event counts")
    ap.add_argument("--naive-sizes", default="1000000", help="sizes at which to run the naive reference")
    ap.add_argument("--layouts", default="parquet,taobao-csv", help="synthetic layouts to measure")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work"), help="scratch directory (gitignored)")
    ap.add_argument("--tag", default="", help="write results/bench_prepare-TAG.json instead (e.g. a 100M-row run)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    naive_sizes = {int(s) for s in args.naive_sizes.split(",") if s}
    layouts = [s for s in args.layouts.split(",") if s]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    # one small run first: numba compiles the long-term kernel once per install (cached on disk after that)
    r = prepare_run(synth(work, 20_000, "parquet"), work / "out", "local")
    runs.append({"kind": "warmup", "rows": 20_000, "layout": "parquet", **r})
    for n in sizes:
        for layout in layouts:
            src = synth(work, n, layout)
            r = prepare_run(src, work / "out", "auto")
            runs.append({"kind": "seqrec", "rows": n, "layout": layout, **r})
            print(f"{n:>11,} {layout:<10} seqrec ({r['engine_used']}): {r['wall_s']:.1f} s wall, "
                  f"{r['events_per_s']:,} events/s, peak {r['peak_rss_gib']:.2f} GiB", flush=True)
            if n in naive_sizes and layout == "parquet":
                if r["engine_used"] != "ray":
                    rr = prepare_run(src, work / "out", "ray")
                    runs.append({"kind": "seqrec", "rows": n, "layout": layout, **rr})
                    print(f"{n:>11,} {layout:<10} seqrec (ray):   {rr['wall_s']:.1f} s wall, {rr['events_per_s']:,} events/s", flush=True)
                wr = run_measured([sys.executable, "-c", WARM, str(src), str(work / "out")])
                wr.update(json.loads(wr.pop("output_tail").strip().splitlines()[-1]))
                runs.append({"kind": "seqrec-warm-process", "rows": n, "layout": layout, **wr})
                print(f"{n:>11,} {layout:<10} seqrec (local, second call in one process): {wr['in_process_s']:.2f} s", flush=True)
                nr = naive_run(src, work / "naive")
                runs.append({"kind": "naive", "rows": n, "layout": layout, **nr})
                print(f"{n:>11,} {layout:<10} naive: {nr['wall_s']:.1f} s wall", flush=True)

    def pick(kind, n, layout=None, engine=None):
        return [r for r in runs if r["kind"] == kind and r["rows"] == n and (layout is None or r["layout"] == layout)
                and (engine is None or r.get("engine_used") == engine)]

    summary = {"speedup_vs_naive_1m": None, "events_per_s_10m": None, "peak_rss_gib_10m": None, "projected_minutes_100m": None}
    default_1m = pick("seqrec", 1_000_000, "parquet")[:1]  # the default-engine run comes first
    naive_1m = pick("naive", 1_000_000)
    if default_1m and naive_1m:
        summary["speedup_vs_naive_1m"] = round(naive_1m[0]["wall_s"] / default_1m[0]["wall_s"], 1)
        summary["speedup_vs_naive_1m_in_process"] = round(naive_1m[0]["in_process_s"] / default_1m[0]["in_process_s"], 1)
        warm = pick("seqrec-warm-process", 1_000_000)
        if warm:
            summary["speedup_vs_naive_1m_warm_process"] = round(naive_1m[0]["in_process_s"] / warm[0]["in_process_s"], 1)
        ray_1m = pick("seqrec", 1_000_000, "parquet", "ray")
        if ray_1m:
            summary["speedup_vs_naive_1m_ray_engine"] = round(naive_1m[0]["wall_s"] / ray_1m[0]["wall_s"], 1)
    ten = [r for r in pick("seqrec", 10_000_000) if r.get("engine_used")]
    if ten:
        first = {}
        for r in ten:  # the default-engine run of each layout
            first.setdefault(r["layout"], r)
        summary["events_per_s_10m"] = min(r["events_per_s"] for r in first.values())
        summary["peak_rss_gib_10m"] = max(r["peak_rss_gib"] for r in first.values())
        summary["projected_minutes_100m"] = round(100_000_000 / summary["events_per_s_10m"] / 60, 1)
    n100 = [r for r in pick("seqrec", 100_000_000) if r.get("engine_used")]
    if n100:
        summary["events_per_s_100m"] = min(r["events_per_s"] for r in n100)
        summary["minutes_100m"] = round(max(r["wall_s"] for r in n100) / 60, 1)
        summary["peak_rss_gib_100m"] = max(r["peak_rss_gib"] for r in n100)
    write_result("bench_prepare" + (f"-{args.tag}" if args.tag else ""), summary, vars(args), runs + SYNTH_RUNS)


if __name__ == "__main__":
    main()
