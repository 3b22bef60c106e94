"""Ray Tune trial overhead: in-process trials (W = 0) vs Ray Train trials (W = 1), on this machine.

    python benchmarks/bench_tune.py            # ~6 minutes on 2 cores; run it on an idle machine

Data: ml-100k (user-day protocol; prepared under benchmarks/work/ if missing). Every trial
trains SDM (PSDMMAL, the default configuration) for one epoch and validates it.

A trial's overhead is what it costs beyond its training: for each kind, searches of 1 and of
``--trials`` trials run one trial at a time (FIFO); the marginal wall time per trial,
``(T(n) - T(1)) / (n - 1)``, leaves out the search's fixed start-up, and the same epoch trained
directly in this process (build the model, read the splits, train, validate: what an in-process
trial does, without Ray) is subtracted:

    trial_overhead_s_<kind> = (T(n) - T(1)) / (n - 1) - direct_epoch_s

For Ray Train trials the overhead is the trial actor plus the TorchTrainer start-up (controller,
worker group, torch process group, Ray Data read of the splits) and tear-down. Summary keys:
``trial_overhead_s_inprocess``, ``trial_overhead_s_train``, ``direct_epoch_s``, and each kind's
``search_wall_s_*`` and mean ``trial_time_total_s_*`` (Tune's time from the trial's start to
its last report).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402
from quality_matching import prepared  # noqa: E402


def direct_epoch(job) -> float:
    """One in-process trial's work without Ray: build, read the splits, one epoch, validation."""
    from seqrec.data.prepare import read_split
    from seqrec.train.factory import build
    from seqrec.train.loop import fit
    from seqrec.train.validation import select_metric, validator

    t0 = time.perf_counter()
    model, spec, manifest = build(job.model, job.data, job.options, seed=job.train.seed)
    train, val = read_split(job.data, "train"), read_split(job.data, "val")
    fit(model, train, spec, job.train, validate=validator(job.model, val, spec, manifest, job.rank_negatives),
        select=select_metric(job.model, manifest), log=None)
    return time.perf_counter() - t0


def search(job, trials: int, storage: Path, name: str) -> dict:
    from ray import tune

    from seqrec.tuning.run import run_search

    t0 = time.perf_counter()
    grid = run_search(job, {"seed": tune.grid_search(list(range(trials)))}, scheduler="fifo", name=name,
                      storage=storage, max_concurrent=1, log=None)
    wall = time.perf_counter() - t0
    if grid.errors:
        raise RuntimeError(f"{name}: {grid.errors[0]}")
    totals = [float(r.metrics["time_total_s"]) for r in grid]
    return {"trials": trials, "wall_s": wall, "trial_time_total_s": totals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3, help="trials of the longer search of each kind (default 3)")
    ap.add_argument("--cpus-per-worker", type=float, default=0.5, help="Ray Train trials: CPUs of their one worker")
    args = ap.parse_args()
    if args.trials < 2:
        ap.error("--trials must be >= 2 (the overhead is the marginal cost of a trial)")

    import ray

    from seqrec.cluster import start_ray
    from seqrec.config import TrainJob

    data = prepared("ml-100k", "user-day", 0)
    base = dict(model="sdm:PSDMMAL", data=str(data), epochs=1, patience=None)
    direct = [direct_epoch(TrainJob.from_dict({**base, "workers": 0})) for _ in range(2)]
    direct_s = min(direct)
    start_ray(workers=1)  # with the dashboard, as Ray Train trials need
    runs, summary = [], {"direct_epoch_s": direct_s}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, job in (("inprocess", TrainJob.from_dict({**base, "workers": 0, "cpus_per_worker": 1.0})),
                          ("train", TrainJob.from_dict({**base, "workers": 1, "cpus_per_worker": args.cpus_per_worker}))):
            one = search(job, 1, Path(tmp), f"{kind}-1")
            many = search(job, args.trials, Path(tmp), f"{kind}-{args.trials}")
            marginal = (many["wall_s"] - one["wall_s"]) / (args.trials - 1)
            summary[f"trial_overhead_s_{kind}"] = marginal - direct_s
            summary[f"search_wall_s_{kind}_1"] = one["wall_s"]
            summary[f"search_wall_s_{kind}_{args.trials}"] = many["wall_s"]
            all_totals = one["trial_time_total_s"] + many["trial_time_total_s"]
            summary[f"trial_time_total_s_{kind}"] = sum(all_totals) / len(all_totals)
            runs += [{"kind": kind, **one}, {"kind": kind, **many}]
            print(f"{kind}: 1 trial {one['wall_s']:.1f}s, {args.trials} trials {many['wall_s']:.1f}s -> "
                  f"{marginal:.1f}s per trial, {marginal - direct_s:.1f}s over the {direct_s:.1f}s of direct training")
    summary["train_over_inprocess_overhead"] = summary["trial_overhead_s_train"] / max(summary["trial_overhead_s_inprocess"], 1e-9)
    ray.shutdown()
    write_result("bench_tune", summary,
                 params={"data": str(data), "model": "sdm:PSDMMAL", "epochs": 1, "trials": args.trials,
                         "cpus_per_worker_train": args.cpus_per_worker, "direct_epoch_runs_s": direct},
                 runs=runs, machine=machine_info())


if __name__ == "__main__":
    main()
