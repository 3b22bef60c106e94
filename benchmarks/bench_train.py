"""Ray Train throughput: SDM and BST with 1 and 2 workers, next to the ingest-only rate, in one run.

    python benchmarks/bench_train.py                    # ~10 minutes on 2 cores; run it on an idle machine

Data: the synthetic 300k-event dataset (prepared under benchmarks/work/ if missing). Each
measurement is a real ``TorchTrainer.fit`` on a local Ray cluster, fed by Ray Data from the
prepared Parquet shards:

* **ingest only**: the workers iterate their dataset shard exactly as training does
  (``iter_torch_batches`` of ``batch × group_pool``-row pools through the 8,192-row local shuffle
  buffer, ``PoolCollate`` into length-grouped padded batches) and count the next-item targets,
  with no model: the most Ray Data + collate can deliver;
* **SDM** (PSDMMAL, the default configuration) with 1 and 2 workers (DDP over gloo): training
  targets/s of the second epoch (the first includes start-up), from the run's history;
* **BST** (b = 1, the paper's MLP) with 1 worker: samples/s (positives + negatives);
* the model runs stream the split from the Parquet files every epoch (``cache="off"``); SDM with
  1 worker is measured once more with the split cached in the object store (``cache="on"``),
  and ``sdm_data_wait_s_*`` are the seconds of the measured epoch spent waiting for data;
* every streamed epoch starts with a fixed Ray Data start-up (``*_first_batch_s``: launching the
  read tasks and filling the shuffle buffer until the first pool arrives). ``*_steady_*`` rates
  leave it out; the headline rates include it. On a small dataset it is most of the gap.

``ingest_over_model_ratio`` = ingest targets/s ÷ SDM 1-worker targets/s (target ≥ 5: ingestion
never bounds training). On a GPU (device tool): SDM targets/s on one GPU with bf16 autocast.
Summary keys: ``ingest_targets_per_s``, ``sdm_targets_per_s_1w``, ``sdm_targets_per_s_2w``,
``bst_samples_per_s_1w``, ``ingest_over_model_ratio``, ``gpu_targets_per_s`` (null without a GPU),
plus ``sdm_targets_per_s_1w_cached``, ``sdm_data_wait_s_1w(_cached)``, ``*_first_batch_s`` and the ``*steady*`` rates.
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


def ingest_fn(config: dict) -> None:
    """Iterate the shard like training does, without a model; report next-item targets per second."""
    import numpy as np
    import ray.train

    from seqrec.config import TrainJob
    from seqrec.data.prepare import load_manifest
    from seqrec.features import FeatureSpec
    from seqrec.train.distributed import iter_pools

    spec = FeatureSpec.from_dict(load_manifest(config["data"])["feature_spec"])
    shard = ray.train.get_dataset_shard("train")
    job = TrainJob.from_dict({"model": "sdm", "data": config["data"], "batch_size": config["batch_size"]})  # the default ingest options
    rng = np.random.default_rng(0)
    for epoch in range(1, config["epochs"] + 1):
        t0, targets, rows = time.perf_counter(), 0, 0
        pools = iter_pools(shard, spec, job, rng)  # the training loop's ingest (train_fn_per_worker)
        first = None
        for batches in pools:
            first = time.perf_counter() - t0 if first is None else first
            for j in rng.permutation(len(batches)):
                batch = batches[j]
                targets += int((batch.seq_len - 1).clamp_min(0).sum())
                rows += batch.size
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "rank": ray.train.get_context().get_world_rank(), "targets": targets, "rows": rows,
               "seconds": dt, "targets_per_s": targets / dt, "first_batch_s": first,
               "steady_targets_per_s": targets / (dt - first)}
        # the controller keeps only metrics reported with a checkpoint: write the measurement out
        out = Path(config["out"]) / f"ingest-rank{row['rank']}-epoch{epoch}.json"
        out.write_text(__import__("json").dumps(row))
        ray.train.report(row)


def measure_ingest(data: Path, workers: int, batch_size: int, storage: str) -> dict:
    import json

    import ray.data
    from ray.train import DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(tempfile.mkdtemp(prefix="ingest_", dir=storage))
    TorchTrainer(
        ingest_fn, train_loop_config={"data": str(data), "epochs": 2, "batch_size": batch_size, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name=f"ingest-{workers}w-{time.time_ns()}", storage_path=storage),
        datasets={"train": ray.data.read_parquet(str(data / "train"))}, dataset_config=DataConfig(datasets_to_split=["train"]),
    ).fit()
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("ingest-*.json"))]
    last = [r for r in rows if r["epoch"] == 2]
    return {"targets_per_s": sum(r["targets_per_s"] for r in last), "first_batch_s": max(r["first_batch_s"] for r in last),
            "steady_targets_per_s": sum(r["steady_targets_per_s"] for r in last), "per_epoch": rows}


def measure_training(data: Path, model: str, workers: int, storage: str, gpu: bool = False, cache: str = "off", **options) -> dict:
    from seqrec.config import TrainJob
    from seqrec.train.distributed import run_training

    # the batch size is global: each of the workers takes its share (before, these were per-worker sizes)
    per_worker = 256 if model.startswith("sdm") else 32
    job = TrainJob.from_dict(dict(model=model, data=str(data), options=options, epochs=2, workers=workers, gpu=gpu, cache=cache,
                                  cpus_per_worker=0.5 if not gpu else 1.0, storage=storage,
                                  name=f"{model.replace(':', '-')}-{workers}w-{time.time_ns()}", patience=None,
                                  batch_size=per_worker * max(workers, 1)))
    s = run_training(job, log=print)
    last = s["history"][-1]
    return {"targets_per_s": last["targets_per_s"], "data_wait_s": last["data_wait_s"], "first_batch_s": last["first_batch_s"],
            "steady_targets_per_s": last["targets"] / (last["seconds"] - last["first_batch_s"]),
            "history": s["history"], "wall_s": s["wall_s"], "cached": s["cached"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="synthetic events (default 300,000)")
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    args = p.parse_args()
    import ray
    import torch

    data = prepared("synth", "dataset-day", args.rows)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    storage = tempfile.mkdtemp(prefix="bench_train_")
    runs = {}
    runs["ingest_1w"] = measure_ingest(data, 1, 256, storage)
    runs["sdm_1w"] = measure_training(data, "sdm:PSDMMAL", 1, storage)
    runs["sdm_2w"] = measure_training(data, "sdm:PSDMMAL", 2, storage)
    runs["sdm_1w_cached"] = measure_training(data, "sdm:PSDMMAL", 1, storage, cache="on")
    runs["bst_1w"] = measure_training(data, "bst", 1, storage)
    gpu = None
    if torch.cuda.is_available():
        runs["sdm_gpu"] = measure_training(data, "sdm:PSDMMAL", 1, storage, gpu=True)
        gpu = runs["sdm_gpu"]["targets_per_s"]
    ingest, sdm1 = runs["ingest_1w"]["targets_per_s"], runs["sdm_1w"]["targets_per_s"]
    summary = {
        "ingest_targets_per_s": round(ingest),
        "sdm_targets_per_s_1w": round(sdm1),
        "sdm_targets_per_s_2w": round(runs["sdm_2w"]["targets_per_s"]),
        "bst_samples_per_s_1w": round(runs["bst_1w"]["targets_per_s"]),
        "ingest_over_model_ratio": round(ingest / sdm1, 2),
        "sdm_targets_per_s_1w_cached": round(runs["sdm_1w_cached"]["targets_per_s"]),
        "sdm_data_wait_s_1w": round(runs["sdm_1w"]["data_wait_s"], 2),
        "sdm_data_wait_s_1w_cached": round(runs["sdm_1w_cached"]["data_wait_s"], 2),
        # the same rates without each epoch's start-up (until the first pool arrives), which caching removes
        "ingest_first_batch_s": round(runs["ingest_1w"]["first_batch_s"], 2),
        "sdm_first_batch_s_1w": round(runs["sdm_1w"]["first_batch_s"], 2),
        "ingest_steady_targets_per_s": round(runs["ingest_1w"]["steady_targets_per_s"]),
        "sdm_steady_targets_per_s_1w": round(runs["sdm_1w"]["steady_targets_per_s"]),
        "steady_ingest_over_model_ratio": round(runs["ingest_1w"]["steady_targets_per_s"] / runs["sdm_1w"]["steady_targets_per_s"], 2),
        "gpu_targets_per_s": None if gpu is None else round(gpu),
    }
    params = {"rows": args.rows, "data": str(data), "cpus": args.cpus,
              "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])}
    write_result("bench_train", summary, params, runs, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
