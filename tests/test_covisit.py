"""The co-visitation cross feature of the rankers (``covisit``): the torch scores equal item-CF's own (the
reference), in both table layouts, and the cascade data's scores come from the fold's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec import features as F
from seqrec.data.prepare import load_manifest, read_split
from seqrec.evaluate import fit_item_cf, item_cf_inputs
from seqrec.features import FeatureSpec
from seqrec.models.itemcf import ItemCF, ItemCFConfig
from seqrec.models.ranking import COVISIT, covisit_scores, covisit_table
from seqrec.train.cascade import position_candidates
from seqrec.train.factory import build

SDM = {"hidden": 8, "heads": 2, "id_dim": 4, "side_dim": 2, "profile_dim": 2}


def _left(trigger: np.ndarray, lengths: np.ndarray, n: int) -> torch.Tensor:
    """Right-padded trigger rows → their last ``n`` codes, left-padded (the rankers' window layout)."""
    out = np.zeros((len(trigger), n), np.int64)
    for r, (row, m) in enumerate(zip(trigger, lengths)):
        last = row[max(0, m - n): m]
        out[r, n - len(last):] = last
    return torch.from_numpy(out)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_covisit_scores_equal_item_cf_scores(layout):
    rng = np.random.default_rng(0)
    n_items, rows, width = 60, 80, 12
    lengths = rng.integers(2, width + 1, rows)
    seqs = np.where(np.arange(width)[None, :] < lengths[:, None], rng.integers(2, n_items, (rows, width)), 0)
    cfg = ItemCFConfig(window=3, n_triggers=4, top_neighbors=7, recency_decay=0.8)
    cf = ItemCF(cfg).fit(seqs, lengths, n_items)
    trig_len = rng.integers(0, width + 1, 30)
    trig = np.where(np.arange(width)[None, :] < trig_len[:, None], rng.integers(1, n_items, (30, width)), 0)  # 1 = unknown
    ref = cf.scores(trig, trig_len)  # (30, N), codes 0/1 -inf
    cands = torch.from_numpy(rng.integers(0, n_items, (30, 9)))
    nb, w = torch.from_numpy(cf.neighbors), torch.from_numpy(cf.weights)
    table = covisit_table(nb, w) if layout == "dense" else (nb, w)
    assert isinstance(table, torch.Tensor) == (layout == "dense")
    got = covisit_scores(table, _left(trig, trig_len, cfg.n_triggers), cands, cfg.recency_decay)
    want = np.take_along_axis(ref, cands.numpy(), 1)
    want[cands.numpy() < F.FIRST_CODE] = 0.0  # padding / unknown candidates score 0
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert (got > 0).sum() > 20  # the case exercises real co-visitations


def test_cascade_covisit_is_the_fold_tables_score_of_the_behaviours_before_t(tiny_prepared):
    """position_candidates gives each drawn candidate and each target the item-CF score of the table it was given,
    from the behaviours before t (history, then the session up to t-1): the reference scores each prefix with
    ItemCF.scores. A table fitted without a row never credits the row's own pairs."""
    spec = FeatureSpec.from_dict(load_manifest(tiny_prepared)["feature_spec"])
    train = read_split(tiny_prepared, "train")
    model, _, _ = build("sdm:PSDMMAL", tiny_prepared, SDM, seed=0)
    rows, others = train.slice(0, 10), train.slice(10)
    cf = fit_item_cf(others, spec, **COVISIT.to_dict())  # the "fold" table: every row but these
    got = position_candidates(model, rows, spec, 6, 200, cf=cf)
    cand, cov, tcov = (got[c].to_pylist() for c in (F.CAND_ITEM, F.CAND_COVISIT, F.TARGET_COVISIT))
    trig, lengths = item_cf_inputs(rows)
    checked = 0
    for r, row in enumerate(rows.to_pylist()):
        h = lengths[r] - row[F.SEQ_LEN]  # history length
        for t in range(1, row[F.SEQ_LEN]):
            ref = cf.scores(trig[r:r + 1], np.array([h + t]))[0]  # the behaviours before t
            assert tcov[r][t] == pytest.approx(float(ref[row[F.seq_col(F.ITEM_ID)][t]]), rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(cov[r][t], ref[cand[r][t]], rtol=1e-5, atol=1e-6)
            checked += len(cand[r][t])
    assert checked > 20
    full = fit_item_cf(train, spec, **COVISIT.to_dict())  # a table that saw the rows credits their own pairs
    inside = position_candidates(model, rows, spec, 6, 200, cf=full)[F.TARGET_COVISIT].to_pylist()
    assert sum(x for r in inside for x in r[1:]) > sum(x for r in tcov for x in r[1:])


def test_a_covisit_ranker_refuses_rows_without_cross_fitted_scores(tiny_prepared):
    from seqrec.batch import collate

    model, spec, _ = build("bst", tiny_prepared, {"id_dim": 8, "side_dim": 4, "mlp": "16-8", "heads": 2, "covisit": True},
                           seed=0)
    assert float(model.covisit_weights.sum()) > 0  # the factory filled the training split's table
    batch = collate(read_split(tiny_prepared, "train").slice(0, 4), spec)
    with pytest.raises(ValueError, match="covisit=True train on cascade rows"):
        model.training_input(batch)
    wrong = ItemCF(ItemCFConfig(top_neighbors=3)).fit(np.array([[2, 3, 4]]), np.array([3]), spec.n_items)
    with pytest.raises(ValueError, match="must be an ItemCF fitted with"):
        model.set_covisitation(wrong)

