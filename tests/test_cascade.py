"""Cascade training data (seqrec.train.cascade) and the rankers that learn on it: cross-fitted candidates,
the label window, the matcher's features in training, offline evaluation and serving."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from seqrec import features as F
from seqrec.batch import collate
from seqrec.config import CascadeConfig, TrainConfig
from seqrec.data.prepare import load_manifest, read_split
from seqrec.features import FeatureSpec
from seqrec.models.ranking import match_inputs
from seqrec.train.cascade import CandidateStage, fold_of, position_candidates
from seqrec.train.factory import build

SDM = {"hidden": 8, "heads": 2, "id_dim": 4, "side_dim": 2, "profile_dim": 2}
BST = {"id_dim": 8, "side_dim": 4, "mlp": "16-8", "heads": 2, "match_features": True, "covisit": True, "loss": "listwise",
       "cascade_negatives": 4, "negatives": 1}


def _spec(d) -> FeatureSpec:
    return FeatureSpec.from_dict(load_manifest(d)["feature_spec"])


def test_folds_are_stable_and_cover_every_fold():
    users = [str(u) for u in range(200)] + [5, "5"]
    a, b = fold_of(users, 3, seed=1), fold_of(pa.array([str(u) for u in users]), 3, seed=1)
    assert np.array_equal(a, b) and set(a.tolist()) == {0, 1, 2}
    assert a[-1] == a[-2] == a[5]  # a user is its id's text: 5 and "5" are one user
    assert not np.array_equal(a, fold_of(users, 3, seed=2))  # the seed reshuffles


def _prefix(row: dict, t: int) -> dict:
    """The row with its session cut to its first ``t`` events (what the matcher knew before event t)."""
    out = dict(row)
    for k, v in row.items():
        if k.startswith("seq_") and isinstance(v, list):
            out[k] = v[:t]
    out[F.SEQ_LEN] = t
    return out


def _prefix_scores(model, row: dict, t: int, schema, spec, items) -> torch.Tensor:
    """The slow reference: every item's inner product with the user vector of the row's first ``t`` events, one
    encode per prefix (padding and unknown at -inf), less the matcher's seen penalty on the prefix's items and the
    row's long-term items."""
    prefix = pa.Table.from_pylist([_prefix(row, t)], schema=schema)
    with torch.no_grad():
        u = model.encode_users(collate(prefix, spec))[0]
        scores = (items @ u).clone()
        penalty = model.seen_penalty()
        if penalty is not None:
            seen = set(row[F.seq_col(F.ITEM_ID)][:t]) | set(row[F.long_term_col(F.ITEM_ID)])
            scores[sorted(seen)] -= penalty
    scores[: F.FIRST_CODE] = float("-inf")
    return scores


@pytest.mark.parametrize("seen_penalty", [False, True])
def test_position_candidates_equal_retrieval_from_each_prefix(tiny_prepared, seen_penalty):
    """The causal pass (one user_states call per row) gives each position what encoding the prefix before it and
    retrieving over every item would: the reference is one encode per prefix. The stored candidates are a draw
    from that top-``depth`` list with their list ranks and scores, never the positive nor a later session item.
    A matcher with ``seen_penalty`` scores its input's items lower by it, as retrieval does."""
    model, spec, _ = build("sdm:PSDMMAL", tiny_prepared, {**SDM, "seen_penalty": seen_penalty}, seed=0)
    model.eval()
    if seen_penalty:
        with torch.no_grad():
            model.seen_logit.fill_(1.0)  # a penalty of 1.31: larger than most score gaps of the untrained matcher
    rows = read_split(tiny_prepared, "train").slice(0, 12)
    k, depth = 6, 200  # an untrained matcher on ~400 items: some positions' items fall outside the list
    got = position_candidates(model, rows, spec, k, depth)
    col = {name: got[name].to_pylist() for name in got}
    items = model.item_embeddings().detach()
    checked = outside = 0
    for r, row in enumerate(rows.to_pylist()):
        assert col[F.CAND_ITEM][r][0] == [] and col[F.TARGET_RANK][r][0] == -1  # position 0: none
        session = row[F.seq_col(F.ITEM_ID)]
        for t in range(1, row[F.SEQ_LEN]):
            scores = _prefix_scores(model, row, t, rows.schema, spec, items)
            ref_s, ref_i = scores.topk(depth)
            target = session[t]
            rank = int((scores > scores[target]).sum())
            assert col[F.TARGET_RANK][r][t] == rank
            assert col[F.TARGET_SCORE][r][t] == pytest.approx(float(scores[target]), rel=1e-4, abs=1e-5)
            assert col[F.TOP_SCORE][r][t] == pytest.approx(float(ref_s[0]), rel=1e-4, abs=1e-5)
            cand, ranks = col[F.CAND_ITEM][r][t], col[F.CAND_RANK][r][t]
            if rank >= depth:  # outside the list the ranker will see: no sample
                assert cand == []
                outside += 1
                continue
            assert len(cand) == k and len(set(cand)) == k
            assert [ref_i[j].item() for j in ranks] == cand  # each drawn item sits at its stored rank of the list
            np.testing.assert_allclose(col[F.CAND_SCORE][r][t], ref_s[ranks].numpy(), rtol=1e-4, atol=1e-5)
            assert target not in cand and not set(cand) & set(session[t + 1:])
            checked += 1
    assert checked > 10 and outside > 0


