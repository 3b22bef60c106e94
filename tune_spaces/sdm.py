"""SDM search spaces (``seqrec tune sdm:PSDMMAL --space NAME``).

``default`` searches what the paper varies plus the usual optimisation knobs; ``paper_heads`` and
``paper_fusion`` are the grids of the paper's Table 3 (heads) and Table 4 (fusion) over seeds.
"""

from __future__ import annotations

from ray import tune

from seqrec.models.sdm import FUSIONS
from seqrec.tuning.space import joint

HEADS = (1, 2, 4, 8)
HIDDEN = (32, 64, 128)


def divisible(heads, hidden) -> bool:
    return hidden % heads == 0


def default() -> dict:
    """Heads × hidden (divisible pairs only), fusion, learning rate, dropout, LSTM layers."""
    return {
        **joint(divisible, heads=HEADS, hidden=HIDDEN),
        "fusion": tune.choice(list(FUSIONS)),
        "lr": tune.loguniform(3e-4, 3e-3),
        "dropout": tune.uniform(0.0, 0.3),
        "lstm_layers": tune.choice([1, 2]),
    }


def paper_heads(seeds: int = 3) -> dict:
    """SDM Table 3: PSDMMAL with 1, 2, 4 and 8 heads, every one over ``seeds`` seeds (a grid)."""
    return {"heads": tune.grid_search(list(HEADS)), "seed": tune.grid_search(list(range(seeds)))}


def paper_fusion(seeds: int = 3) -> dict:
    """SDM Table 4: the four ways to fuse long- and short-term preference, over ``seeds`` seeds (a grid)."""
    return {"fusion": tune.grid_search(["multiply", "concat", "add", "gated"]), "seed": tune.grid_search(list(range(seeds)))}


def small() -> dict:
    """A laptop-sized search: heads and fusion at hidden 32."""
    return {**joint(divisible, heads=(1, 2, 4), hidden=(32,)), "fusion": tune.choice(list(FUSIONS))}


SPACES = {"default": default, "paper_heads": paper_heads, "paper_fusion": paper_fusion, "small": small}
