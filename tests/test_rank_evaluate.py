"""Ranker evaluation (AUC on popularity negatives), the two-stage pipeline and the runner's ranking tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqrec import features as F
from seqrec.batch import collate
from seqrec.cli import main
from seqrec.config import ExperimentSpec, TrainConfig
from seqrec.data.items import read_items
from seqrec.data.prepare import load_manifest, read_split
from seqrec.evaluate import (
    chunk_candidates,
    encode_table,
    evaluate_ranker,
    metrics_from_topk,
    rank_eval_samples,
    rerank,
    retrieve,
    score_table,
    truth_of,
    two_stage,
)
from seqrec.experiment import expand_models, item_counts, run_experiment
from seqrec.features import FeatureSpec
from seqrec.metrics import ranking_metrics
from seqrec.models import build_model
from seqrec.train.factory import build

MATCH_TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2}
RANK_TINY = {"mlp": [16, 8], "id_dim": 4, "side_dim": 4, "other_dim": 2, "cross_buckets": 32}
BST_TINY = {**RANK_TINY, "pos_dim": 8, "heads": 4}


def _spec(d):
    return FeatureSpec.from_dict(load_manifest(d)["feature_spec"])


def _ranker(d, name="bst", **extra):
    return build(name, d, {**(BST_TINY if name == "bst" else RANK_TINY), **extra}, seed=0)[0].eval()


def test_item_table_comes_from_items_parquet(tiny_prepared):
    import pyarrow.parquet as pq

    spec = _spec(tiny_prepared)
    items = read_items(tiny_prepared, spec)
    side, counts = items.side, items.counts
    rows = pq.read_table(tiny_prepared / "items.parquet").to_pylist()
    assert side.shape == (spec.n_items, len(spec.item_side))
    for r in rows[2:50]:
        assert side[r["code"]].tolist() == [r[f.name] for f in spec.item_side] and counts[r["code"]] == r["count"]
    assert side[F.UNKNOWN].tolist() == [F.UNKNOWN] * len(spec.item_side)


def test_eval_samples_hold_every_truth_item_and_popularity_negatives(tiny_prepared):
    test = read_split(tiny_prepared, "test")
    counts = item_counts(tiny_prepared, _spec(tiny_prepared).n_items)
    cands, labels = rank_eval_samples(test, counts, negatives=3, seed=7)
    truth = truth_of(test)
    for i in range(len(cands)):
        t = set(truth[i][truth[i] >= F.FIRST_CODE].tolist())
        pos = cands[i][labels[i] == 1].tolist()
        neg = cands[i][(labels[i] == 0) & (cands[i] >= F.FIRST_CODE)].tolist()
        assert sorted(pos) == sorted(t) and len(neg) == 3 * len(t) and not set(neg) & t
        assert all(counts[n] > 0 for n in neg)
    again = rank_eval_samples(test, counts, negatives=3, seed=7)
    assert (again[0] == cands).all()  # fixed seed: every model sees the same samples
    with pytest.raises(ValueError, match="negatives=0 must be >= 1"):
        rank_eval_samples(test, counts, negatives=0)


def test_chunked_candidates_cover_each_real_candidate_once():
    rng = np.random.default_rng(0)
    n = rng.integers(0, 20, size=30)
    c = np.zeros((30, 20), np.int64)
    for i, k in enumerate(n):
        c[i, :k] = rng.integers(2, 100, size=k)
    row, chunks, flat = chunk_candidates(c, width=7)
    assert chunks.shape[1] == 7 and len(row) == sum(-(-k // 7) for k in n)
    ok = flat >= 0
    assert sorted(flat[ok].tolist()) == sorted(np.flatnonzero(c.ravel() >= 2).tolist())
    assert (chunks[ok] == c.ravel()[flat[ok]]).all() and (chunks[~ok] == 0).all()
    assert (flat[ok] // 20 == np.broadcast_to(row[:, None], flat.shape)[ok]).all()


def test_evaluate_ranker_equals_a_row_by_row_reference(tiny_prepared):
    spec = _spec(tiny_prepared)
    test = read_split(tiny_prepared, "test").slice(0, 40)
    counts = item_counts(tiny_prepared, spec.n_items)
    model = _ranker(tiny_prepared, "din")
    got = evaluate_ranker(model, test, spec, counts, negatives=2, seed=3)
    cands, labels = rank_eval_samples(test, counts, negatives=2, seed=3)
    ys, ss, gs = [], [], []
    for i in range(test.num_rows):  # one row at a time, its candidates unpadded
        keep = cands[i] >= F.FIRST_CODE
        if not keep.any():
            continue
        s = model.score(collate(test.slice(i, 1), spec), torch.from_numpy(cands[i][keep][None]))[0].numpy()
        ys.append(labels[i][keep]), ss.append(s), gs.append(np.full(keep.sum(), i))
    ref = ranking_metrics(np.concatenate(ys), np.concatenate(ss).astype(np.float64), np.concatenate(gs))
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-6), k


def test_rerank_orders_by_score_and_keeps_ties_stable():
    cands = np.array([[10, 11, 12, 13], [20, 21, -1, 0]])
    scores = np.array([[0.1, 0.5, 0.5, -1.0], [2.0, 3.0, -np.inf, -np.inf]], np.float32)
    assert rerank(scores, cands, 3).tolist() == [[11, 12, 10], [21, 20, -1]]


def test_two_stage_reranks_the_matchers_candidates(tiny_prepared):
    spec = _spec(tiny_prepared)
    test = read_split(tiny_prepared, "test")
    torch.manual_seed(0)
    matcher = build_model("sdm:PSDMMAL", spec, **MATCH_TINY).eval()
    ranker = _ranker(tiny_prepared, "bst")
    res = two_stage(matcher, {"bst": ranker}, test, spec, "window", candidates=60, ks=(5, 20))
    # reference: retrieve 60, score them all, sort, take 20
    top = retrieve(encode_table(matcher, test, spec), matcher.item_embeddings().detach().numpy(), 60)
    assert res["matcher"] == metrics_from_topk(top[:, :20], test, "window", (5, 20))
    s = score_table(ranker, test, spec, top)
    ref = np.array([row[np.argsort(-sc, kind="stable")][:20] for row, sc in zip(top, s)])
    expected = metrics_from_topk(ref, test, "window", (5, 20))
    assert {k: v for k, v in res["bst"].items() if k in expected} == expected
    assert 0.0 <= res["bst"]["cand_AUC"] <= 1.0  # the ranker's AUC over the candidates it re-orders
    assert res["ceiling"] == metrics_from_topk(top, test, "window", (60,))  # the share of the truth in the list
    with pytest.raises(ValueError, match="candidates=10 must be >= the largest K=20"):
        two_stage(matcher, {}, test, spec, "window", candidates=10, ks=(20,))


def test_run_experiment_ranking_and_pipeline_tables(tiny_prepared, tmp_path):
    entries = expand_models(["sdm:PSDMMA", "wdl", "bst@pos_dim=8,heads=4#BST b=1"])
    report = run_experiment(ExperimentSpec(str(tiny_prepared), entries, [0, 1], str(tmp_path), TrainConfig(epochs=1, batch_size=64),
                                           TrainConfig(epochs=2, batch_size=32), model_options=MATCH_TINY,
                                           rank_options=RANK_TINY, rank_negatives=2, pipeline=True, candidates=60,
                                           plots=False), log=None)
    s = report["summary"]
    assert {"AUC", "GAUC", "LogLoss"} <= set(s["BST b=1"]) and s["wdl"]["AUC"]["n"] == 2
    assert 0.0 <= s["BST b=1"]["AUC"]["mean"] <= 1.0
    ts = report["two_stage"]
    assert list(ts["summary"]) == ["PSDMMA", "PSDMMA + wdl", "PSDMMA + BST b=1"]
    assert ts["summary"]["PSDMMA + wdl"]["HitRate@20"]["n"] == 2 and ts["ks"] == [10, 20, 50]  # K as #15 asks
    g = ts["gains"]["PSDMMA + wdl"]["HitRate@20"]  # the ratio of the means, over the same candidates
    m, r = ts["summary"]["PSDMMA"]["HitRate@20"]["mean"], ts["summary"]["PSDMMA + wdl"]["HitRate@20"]["mean"]
    assert g["ratio"] == pytest.approx(r / m) and g["diff"] == pytest.approx(r - m)
    assert ts["ceiling"]["metric"] == "Recall@60" and 0.0 <= ts["ceiling"]["mean"] <= 1.0
    md = (tmp_path / "results.md").read_text()
    assert "| BST b=1 |" in md and "| PSDMMA + BST b=1 |" in md and "Two-stage" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = [r for r in saved["runs"] if r["model"] == "bst"]
    assert runs[0]["kind"] == "ranker" and runs[0]["config"]["heads"] == 4 and "val_AUC" in runs[0]
    assert (tmp_path / "results.csv").read_text().splitlines()[0].startswith("model,runs,")
    with pytest.raises(ValueError, match="--pipeline needs a neural matcher"):
        run_experiment(ExperimentSpec(str(tiny_prepared), expand_models(["item_cf", "wdl"]), [0], None, TrainConfig(epochs=1),
                                      TrainConfig(epochs=1), pipeline=True), log=None)


def test_cli_pipeline(tiny_prepared, tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tiny_prepared), "--models", "youtube_dnn", "din@mlp=8-4,attention_hidden=4#din",
               "--pipeline", "--candidates", "50", "--seeds", "1", "--epochs", "1", "--rank-epochs", "1", "--hidden", "8",
               "--out", str(tmp_path), "--no-plots", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| youtube_dnn + din |" in out and "| din |" in out and "AUC" in out


def test_hard_negatives_use_the_first_matcher(tiny_prepared):
    cfg = TrainConfig(epochs=1, batch_size=64)
    report = run_experiment(ExperimentSpec(str(tiny_prepared), expand_models(["youtube_dnn", "wdl@hard_negatives=1"]), [0],
                                           None, cfg, cfg, model_options={"hidden": 8}, rank_options=RANK_TINY,
                                           rank_negatives=1), log=None)
    run = report["runs"][1]
    assert run["config"]["hard_negatives"] == 1 and run["history"][0]["targets"] > 0
    with pytest.raises(ValueError, match="needs a neural matcher listed before it"):
        run_experiment(ExperimentSpec(str(tiny_prepared), expand_models(["wdl@hard_negatives=1", "youtube_dnn"]), [0], None,
                                      TrainConfig(epochs=1), TrainConfig(epochs=1), rank_options=RANK_TINY), log=None)
