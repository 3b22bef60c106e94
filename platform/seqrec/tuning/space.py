"""Search spaces: how a ``tune_spaces/<model>.py`` space becomes trial configs, and its checks.

A space is a dict for Ray Tune's ``param_space``. Its keys are ``TrainJob`` fields (``lr``,
``batch_size``, ``seed``, ...) or model options (``heads``, ``hidden``, ``fusion``, ...). A key
that joins names with commas is a *joint* dimension: ``{"heads,hidden": tune.choice([(1, 32),
(2, 32), ...])}`` draws a valid pair, so a constraint such as "hidden divisible by heads" holds by
construction (:func:`joint` builds one from the allowed values and the constraint). Trials split
joint values back into their fields (:func:`expand`).

:func:`check_space` builds the model config of every combination of the space's discrete values
(numeric ranges at both bounds) before any trial starts, and names the combinations a model
would reject.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import fields
from typing import Callable, Iterable

import numpy as np

# the model family → its module in tune_spaces/
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


def joint(constraint: Callable[..., bool], **values: Iterable) -> dict:
    """``{"a,b": tune.choice([...])}`` over the combinations of ``values`` that satisfy ``constraint``.

    ``joint(lambda heads, hidden: hidden % heads == 0, heads=[1, 2, 4, 8], hidden=[32, 64, 128])``
    draws only valid (heads, hidden) pairs: the constraint holds by construction.
    """
    from ray import tune

    names = list(values)
    combos = [c for c in itertools.product(*(list(v) for v in values.values())) if constraint(**dict(zip(names, c)))]
    if not combos:
        raise ValueError(f"no combination of {values} satisfies the constraint")
    return {",".join(names): tune.choice(combos)}


def expand(config: dict) -> dict:
    """A trial config with joint keys ("heads,hidden": (4, 64)) split into their fields."""
    out = {}
    for k, v in config.items():
        if "," in k:
            names = k.split(",")
            if isinstance(v, str):  # "4,64": how a joint value reaches a search algorithm that takes scalars only (Optuna)
                import yaml

                v = tuple(yaml.safe_load(x) for x in v.split(","))
            if not isinstance(v, (tuple, list)) or len(v) != len(names):
                raise ValueError(f"joint dimension {k!r} needs {len(names)} values per choice, got {v!r}")
            out.update(zip(names, v))
        else:
            out[k] = v
    return out


def override(space: dict, key: str, values: list) -> dict:
    """``space`` with dimension ``key`` restricted to ``values`` (``seqrec tune --set key=v1,v2``).

    A grid dimension stays a grid; any other becomes a choice, or a constant for one value. A
    field of a joint dimension ("heads" of "heads,hidden") filters the joint's valid pairs, so the
    constraint still holds; a key the space lacks is added.
    """
    from ray import tune
    from ray.tune.search.sample import Categorical

    if not values:
        raise ValueError(f"--set {key}= needs at least one value")
    space = dict(space)
    if "," in key:  # a joint dimension given whole: --set heads,hidden=2:8,4:8 (check_space checks the pairs)
        n = len(key.split(","))
        if any(not isinstance(v, (tuple, list)) or len(v) != n for v in values):
            raise ValueError(f"--set {key}=...: every value needs {n} parts joined by ':' (e.g. 2:64)")
        space[key] = tune.choice([tuple(v) for v in values])
        return space
    for k, dom in space.items():
        names = k.split(",")
        if len(names) > 1 and key in names:
            i = names.index(key)
            kept = [c for c in dom.categories if c[i] in values] if isinstance(dom, Categorical) else []
            if not kept:
                raise ValueError(f"--set {key}={','.join(map(str, values))}: no valid ({k}) pair of the space has "
                                 f"{key} in {values}; the space allows {getattr(dom, 'categories', dom)}")
            space[k] = tune.choice(kept)
            return space
    if isinstance(space.get(key), dict) and "grid_search" in space[key]:
        space[key] = tune.grid_search(list(values))
    else:
        space[key] = values[0] if len(values) == 1 else tune.choice(list(values))
    return space


def split(config: dict) -> tuple[dict, dict]:
    """(TrainJob fields, model options) of an expanded trial config."""
    from seqrec.train.distributed import TrainJob

    job_fields = {f.name for f in fields(TrainJob)} - {"options", "model", "data"}
    config = expand(config)
    return {k: v for k, v in config.items() if k in job_fields}, {k: v for k, v in config.items() if k not in job_fields}


def _values(domain) -> list | None:
    """The values to check for one dimension: a choice's or grid's values, a range's bounds; None if opaque."""
    from ray.tune.search.sample import Categorical, Float, Function, Integer

    if isinstance(domain, dict) and set(domain) == {"grid_search"}:
        return list(domain["grid_search"])
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer):
        return [domain.lower, domain.upper - 1]  # upper is exclusive
    if isinstance(domain, Float):
        return [domain.lower, domain.upper]
    if isinstance(domain, Function):
        return None
    return [domain]  # a constant


def check_space(model: str, space: dict, features, max_combinations: int = 20_000, seed: int = 0,
                base_options: dict | None = None) -> int:
    """Build the model config (and training options) of every combination of ``space``'s values,
    on top of ``base_options`` (the options every trial shares).

    Raises ``ValueError`` naming the rejected combinations, before any trial starts. Spaces with
    more than ``max_combinations`` combinations are checked on that many random ones. Returns
    the number of combinations checked.
    """
    from seqrec.models import make_config
    from seqrec.train.loop import TrainConfig

    dims = {k: _values(v) for k, v in space.items()}
    opaque = sorted(k for k, v in dims.items() if v is None)
    if opaque:
        raise ValueError(f"cannot check dimensions {opaque}: use tune.choice, tune.grid_search, a range or a joint "
                         "(seqrec.tuning.joint) instead of tune.sample_from, so every trial's config can be checked")
    names = list(dims)
    total = int(np.prod([len(v) for v in dims.values()])) if dims else 1
    if total <= max_combinations:
        combos = itertools.product(*dims.values())
    else:
        rng = np.random.default_rng(seed)
        combos = (tuple(v[rng.integers(len(v))] for v in dims.values()) for _ in range(max_combinations))
    train_names = {f.name for f in fields(TrainConfig)}
    bad: list[str] = []
    checked = 0
    for combo in combos:
        checked += 1
        config = dict(zip(names, combo))
        try:
            job, options = split(config)
            make_config(model, features, **{**(base_options or {}), **options})
            TrainConfig(**{k: v for k, v in job.items() if k in train_names})
        except (ValueError, TypeError) as e:
            bad.append(f"{expand(config)}: {e}")
    if bad:
        shown = "\n  ".join(bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{len(bad)} of {checked} combinations of the search space are invalid for {model}:\n  {shown}{more}")
    return checked


__all__ = ["check_space", "expand", "joint", "load_space", "override", "space_names", "split"]
