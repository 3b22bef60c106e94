"""benchmarks/ivf_bound.py: the probe-recall ceiling against a naive per-query count."""

import benchscripts
import numpy as np
import pytest

faiss = pytest.importorskip("faiss")


def test_probe_curve_matches_a_naive_count_of_true_neighbours_in_the_probed_lists():
    bound = benchscripts.load("ivf_bound")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    k = 50
    gt = np.argsort(-(q @ x.T), axis=1)[:, :k]
    index = faiss.index_factory(16, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    ivf = faiss.extract_index_ivf(index)
    where = bound.list_of_items(ivf, len(x))
    cents = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    assert (where == np.argmax(x @ cents.T, axis=1)).all()  # an item's list: its best centroid by inner product

    curve = bound.probe_curve(ivf, q, gt, where)
    assert [r["nprobe"] for r in curve] == [1, 2, 4, 8, 16, 32]
    sizes = np.bincount(where, minlength=ivf.nlist)
    for row in curve:
        p, hits, scanned = row["nprobe"], 0, 0
        for i in range(len(q)):  # naive: the query's p best lists, then its true neighbours found in them
            lists = set(np.argsort(-(q[i] @ cents.T))[:p].tolist())
            hits += sum(int(where[j]) in lists for j in gt[i])
            scanned += int(sum(sizes[c] for c in lists))
        assert row["recall_ceiling"] == pytest.approx(hits / gt.size)
        assert row["scanned"] == pytest.approx(scanned / len(q))
    assert curve[-1]["recall_ceiling"] == 1.0 and curve[-1]["scanned"] == len(x)
    # and the ceiling bounds what the index itself finds at each nprobe (exact codes: it reaches it)
    for row in curve:
        ivf.nprobe = row["nprobe"]
        _, found = index.search(q, k)
        got = np.mean([len(set(f) & set(g)) / k for f, g in zip(found, gt)])
        assert got == pytest.approx(row["recall_ceiling"])
