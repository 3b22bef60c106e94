"""seqrec.retrieval: exact top-K against brute force, FAISS indexes against exact top-K."""

import numpy as np
import pytest
import torch

from seqrec import retrieval as R


def _vecs(seed, n, d=16):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _brute(users, items, k, exclude=None):
    s = users.astype(np.float64) @ items.astype(np.float64).T  # (U, N)
    s[:, :2] = -np.inf
    if exclude is not None:
        np.put_along_axis(s, exclude, -np.inf, axis=1)  # padding 0 is already -inf
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


def _exclude(seed, U, N, E):
    ex = np.random.default_rng(seed).integers(0, N, (U, E))
    ex[:, -1] = 0  # padding
    return ex


def test_exact_topk_equals_brute_force():
    users, items = _vecs(1, 37, 8), _vecs(2, 300, 8)
    ex = _exclude(3, 37, 300, 6)
    for exclude in (None, ex):
        sc, ids = R.exact_topk(users, items, 10, exclude=exclude, chunk=8)
        ref_sc, ref_ids = _brute(users, items, 10, exclude)
        assert sc.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (37, 10)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)
    assert not (ids[:, :, None] == ex[:, None, :]).any(), "excluded ids returned"
    assert (ids >= 2).all()
    # torch input (float64 is cast) gives the same answer
    _, ids_t = R.exact_topk(torch.from_numpy(users).double(), torch.from_numpy(items), 10, exclude=ex)
    np.testing.assert_array_equal(ids_t, ids)


