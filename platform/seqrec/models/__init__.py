"""Models, pure PyTorch (no ray / faiss / fastapi: a test enforces it).

Matchers share one interface (``seqrec.models.common.MatchingModel``): ``model(batch)`` is the
training loss, ``encode_users(batch) -> (B, D)``, ``item_embeddings() -> (N, D)``.
Rankers share another (``seqrec.models.ranking.Ranker``): ``model(batch)`` is the training loss
too (binary cross-entropy on samples generated from the same session rows), and
``score(batch, candidates) -> (B, C)``. Both train with the one loop in ``seqrec.train``.

``build_model("sdm:PSDMMAL-N", features, hidden=64)`` builds any registered model; the name before
the colon is the model, the part after it an SDM paper variant. ``model_from_dict(d)`` rebuilds a
model from the dict stored in a checkpoint (``{"model": name, "config": {...}}``).
"""

from __future__ import annotations

from seqrec.features import FeatureSpec
from seqrec.models.baselines import NARM, GRU4Rec, GRU4RecConfig, NARMConfig, YouTubeDNN, YouTubeDNNConfig
from seqrec.models.binn import BINN, BINNConfig
from seqrec.models.bst import BST, BSTConfig
from seqrec.models.common import MatchConfig, MatchingModel
from seqrec.models.rank_baselines import DIN, WDL, DINConfig, WDLConfig, WDLSeq, WDLSeqConfig
from seqrec.models.ranking import RankConfig, Ranker
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.sdm import SDM, VARIANTS, SDMConfig
from seqrec.models.shan import SHAN, SHANConfig

MATCHERS: dict[str, tuple[type[MatchingModel], type[MatchConfig]]] = {
    "sdm": (SDM, SDMConfig),
    "youtube_dnn": (YouTubeDNN, YouTubeDNNConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "narm": (NARM, NARMConfig),
    "sasrec": (SASRec, SASRecConfig),
    "shan": (SHAN, SHANConfig),
    "binn": (BINN, BINNConfig),
}
RANKERS: dict[str, tuple[type[Ranker], type[RankConfig]]] = {
    "bst": (BST, BSTConfig),
    "wdl": (WDL, WDLConfig),
    "wdl_seq": (WDLSeq, WDLSeqConfig),
    "din": (DIN, DINConfig),
}
MODELS = {**MATCHERS, **RANKERS}


def is_ranker(name: str) -> bool:
    return name.partition(":")[0] in RANKERS


def model_names() -> list[str]:
    """Every name ``build_model`` accepts (besides ``item_cf``, which is not a neural model)."""
    return [f"sdm:{v}" for v in VARIANTS] + list(MATCHERS) + list(RANKERS)


def make_config(name: str, features: FeatureSpec | dict, **options) -> MatchConfig | RankConfig:
    model, _, variant = name.partition(":")
    if model not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()} or item_cf")
    cls = MODELS[model][1]
    if variant:
        if model != "sdm":
            raise ValueError(f"{name!r}: only sdm has paper variants (sdm:{'|'.join(VARIANTS)})")
        return SDMConfig.variant(variant, features, **options)
    return cls.from_dict({"features": features, **options})


def build_model(name: str, features: FeatureSpec | dict, **options) -> MatchingModel | Ranker:
    config = make_config(name, features, **options)
    return MODELS[name.partition(":")[0]][0](config)


def model_from_dict(d: dict) -> MatchingModel | Ranker:
    """Rebuild an (untrained) model from ``{"model": name, "config": config.to_dict()}``."""
    name = d["model"]
    if name not in MODELS:
        raise ValueError(f"checkpoint names model {name!r}, which this seqrec does not have; known: {sorted(MODELS)}")
    model_cls, config_cls = MODELS[name]
    return model_cls(config_cls.from_dict(d["config"]))


__all__ = [
    "BINN",
    "BINNConfig",
    "BST",
    "BSTConfig",
    "MATCHERS",
    "MODELS",
    "RANKERS",
    "Ranker",
    "SASRec",
    "SASRecConfig",
    "SDM",
    "SDMConfig",
    "SHAN",
    "SHANConfig",
    "VARIANTS",
    "build_model",
    "is_ranker",
    "make_config",
    "model_from_dict",
    "model_names",
]
