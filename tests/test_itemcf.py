"""Item-based CF baseline (seqrec.models.itemcf): similarity, scores, top-k, save/load, errors."""

import io
import json
import math
from collections import defaultdict

import numpy as np
import pytest

from seqrec import features as F
from seqrec.models.itemcf import ItemCF, ItemCFConfig


def pad_rows(rows, width=None):
    """List of code lists -> (R, T) int64 right-padded with 0, (R,) lengths."""
    width = width or max(1, max(len(r) for r in rows))
    seqs = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        seqs[i, : len(r)] = r
    return seqs, np.array([len(r) for r in rows], np.int64)


def dense_sim(model: ItemCF) -> np.ndarray:
    """(N, N) float64 similarity from the sparse top-K table (0 where not kept)."""
    N = model.n_items
    sim = np.zeros((N, N))
    r = np.repeat(np.arange(N), model.neighbors.shape[1])
    w = model.weights.reshape(-1)
    keep = w != 0
    sim[r[keep], model.neighbors.reshape(-1)[keep]] = w[keep]
    return sim


def reference_sim(seqs, lengths, n_items, window, similarity):
    """Slow pure-Python item-CF similarity: dict of pair counts, loop over sessions."""
    pair = defaultdict(int)
    occ = defaultdict(int)
    for row, L in zip(seqs.tolist(), lengths.tolist()):
        s = row[:L]
        for i, a in enumerate(s):
            if a >= F.FIRST_CODE:
                occ[a] += 1
            for j in range(i + 1, min(L, i + window + 1)):
                b = s[j]
                if a >= F.FIRST_CODE and b >= F.FIRST_CODE and a != b:
                    pair[a, b] += 1
                    pair[b, a] += 1
    sim = np.zeros((n_items, n_items))
    for (a, b), c in pair.items():
        sim[a, b] = c / math.sqrt(occ[a] * occ[b]) if similarity == "cosine" else c
    return sim


def reference_scores(sim, trigger, lengths, n_triggers, decay):
    U, N = trigger.shape[0], sim.shape[0]
    out = np.zeros((U, N))
    for u in range(U):
        L = int(lengths[u])
        for age in range(min(n_triggers, L)):
            t = int(trigger[u, L - 1 - age])
            if t >= F.FIRST_CODE:
                out[u] += decay**age * sim[t]
    out[:, :2] = -np.inf
    return out


def random_sessions(rng, R=200, T=12, N=60, unknown_rate=0.05):
    lengths = rng.integers(0, T + 1, size=R)
    seqs = rng.integers(F.FIRST_CODE, N, size=(R, T))
    seqs[rng.random((R, T)) < unknown_rate] = F.UNKNOWN
    seqs[np.arange(T)[None, :] >= lengths[:, None]] = F.PAD
    return seqs, lengths


def test_hand_computed_cosine():
    # Sessions (window 1, so only adjacent positions co-occur):
    #   [2, 3, 4]   pairs {2,3}, {3,4}
    #   [2, 3]      pair  {2,3}
    #   [4, 1, 5]   unknown 1 breaks the chain: no pair (4 and 5 are 2 apart)
    # Occurrences: c2 = 2, c3 = 2, c4 = 2, c5 = 1.  c23 = 2, c34 = 1.
    # cosine(2,3) = 2 / sqrt(2*2) = 1.0; cosine(3,4) = 1 / sqrt(2*2) = 0.5; 5 has no neighbour.
    seqs, lengths = pad_rows([[2, 3, 4], [2, 3], [4, 1, 5]])
    m = ItemCF(ItemCFConfig(window=1, top_neighbors=4)).fit(seqs, lengths, n_items=6)
    sim = dense_sim(m)
    expected = np.zeros((6, 6))
    expected[2, 3] = expected[3, 2] = 1.0
    expected[3, 4] = expected[4, 3] = 0.5
    np.testing.assert_allclose(sim, expected, rtol=1e-6)
    np.testing.assert_array_equal(m.item_counts, [0, 0, 2, 2, 2, 1])
    # Row 3: neighbours by descending weight, 0-padded.
    np.testing.assert_array_equal(m.neighbors[3], [2, 4, 0, 0])
    np.testing.assert_allclose(m.weights[3], [1.0, 0.5, 0.0, 0.0])
    assert m.neighbors.shape == (6, 4) and m.neighbors.dtype == np.int64 and m.weights.dtype == np.float32
    assert not m.neighbors[:2].any() and not m.weights[:2].any()

    # Window 2: 4 and 5 now co-occur in session 3 -> cosine(4,5) = 1 / sqrt(2*1) = 0.7071;
    # session 1 adds {2,4}: cosine(2,4) = 1 / sqrt(2*2) = 0.5.
    m2 = ItemCF(ItemCFConfig(window=2, top_neighbors=4)).fit(seqs, lengths, n_items=6)
    sim2 = dense_sim(m2)
    assert sim2[4, 5] == pytest.approx(1 / math.sqrt(2)) and sim2[5, 4] == pytest.approx(1 / math.sqrt(2))
    assert sim2[2, 4] == pytest.approx(0.5)
    # Count similarity: raw c_ab.
    m3 = ItemCF(ItemCFConfig(window=1, similarity="count", top_neighbors=4)).fit(seqs, lengths, n_items=6)
    assert dense_sim(m3)[2, 3] == 2 and dense_sim(m3)[3, 4] == 1


