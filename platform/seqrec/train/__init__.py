"""Training: the one loop every model shares (``loop``); distributed training wraps the same step."""

from seqrec.train.loop import FitResult, TrainConfig, fit, grouped_batches, length_grouped_batches, train_step

__all__ = ["FitResult", "TrainConfig", "fit", "grouped_batches", "length_grouped_batches", "train_step"]