def test_the_draw_depends_on_the_row_not_on_the_batch(tiny_prepared):
    model, spec, _ = build("sdm:PSDMMAL", tiny_prepared, SDM, seed=0)
    rows = read_split(tiny_prepared, "train").slice(0, 10)
    whole = position_candidates(model, rows, spec, 5, 40, batch_size=10)[F.CAND_ITEM].to_pylist()
    split = position_candidates(model, rows, spec, 5, 40, batch_size=3)[F.CAND_ITEM].to_pylist()
    other = position_candidates(model, rows, spec, 5, 40, seed=1)[F.CAND_ITEM].to_pylist()
    assert whole == split and whole != other


class _Constant(torch.nn.Module):
    """A stand-in matcher whose every user gives one item the score ``top``: which matcher retrieved a row shows
    in the rows' first scores."""

    def __init__(self, spec: FeatureSpec, top: float):
        super().__init__()
        self.vecs = torch.zeros(spec.n_items, 2)
        self.vecs[2, 0] = top

    def user_states(self, batch):
        return torch.ones(*batch.items.shape, 2)

    def item_embeddings(self):
        return self.vecs


@pytest.mark.parametrize("by", ["user", "session"])
def test_cross_fitting_never_shows_a_matcher_its_own_rows(tiny_prepared, tmp_path, monkeypatch, by):
    """Each fold's matcher trains on the other folds' rows only (by user: other users; by session: other sessions),
    and retrieves for its own fold's rows only."""
    import seqrec.train.loop as loop
    from seqrec.train.cascade import row_folds, train_fold_matchers

    def keys(table) -> list:
        users = table[F.USER_RAW].to_pylist()
        return users if by == "user" else list(zip(users, table[F.SESSION_START].to_pylist()))

    seen: list[set] = []
    real_fit = loop.fit

    def recording_fit(model, train, *args, **kwargs):
        seen.append(set(keys(train)))
        return real_fit(model, train, *args, **kwargs)

    monkeypatch.setattr(loop, "fit", recording_fit)
    cfg = CascadeConfig(matcher="sdm:PSDMMAL", matcher_options=SDM, folds=3, fold_by=by,
                        train=TrainConfig(epochs=1, batch_size=64))
    paths = train_fold_matchers(tiny_prepared, cfg, tmp_path, log=None)
    train = read_split(tiny_prepared, "train")
    rows = keys(train)
    folds = row_folds(train, 3, cfg.seed, by)
    assert len(paths) == len(seen) == 3 and set(folds.tolist()) == {0, 1, 2}
    for f in range(3):
        own = {k for k, g in zip(rows, folds) if g == f}
        assert seen[f].isdisjoint(own), f"the fold-{f} matcher saw its own rows"
        assert seen[f] == set(rows) - own
    # each fold's item-CF table (the co-visitation scores) is fitted on the same rows as its matcher
    from seqrec.models.itemcf import ItemCF
    from seqrec.train.cascade import COVISIT_FILE

    items = read_split(tiny_prepared, "train")[F.seq_col(F.ITEM_ID)].to_pylist()
    for f, path in enumerate(paths):
        cf = ItemCF.from_state(np.load(f"{path}/{COVISIT_FILE}"))
        others = np.concatenate([s for s, g in zip(items, folds) if g != f]).astype(np.int64)
        np.testing.assert_array_equal(cf.item_counts, np.bincount(others[others >= F.FIRST_CODE], minlength=len(cf.item_counts)))
    if by == "session":  # a user's sessions are spread over the folds: a fold matcher knows most users
        users = np.array(train[F.USER_RAW].to_pylist())
        assert len({u for u, _ in seen[0]} & set(users[folds == 0])) > 0
    # the stage: a row is retrieved by its own fold's matcher
    spec = _spec(tiny_prepared)
    stage = CandidateStage.__new__(CandidateStage)
    stage.matchers = [_Constant(spec, 1.0 + f) for f in range(3)]
    stage.cfs = [None] * 3
    stage.spec, stage.k, stage.seed, stage.rows, stage.depth, stage.by = spec, 3, cfg.seed, False, 300, by
    out = stage(train.slice(0, 60))
    for row, f in zip(out.to_pylist(), row_folds(out, 3, cfg.seed, by)):
        assert set(row[F.TOP_SCORE][1:]) <= {1.0 + f}, (row[F.TOP_SCORE], f)
    assert out.num_rows == 60