@pytest.mark.parametrize("similarity", ["cosine", "count"])
def test_fit_matches_reference(similarity):
    rng = np.random.default_rng(0)
    N = 60
    seqs, lengths = random_sessions(rng, N=N)
    m = ItemCF(ItemCFConfig(window=3, similarity=similarity, top_neighbors=N)).fit(seqs, lengths, n_items=N)
    ref = reference_sim(seqs, lengths, N, 3, similarity)
    np.testing.assert_allclose(dense_sim(m), ref, rtol=1e-6)
    # Rows are sorted by descending weight.
    assert (np.diff(m.weights, axis=1) <= 0).all()


@pytest.mark.parametrize("similarity", ["cosine", "count"])
def test_scores_match_reference(similarity):
    rng = np.random.default_rng(1)
    N = 60
    seqs, lengths = random_sessions(rng, N=N)
    cfg = ItemCFConfig(window=3, similarity=similarity, top_neighbors=N, n_triggers=4, recency_decay=0.8)
    m = ItemCF(cfg).fit(seqs, lengths, n_items=N)
    trig, tlen = random_sessions(rng, R=30, T=9, N=N, unknown_rate=0.2)
    tlen[0] = 0  # a user with no history scores 0 everywhere
    got = m.scores(trig, tlen)
    assert got.shape == (30, N) and got.dtype == np.float32
    want = reference_scores(dense_sim(m), trig, tlen, cfg.n_triggers, cfg.recency_decay)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isneginf(got[:, :2]).all()
    assert (got[0, 2:] == 0).all()


def test_top_neighbors_keeps_largest():
    rng = np.random.default_rng(2)
    N = 40
    seqs, lengths = random_sessions(rng, R=300, T=10, N=N)
    full = ItemCF(ItemCFConfig(window=3, similarity="count", top_neighbors=N)).fit(seqs, lengths, N)
    K = 5
    cut = ItemCF(ItemCFConfig(window=3, similarity="count", top_neighbors=K)).fit(seqs, lengths, N)
    assert cut.neighbors.shape == (N, K)
    S = dense_sim(full)
    for i in range(F.FIRST_CODE, N):
        # Expected: descending count, ties by lower code.
        order = sorted((j for j in range(N) if S[i, j] > 0), key=lambda j: (-S[i, j], j))[:K]
        np.testing.assert_array_equal(cut.neighbors[i, : len(order)], order)
        np.testing.assert_array_equal(cut.weights[i, : len(order)], S[i, order])


def test_topk_excludes_and_breaks_ties_by_lower_code():
    # 2-3 co-occur twice, 2-4 and 2-5 once each (count): trigger 2 scores 3 > 4 = 5 > all others (0).
    seqs, lengths = pad_rows([[2, 3], [3, 2], [4, 2, 5]])
    m = ItemCF(ItemCFConfig(window=1, similarity="count")).fit(seqs, lengths, n_items=10)
    trig, tlen = pad_rows([[2], [2], [1]])
    top = m.topk(trig, tlen, k=5)
    np.testing.assert_array_equal(top[0], [3, 4, 5, 2, 6])  # 2 (no self-similarity) ties at 0 with 6, 7, ...
    np.testing.assert_array_equal(top[1], top[0])
    np.testing.assert_array_equal(top[2], [2, 3, 4, 5, 6])  # unknown trigger: all zeros, by code
    exclude = np.array([[3, 6, 0], [4, 0, 0], [2, 3, 0]])
    top = m.topk(trig, tlen, k=5, exclude=exclude)
    np.testing.assert_array_equal(top[0], [4, 5, 2, 7, 8])
    np.testing.assert_array_equal(top[1], [3, 5, 2, 6, 7])
    np.testing.assert_array_equal(top[2], [4, 5, 6, 7, 8])
    assert top.dtype == np.int64


