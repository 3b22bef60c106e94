"""The one training configuration: every option, its default and its help, stated once.

A training job (:class:`TrainJob`) is the model and dataset plus three sections:

* :class:`TrainConfig`: the optimisation: epochs, the batch size, Adam, clipping, seed, patience;
* :class:`ScalingConfig`: where it runs: Ray Train workers, CPUs, GPU, mixed precision, the ingest;
* :class:`RunConfig`: where the run lives and how it survives failures.

An experiment (:class:`ExperimentSpec`, ``seqrec evaluate``) trains matchers and rankers with a
``TrainConfig`` each and one ``ScalingConfig``.

``batch_size`` has one meaning everywhere: session rows per optimisation step, over all workers
(each of N Ray Train workers takes ``batch_size / N``), so a run's optimisation does not change
with the number of workers.

The ``seqrec`` command line builds its flags from these fields (their ``help`` metadata and their
defaults), a ``--config`` YAML holds the same keys (by section, or flat: a flat key goes to the
section that has it), and a Tune search space names them the same way.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

AMP = ("auto", "off", "bf16", "fp16")
CACHE = ("auto", "on", "off")
INDEXES = ("exact", "flat", "hnsw", "ivf")  # top-K retrieval: torch matmul, FAISS flat, HNSW, IVF


def option(default, help: str, choices: tuple | None = None):
    """A config field with its command-line help (and choices): the one place its default is stated."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Optimisation; the paper's defaults are Adam, lr 0.001, gradient clipping at 5."""

    epochs: int = option(10, "max epochs (training stops early when validation stops improving, see patience)")
    batch_size: int = option(256, "session rows per optimisation step, over all workers (each of N workers takes batch_size / N)")
    lr: float = option(1e-3, "Adam learning rate (the paper's 0.001)")
    weight_decay: float = option(0.0, "Adam weight decay")
    grad_clip: float | None = option(5.0, "clip the gradient norm at this value (the paper's 5; none: no clipping)")
    seed: int = option(0, "random seed: initial weights, batch order, dropout and sampled negatives")
    group_pool: int = option(32, "batches per pool sorted by session length (SDM §4.4); 1 = no grouping")
    patience: int | None = option(3, "epochs without a better validation metric before stopping (none: never stop early)")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be > 0 (or None for no clipping)")
        if self.group_pool < 1:
            raise ValueError(f"group_pool={self.group_pool} must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 or None")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScalingConfig:
    """Where training runs: Ray Train workers and their resources, precision, and the Ray Data ingest."""

    workers: int = option(1, "Ray Train workers (0 = in the driver process, no workers)")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker (fractions allowed)")
    gpu: bool = option(False, "one GPU per worker (NCCL); default CPU (gloo)")
    amp: str = option("auto", "mixed precision on a GPU: auto (bf16 where supported), off, bf16, fp16", AMP)
    cache: str = option("auto", "keep the training split in Ray's object store: auto (when its Parquet is small), "
                        "on, off (stream it from the files every epoch)", CACHE)
    shuffle_buffer_rows: int = option(8192, "rows in the Ray Data local shuffle buffer (0: no row shuffle, pools in file order)")
    prefetch_batches: int = option(2, "pools fetched ahead of the one being trained on")
    wait_for_resources: bool = option(False, "wait for an autoscaler to add nodes when the cluster is too small "
                                      "(default: fail at once)")

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0 (0 = in the driver process, no Ray Train workers)")
        if self.amp not in AMP:
            raise ValueError(f"amp={self.amp!r}; choose one of {AMP}")
        if self.cache not in CACHE:
            raise ValueError(f"cache={self.cache!r}; choose one of {CACHE}")
        if self.amp in ("bf16", "fp16") and not self.gpu:
            raise ValueError(f"amp={self.amp!r} needs --gpu: mixed precision is for GPU training")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        if self.shuffle_buffer_rows < 0 or self.prefetch_batches < 0:
            raise ValueError("shuffle_buffer_rows and prefetch_batches must be >= 0")

    def per_worker(self, batch_size: int) -> int:
        """Each worker's share of the global ``batch_size``; raises when it does not split evenly."""
        n = max(self.workers, 1)
        if batch_size % n:
            raise ValueError(f"batch size {batch_size} does not split evenly over {n} workers: the batch size is the "
                             "global one (each worker takes batch_size / workers rows); choose a multiple of the workers")
        return batch_size // n

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunConfig:
    """Where a run lives (``<storage>/<name>``) and how it survives failures."""

    name: str | None = option(None, "run name (default MODEL-DATASET); re-running the same name resumes")
    storage: str = option("runs", "where runs live: a path, or a URI such as s3://bucket/runs (on a cluster: shared "
                          "storage or a URI)")
    keep_checkpoints: int = option(2, "best N checkpoints kept by the validation metric (the latest is kept too)")
    max_failures: int = option(1, "worker-group restarts from the last checkpoint")
    status_every: int = option(10, "write <run>/status/worker-<rank>.json every N steps (0 = never)")

    def __post_init__(self) -> None:
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints={self.keep_checkpoints} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = {"train": TrainConfig, "scaling": ScalingConfig, "run": RunConfig}


