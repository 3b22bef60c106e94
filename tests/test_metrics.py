"""seqrec.metrics: hand-computed examples and a slow set-based reference."""

import math

import numpy as np
import pytest

from seqrec import metrics as M


def test_matching_metrics_hand_example():
    # user 0: truth G = {7, 1, 9} -> |G| = 3 (the unknown 1 counts but can never be hit)
    #   K=2: P = {5, 7}     hits 1: P = 1/2, R = 1/3, F1 = 2·(1/6)/(5/6) = 2/5
    #   K=3: P = {5, 7, 9}  hits 2: P = 2/3, R = 2/3, F1 = 2/3
    # user 1: truth G = {6, 3} -> |G| = 2; -1 in topk is "no item"
    #   K=2: P = {4, -1}    hits 0: P = R = F1 = 0
    #   K=3: P = {4, -1, 6} hits 1: P = 1/3, R = 1/2, F1 = 2·(1/6)/(5/6) = 2/5
    topk = np.array([[5, 7, 9], [4, -1, 6]])
    truth = np.array([[7, 1, 9, 0], [6, 3, 0, 0]])
    got = M.matching_metrics(topk, truth, ks=(2, 3))
    want = {
        "HitRate@2": 0.5, "Precision@2": (1 / 2 + 0) / 2, "Recall@2": (1 / 3 + 0) / 2, "F1@2": (2 / 5 + 0) / 2,
        "HitRate@3": 1.0, "Precision@3": (2 / 3 + 1 / 3) / 2, "Recall@3": (2 / 3 + 1 / 2) / 2, "F1@3": (2 / 3 + 2 / 5) / 2,
    }
    assert list(got) == list(want)
    assert got == pytest.approx(want)
    np.testing.assert_array_equal(M.per_user_hits(topk, truth, 2), [1, 0])
    np.testing.assert_array_equal(M.per_user_hits(topk, truth, 3), [2, 1])


def test_unknown_in_topk_is_a_miss_and_f1_zero():
    # truth {1, 1, 4}: two distinct unseen items and item 4, |G| = 3; topk [1, 0, 3] hits nothing
    got = M.matching_metrics(np.array([[1, 0, 3]]), np.array([[1, 1, 4]]), ks=(1, 3))
    assert got == {"HitRate@1": 0.0, "Precision@1": 0.0, "Recall@1": 0.0, "F1@1": 0.0,
                   "HitRate@3": 0.0, "Precision@3": 0.0, "Recall@3": 0.0, "F1@3": 0.0}
    # only the unknowns: |G| = 2, so Recall is 0, not undefined
    assert M.matching_metrics(np.array([[2, 3]]), np.array([[1, 1]]), ks=(2,))["Recall@2"] == 0.0


def test_matching_metrics_errors():
    topk = np.array([[2, 3], [4, 5], [6, 7]])
    with pytest.raises(ValueError, match=r"truth row 1 is empty .*2 of 3 users"):
        M.matching_metrics(topk, np.array([[2, 0], [0, 0], [0, 0]]), ks=(2,))
    with pytest.raises(ValueError, match=r"topk has 2 columns but ks asks for K=20"):
        M.matching_metrics(topk, np.array([[2], [3], [4]]), ks=(1, 20))
    with pytest.raises(ValueError, match=r"topk has 3 users .* truth has 2"):
        M.matching_metrics(topk, np.array([[2], [3]]), ks=(1,))
    with pytest.raises(TypeError, match=r"integer item codes, got dtype float64"):
        M.matching_metrics(topk.astype(float), np.array([[2], [3], [4]]), ks=(1,))
    with pytest.raises(ValueError, match=r"topk row 1 repeats item 4"):
        M.matching_metrics(np.array([[2, 3], [4, 4], [6, 7]]), np.array([[2], [3], [4]]), ks=(1,))
    with pytest.raises(ValueError, match=r"k=3 must be in \[1, 2\]"):
        M.per_user_hits(topk, np.array([[2], [3], [4]]), 3)


def test_loo_metrics_hand_example():
    # targets: 5 at rank 0 (gain 1), 7 at rank 2 (gain 1/log2(4) = 0.5), 9 absent, 1 unknown (miss, counted)
    topk = np.array([[5, 6, 7]] * 4)
    got = M.loo_metrics(topk, np.array([5, 7, 9, 1]), ks=(1, 3))
    assert got == pytest.approx({"Hit@1": 1 / 4, "NDCG@1": 1 / 4, "Hit@3": 2 / 4, "NDCG@3": (1 + 0.5) / 4})
    with pytest.raises(ValueError, match=r"target\[1\] = 0 is padding"):
        M.loo_metrics(topk[:2], np.array([5, 0]), ks=(1,))
    with pytest.raises(ValueError, match=r"topk has 3 columns but ks asks for K=50"):
        M.loo_metrics(topk, np.array([5, 7, 9, 1]))


def _reference(topk, truth, ks):
    out = {}
    for k in ks:
        rows = []
        for p, g in zip(topk.tolist(), truth.tolist()):
            g = [t for t in g if t != 0]
            h = len({x for x in p[:k] if x >= 2} & set(g))
            pr, rc = h / k, h / len(g)
            rows.append((h > 0, pr, rc, 2 * pr * rc / (pr + rc) if pr + rc else 0.0))
        for name, col in zip(("HitRate", "Precision", "Recall", "F1"), zip(*rows)):
            out[f"{name}@{k}"] = sum(col) / len(col)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_metrics_equal_reference(seed, monkeypatch):
    monkeypatch.setattr(M, "_BUDGET", 5000)  # force several user chunks
    rng = np.random.default_rng(seed)
    U, N, Kmax, Mx = 50, 200, 100, 30
    topk = np.stack([rng.permutation(np.arange(2, N))[:Kmax] for _ in range(U)])
    topk[rng.random((U, Kmax)) < 0.05] = -1  # FAISS "fewer than K"
    topk[:, -3:] = -1
    truth = np.zeros((U, Mx), dtype=np.int64)
    for u in range(U):
        n_real, n_unk = rng.integers(0, Mx - 3), rng.integers(0, 4)
        # half the truth drawn from the user's topk so there are hits
        pool = np.unique(np.r_[topk[u][topk[u] >= 2][:40], rng.integers(2, N, 40)])
        row = np.r_[rng.choice(pool, n_real, replace=False), np.ones(n_unk, dtype=np.int64)]
        if len(row) == 0:
            row = np.array([1])
        truth[u, rng.choice(Mx, len(row), replace=False)] = row
    ks = (1, 5, 20, 50, 100)
    got = M.matching_metrics(topk, truth, ks=ks)
    assert got == pytest.approx(_reference(topk, truth, ks))
    assert 0 < got["HitRate@5"] < got["HitRate@100"] <= 1


def test_loo_metrics_equal_reference():
    rng = np.random.default_rng(3)
    topk = np.stack([rng.permutation(np.arange(2, 60))[:20] for _ in range(40)])
    target = rng.integers(1, 60, 40)
    got = M.loo_metrics(topk, target, ks=(5, 20))
    for k in (5, 20):
        rank = [p.index(t) if t in p[:k] and t >= 2 else None for p, t in zip(topk.tolist(), target.tolist())]
        assert got[f"Hit@{k}"] == pytest.approx(sum(r is not None for r in rank) / 40)
        assert got[f"NDCG@{k}"] == pytest.approx(sum(1 / math.log2(r + 2) for r in rank if r is not None) / 40)
