"""Ranking latency: score 300 candidates for one user (one CPU thread), and candidates/s in batch.

    python benchmarks/bench_rank.py                  # run it on an idle machine

The budget (issue #5): ≤ 5 ms for 300 candidates on one CPU thread, so that match + rank stays
within the paper's 15–20 ms. Models are untrained (latency does not depend on the weights) and
built for a Taobao-sized id space (``--items``, default 1M items, 10k categories); the user has a
full BST window (20 behaviours). Each configuration is timed through ``Ranker.score`` — the call
evaluation and serving make — under ``torch.inference_mode``:

* ``one_user``: one user × 300 candidates, ``torch.set_num_threads(1)``, median (and p90) of
  ``--repeats`` calls after warm-up;
* ``batch``: ``--batch-users`` users × 300 candidates per call with all cores, candidates/s.

Configurations: BST as the paper configures it (b = 1, 8 heads, MLP 1024-512-256), BST with the
compact MLP 256-128-64 (what the quality tables train on this CPU), BST b = 2 (no shared-window
shortcut), DIN, WDL. Summary keys: ``ms_300_candidates_1thread`` (paper BST),
``ms_300_candidates_1thread_compact``, ``candidates_per_s_batch`` (paper BST), and
``gpu_ms_300_candidates`` (null without CUDA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

from seqrec import features as F  # noqa: E402
from seqrec.batch import Batch  # noqa: E402
from seqrec.features import Feature, FeatureSpec  # noqa: E402
from seqrec.models import build_model  # noqa: E402

CONFIGS = {
    "BST (paper: b=1, MLP 1024-512-256)": ("bst", {}),
    "BST compact (MLP 256-128-64)": ("bst", {"mlp": "256-128-64"}),
    "BST b=2": ("bst", {"blocks": 2}),
    "DIN": ("din", {}),
    "WDL": ("wdl", {}),
}


def spec_for(items: int, categories: int) -> FeatureSpec:
    return FeatureSpec(
        (Feature(F.ITEM_ID, items), Feature(F.CATEGORY, categories), Feature(F.CATE1, 100), Feature(F.BRAND, 50_000)),
        (Feature(F.USER_ID, 100_000), Feature(F.AGE, 9), Feature(F.GENDER, 4)),
        Feature(F.BEHAVIOR, 6),
    )


def user_batch(spec: FeatureSpec, users: int, g: torch.Generator) -> Batch:
    """``users`` rows, each with a 20-behaviour history and a 10-event session."""
    h, t = 20, 10
    now = 1_700_000_000
    hist_time = now - torch.sort(torch.randint(600, 30 * 86400, (users, h), generator=g), dim=1, descending=True).values
    seq_time = now + torch.cumsum(torch.randint(5, 120, (users, t), generator=g), 1)
    seq = {f.name: torch.randint(2, f.vocab_size, (users, t), generator=g) for f in spec.item_features}
    return Batch(
        user={f.name: torch.randint(2, f.vocab_size, (users,), generator=g) for f in spec.user_features},
        seq=seq, seq_len=torch.full((users,), t), seq_time=seq_time, seq_behavior=torch.full((users, t), 2),
        long_term={f.name: torch.zeros(users, 0, dtype=torch.long) for f in spec.item_features},
        hist_item=torch.randint(2, spec.n_items, (users, h), generator=g), hist_time=hist_time,
        hist_behavior=torch.full((users, h), 2), targets=torch.zeros(users, 0, dtype=torch.long),
        session_start=seq_time[:, 0],
    )


def timed(fn, repeats: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--categories", type=int, default=10_000)
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--batch-users", type=int, default=64)
    p.add_argument("--batch-repeats", type=int, default=5)
    args = p.parse_args()
    spec = spec_for(args.items, args.categories)
    g = torch.Generator().manual_seed(0)
    side = torch.stack([torch.randint(2, f.vocab_size, (spec.n_items,), generator=g) for f in spec.item_side], 1)
    counts = torch.rand(spec.n_items, generator=g)
    one = user_batch(spec, 1, g)
    many = user_batch(spec, args.batch_users, g)
    c1 = torch.randint(2, spec.n_items, (1, args.candidates), generator=g)
    cb = torch.randint(2, spec.n_items, (args.batch_users, args.candidates), generator=g)
    threads = torch.get_num_threads()
    runs = []
    for label, (name, opts) in CONFIGS.items():
        torch.manual_seed(0)
        model = build_model(name, spec, **opts)
        model.set_item_table(side, counts)
        model.eval()
        with torch.inference_mode():
            torch.set_num_threads(1)
            t1 = timed(lambda: model.score(one, c1), args.repeats)
            torch.set_num_threads(threads)
            tb = timed(lambda: model.score(many, cb), args.batch_repeats, warmup=2)
            gpu_ms = None
            if torch.cuda.is_available():
                mg = model.to("cuda")
                og, cg = one.to("cuda"), c1.to("cuda")

                def call():
                    mg.score(og, cg)
                    torch.cuda.synchronize()

                gpu_ms = float(np.median(timed(call, args.repeats)) * 1e3)
                model.to("cpu")
        run = {
            "label": label, "model": name, "options": opts,
            "parameters": sum(x.numel() for x in model.parameters()),
            "ms_300_1thread_median": float(np.median(t1) * 1e3),
            "ms_300_1thread_p90": float(np.percentile(t1, 90) * 1e3),
            "batch_threads": threads,
            "candidates_per_s_batch": float(args.batch_users * args.candidates / np.median(tb)),
            "gpu_ms_300": gpu_ms,
        }
        runs.append(run)
        print(f"{label:38s} {run['ms_300_1thread_median']:7.2f} ms (p90 {run['ms_300_1thread_p90']:.2f}) 1 thread; "
              f"{run['candidates_per_s_batch']:,.0f} candidates/s in batch ({threads} threads)")
    paper, compact = runs[0], runs[1]
    summary = {
        "ms_300_candidates_1thread": round(paper["ms_300_1thread_median"], 3),
        "ms_300_candidates_1thread_compact": round(compact["ms_300_1thread_median"], 3),
        "candidates_per_s_batch": round(paper["candidates_per_s_batch"]),
        "candidates_per_s_batch_compact": round(compact["candidates_per_s_batch"]),
        "target_ms": 5.0,
        "paper_config_meets_target": paper["ms_300_1thread_median"] <= 5.0,
        "compact_config_meets_target": compact["ms_300_1thread_median"] <= 5.0,
        "gpu_ms_300_candidates": paper["gpu_ms_300"],
    }
    params = {k: v for k, v in vars(args).items()} | {"command": "python benchmarks/bench_rank.py " + " ".join(sys.argv[1:]),
                                                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    write_result("bench_rank", summary, params, runs, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