def _cascade_batch(tiny_prepared, k: int = 6):
    """Training rows with hand-made candidates: position t's list is [later items of the session..., others]."""
    spec = _spec(tiny_prepared)
    rows = read_split(tiny_prepared, "train")
    rows = rows.filter(pa.compute.greater_equal(rows[F.SEQ_LEN], 4)).slice(0, 8)
    cand, cand_s, cand_r, tgt_s, tgt_r, top, cand_c, tgt_c = [], [], [], [], [], [], [], []
    for row in rows.to_pylist():
        items = row[F.seq_col(F.ITEM_ID)]
        per = [[]]
        for t in range(1, len(items)):
            later = items[t + 1:]
            fill = [c for c in range(2, 2 + 4 * k) if c not in items][: k]
            per.append((later + [items[t]] + fill)[:k])
        n = len(items) - 1
        cand.append(per)
        cand_s.append([[]] + [[float(-j) for j in range(k)] for _ in range(n)])
        cand_r.append([[]] + [list(range(k)) for _ in range(n)])
        tgt_s.append([float("nan")] + [-0.5] * n)
        tgt_r.append([-1] + [1] * n)
        top.append([float("nan")] + [0.0] * n)
        cand_c.append([[]] + [[0.1 * j for j in range(k)] for _ in range(n)])  # co-visitation: 0.1 × list position
        tgt_c.append([float("nan")] + [2.5] * n)
    columns = {F.CAND_ITEM: (cand, pa.list_(pa.list_(pa.int32()))), F.CAND_SCORE: (cand_s, pa.list_(pa.list_(pa.float32()))),
               F.CAND_RANK: (cand_r, pa.list_(pa.list_(pa.int32()))), F.TARGET_SCORE: (tgt_s, pa.list_(pa.float32())),
               F.TARGET_RANK: (tgt_r, pa.list_(pa.int32())), F.TOP_SCORE: (top, pa.list_(pa.float32())),
               F.CAND_COVISIT: (cand_c, pa.list_(pa.list_(pa.float32()))), F.TARGET_COVISIT: (tgt_c, pa.list_(pa.float32()))}
    table = rows
    for name, (values, kind) in columns.items():
        table = table.append_column(name, pa.array(values, kind))
    return table, spec


