"""seqrec.metrics ranking metrics: AUC, GAUC, LogLoss — hand values and brute-force references."""

import math

import numpy as np
import pytest

from seqrec import metrics as M

# --------------------------------------------------------------------------- references


def auc_pairs(labels, scores) -> float:
    """O(P·N) definition: fraction of (positive, negative) pairs ordered right, ties 1/2."""
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    d = s[y][:, None] - s[~y][None, :]  # (P, N)
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def gauc_loop(labels, scores, groups) -> tuple[float, int]:
    """Per-group loop: pairwise AUC of every group with both classes, weighted by its sample count."""
    y, s, g = np.asarray(labels), np.asarray(scores), np.asarray(groups)
    num = den = used = 0
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * auc_pairs(y[m], s[m])
            den += m.sum()
            used += 1
    return num / den, used


# --------------------------------------------------------------------------- AUC


def test_auc_hand_example():
    # positives 0.9, 0.4; negatives 0.1, 0.5: pairs (0.9>0.1) (0.9>0.5) (0.4>0.1) (0.4<0.5) -> 3/4
    assert M.auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.5]) == pytest.approx(0.75)


def test_auc_ties():
    assert M.auc([1, 0, 1, 0, 0], np.full(5, 0.3)) == pytest.approx(0.5)
    # positives 0.8, 0.5; negatives 0.5, 0.2: (0.8>0.5) (0.8>0.2) (0.5=0.5 -> 1/2) (0.5>0.2) -> 3.5/4
    assert M.auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4)
    # a tie group of 2 positives and 1 negative above 1 negative: 2 pairs tied, 2 won -> (2·0.5 + 2)/4
    assert M.auc([1, 1, 0, 0], [0.7, 0.7, 0.7, 0.1]) == pytest.approx(3 / 4)


def test_auc_perfect_and_inverted():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert M.auc(y, s) == 1.0
    assert M.auc(y, -s) == 0.0
    assert M.auc(1 - y, s) == 0.0


def test_auc_label_dtypes():
    s = [0.9, 0.1, 0.4, 0.5]
    for y in ([1, 0, 1, 0], [True, False, True, False], [1.0, 0.0, 1.0, 0.0], np.array([1, 0, 1, 0], dtype=np.uint8)):
        assert M.auc(y, s) == pytest.approx(0.75)
    assert M.auc([1, 0, 1, 0], np.array(s, dtype=np.float32)) == pytest.approx(0.75)
    assert M.auc([1, 0, 1, 0], [3, 0, 1, 2]) == pytest.approx(0.75)  # integer scores


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]  # both classes present
    s = np.round(rng.normal(size=n), 1)  # many ties
    assert M.auc(y, s) == pytest.approx(auc_pairs(y, s), abs=1e-12)


def test_auc_invariant_to_monotone_transforms():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300), 1)
    a = M.auc(y, s)
    assert M.auc(y, 1 / (1 + np.exp(-s))) == pytest.approx(a, abs=1e-12)
    assert M.auc(y, 3 * s + 7) == pytest.approx(a, abs=1e-12)
    assert M.auc(y, np.exp(s)) == pytest.approx(a, abs=1e-12)
    assert M.auc(y, np.cbrt(s)) == pytest.approx(a, abs=1e-12)
    assert M.auc(y, -s) == pytest.approx(1 - a, abs=1e-12)  # decreasing transform flips it


def test_auc_order_of_samples_is_irrelevant():
    rng = np.random.default_rng(2)
    y = rng.random(200) < 0.4
    s = np.round(rng.random(200), 1)
    p = rng.permutation(200)
    assert M.auc(y[p], s[p]) == pytest.approx(M.auc(y, s), abs=1e-12)


# --------------------------------------------------------------------------- GAUC


def test_gauc_hand_example():
    # group 7: labels [1,0,1,0] scores [0.9,0.1,0.4,0.5] -> AUC 3/4, 4 samples
    # group 3: labels [1,0]     scores [0.2,0.6]         -> AUC 0,   2 samples
    # group 5: labels [1,1,1]   (single class)           -> skipped
    # group 9: labels [0]       (single class)           -> skipped
    y = [1, 0, 1, 0, 1, 0, 1, 1, 1, 0]
    s = [0.9, 0.1, 0.4, 0.5, 0.2, 0.6, 0.3, 0.3, 0.1, 0.5]
    g = [7, 7, 7, 7, 3, 3, 5, 5, 5, 9]
    value, used = M.gauc(y, s, g)
    assert used == 2
    assert value == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)


