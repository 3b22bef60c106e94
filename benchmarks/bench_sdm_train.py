"""SDM training throughput: all positions in one causal pass vs the paper's one-sample-per-prefix layout.

    python benchmarks/bench_sdm_train.py                 # ~3 minutes on 2 cores
    python benchmarks/bench_sdm_train.py --data DIR      # an already prepared dataset

Data: a synthetic Taobao-style log (``seqrec data synth``, 300k events, prepared with the
default protocol) unless ``--data`` is given. Model: the default SDM configuration
(PSDMMAL: side info, 4 heads, hidden 64, gated long-term fusion; softmax ``auto``).

* **seqrec** (ours): batches of ``--batch-size`` session rows (grouped by length), every
  position of every session trained in one forward pass (``model(batch)``).
* **per-prefix** (the paper's sample layout, the reference): every (prefix, next item) pair is
  its own sample — the session cut to t events, with the same long-term subsets and profile —
  in batches of ``--prefix-batch-size`` samples (256, the paper's), grouped by prefix length
  too, scored at the last position only. Same model, same loss, same optimiser.
* **seqrec, equal targets**: our layout with batches that hold about as many targets as a
  per-prefix batch, to separate the layout's gain from the batch-size gain.

Batches are built before timing, so both sides measure training compute only (our layout
also reads ~1/S.len as many rows, which this does not count). Throughput is targets (scored
next items) per second over ``--steps`` optimiser steps after ``--warmup`` steps. Summary
keys (issue #3): ``targets_per_s_cpu``, ``speedup_vs_per_prefix``, ``targets_per_s_gpu``
(null without a CUDA device).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, write_result  # noqa: E402

from seqrec.batch import Batch  # noqa: E402
from seqrec.config import TrainConfig  # noqa: E402
from seqrec.data.prepare import load_manifest, read_split  # noqa: E402
from seqrec.features import FeatureSpec  # noqa: E402
from seqrec.models import build_model  # noqa: E402
from seqrec.train.engine import make_optimizer, train_step  # noqa: E402
from seqrec.train.loop import length_grouped_batches  # noqa: E402


def prefix_samples(batches: list[Batch]) -> list[tuple[Batch, int, int]]:
    """Every (prefix of length t, item t) pair of the sessions, as (batch, row, t)."""
    rows = []
    for b in batches:
        for i in range(b.size):
            n = int(b.seq_len[i])
            for t in range(1, n):
                if int(b.items[i, t]) >= 2:
                    rows.append((b, i, t))
    return rows


def prefix_batches(rows, size: int, rng: np.random.Generator) -> list[tuple[Batch, torch.Tensor]]:
    """Batches of ``size`` prefix samples, grouped by prefix length, padded to their own max."""
    order = rng.permutation(len(rows))
    pool = size * 32
    out = []
    for s in range(0, len(order), pool):
        chunk = sorted(order[s : s + pool], key=lambda j: rows[j][2])
        for c in range(0, len(chunk), size):
            group = [rows[j] for j in chunk[c : c + size]]
            tmax = max(t for _, _, t in group)

            pad = lambda x, w: torch.cat([x, x.new_zeros(w - x.shape[0])])  # noqa: E731

            def stack(get):
                return torch.stack([pad(get(b)[i, :t], tmax) for b, i, t in group])  # (S, t_max)

            batch = Batch(
                user={k: torch.stack([b.user[k][i] for b, i, _ in group]) for k in group[0][0].user},
                seq={k: stack(lambda b, k=k: b.seq[k]) for k in group[0][0].seq},
                seq_len=torch.tensor([t for _, _, t in group]),
                seq_time=stack(lambda b: b.seq_time),
                seq_behavior=stack(lambda b: b.seq_behavior),
                long_term={k: torch.stack([pad(b.long_term[k][i], max(bb.long_term[k].shape[1] for bb, _, _ in group))
                                           for b, i, _ in group])
                           for k in group[0][0].long_term},
                hist_item=torch.zeros(len(group), 0, dtype=torch.long), hist_time=torch.zeros(len(group), 0, dtype=torch.long),
                hist_behavior=torch.zeros(len(group), 0, dtype=torch.long), targets=torch.zeros(len(group), 0, dtype=torch.long),
                session_start=torch.zeros(len(group), dtype=torch.long),
            )
            target = torch.stack([b.items[i, t] for b, i, t in group])
            out.append((batch, target))
    return out


def per_prefix_step(model, batch: Batch, target: torch.Tensor, opt, clip: float) -> int:
    """The paper's layout: one user vector per sample (last position), softmax against its next item."""
    model.train()
    loss = model.softmax(model.encode_users(batch), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return int(target.numel())


def timed(step_fn, batches, warmup: int, steps: int, device) -> dict:
    for b in batches[:warmup]:
        step_fn(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, n, k = time.perf_counter(), 0, 0
    for b in batches[warmup : warmup + steps]:
        n += step_fn(b)
        k += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"targets": n, "steps": k, "seconds": round(dt, 3), "targets_per_s": round(n / dt, 1), "steps_per_s": round(k / dt, 2)}


def prepare_data(work: Path, rows: int) -> Path:
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import prepare, resolve_config
    from seqrec.data.synth import generate

    out = work / f"synth-{rows}-prepared"
    if not (out / "manifest.json").exists():
        generate(work / f"synth-{rows}", rows, seed=0, progress=False)
        src = open_source(str(work / f"synth-{rows}"), "synth", None)
        prepare(src, out, resolve_config(src), engine="local", progress=False, overwrite=True)
    return out


def run_device(device: torch.device, spec, table, args) -> list[dict]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    sessions = list(length_grouped_batches(table, spec, args.batch_size, rng))
    per_session_targets = sum(int((b.seq_len - 1).clamp_min(0).sum()) for b in sessions) / sum(b.size for b in sessions)
    small = max(1, round(args.prefix_batch_size / max(per_session_targets, 1e-9)))
    sessions_small = list(length_grouped_batches(table, spec, small, np.random.default_rng(1)))
    rows = prefix_samples(list(length_grouped_batches(table, spec, 512, np.random.default_rng(2))))
    prefixes = prefix_batches(rows, args.prefix_batch_size, np.random.default_rng(3))
    results = []
    for name, batches, per_prefix in (("seqrec", sessions, False), ("seqrec-equal-targets", sessions_small, False),
                                      ("per-prefix", prefixes, True)):
        torch.manual_seed(0)
        model = build_model("sdm", spec, **args.model_options).to(device)
        opt = make_optimizer(model, TrainConfig())
        if per_prefix:
            fn = lambda bt: per_prefix_step(model, bt[0].to(device), bt[1].to(device), opt, 5.0)  # noqa: E731
        else:
            fn = lambda b: train_step(model, b.to(device), opt, 5.0)[1]  # noqa: E731
        need = args.warmup + args.steps
        if len(batches) < need:
            batches = (batches * (need // max(len(batches), 1) + 1))[:need]
        r = timed(fn, batches, args.warmup, args.steps, device)
        r.update(layout=name, device=str(device),
                 batch=(args.prefix_batch_size if per_prefix else (small if "equal" in name else args.batch_size)),
                 batch_unit="prefix samples" if per_prefix else "sessions", loss=model.config.loss,
                 threads=torch.get_num_threads())
        print(r)
        results.append(r)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="prepared dataset (default: generate and prepare a synthetic one)")
    p.add_argument("--rows", type=int, default=300_000, help="synthetic events when --data is not given")
    p.add_argument("--batch-size", type=int, default=256, help="sessions per batch, our layout (default 256)")
    p.add_argument("--prefix-batch-size", type=int, default=256, help="samples per batch, per-prefix layout (paper: 256)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else prepare_data(REPO / "benchmarks" / "work", args.rows)
    spec = FeatureSpec.from_dict(load_manifest(data)["feature_spec"])
    table = read_split(data, "train")
    args.model_options = {}
    runs = run_device(torch.device("cpu"), spec, table, args)
    if torch.cuda.is_available():
        runs += run_device(torch.device("cuda"), spec, table, args)
    by = {(r["layout"], r["device"].split(":")[0]): r["targets_per_s"] for r in runs}
    summary = {
        "targets_per_s_cpu": by[("seqrec", "cpu")],
        "speedup_vs_per_prefix": round(by[("seqrec", "cpu")] / by[("per-prefix", "cpu")], 2),
        "speedup_vs_per_prefix_equal_targets": round(by[("seqrec-equal-targets", "cpu")] / by[("per-prefix", "cpu")], 2),
        "per_prefix_targets_per_s_cpu": by[("per-prefix", "cpu")],
        "targets_per_s_gpu": by.get(("seqrec", "cuda")),
    }
    manifest = load_manifest(data)
    params = {"data": str(data), "content_hash": manifest.get("content_hash"), "train_rows": table.num_rows,
              "model": build_model("sdm", spec).describe() | {"config": None}, "batch_size": args.batch_size,
              "prefix_batch_size": args.prefix_batch_size, "warmup": args.warmup, "steps": args.steps}
    write_result("bench_sdm_train", summary, params, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
