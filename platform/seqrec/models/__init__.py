"""Models, pure PyTorch (no ray / faiss / fastapi: a test enforces it).

Matchers share one interface (``seqrec.models.common.MatchingModel``): ``model(batch)`` is the
training loss, ``encode_users(batch) -> (B, D)``, ``item_embeddings() -> (N, D)``.

``build_model("sdm:PSDMMAL-N", features, hidden=64)`` builds any registered model; the name before
the colon is the model, the part after it an SDM paper variant. ``model_from_dict(d)`` rebuilds a
model from the dict stored in a checkpoint (``{"model": name, "config": {...}}``).
"""

from __future__ import annotations

from seqrec.features import FeatureSpec
from seqrec.models.baselines import NARM, GRU4Rec, GRU4RecConfig, NARMConfig, YouTubeDNN, YouTubeDNNConfig
from seqrec.models.common import MatchConfig, MatchingModel
from seqrec.models.sdm import SDM, VARIANTS, SDMConfig

MATCHERS: dict[str, tuple[type[MatchingModel], type[MatchConfig]]] = {
    "sdm": (SDM, SDMConfig),
    "youtube_dnn": (YouTubeDNN, YouTubeDNNConfig),
    "gru4rec": (GRU4Rec, GRU4RecConfig),
    "narm": (NARM, NARMConfig),
}


def model_names() -> list[str]:
    """Every name ``build_model`` accepts (besides ``item_cf``, which is not a neural model)."""
    return [f"sdm:{v}" for v in VARIANTS] + list(MATCHERS)


def make_config(name: str, features: FeatureSpec | dict, **options) -> MatchConfig:
    model, _, variant = name.partition(":")
    if model not in MATCHERS:
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()} or item_cf")
    cls = MATCHERS[model][1]
    if variant:
        if model != "sdm":
            raise ValueError(f"{name!r}: only sdm has paper variants (sdm:{'|'.join(VARIANTS)})")
        return SDMConfig.variant(variant, features, **options)
    return cls.from_dict({"features": features, **options})


def build_model(name: str, features: FeatureSpec | dict, **options) -> MatchingModel:
    config = make_config(name, features, **options)
    return MATCHERS[name.partition(":")[0]][0](config)


def model_from_dict(d: dict) -> MatchingModel:
    """Rebuild an (untrained) model from ``{"model": name, "config": config.to_dict()}``."""
    name = d["model"]
    if name not in MATCHERS:
        raise ValueError(f"checkpoint names model {name!r}, which this seqrec does not have; known: {sorted(MATCHERS)}")
    model_cls, config_cls = MATCHERS[name]
    return model_cls(config_cls.from_dict(d["config"]))


__all__ = ["MATCHERS", "SDM", "SDMConfig", "VARIANTS", "build_model", "make_config", "model_from_dict", "model_names"]
