"""Search spaces (tune_spaces/ + seqrec.tuning.space): every named space is valid by construction,
and an invalid one is rejected, naming the bad combinations, before any trial starts."""

from __future__ import annotations

import pytest
from ray import tune

from seqrec.data.prepare import load_manifest
from seqrec.features import FeatureSpec
from seqrec.models import make_config
from seqrec.tuning import check_space, expand, joint, split
from tune_spaces import load_space, space_names

MODELS = ["sdm:PSDMMAL", "bst", "gru4rec", "narm", "sasrec", "youtube_dnn", "din", "wdl", "wdl_seq"]


@pytest.fixture(scope="module")
def spec(tiny_prepared):
    return FeatureSpec.from_dict(load_manifest(tiny_prepared)["feature_spec"])


@pytest.mark.parametrize("model", MODELS)
def test_every_named_space_builds_a_valid_model_for_every_combination(model, spec):
    for name in space_names(model):
        assert check_space(model, load_space(model, name), spec) >= 1


def test_sdm_default_space_covers_the_issue_grid_with_only_divisible_pairs(spec):
    space = load_space("sdm:PSDMMAL", "default")
    pairs = space["heads,hidden"].categories
    assert set(pairs) == {(h, d) for h in (1, 2, 4, 8) for d in (32, 64, 128)}  # all divisible
    assert set(space["fusion"].categories) == {"gated", "add", "concat", "multiply"}
    assert {"lr", "dropout", "lstm_layers"} <= set(space)
    # a pair set where some are invalid keeps only the valid ones
    odd = joint(lambda heads, hidden: hidden % heads == 0, heads=[2, 3], hidden=[6, 8])
    assert odd["heads,hidden"].categories == [(2, 6), (2, 8), (3, 6)]


def test_bst_pairs_keep_the_transformer_width_divisible_by_the_heads(spec):
    space = load_space("bst", "default")
    for heads, id_dim in space["heads,id_dim"].categories:
        cfg = make_config("bst", spec, heads=heads, id_dim=id_dim)
        assert cfg.d_model % heads == 0
    assert set(space["blocks"].categories) == {1, 2, 3}


def test_paper_presets_are_grids_over_seeds():
    heads = load_space("sdm:PSDMMAL", "paper_heads", seeds=3)
    assert heads["heads"] == {"grid_search": [1, 2, 4, 8]} and heads["seed"] == {"grid_search": [0, 1, 2]}
    fusion = load_space("sdm:PSDMMAL", "paper_fusion", seeds=2)
    assert fusion["fusion"] == {"grid_search": ["multiply", "concat", "add", "gated"]} and fusion["seed"] == {"grid_search": [0, 1]}


def test_trial_configs_split_into_training_options_and_model_options():
    job, options = split({"heads,hidden": (4, 64), "fusion": "add", "lr": 0.002, "seed": 1, "batch_size": 64})
    assert job == {"lr": 0.002, "seed": 1, "batch_size": 64}
    assert options == {"heads": 4, "hidden": 64, "fusion": "add"}
    with pytest.raises(ValueError, match="needs 2 values per choice"):
        expand({"heads,hidden": 4})


def test_an_invalid_space_is_rejected_before_any_trial_naming_the_combinations(spec):
    bad = {"heads": tune.choice([2, 4]), "hidden": tune.grid_search([30, 32]), "fusion": tune.choice(["gated", "sum"])}
    with pytest.raises(ValueError) as e:
        check_space("sdm:PSDMMAL", bad, spec)
    msg = str(e.value)
    # 2 × 2 × 2 = 8 combinations; valid: fusion=gated with (2, 30), (2, 32), (4, 32)
    assert msg.startswith("5 of 8 combinations of the search space are invalid for sdm:PSDMMAL")
    assert "hidden=30 must be divisible by heads=4" in msg and "fusion='sum'" in msg
    with pytest.raises(ValueError, match="lr=-0.1 must be > 0"):
        check_space("sdm:PSDMMAL", {"lr": tune.choice([1e-3, -0.1])}, spec)
    with pytest.raises(ValueError, match="cannot check dimensions \\['hidden'\\]"):
        check_space("sdm:PSDMMAL", {"hidden": tune.sample_from(lambda s: 32)}, spec)
    with pytest.raises(ValueError, match="no search space 'huge'"):
        load_space("bst", "huge")
    # ranges are checked at both bounds
    with pytest.raises(ValueError, match="1 of 2 combinations"):
        check_space("sdm:PSDMMAL", {"lstm_layers": tune.randint(0, 3)}, spec)


def test_set_narrows_a_space_and_keeps_joint_constraints():
    from seqrec.tuning.space import override

    space = load_space("sdm:PSDMMAL", "default")
    two = override(space, "heads", [2, 8])
    assert sorted(two["heads,hidden"].categories) == [(2, 32), (2, 64), (2, 128), (8, 32), (8, 64), (8, 128)]
    assert override(space, "fusion", ["add"])["fusion"] == "add"  # one value: a constant
    assert override(space, "heads,hidden", [(2, 8), (4, 8)])["heads,hidden"].categories == [(2, 8), (4, 8)]
    assert override(load_space("sdm:PSDMMAL", "paper_heads", seeds=2), "heads", [1, 4])["heads"] == {"grid_search": [1, 4]}
    assert override(space, "batch_size", [64, 128])["batch_size"].categories == [64, 128]  # a new dimension
    with pytest.raises(ValueError, match=r"no valid \(heads,hidden\) pair of the space has hidden in \[48\]"):
        override(space, "hidden", [48])
    with pytest.raises(ValueError, match="every value needs 2 parts"):
        override(space, "heads,hidden", [4])


def test_seeds_go_only_to_the_spaces_that_take_them():
    with pytest.raises(ValueError, match=r"the space 'small' takes no \['seeds'\]"):
        load_space("sdm:PSDMMAL", "small", seeds=3)
    assert load_space("bst", "paper_blocks", seeds=2)["seed"] == {"grid_search": [0, 1]}
