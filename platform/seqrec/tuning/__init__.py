"""Hyperparameter search (Ray Tune): named search spaces from ``tune_spaces/`` and their checks."""

from seqrec.tuning.space import check_space, expand, joint, load_space, space_names, split

__all__ = ["check_space", "expand", "joint", "load_space", "space_names", "split"]