def test_topk_random_matches_stable_sort_and_chunking():
    rng = np.random.default_rng(3)
    N = 60
    seqs, lengths = random_sessions(rng, N=N)
    m = ItemCF(ItemCFConfig(window=3, similarity="count", top_neighbors=8)).fit(seqs, lengths, N)
    trig, tlen = random_sessions(rng, R=50, T=6, N=N)
    excl = np.where(np.arange(6)[None, :] < tlen[:, None], trig, 0)  # exclude the history itself
    sc = m.scores(trig, tlen)
    np.put_along_axis(sc, excl, -np.inf, axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")  # descending score, ties by lower code
    for k in (1, 20, N - 2 - 6):  # 20: many rows fill up with unscored items; N-8: every eligible item
        for chunk in (1, 7, 1024):
            got = m.topk(trig, tlen, k=k, exclude=excl, chunk_size=chunk)
            np.testing.assert_array_equal(got, order[:, :k])
    assert not np.isin(got, [0, 1]).any()
    assert not any(np.isin(got[u], excl[u][excl[u] > 1]).any() for u in range(50))


def test_successor_is_recalled():
    # Item i is always followed by i+1 (runs of consecutive codes at random starts).
    rng = np.random.default_rng(4)
    N = 30
    starts = rng.integers(F.FIRST_CODE, N - 5, size=400)
    seqs = starts[:, None] + np.arange(5)[None, :]
    lengths = np.full(400, 5)
    m = ItemCF(ItemCFConfig(window=2)).fit(seqs, lengths, N)
    items = np.arange(F.FIRST_CODE, seqs.max())  # every item that has a successor
    top = m.topk(items[:, None], np.ones(len(items), np.int64), k=3)
    assert all(i + 1 in top[r] for r, i in enumerate(items))


def test_recency_decay_prefers_latest_trigger():
    seqs, lengths = pad_rows([[2, 3], [4, 5]])
    m = ItemCF(ItemCFConfig(window=1, recency_decay=0.5)).fit(seqs, lengths, 6)
    trig, tlen = pad_rows([[2, 4], [4, 2]])
    top = m.topk(trig, tlen, k=2)
    np.testing.assert_array_equal(top, [[5, 3], [3, 5]])
    sc = m.scores(trig, tlen)
    assert sc[0, 5] == pytest.approx(1.0) and sc[0, 3] == pytest.approx(0.5)


def test_state_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    seqs, lengths = random_sessions(rng, N=50)
    m = ItemCF(ItemCFConfig(window=2, top_neighbors=7, n_triggers=3)).fit(seqs, lengths, 50)
    trig, tlen = random_sessions(rng, R=10, T=5, N=50)
    want = m.topk(trig, tlen, k=10)

    import torch  # only here: keeps the rest of the file torch-free and fast

    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = ItemCF.from_state(torch.load(buf, weights_only=False))
    assert m2.config == m.config
    np.testing.assert_array_equal(m2.topk(trig, tlen, k=10), want)
    # Tensors instead of arrays: loads with torch's default weights_only=True.
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in m.state_dict().items()}, buf)
    buf.seek(0)
    m2 = ItemCF.from_state(torch.load(buf))
    np.testing.assert_array_equal(m2.weights, m.weights)
    np.testing.assert_array_equal(m2.topk(trig, tlen, k=10), want)

    state = m.state_dict()
    np.savez(tmp_path / "itemcf.npz", **{**state, "config": json.dumps(state["config"])})
    with np.load(tmp_path / "itemcf.npz") as z:
        m3 = ItemCF.from_state(z)
    np.testing.assert_array_equal(m3.neighbors, m.neighbors)
    np.testing.assert_array_equal(m3.topk(trig, tlen, k=10), want)


def test_errors():
    with pytest.raises(ValueError, match="window=0 must be"):
        ItemCFConfig(window=0)
    with pytest.raises(ValueError, match="similarity='jaccard'.*'cosine' or 'count'"):
        ItemCFConfig(similarity="jaccard")
    with pytest.raises(ValueError, match="recency_decay=1.5 must be in"):
        ItemCFConfig(recency_decay=1.5)

    short, slen = pad_rows([[2], [3], [], [4, 4]], width=3)  # length < 2, or a pair with itself
    with pytest.raises(ValueError, match="no co-occurring pairs were found.*check the window and the data"):
        ItemCF().fit(short, slen, n_items=5)
    seqs, lengths = pad_rows([[2, 3], [3, 4]])
    with pytest.raises(ValueError, match="item code 4 but n_items=4"):
        ItemCF().fit(seqs, lengths, n_items=4)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        ItemCF().fit(seqs, lengths[:1], n_items=5)
    with pytest.raises(ValueError, match="lengths must be in"):
        ItemCF().fit(seqs, np.array([2, 3]), n_items=5)
    with pytest.raises(ValueError, match="2-d"):
        ItemCF().fit(seqs[0], lengths, n_items=5)

    m = ItemCF().fit(seqs, lengths, n_items=5)
    with pytest.raises(ValueError, match="trigger holds item code 7 but n_items=5"):
        m.scores(np.array([[2, 7]]), np.array([2]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(1,\)"):
        m.topk(np.array([[2, 3]]), np.array([2, 2]), k=1)
    with pytest.raises(ValueError, match="k=4 must be in"):
        m.topk(np.array([[2, 3]]), np.array([2]), k=4)
    with pytest.raises(ValueError, match="exclude must have shape"):
        m.topk(np.array([[2, 3]]), np.array([2]), k=1, exclude=np.array([2, 3]))
    with pytest.raises(ValueError, match="fewer than k=2"):
        m.topk(np.array([[2, 3]]), np.array([2]), k=2, exclude=np.array([[2, 3]]))
    with pytest.raises(RuntimeError, match="not fitted"):
        ItemCF().scores(np.array([[2]]), np.array([1]))
