"""Search spaces: how a space (``tune_spaces/<model>.py`` names them) becomes trial configs, and its checks.

A space is a dict for Ray Tune's ``param_space``. Its keys are training options (``seqrec.config``) (``lr``,
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

import itertools
from dataclasses import fields
from typing import Callable, Iterable

import numpy as np


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
    """(training options, model options) of an expanded trial config: a key that a section of the training
    config has (``lr``, ``batch_size``, ``workers``, ...) or ``rank_negatives`` is a training option."""
    from seqrec.config import section_of

    config = expand(config)
    job = {k: v for k, v in config.items() if section_of(k) is not None or k == "rank_negatives"}
    return job, {k: v for k, v in config.items() if k not in job}


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
    from seqrec.config import TrainConfig
    from seqrec.models import make_config

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


__all__ = ["check_space", "expand", "joint", "override", "split"]