def test_later_items_of_the_session_are_never_negatives(tiny_prepared):
    table, spec = _cascade_batch(tiny_prepared)
    model, _, _ = build("bst", tiny_prepared, {**BST, "cascade_negatives": 6, "negatives": 0}, seed=0)
    batch = collate(table, spec)
    torch.manual_seed(0)
    inp = model.training_input(batch)
    # which row and position each sample is: the same order as training_input's nonzero()
    t = batch.items.shape[1]
    pos = torch.arange(t)[None, :]
    ok = (pos < batch.seq_len[:, None]) & (batch.items >= F.FIRST_CODE) & (pos >= 1) & (batch.cand_item[:, :t, 0] >= 2)
    rows, p = ok.nonzero(as_tuple=True)
    assert inp.candidates.shape[0] == len(rows) > 0
    drawn = 0
    for i, (r, q) in enumerate(zip(rows.tolist(), p.tolist())):
        later = set(batch.items[r, q + 1: int(batch.seq_len[r])].tolist())
        negs = [c for c, y in zip(inp.candidates[i].tolist(), inp.labels[i].tolist()) if y == 0 and c != F.PAD]
        assert inp.candidates[i, 0] == batch.items[r, q] and inp.labels[i, 0] == 1
        assert not (set(negs) & later), f"a later item of the session is a negative at row {r} position {q}"
        assert batch.items[r, q].item() not in negs
        drawn += len(negs)
    assert drawn > 0
    # the matcher's view of the positive is its stored score and rank; of a drawn negative, its place in the list
    assert torch.all(inp.match_rank[:, 0] == 1) and torch.allclose(inp.match_gap[:, 0], torch.tensor(-0.5))
    real = inp.candidates[:, 1:] != F.PAD
    assert torch.allclose(inp.match_gap[:, 1:][real], -inp.match_rank[:, 1:][real].float())
    # ... and their co-visitation scores are the stored, cross-fitted ones (not the model's own table)
    assert torch.allclose(inp.covisit[:, 0], torch.tensor(2.5))
    assert torch.allclose(inp.covisit[:, 1:][real], 0.1 * inp.match_rank[:, 1:][real].float())


def test_the_matcher_features_are_the_same_in_training_offline_and_serving(tiny_prepared, tiny_artifacts, tmp_path):
    """One definition (match_inputs): the serving stage and offline evaluation give a match-features ranker the
    same inputs and so the same logits; training gives a drawn candidate its list position and score gap."""
    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.evaluate import matcher_candidates, rank_candidates
    from seqrec.export import export_checkpoint
    from seqrec.serving import LoadedModel, RowBuilder, encode, load_catalogue, load_model, rank, retrieve

    table, spec = _cascade_batch(tiny_prepared)
    ranker, _, manifest = build("bst", tiny_prepared, BST, seed=0)
    loop_cfg = TrainConfig(epochs=1, batch_size=4, patience=None)
    from seqrec.train.loop import fit

    fit(ranker, table, spec, loop_cfg, log=None)
    ck = save_checkpoint(tmp_path / "ck", ranker, epoch=1, step=0, dataset=dataset_identity(manifest, tiny_prepared))
    export_checkpoint(ck, tmp_path / "export", tiny_prepared)
    served_ranker = load_model(tmp_path / "export", "ranker")
    builder = RowBuilder(tiny_prepared)
    test = read_split(tiny_prepared, "test").slice(0, 5)
    requests = [builder.request_from_row(r) for r in test.to_pylist()]
    matcher = load_model(tiny_artifacts["sdm"], "matcher")
    enc = encode(builder, matcher, requests)
    cands = retrieve(load_catalogue(tiny_artifacts["sdm"]), enc.vecs, 40)
    served = rank(served_ranker, spec, enc.rows, cands.codes, cands.scores).logits
    codes, scores = matcher_candidates(matcher.model, enc.rows, spec, 40)
    np.testing.assert_array_equal(codes, cands.codes)
    offline = rank_candidates(served_ranker.model, enc.rows, spec, codes, scores)
    np.testing.assert_allclose(served, offline, rtol=1e-5, atol=1e-5)
    # the co-visitation feature at serving is item-CF's score of the request's last behaviours (the reference)
    from seqrec.evaluate import fit_item_cf, item_cf_inputs
    from seqrec.models.ranking import COVISIT

    inp = served_ranker.model.inference_input(collate(enc.rows, spec), torch.from_numpy(np.maximum(codes, 0)),
                                              match=torch.from_numpy(scores))
    cf = fit_item_cf(read_split(tiny_prepared, "train"), spec, **COVISIT.to_dict())
    ref = np.take_along_axis(cf.scores(*item_cf_inputs(enc.rows)), np.maximum(codes, 0), 1)
    np.testing.assert_allclose(inp.covisit.numpy(), np.where(codes >= F.FIRST_CODE, ref, 0.0), rtol=1e-5, atol=1e-6)
    assert float(inp.covisit.max()) > 0
    rank_, gap = match_inputs(torch.from_numpy(scores))
    assert rank_[0].tolist() == list(range(40)) and float(gap[0, 0]) == 0.0 and bool((gap <= 0).all())
    # a match-features ranker refuses candidates without their matcher scores
    with pytest.raises(ValueError, match="reads the matcher's rank and score"):
        served_ranker.model.score(collate(enc.rows, spec), torch.from_numpy(np.maximum(codes, 0)))
    assert isinstance(served_ranker, LoadedModel)


