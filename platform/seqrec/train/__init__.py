"""Training: one engine (``engine.Trainer``) and its drivers: in this process (``loop.fit``), on Ray Train
workers (``distributed``), and in a Tune trial (``seqrec.tuning.run``)."""

from seqrec.config import TrainConfig
from seqrec.train.engine import EpochResult, FitResult, Trainer, train_step
from seqrec.train.loop import fit, grouped_batches, length_grouped_batches

__all__ = ["EpochResult", "FitResult", "TrainConfig", "Trainer", "fit", "grouped_batches", "length_grouped_batches", "train_step"]