def test_gauc_unsorted_interleaved_groups():
    # the hand example above, samples shuffled so that groups interleave
    y = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1, 0])
    s = np.array([0.9, 0.1, 0.4, 0.5, 0.2, 0.6, 0.3, 0.3, 0.1, 0.5])
    g = np.array([7, 7, 7, 7, 3, 3, 5, 5, 5, 9])
    p = np.array([9, 4, 0, 6, 1, 5, 2, 7, 3, 8])
    value, used = M.gauc(y[p], s[p], g[p])
    assert used == 2
    assert value == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)


def test_gauc_ties_within_and_across_groups():
    # group 0: pos 0.5, neg 0.5 -> 1/2;  group 1: pos 0.5, negs 0.5, 0.1 -> (1/2 + 1)/2 = 3/4
    # a tie across groups (all the 0.5s) must not mix the groups' ranks
    value, used = M.gauc([1, 0, 0, 1, 0], [0.5, 0.5, 0.1, 0.5, 0.5], [0, 0, 1, 1, 1])
    assert used == 2
    assert value == pytest.approx((2 * 0.5 + 3 * 0.75) / 5)


def test_gauc_single_group_equals_auc():
    rng = np.random.default_rng(3)
    y = rng.random(100) < 0.3
    y[:2] = [True, False]
    s = np.round(rng.random(100), 1)
    value, used = M.gauc(y, s, np.full(100, 42))
    assert used == 1
    assert value == pytest.approx(M.auc(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    n = 600
    g = rng.integers(-5, 40, n)  # unsorted, interleaved, negative ids too; small groups often single-class
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[:2] = [True, False]
    g[:2] = g[0]  # at least one group with both classes
    s = np.round(rng.normal(size=n), 1)  # many ties
    want = gauc_loop(y, s, g)
    value, used = M.gauc(y, s, g)
    assert used == want[1]
    assert value == pytest.approx(want[0], abs=1e-12)


# --------------------------------------------------------------------------- LogLoss


def test_log_loss_hand_value():
    want = -(math.log(0.9) + math.log(1 - 0.2) + math.log(0.6) + math.log(1 - 0.5)) / 4
    assert M.log_loss([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.5]) == pytest.approx(want)
    assert M.log_loss([True, False], [0.9, 0.2]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)


def test_log_loss_clips():
    # a confident wrong prediction is clipped to eps, not infinite
    assert M.log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7))
    assert M.log_loss([1, 0], [0.0, 1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert M.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))


# --------------------------------------------------------------------------- ranking_metrics


def test_ranking_metrics_keys_and_values():
    y = np.array([1, 0, 1, 0, 1, 0])
    logits = np.array([2.0, -1.0, 0.5, 1.0, -800.0, 800.0])  # extreme logits: stable sigmoid, no warning
    g = np.array([1, 1, 1, 1, 2, 2])
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is fine
        got = M.ranking_metrics(y, logits, g)
    assert list(got) == ["AUC", "GAUC", "GAUC_users", "LogLoss", "samples", "positives"]
    assert got["AUC"] == pytest.approx(auc_pairs(y, logits))
    assert (got["GAUC"], got["GAUC_users"]) == pytest.approx(M.gauc(y, logits, g))
    p = 1 / (1 + np.exp(-logits[:4]))
    want_ll = (-np.log(p[0]) - np.log(1 - p[1]) - np.log(p[2]) - np.log(1 - p[3]) - 2 * np.log(1e-7)) / 6
    assert got["LogLoss"] == pytest.approx(want_ll)
    assert got["samples"] == 6 and got["positives"] == 3
    assert isinstance(got["GAUC_users"], int) and isinstance(got["samples"], int)


