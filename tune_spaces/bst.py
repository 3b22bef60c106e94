"""BST search spaces (``seqrec tune bst --space NAME``).

The transformer width is d = id_dim + seq_side·side_dim + pos_dim (the item id, category and
position embeddings), and it must be divisible by the heads: the joint (heads, id_dim) dimension
holds only pairs where it is, for the default side and position sizes.
"""

from __future__ import annotations

from ray import tune

from seqrec.models.bst import BSTConfig
from seqrec.tuning.space import joint

_D = BSTConfig.__dataclass_fields__
SIDE = _D["seq_side"].default * _D["side_dim"].default + _D["pos_dim"].default  # the non-id part of d


def width_divisible(heads, id_dim) -> bool:
    return (id_dim + SIDE) % heads == 0


def default() -> dict:
    """Blocks b (the paper's Table 4), heads × item embedding size (valid pairs), MLP width, lr, dropout."""
    return {
        "blocks": tune.choice([1, 2, 3]),
        **joint(width_divisible, heads=(1, 2, 4, 8), id_dim=(16, 32, 64)),
        "mlp": tune.choice(["256-128-64", "512-256-128", "1024-512-256"]),
        "lr": tune.loguniform(3e-4, 3e-3),
        "dropout": tune.uniform(0.1, 0.3),
    }


def paper_blocks(seeds: int = 3) -> dict:
    """BST Table 4: b = 1, 2, 3 transformer blocks over ``seeds`` seeds (a grid)."""
    return {"blocks": tune.grid_search([1, 2, 3]), "seed": tune.grid_search(list(range(seeds)))}


def small() -> dict:
    """A laptop-sized search: heads and a compact MLP."""
    return {**joint(width_divisible, heads=(2, 4), id_dim=(16, 32)), "mlp": tune.choice(["64-32", "128-64"])}


SPACES = {"default": default, "paper_blocks": paper_blocks, "small": small}
