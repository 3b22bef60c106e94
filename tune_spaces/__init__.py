"""Ray Tune search spaces, one module per model family: ``sdm``, ``bst`` and ``baselines``.

Each module has ``SPACES``: space name → a function returning a Ray Tune ``param_space``
(``baselines`` keys it by model first). Keys are training options (``seqrec.config``: ``lr``, ``batch_size``, ...) or model options; a key
joining names with commas is a joint dimension (``seqrec.tuning.joint``), which keeps
constraints such as "hidden divisible by heads" true by construction.
"""

from __future__ import annotations

import importlib
from typing import Callable

# the model family → its module here
_MODULES = {"sdm": "sdm", "bst": "bst"}
_BASELINES = "baselines"


def _module_of(model: str):
    family = model.partition(":")[0]
    name = _MODULES.get(family, _BASELINES)
    try:
        return importlib.import_module(f"tune_spaces.{name}")
    except ModuleNotFoundError as e:  # pragma: no cover - an install without the tune_spaces package
        raise ValueError(f"no search spaces for {model!r}: cannot import tune_spaces.{name} ({e})") from e


def space_names(model: str) -> list[str]:
    """The named spaces ``tune_spaces`` offers for ``model``."""
    return sorted(_spaces(model))


def _spaces(model: str) -> dict[str, Callable[..., dict]]:
    mod = _module_of(model)
    family = model.partition(":")[0]
    spaces = getattr(mod, "SPACES")
    return spaces.get(family, {}) if mod.__name__.endswith(_BASELINES) else spaces


def load_space(model: str, name: str, **kwargs) -> dict:
    """The param space ``name`` for ``model`` (keyword arguments go to the space's function, e.g. ``seeds``)."""
    import inspect

    spaces = _spaces(model)
    if name not in spaces:
        raise ValueError(f"no search space {name!r} for {model!r}; choose one of {sorted(spaces)}")
    takes = set(inspect.signature(spaces[name]).parameters)
    if set(kwargs) - takes:
        raise ValueError(f"the space {name!r} takes no {sorted(set(kwargs) - takes)} (it takes {sorted(takes) or 'nothing'}); "
                         "--seeds applies to the paper_* grids")
    return spaces[name](**kwargs)


__all__ = ["load_space", "space_names"]
