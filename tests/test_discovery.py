"""discovery@K (SDM §4.2.2 offline): a hand-computed example, its errors, and the 15-day history rebuilt from
a prepared dataset's rows checked against the raw events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from seqrec import features as F
from seqrec.data import synth
from seqrec.data.loaders import open_source
from seqrec.data.prepare import load_manifest, prepare, read_split, resolve_config
from seqrec.evaluate import DISCOVERY_DAYS, discovery_inputs, evaluate_item_cf, fit_item_cf, metrics_from_topk, truth_of
from seqrec.features import FeatureSpec
from seqrec.metrics import discovery

# item code -> category code: items 2, 3 -> 5; 4, 7 -> 6; 5 -> 7; 6 -> 8; 8, 9 -> 9 (0 padding, 1 unknown)
ITEM_CAT = np.array([0, 1, 5, 5, 6, 7, 8, 6, 9, 9])


def test_discovery_hand_example():
    # user 0: truth {2, 4, 5, 1} -> categories C = {5, 6, 7} (the unknown 1 has none), history {6}: new {5, 7}
    #   top [2, 9, 5, 4]: K=1 finds 2 (5, new) -> 1/3; K=2 adds 9 (not truth) -> 1/3;
    #   K=3 adds 5 (7, new) -> 2/3; K=4 adds 4 (6, known) -> 2/3
    # user 1: truth {3, 2, 8} -> C = {5, 9}, history {9}: new {5}
    #   top [8, 7, 3, 2]: K=1 finds 8 (9, known) -> 0; K=2 -> 0; K=3 finds 3 (5, new) -> 1/2;
    #   K=4 finds 2, category 5 again: a category counts once -> 1/2
    # user 2: truth {1} only: no known category, not averaged
    topk = np.array([[2, 9, 5, 4], [8, 7, 3, 2], [2, 3, 4, 5]])
    truth = np.array([[2, 4, 5, 1], [3, 2, 8, 0], [1, 0, 0, 0]])
    history = np.array([[6, 0], [9, 0], [5, 6]])
    got = discovery(topk, truth, ITEM_CAT, history, ks=(1, 2, 3, 4))
    want = {"discovery@1": (1 / 3 + 0) / 2, "discovery@2": (1 / 3 + 0) / 2,
            "discovery@3": (2 / 3 + 1 / 2) / 2, "discovery@4": (2 / 3 + 1 / 2) / 2}
    assert list(got) == list(want)
    assert got == pytest.approx(want)
    # a recommender that only finds known categories discovers nothing; with no history every hit category is new
    assert discovery(np.array([[4, 3]]), np.array([[4, 0]]), ITEM_CAT, np.array([[6]]), ks=(2,)) == {"discovery@2": 0.0}
    assert discovery(np.array([[4, 2]]), np.array([[4, 2]]), ITEM_CAT, np.zeros((1, 0), np.int64), ks=(1, 2)) == {
        "discovery@1": 0.5, "discovery@2": 1.0}
    # an item of a new category that is not a ground-truth item is no discovery (item 3 shares item 2's category)
    assert discovery(np.array([[4, 3]]), np.array([[4, 2]]), ITEM_CAT, np.zeros((1, 0), np.int64), ks=(2,)) == {
        "discovery@2": 0.5}
    # no user with a known category: undefined
    assert np.isnan(discovery(np.array([[2]]), np.array([[1]]), ITEM_CAT, np.zeros((1, 0), np.int64), ks=(1,))["discovery@1"])


def test_discovery_errors():
    topk, truth = np.array([[2, 3]]), np.array([[2, 0]])
    with pytest.raises(ValueError, match=r"history must be an integer \(U, H\) array with U = 1 users"):
        discovery(topk, truth, ITEM_CAT, np.zeros((2, 1), np.int64), ks=(1,))
    with pytest.raises(ValueError, match=r"item code 12 is out of item_category's range \(10 items\)"):
        discovery(np.array([[12]]), truth, ITEM_CAT, np.zeros((1, 1), np.int64), ks=(1,))
    with pytest.raises(ValueError, match=r"topk has 2 columns but ks asks for K=50"):
        discovery(topk, truth, ITEM_CAT, np.zeros((1, 1), np.int64), ks=(50,))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("discovery")
    synth.generate(root / "raw", 30_000, seed=4, progress=False)
    src = open_source(str(root / "raw"), "synth", None)
    prepare(src, root / "prep", resolve_config(src), engine="local", progress=False)
    return root


def test_history_rebuilt_from_rows_matches_the_raw_events(prepared):
    d = prepared / "prep"
    train, val, test = (read_split(d, s) for s in ("train", "val", "test"))
    di = discovery_inputs(d, test, [train, val])
    assert di.feature == F.CATEGORY and di.history.shape[0] == test.num_rows
    # the truth: every kept event of the user in [t - 15 days, t], t = the row's last input event
    code_to_raw = pq.read_table(d / "vocab" / f"{F.CATEGORY}.parquet").to_pandas().set_index("code")["raw"]
    kept_items = set(pq.read_table(d / "vocab" / f"{F.ITEM_ID}.parquet")["raw"].to_pylist())
    raw = pd.read_parquet(prepared / "raw" / "events", columns=[F.USER_ID, F.ITEM_ID, F.CATEGORY, F.TIMESTAMP])
    by_user = dict(tuple(raw[raw[F.ITEM_ID].isin(kept_items)].groupby(F.USER_ID)))
    t_ref = [max(ts) for ts in test[F.seq_col(F.TIMESTAMP)].to_pylist()]
    found = want = 0
    for i, user in enumerate(test[F.USER_RAW].to_pylist()):
        e = by_user[user]
        e = e[(e[F.TIMESTAMP] >= t_ref[i] - DISCOVERY_DAYS * 86400) & (e[F.TIMESTAMP] <= t_ref[i])]
        true = set(e[F.CATEGORY])
        got = {code_to_raw[c] for c in di.history[i] if c >= F.FIRST_CODE}
        assert got <= true, (user, got - true)  # nothing outside the user's 15 days
        found, want = found + len(got & true), want + len(true)
    assert found / want > 0.97, found / want
    # the rows of the test split alone see less of the past
    own = discovery_inputs(d, test)
    assert (own.history > 0).sum() < (di.history > 0).sum()


def test_matching_evaluation_reports_discovery(prepared):
    d = prepared / "prep"
    train, val, test = (read_split(d, s) for s in ("train", "val", "test"))
    di = discovery_inputs(d, test, [train, val])
    spec = FeatureSpec.from_dict(load_manifest(d)["feature_spec"])
    m = evaluate_item_cf(fit_item_cf(train, spec), test, "window", discovery_in=di)
    assert {"HitRate@50", "Recall@50", "discovery@20", "discovery@50", "discovery@100"} <= set(m)
    assert 0.0 <= m["discovery@20"] <= m["discovery@50"] <= m["discovery@100"]
    # the ceiling: a top K holding the whole ground truth finds every new category
    truth = truth_of(test)
    perfect = np.full((len(truth), max(100, truth.shape[1])), -1)  # -1: "no item"
    perfect[:, : truth.shape[1]] = np.where(truth >= F.FIRST_CODE, truth, -1)
    ceiling = metrics_from_topk(perfect, test, "window", (perfect.shape[1],), di)[f"discovery@{perfect.shape[1]}"]
    assert m["discovery@100"] <= ceiling
    assert 0.1 < ceiling < 0.6, ceiling  # a part of the categories users click is new to them (synthetic: ~1/4)
    assert "discovery@50" not in evaluate_item_cf(fit_item_cf(train, spec), test, "window")
