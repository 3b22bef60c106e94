"""Search spaces for the baselines, keyed by model: the matching ones (GRU4Rec, NARM, SASRec, SHAN, BINN, YouTube DNN)
and the ranking ones (DIN, WDL, WDL(+Seq))."""

from __future__ import annotations

from ray import tune


def _matcher() -> dict:
    return {"hidden": tune.choice([32, 64, 128]), "lr": tune.loguniform(3e-4, 3e-3), "dropout": tune.uniform(0.0, 0.3)}


def _sasrec() -> dict:
    # heads = 1 (the paper's), so every hidden size divides; blocks and dropout as SASRec's own search (§IV-C)
    return {**_matcher(), "blocks": tune.choice([1, 2, 3]), "dropout": tune.uniform(0.1, 0.5)}


def _ranker() -> dict:
    return {"id_dim": tune.choice([16, 32, 64]), "mlp": tune.choice(["256-128-64", "512-256-128"]),
            "lr": tune.loguniform(3e-4, 3e-3), "dropout": tune.uniform(0.1, 0.3)}


SPACES = {
    "gru4rec": {"default": _matcher},
    "narm": {"default": _matcher},
    "sasrec": {"default": _sasrec},
    "shan": {"default": _matcher},
    "binn": {"default": _matcher},
    "youtube_dnn": {"default": _matcher},
    "din": {"default": _ranker},
    "wdl": {"default": _ranker},
    "wdl_seq": {"default": _ranker},
}