def test_generate_on_ray_data_equals_this_process(ray_cluster, tiny_prepared, tmp_path):
    from seqrec.train.cascade import generate, load_cascade

    cfg = CascadeConfig(matcher="sdm:PSDMMAL", matcher_options=SDM, folds=2, candidates=8, depth=50,
                        train=TrainConfig(epochs=1, batch_size=64))
    local = generate(tiny_prepared, tmp_path / "local", cfg, engine="local", log=None)
    on_ray = generate(tiny_prepared, tmp_path / "ray", cfg, engine="ray", log=None)
    assert local["positions"] == on_ray["positions"] > 0 and local["rows"] == on_ray["rows"]
    key = [F.USER_RAW, F.SESSION_START]
    a = read_split(tmp_path / "local", "train").sort_by([(k, "ascending") for k in key])
    b = read_split(tmp_path / "ray", "train").sort_by([(k, "ascending") for k in key])
    assert a[F.CAND_ITEM].to_pylist() == b[F.CAND_ITEM].to_pylist()
    assert a[F.TARGET_RANK].to_pylist() == b[F.TARGET_RANK].to_pylist()
    info = load_cascade(tmp_path / "local", load_manifest(tiny_prepared))
    assert info["config"]["folds"] == 2 and len(info["matchers"]) == 2 and info["content_hash"]
    with pytest.raises(FileExistsError, match="already holds cascade data"):
        generate(tiny_prepared, tmp_path / "local", cfg, engine="local", log=None)