def test_a_penalty_scores_the_listed_items_lower_in_exact_and_faiss_search():
    """``penalty`` (>= 0) is subtracted from the listed items' scores (an item listed twice: its largest), inf leaves
    an item out; exact top-K equals brute force over the penalized scores and a flat FAISS index equals exact."""
    users, items = _vecs(4, 23, 8), _vecs(5, 200, 8)
    ex = _exclude(6, 23, 200, 7)
    ex[:, 1] = ex[:, 0]  # an item listed twice
    pen = np.random.default_rng(7).uniform(0, 3, ex.shape).astype(np.float32)
    pen[:, 2] = np.inf
    index = R.ItemIndex.build(items, kind="flat")
    for penalty in (pen, 0.75):
        full = np.broadcast_to(np.float32(penalty), ex.shape)
        s = users.astype(np.float64) @ items.astype(np.float64).T
        s[:, :2] = -np.inf
        for u in range(len(users)):
            worst = {}
            for code, p in zip(ex[u], full[u]):
                worst[code] = max(worst.get(code, 0.0), float(p))
            for code, p in worst.items():
                s[u, code] -= p
        ref = np.argsort(-s, axis=1, kind="stable")[:, :12]
        sc, ids = R.exact_topk(users, items, 12, exclude=ex, penalty=penalty)
        np.testing.assert_array_equal(ids, ref)
        np.testing.assert_allclose(sc, np.take_along_axis(s, ref, 1), rtol=1e-5, atol=1e-5)
        fsc, fids = index.search(users, 12, exclude=ex, penalty=penalty)
        np.testing.assert_array_equal(fids, ids)
        np.testing.assert_allclose(fsc, sc, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(R.exact_topk(users, items, 12, exclude=ex, penalty=0.75)[1],
                              R.exact_topk(users, items, 12)[1])  # the penalty changes the answer
    for bad in (-0.5, np.full((23, 3), 1.0)):
        with pytest.raises(ValueError, match="penalty must be"):
            R.exact_topk(users, items, 12, exclude=ex, penalty=bad)


def test_exact_topk_with_many_ties_equals_stable_brute_force():
    rng = np.random.default_rng(16)  # small integer vectors: many exactly tied scores
    users, items = rng.integers(-1, 2, (40, 3)).astype(np.float32), rng.integers(-1, 2, (90, 3)).astype(np.float32)
    ex = _exclude(17, 40, 90, 8)
    for k in (1, 7, 30):
        sc, ids = R.exact_topk(users, items, k, exclude=ex, chunk=16)
        ref_sc, ref_ids = _brute(users, items, k, ex)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(sc, ref_sc)


def test_exact_topk_ties_go_to_the_lower_code():
    # scores: code 2 -> 3, codes 3, 4, 6, 7 -> 1, code 5 -> 2; rows 0, 1 score highest but are never returned
    items = np.array([[9.0], [9.0], [3.0], [1.0], [1.0], [2.0], [1.0], [1.0]])
    sc, ids = R.exact_topk(np.ones((2, 1)), items, 4, exclude=np.array([[0, 0], [3, 0]]))
    np.testing.assert_array_equal(ids, [[2, 5, 3, 4], [2, 5, 4, 6]])
    np.testing.assert_array_equal(sc, [[3, 2, 1, 1], [3, 2, 1, 1]])
    _, ids = R.exact_topk(np.ones((1, 1)), np.ones((10, 1)), 3)  # all tied
    np.testing.assert_array_equal(ids, [[2, 3, 4]])


def test_exact_topk_errors():
    users, items = _vecs(1, 3, 4), _vecs(2, 10, 4)  # 8 eligible items
    with pytest.raises(ValueError, match=r"k=9 is more than the 8 eligible items"):
        R.exact_topk(users, items, 9)
    with pytest.raises(ValueError, match=r"k=7 is more than the 6 eligible items of user row 1"):
        R.exact_topk(users, items, 7, exclude=np.array([[2, 0, 0], [2, 3, 3], [1, 0, 0]]))
    with pytest.raises(ValueError, match=r"user vectors have dim 5 but item vectors have dim 4"):
        R.exact_topk(_vecs(1, 3, 5), items, 2)
    with pytest.raises(ValueError, match=r"k=0 must be an integer >= 1"):
        R.exact_topk(users, items, 0)
    with pytest.raises(ValueError, match=r"user_vecs must be 2-D"):
        R.exact_topk(users[0], items, 2)
    with pytest.raises(ValueError, match=r"outside the item table \[0, 10\)"):
        R.exact_topk(users, items, 2, exclude=np.array([[10], [0], [0]]))


def test_flat_index_equals_exact_topk():
    users, items = _vecs(4, 60), _vecs(5, 500)
    index = R.ItemIndex.build(items, "flat")
    assert index.ntotal == 498 and index.n_items == 500 and index.dim == 16
    ex = _exclude(6, 60, 500, 12)
    for exclude in (None, ex):
        sc, ids = index.search(users, 25, exclude=exclude)
        ref_sc, ref_ids = R.exact_topk(users, items, 25, exclude=exclude)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(sc, ref_sc, rtol=1e-5, atol=1e-5)
    assert not (ids[:, :, None] == ex[:, None, :]).any()
    assert R.recall_at_k_vs_exact(ids, ref_ids) == 1.0


def test_search_pads_when_exclusions_leave_too_few():
    items = _vecs(7, 12, 4)  # 10 indexed items, codes 2..11
    exclude = np.array([[2, 3, 4, 5, 6, 7, 8, 9, 0], [0] * 9])  # user 0 keeps only codes 10, 11
    sc, ids = R.ItemIndex.build(items).search(_vecs(8, 2, 4), 5, exclude=exclude)
    assert sorted(ids[0, :2]) == [10, 11] and (ids[0, 2:] == -1).all() and np.isneginf(sc[0, 2:]).all()
    assert (ids[1] >= 2).all() and np.isfinite(sc[1]).all()
    with pytest.raises(ValueError, match=r"k=11 is more than the 10 indexed items"):
        R.ItemIndex.build(items).search(_vecs(8, 2, 4), 11)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall(kind):
    users, items = _vecs(9, 100), _vecs(10, 2000)
    # isotropic gaussian data has no cluster structure, IVF's worst case: nprobe=16 of the
    # default 51 lists reaches recall 0.89 here, 32 lists 0.99
    index = R.ItemIndex.build(items, kind, nprobe=32)
    _, exact = R.exact_topk(users, items, 20)
    _, ids = index.search(users, 20)
    assert R.recall_at_k_vs_exact(ids, exact) >= 0.9
    if kind == "ivf":
        assert index.params == {"ivf_nlist": 2000 // 39, "nprobe": 32}  # 4·sqrt(1998) = 179 clipped to n // 39
    ex = _exclude(11, 100, 2000, 30)
    _, ids = index.search(users, 20, exclude=ex)
    _, exact = R.exact_topk(users, items, 20, exclude=ex)
    assert not (ids[:, :, None] == ex[:, None, :]).any()
    assert R.recall_at_k_vs_exact(ids, exact) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_roundtrip(tmp_path, kind):
    users, items = _vecs(12, 20), _vecs(13, 400)
    index = R.ItemIndex.build(items, kind, meta={"checkpoint": "v7", "epoch": 3}, ef_search=64, nprobe=4)
    index.save(tmp_path / "idx")
    loaded = R.ItemIndex.load(tmp_path / "idx")
    assert loaded.meta == {"checkpoint": "v7", "epoch": 3}
    assert (loaded.kind, loaded.params, loaded.n_items, loaded.dim) == (kind, index.params, 400, 16)
    ex = _exclude(14, 20, 400, 5)
    for a, b in zip(index.search(users, 10, exclude=ex), loaded.search(users, 10, exclude=ex)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"is not a saved ItemIndex"):
        R.ItemIndex.load(tmp_path / "missing")


def test_index_errors_and_knobs():
    items = _vecs(15, 50, 8)
    index = R.ItemIndex.build(items.astype(np.float64), "hnsw")  # non-float32 input is cast
    with pytest.raises(ValueError, match=r"user vectors have dim 4 but item vectors have dim 8"):
        index.search(_vecs(1, 2, 4), 5)
    with pytest.raises(ValueError, match=r"kind='pq' is not one of"):
        R.ItemIndex.build(items, "pq")
    with pytest.raises(ValueError, match=r"nprobe does not apply to a 'hnsw' index"):
        index.set_search_params(nprobe=3)
    assert index.set_search_params(ef_search=300).params["ef_search"] == 300
    with pytest.raises(TypeError, match=r"meta must be JSON-serialisable"):
        R.ItemIndex.build(items, meta={"x": object()})
    if R.faiss.get_num_gpus() == 0:
        with pytest.raises(ValueError, match=r"sees no GPU"):
            R.ItemIndex.build(items, "flat", use_gpu=True)


def test_recall_at_k_vs_exact():
    # user 0: {2, 3, 4} ∩ {2, 4, 5} = 2 of 3; user 1: -1 never matches, {7} ∩ {7, 8, 9} = 1 of 3
    assert R.recall_at_k_vs_exact(np.array([[2, 3, 4], [7, -1, -1]]), np.array([[2, 4, 5], [7, 8, 9]])) == pytest.approx(0.5)
