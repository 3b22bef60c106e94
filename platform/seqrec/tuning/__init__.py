"""Hyperparameter search (Ray Tune): trial configs from search spaces and their checks (``space``), the search
and its results (``run``). The named spaces live in ``tune_spaces/`` (``tune_spaces.load_space``), above this package."""

from seqrec.tuning.space import check_space, expand, joint, split

__all__ = ["check_space", "expand", "joint", "split"]