def test_the_serving_guard_serves_the_matcher_order_when_the_ranker_lost(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from seqrec.serving import ranker_verdict

    run = tmp_path / "exp"
    export = run / "train" / "bst-seed0" / "export"
    export.mkdir(parents=True)

    def write(diff_hit: float, diff_ndcg: float) -> None:
        gains = {"Hit@10": {"ratio": 1 + diff_hit, "diff": diff_hit, "diff_std": 0.0},
                 "NDCG@10": {"ratio": 1 + diff_ndcg, "diff": diff_ndcg, "diff_std": 0.0}}
        (run / "results.json").write_text(json.dumps({
            "runs": [{"label": "bst", "run_dir": str(export.parent), "seed": 0}],
            "two_stage": {"matcher": "PSDMMAL", "gains": {"PSDMMAL + bst": gains}}}))  # as run_experiment writes it

    write(-0.02, 0.01)  # lowered Hit@10
    v = ranker_verdict(run, export)
    assert v["use"] is False and "lowered ['Hit@10']" in v["why"] and "PSDMMAL" in v["why"]
    monkeypatch.chdir(tmp_path)  # `seqrec serve --run exp`: relative paths, the results hold absolute ones
    assert ranker_verdict(Path("exp"), Path("exp/train/bst-seed0/export"))["use"] is False
    write(0.02, -0.01)  # NDCG alone is not a Hit/Recall metric: the ranker stays
    assert ranker_verdict(run, export)["use"] is True
    assert ranker_verdict(tmp_path / "none", export)["use"] is True  # nothing to judge by: say so, keep it
    assert "no two-stage result" in ranker_verdict(tmp_path / "none", export)["why"]


def test_seqrec_data_candidates_writes_the_cascade_data(tiny_prepared, tmp_path, capsys):
    from seqrec.cli import main

    out = tmp_path / "cands"
    rc = main(["data", "candidates", "--data", str(tiny_prepared), "--out", str(out), "--engine", "local", "--epochs", "1",
               "--candidates", "4", "--depth", "40", "--option", "hidden=8", "--option", "heads=2"])
    assert rc == 0 and "positions' candidates" in capsys.readouterr().out
    from seqrec.train.cascade import load_cascade

    meta = load_cascade(out, load_manifest(tiny_prepared))
    assert meta["config"]["candidates"] == 4 and meta["config"]["depth"] == 40 and meta["splits"] == ["train", "val"]
    rows = read_split(out, "train")
    assert max(len(c) for lists in rows[F.CAND_ITEM].to_pylist() for c in lists) == 4
    assert main(["data", "candidates", "--data", str(tiny_prepared), "--out", str(out), "--engine", "local"]) == 2
    assert "already holds cascade data" in capsys.readouterr().err
    from seqrec.config import TrainJob
    from seqrec.train.distributed import run_training

    job = TrainJob.from_dict({"model": "bst", "data": str(tiny_prepared), "candidates": str(out), "storage": str(tmp_path),
                              "options": {"positives": "window"}})
    with pytest.raises(ValueError, match="positives=window needs cascade data that stores the label window"):
        run_training(job, log=None)  # data made with positives=next: refused before any worker starts


def test_draw_orders_are_uniform_orders_without_repeats():
    """Each order is ``m`` distinct slots of the list, and over the table every slot is as likely at every place
    (a uniform draw without replacement), the same table in every process."""
    from seqrec.train.cascade import DRAW_ORDERS, draw_orders

    o = draw_orders(300, 36).numpy()
    assert o.shape == (DRAW_ORDERS, 36) and o.min() >= 0 and o.max() < 300
    assert all(len(set(row)) == 36 for row in o[:500])
    per_slot = np.bincount(o.ravel(), minlength=300)  # expected 8192 * 36 / 300 = 983 each, sd ~ 31
    assert abs(per_slot / per_slot.mean() - 1).max() < 0.15
    first = np.bincount(o[:, 0], minlength=300)  # expected 27 each
    assert (first > 0).mean() > 0.99
    draw_orders.cache_clear()
    np.testing.assert_array_equal(draw_orders(300, 36).numpy(), o)


def test_window_positives_are_stored_as_the_list_holds_them(tiny_prepared):
    """``window=True`` (``CascadeConfig(positives="window")``): after the same draws as without it, each position's
    list gets every item of its label window (the rest of the session) that is in the matcher's top ``depth``, once,
    in session order, never the item at t, with its score and rank of the list. The reference: one encode per
    prefix and a scan of the later items."""
    model, spec, _ = build("sdm:PSDMMAL", tiny_prepared, SDM, seed=0)
    model.eval()
    rows = read_split(tiny_prepared, "train").slice(0, 12)
    k, depth = 6, 200
    plain = position_candidates(model, rows, spec, k, depth)[F.CAND_ITEM].to_pylist()
    got = position_candidates(model, rows, spec, k, depth, window=True)
    col = {name: got[name].to_pylist() for name in got}
    items = model.item_embeddings().detach()
    stored = 0
    for r, row in enumerate(rows.to_pylist()):
        session = row[F.seq_col(F.ITEM_ID)]
        for t in range(1, row[F.SEQ_LEN]):
            scores = _prefix_scores(model, row, t, rows.schema, spec, items)
            cand = col[F.CAND_ITEM][r][t]
            if int((scores > scores[session[t]]).sum()) >= depth:
                assert cand == []
                continue
            ref, seen = [], {session[t]}
            for item in session[t + 1:]:  # the label window, slowly
                if item in seen or item < F.FIRST_CODE:
                    continue
                seen.add(item)
                rank = int((scores > scores[item]).sum())
                if rank < depth:
                    ref.append((item, rank, float(scores[item])))
            drawn = plain[r][t]
            assert cand[: len(drawn)] == drawn  # the same draws, then the window's items
            assert cand[len(drawn):] == [i for i, _, _ in ref]
            assert col[F.CAND_RANK][r][t][len(drawn):] == [j for _, j, _ in ref]
            np.testing.assert_allclose(col[F.CAND_SCORE][r][t][len(drawn):], [s for _, _, s in ref], rtol=1e-4, atol=1e-5)
            stored += len(ref)
    assert stored > 10


def _samples(batch):
    """(rows, positions) of a cascade batch's training samples, in training_input's order."""
    t = batch.items.shape[1]
    pos = torch.arange(t)[None, :]
    ok = (pos < batch.seq_len[:, None]) & (batch.items >= F.FIRST_CODE) & (pos >= 1) & (batch.cand_item[:, :t, 0] >= 2)
    return ok.nonzero(as_tuple=True)


@pytest.mark.parametrize("loss", ["bce", "listwise"])
def test_window_positives_are_exactly_the_later_items_of_the_list(tiny_prepared, loss):
    """positives="window": a position's positives are the next item and every stored candidate the user interacts
    with later in the session (a slow reference over the hand-made lists: later items first, then the target, then
    others), labelled 1; no later item is ever a negative, nor is a popularity negative that is one."""
    table, spec = _cascade_batch(tiny_prepared)
    opts = {**BST, "loss": loss, "cascade_negatives": 6, "negatives": 40, "positives": "window", "window_positives": 6}
    model, _, _ = build("bst", tiny_prepared, opts, seed=0)
    batch = collate(table, spec)
    torch.manual_seed(0)
    inp = model.training_input(batch)
    rows, p = _samples(batch)
    assert inp.candidates.shape[0] == len(rows) > 0
    extra = 0
    for i, (r, q) in enumerate(zip(rows.tolist(), p.tolist())):
        later = set(batch.items[r, q + 1: int(batch.seq_len[r])].tolist())
        target = int(batch.items[r, q])
        stored = [c for c in batch.cand_item[r, q].tolist() if c >= F.FIRST_CODE]
        ref = {target} | {c for c in stored if c in later and c != target}  # the slow reference
        cands, labels = inp.candidates[i].tolist(), inp.labels[i].tolist()
        pos = [c for c, y in zip(cands, labels) if y == 1 and c != F.PAD]
        negs = [c for c, y in zip(cands, labels) if y == 0 and c != F.PAD]
        assert cands[0] == target and labels[0] == 1
        assert sorted(pos) == sorted(ref), (r, q, pos, ref)
        assert not set(negs) & (later | {target}), f"a later item of the session is a negative at row {r} position {q}"
        extra += len(pos) - 1
        # the window positives carry their stored matcher rank and co-visitation score (the hand-made 0.1 × slot)
        for j, (c, y) in enumerate(zip(cands, labels)):
            if y == 1 and j > 0:
                slot = batch.cand_item[r, q].tolist().index(c)
                assert int(inp.match_rank[i, j]) == slot
                assert float(inp.covisit[i, j]) == pytest.approx(0.1 * slot, abs=1e-6)
    assert extra > 0
    # the loss: each positive's own softmax against the position's negatives (listwise), or BCE with these labels
    model.eval()  # no dropout: the same logits twice
    torch.manual_seed(1)
    out = model(batch)
    torch.manual_seed(1)
    inp = model.training_input(batch)
    z = model.logits(inp).float()
    terms = []
    for i in range(z.shape[0]):
        real = inp.candidates[i] != F.PAD
        ys = inp.labels[i][real].tolist()
        zi = z[i][real]
        negs = zi[[y == 0 for y in ys]]
        if loss == "listwise":
            per = [-(zi[j] - torch.logsumexp(torch.cat([zi[j:j + 1], negs]), 0)) for j, y in enumerate(ys) if y == 1]
            terms.append(torch.stack(per).mean())
        else:
            terms.extend(torch.nn.functional.binary_cross_entropy_with_logits(zi, torch.tensor(ys), reduction="none"))
    assert float(out.loss.detach()) == pytest.approx(float(torch.stack(terms).detach().mean()), rel=1e-5, abs=1e-6)


def test_window_positives_are_capped_and_next_keeps_one_positive(tiny_prepared):
    table, spec = _cascade_batch(tiny_prepared)
    batch = collate(table, spec)
    rows, p = _samples(batch)
    capped, _, _ = build("bst", tiny_prepared, {**BST, "positives": "window", "window_positives": 1}, seed=0)
    nxt, _, _ = build("bst", tiny_prepared, {**BST, "positives": "next"}, seed=0)
    a, b = capped.training_input(batch), nxt.training_input(batch)
    assert int(a.labels.sum(1).max()) == 2 and torch.all(b.labels.sum(1) == 1) and torch.all(b.labels[:, 0] == 1)
    for i, (r, q) in enumerate(zip(rows.tolist(), p.tolist())):
        if a.labels[i, 1] == 1:
            assert int(a.candidates[i, 1]) in set(batch.items[r, q + 1: int(batch.seq_len[r])].tolist())
    with pytest.raises(ValueError, match="positives"):
        build("bst", tiny_prepared, {**BST, "positives": "later"}, seed=0)
    with pytest.raises(ValueError, match="positives"):
        CascadeConfig(positives="all")