def section_of(key: str) -> str | None:
    """The section that has the option ``key`` (``lr`` → ``train``), or None."""
    for name, cls in SECTIONS.items():
        if key in {f.name for f in fields(cls)}:
            return name
    return None


@dataclass
class TrainJob:
    """Everything one training run needs; a YAML config file holds these keys."""

    model: str  # sdm:PSDMMAL | sdm | gru4rec | narm | sasrec | youtube_dnn | bst | din | wdl | wdl_seq
    data: str  # a prepared dataset directory
    options: dict = field(default_factory=dict)  # model options (MatchConfig / RankConfig fields)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    rank_negatives: int = 4  # rankers' validation: popularity negatives per positive
    # a ranker's cascade data (`seqrec data candidates`): it trains on the matcher's cross-fitted candidates of
    # each training position and is picked on the matcher's candidates of the validation rows
    candidates: str | None = None

    def __post_init__(self) -> None:
        self.scaling.per_worker(self.train.batch_size)  # fails now, naming the fix, when the batch does not split

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainJob":
        """A job from its sections (``{"train": {...}, "scaling": {...}}``) or flat keys (``{"lr": 0.01,
        "workers": 2}``: each goes to the section that has it); unknown keys are an error that lists the valid ones."""
        top = {f.name for f in fields(cls)} - set(SECTIONS)
        sections: dict[str, dict] = {name: {} for name in SECTIONS}
        plain: dict = {}
        unknown = []
        for k, v in d.items():
            if k in SECTIONS:
                if not isinstance(v, dict):
                    raise ValueError(f"training option {k!r} is a section: a mapping of {sorted(_names(SECTIONS[k]))}")
                bad = sorted(set(v) - _names(SECTIONS[k]))
                unknown += [f"{k}.{b}" for b in bad]
                sections[k].update(v)
            elif k in top:
                plain[k] = v
            elif (s := section_of(k)) is not None:
                sections[s][k] = v
            else:
                unknown.append(k)
        if unknown:
            valid = sorted(top) + [f"{s}.{n}" for s, c in SECTIONS.items() for n in sorted(_names(c))]
            raise ValueError(f"unknown training options {unknown}; valid: {valid}")
        return cls(**plain, **{name: SECTIONS[name](**values) for name, values in sections.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, options: dict | None = None, **overrides) -> "TrainJob":
        """The job in a YAML file, with ``overrides`` (flat keys; None = not given) and model ``options`` on top."""
        import yaml

        from seqrec import storage

        d = yaml.safe_load(storage.read_text(path)) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config is a YAML mapping of options, got {type(d).__name__}")
        job = cls.from_dict(d)
        return job.replace(**{k: v for k, v in overrides.items() if v is not None},
                           options={**job.options, **(options or {})})

    def replace(self, **changes) -> "TrainJob":
        """A copy with ``changes`` applied; flat keys (``lr``, ``workers``, ``name``) go to their sections."""
        d = self.to_dict()
        for k, v in changes.items():
            s = section_of(k) if k not in d else None
            if s is not None:
                d[s][k] = v
            elif k in d:
                d[k] = v
            else:
                raise ValueError(f"unknown training option {k!r}")
        return TrainJob.from_dict(d)

    def run_name(self) -> str:
        from seqrec import storage

        return self.run.name or f"{self.model.replace(':', '-')}-{storage.basename(self.data)}"

# a cascade ranker's options unless set otherwise: the matcher's rank and score gap, the cross-fitted co-visitation
# score and whether the candidate is already among the behaviours, as features; a softmax over each position's
# list; the matcher's candidates as the only negatives (what it will re-order). Measured in docs/results.md
# ("Cascade rankers"; seen: validation Recall@50 26.86 → 28.38 on ml-100k user-day, 3 seeds, better in each).
CASCADE_RANKER_OPTIONS = {"match_features": True, "covisit": True, "seen": True, "loss": "listwise", "negatives": 0}


@dataclass
class CascadeConfig:
    """Cascade training data (:mod:`seqrec.train.cascade`): the matcher's cross-fitted candidates per training position."""

    matcher: str = option("sdm:PSDMMAL", "the matcher whose candidates the rankers learn to order")
    matcher_options: dict = field(default_factory=dict)  # the matcher's model options
    folds: int = option(2, "K-fold cross-fitting over users: each fold's candidates come from a matcher trained on the "
                        "other folds")
    depth: int = option(300, "the matcher's list a ranker re-orders (serving's and --pipeline's candidates): training "
                        "positions whose item is outside it are left out, and validation rows get this many")
    candidates: int = option(20, "negatives stored per training position, drawn uniformly from the list")
    seed: int = option(0, "seed of the fold assignment")
    fold_by: str = option("session", "what a fold holds: session (a fold matcher knows the user from their other "
                          "sessions, as the final matcher knows every evaluated user) or user (it never saw the user)",
                          ("session", "user"))
    workers: int = option(1, "Ray Data actors that retrieve (each holds the fold matchers)")
    positives: str = option("next", "a training position's positives: next (the item at t) or window (the item at t "
                            "and every item of its label window, the rest of the session, that is in the list: "
                            "stored with the candidates, and the rankers' `positives` option)", ("next", "window"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=128))  # the fold matchers'

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        if self.folds < 2:
            raise ValueError(f"folds={self.folds} must be >= 2: a fold's candidates come from the other folds' matcher")
        if self.candidates < 1 or self.depth < 1:
            raise ValueError(f"candidates={self.candidates} and depth={self.depth} must be >= 1")
        if self.workers < 1:
            raise ValueError(f"workers={self.workers} must be >= 1")
        if self.fold_by not in ("session", "user"):
            raise ValueError(f"fold_by={self.fold_by!r}; choose session or user")
        if self.positives not in ("next", "window"):
            raise ValueError(f"positives={self.positives!r}; choose next or window")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExperimentSpec:
    """One ``seqrec evaluate`` experiment: which models, on which data, trained how, measured how.

    ``match`` and ``rank`` train the matchers and the rankers (``batch_size`` is the global batch
    on either trainer). ``trainer="ray"`` trains each model × seed on Ray Train with ``scaling``
    (runs under ``<out>/train``); ``local`` trains in this process (on a GPU with ``scaling.gpu``).
    """

    data: str
    models: list = field(default_factory=list)  # seqrec.experiment.ModelEntry or NAME[@K=V,...][#LABEL]; empty: the default list
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str | None = None  # results.{json,csv,md} and plots/; required by trainer="ray"
    match: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, batch_size=128))
    rank: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=32))
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    trainer: str = option("local", "local: train in this process; ray: train each model on Ray Train workers fed by "
                          "Ray Data (runs, checkpoints and exports under OUT/train/)", ("local", "ray"))
    model_options: dict = field(default_factory=dict)  # every matcher's options (e.g. hidden, loss)
    rank_options: dict = field(default_factory=dict)  # every ranker's options
    item_cf_options: dict = field(default_factory=dict)
    index: str = option("exact", "top-K retrieval for the test split: exact (torch), FAISS flat, HNSW or IVF", INDEXES)
    exclude_seen: bool = option(False, "never recommend items of the input session, long-term subset or history "
                                "(the paper keeps them)")
    rank_negatives: int = option(4, "rankers: popularity negatives per positive in the AUC evaluation")
    pipeline: bool = option(False, "two-stage table: the first neural matcher retrieves --candidates, each ranker re-ranks them")
    candidates: int = option(300, "matcher candidates per user for --pipeline")
    plots: bool = True
    # rankers train on the first matcher's cross-fitted candidates (seqrec.train.cascade) and are measured on
    # its top `candidates`; None: on popularity negatives, measured by AUC on popularity negatives
    cascade: CascadeConfig | None = None

    def __post_init__(self) -> None:
        if self.trainer not in ("local", "ray"):
            raise ValueError(f"trainer={self.trainer!r}; choose local (this process) or ray (Ray Train workers)")
        if self.trainer == "ray" and self.out is None:
            raise ValueError("trainer='ray' needs an output directory: its training runs are written under <out>/train")
        if not self.seeds:
            raise ValueError("an experiment needs at least one seed")
        if self.trainer == "ray":
            for what, c in (("batch size", self.match), ("ranking batch size", self.rank)):
                try:
                    self.scaling.per_worker(c.batch_size)
                except ValueError as e:
                    raise ValueError(f"{what}: {e}") from None

    @property
    def device(self) -> str:
        return "cuda" if self.scaling.gpu and self.trainer == "local" else "cpu"



def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def defaults(cls) -> dict:
    """``{field: default}`` of a config section."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


__all__ = [
    "AMP", "CACHE", "CascadeConfig", "ExperimentSpec", "INDEXES", "RunConfig", "SECTIONS", "ScalingConfig",
    "TrainConfig", "TrainJob", "defaults", "option", "replace", "section_of"
]