def test_ranking_metrics_nan_gauc_fallback():
    # every user is single-class: AUC is defined, GAUC is not
    got = M.ranking_metrics([1, 1, 0, 0], [0.3, 2.0, -1.0, 0.1], [1, 1, 2, 2])
    assert got["AUC"] == 1.0
    assert math.isnan(got["GAUC"]) and got["GAUC_users"] == 0
    assert got["samples"] == 4 and got["positives"] == 2


def test_sigmoid_is_stable():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is fine
        p = M._sigmoid(x)
    np.testing.assert_allclose(p, [0.0, 1 / (1 + math.exp(30)), 0.5, 1 / (1 + math.exp(-30)), 1.0], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- errors


def test_auc_errors():
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but scores has shape \(2,\)"):
        M.auc([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"labels must be 1-D .* got shape \(2, 2\)"):
        M.auc([[1, 0], [1, 0]], [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match=r"scores must be 1-D .* got shape \(\)"):
        M.auc([1], 0.5)
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got 2 at index 1"):
        M.auc([1, 2, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got -1"):
        M.auc([1, -1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got 0.5 at index 0"):
        M.auc([0.5, 1.0, 0.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got nan"):
        M.auc([np.nan, 1.0, 0.0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels must be numeric 0/1"):
        M.auc(["1", "0"], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"scores must be finite, got nan at index 1 \(1 non-finite"):
        M.auc([1, 0, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"scores must be finite, got inf"):
        M.auc([1, 0, 1], [0.1, np.inf, 0.3])
    with pytest.raises(ValueError, match=r"scores must be numeric"):
        M.auc([1, 0], ["a", "b"])
    with pytest.raises(ValueError, match=r"AUC needs at least one positive and one negative label, got 3 positives and 0 negatives"):
        M.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"got 0 positives and 2 negatives"):
        M.auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"got 0 positives and 0 negatives"):
        M.auc([], [])


def test_gauc_errors():
    with pytest.raises(ValueError, match=r"GAUC needs at least one group with both a positive and a negative label; "
                                         r"none of the 2 groups has both \(2 positives, 2 negatives in total\)"):
        M.gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"none of the 0 groups"):
        M.gauc([], [], np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but groups has shape \(2,\)"):
        M.gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2])
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but scores has shape \(2,\)"):
        M.gauc([1, 0, 1], [0.1, 0.2], [1, 1, 2])
    with pytest.raises(ValueError, match=r"groups must be 1-D"):
        M.gauc([1, 0], [0.1, 0.2], [[1, 1]])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1"):
        M.gauc([1, 3], [0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=r"scores must be finite"):
        M.gauc([1, 0], [0.1, -np.inf], [1, 1])
    with pytest.raises(TypeError, match=r"groups must hold integer group \(user\) ids, got dtype float64"):
        M.gauc([1, 0], [0.1, 0.2], [1.0, 1.0])


def test_log_loss_errors():
    with pytest.raises(ValueError, match=r"labels has shape \(2,\) but probs has shape \(3,\)"):
        M.log_loss([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"probs must be 1-D"):
        M.log_loss([1, 0], [[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got 2"):
        M.log_loss([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"probs must be in \[0, 1\], got 1.5 at index 1 .*not logits"):
        M.log_loss([1, 0], [0.1, 1.5])
    with pytest.raises(ValueError, match=r"probs must be in \[0, 1\], got -0.1"):
        M.log_loss([1, 0], [-0.1, 0.5])
    with pytest.raises(ValueError, match=r"probs must be finite, got nan"):
        M.log_loss([1, 0], [np.nan, 0.5])
    with pytest.raises(ValueError, match=r"log_loss needs at least one sample"):
        M.log_loss([], [])
    with pytest.raises(ValueError, match=r"eps=0 must be in \(0, 0.5\)"):
        M.log_loss([1, 0], [0.1, 0.5], eps=0)


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match=r"logits must be finite"):
        M.ranking_metrics([1, 0], [np.nan, 0.0], [1, 1])
    with pytest.raises(ValueError, match=r"labels has shape \(2,\) but groups has shape \(1,\)"):
        M.ranking_metrics([1, 0], [0.0, 1.0], [1])
    with pytest.raises(ValueError, match=r"AUC needs at least one positive and one negative label, got 2 positives"):
        M.ranking_metrics([1, 1], [0.0, 1.0], [1, 2])
