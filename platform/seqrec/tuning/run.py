"""Ray Tune searches over a training job: in-process trials (``workers=0``) for now.

A trial's config is the search space's values plus ``__job`` (the base ``TrainJob`` as a dict).
The trial splits the values into training options and model options
(:func:`seqrec.tuning.space.split`), trains with the one loop (:func:`seqrec.train.fit`), and after
every epoch reports the validation metrics, the epoch and a checkpoint
(:mod:`seqrec.checkpoint`) to Tune, so ASHA can stop it early. Ray Train trials (``workers >= 1``,
``TorchTrainer`` + ``TuneReportCallback``) and ``seqrec tune`` come next (issue #6).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from seqrec.tuning.space import check_space, split


def trial_job(config: dict):
    """The ``TrainJob`` one trial trains: the base job with the trial's values applied."""
    from seqrec.train.distributed import TrainJob

    base = dict(config["__job"])
    job_values, options = split({k: v for k, v in config.items() if not k.startswith("__")})
    return TrainJob.from_dict({**base, **job_values, "options": {**base.get("options", {}), **options}})


def inprocess_trial(config: dict) -> None:
    """One Tune trial in this worker process: the single-process loop, one report per epoch."""
    from ray import tune

    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.data.prepare import read_split
    from seqrec.train.distributed import build, select_metric, validation
    from seqrec.train.loop import fit

    job = trial_job(config)
    model, spec, manifest = build(job)
    train = read_split(job.data, "train")
    val = read_split(job.data, "val") if manifest["config"]["protocol"].get("val") else None
    if val is None or val.num_rows == 0:
        raise ValueError(f"{job.data} has no validation split: a search needs one to compare trials")
    history: list[dict] = []

    def on_epoch(res, model, opt) -> None:
        metrics = {"epoch": res.epoch, "loss": res.loss, "targets_per_s": res.targets_per_s, **res.metrics}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d) / "checkpoint", model, opt, epoch=res.epoch, step=0, metrics=res.metrics,
                            dataset=dataset_identity(manifest, job.data), history=history, train=job.to_dict())
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    select = select_metric(job, manifest)
    fit(model, train, spec, job.train_config(),
        validate=lambda m: validation(job, m, val, spec, manifest)[0], select=select, log=None, on_epoch=on_epoch)


def run_search(job, space: dict, samples: int = 1, scheduler: str = "asha", name: str = "search",
               storage: str | Path = "runs/tune", seed: int = 0, cpus_per_trial: float = 1.0,
               max_concurrent: int | None = None):
    """Search ``space`` around the base ``job`` with in-process trials; returns Tune's ``ResultGrid``.

    The space is checked first (:func:`check_space`). ASHA stops trials by the validation metric
    at epoch milestones (``grace_period`` 1, ``max_t`` = epochs); ``fifo`` runs every trial to the end.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from seqrec.data.prepare import load_manifest
    from seqrec.features import FeatureSpec
    from seqrec.train.distributed import select_metric

    if job.workers != 0:
        raise ValueError("run_search runs in-process trials (workers=0); Ray Train trials are not built yet (#6)")
    if scheduler not in ("asha", "fifo"):
        raise ValueError(f"scheduler={scheduler!r}; choose asha or fifo")
    manifest = load_manifest(job.data)
    check_space(job.model, space, FeatureSpec.from_dict(manifest["feature_spec"]), base_options=job.options)
    select = select_metric(job, manifest)
    sched = (ASHAScheduler(time_attr="epoch", max_t=job.epochs, grace_period=1, reduction_factor=2)
             if scheduler == "asha" else FIFOScheduler())
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    if max_concurrent is None:
        max_concurrent = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))
    tuner = tune.Tuner(
        tune.with_resources(inprocess_trial, {"CPU": cpus_per_trial}),
        param_space={**space, "__job": job.to_dict() | {"data": str(Path(job.data).resolve()), "workers": 0}},
        # the concurrency limit goes to the generator: Tune ignores max_concurrent_trials with a generator instance
        tune_config=tune.TuneConfig(metric=select, mode="max", scheduler=sched, num_samples=samples,
                                    search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)),
        run_config=tune.RunConfig(name=name, storage_path=str(Path(storage).resolve()),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=select,
                                                                          checkpoint_score_order="max")),
    )
    return tuner.fit()


__all__ = ["inprocess_trial", "run_search", "trial_job"]
