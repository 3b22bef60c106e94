"""Collate, offline evaluation and the `seqrec evaluate` runner on a small prepared dataset."""

from __future__ import annotations

import json

import pytest
import torch

from seqrec import features as F
from seqrec.batch import collate
from seqrec.cli import main
from seqrec.config import ExperimentSpec, TrainConfig
from seqrec.data.loaders import open_source
from seqrec.data.prepare import load_manifest, prepare, read_split, resolve_config
from seqrec.evaluate import evaluate_matcher, item_cf_inputs, retrieve, seen_items
from seqrec.experiment import expand_models, parse_model, run_experiment
from seqrec.features import FeatureSpec
from seqrec.models import build_model
from seqrec.train import fit

TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2}


def _spec(d):
    return FeatureSpec.from_dict(load_manifest(d)["feature_spec"])


def test_collate_matches_rows(tiny_prepared):
    spec = _spec(tiny_prepared)
    table = read_split(tiny_prepared, "train").slice(7, 9)  # a slice: offsets do not start at 0
    rows = table.to_pylist()
    b = collate(table, spec)
    assert b.size == 9 and b.items.shape[1] == max(r[F.SEQ_LEN] for r in rows)
    for i, r in enumerate(rows):
        n = r[F.SEQ_LEN]
        for f in spec.item_features:
            assert b.seq[f.name][i, :n].tolist() == r[F.seq_col(f.name)]
            assert b.seq[f.name][i, n:].eq(0).all()
            lt = r[F.long_term_col(f.name)]
            assert b.long_term[f.name][i, : len(lt)].tolist() == lt and b.long_term[f.name][i, len(lt):].eq(0).all()
        assert b.seq_time[i, :n].tolist() == r[F.seq_col(F.TIMESTAMP)]
        assert b.hist_item[i, : len(r[F.hist_col(F.ITEM_ID)])].tolist() == r[F.hist_col(F.ITEM_ID)]
        assert {u.name: int(b.user[u.name][i]) for u in spec.user_features} == {u.name: r[u.name] for u in spec.user_features}
    with pytest.raises(ValueError, match=r"missing columns \['seq_len'\]"):
        collate(table.drop_columns([F.SEQ_LEN]), spec)


def test_item_cf_triggers_are_history_then_session(tiny_prepared):
    table = read_split(tiny_prepared, "test").slice(0, 5)
    trig, lengths = item_cf_inputs(table)
    for i, r in enumerate(table.to_pylist()):
        want = r[F.hist_col(F.ITEM_ID)] + r[F.seq_col(F.ITEM_ID)]
        assert trig[i, : lengths[i]].tolist() == want
        assert (trig[i, lengths[i]:] == 0).all()


def test_flat_index_equals_exact_and_exclusion(tiny_prepared):
    spec = _spec(tiny_prepared)
    test = read_split(tiny_prepared, "test")
    torch.manual_seed(0)
    model = build_model("sdm:PSDMMAL", spec, heads=2, **TINY).eval()
    m_exact = evaluate_matcher(model, test, spec, "window", index="exact")
    m_flat = evaluate_matcher(model, test, spec, "window", index="flat")
    assert m_exact == pytest.approx(m_flat, abs=1e-9)
    users = model.encode_users(collate(test, spec)).detach().numpy()
    items = model.item_embeddings().detach().numpy()
    seen = seen_items(test)
    top = retrieve(users, items, 20, "exact", exclude=seen)
    for row, s in zip(top, seen):
        assert not set(row.tolist()) & (set(s.tolist()) - {0})
        assert (row >= 2).all()


def test_training_improves_validation(tiny_prepared):
    spec = _spec(tiny_prepared)
    train, val = read_split(tiny_prepared, "train"), read_split(tiny_prepared, "val")
    torch.manual_seed(0)
    model = build_model("gru4rec", spec, **TINY)
    before = evaluate_matcher(model, val, spec, "window")["Recall@50"]
    res = fit(model, train, spec, TrainConfig(epochs=4, batch_size=64, lr=0.01, patience=None),
              validate=lambda m: evaluate_matcher(m, val, spec, "window"), select="Recall@50", log=None)
    assert len(res.history) == 4 and res.history[0].targets > 0
    assert res.best_metric == max(h.metrics["Recall@50"] for h in res.history)
    assert res.best_metric > before  # learned something over a random model
    # the kept weights are the best epoch's
    assert evaluate_matcher(model, val, spec, "window")["Recall@50"] == pytest.approx(res.best_metric)


def test_run_experiment_writes_tables_and_plots(tiny_prepared, tmp_path):
    entries = expand_models(["item_cf", "gru4rec", "sdm:PSDMMAL@heads=2#sdm h2"])
    cfg = TrainConfig(epochs=2, batch_size=64)
    report = run_experiment(ExperimentSpec(str(tiny_prepared), entries, [0, 1], str(tmp_path), cfg, cfg, model_options=TINY),
                            log=None)
    s = report["summary"]
    assert list(s) == ["item_cf", "gru4rec", "sdm h2"]
    assert s["item_cf"]["HitRate@50"]["n"] == 1 and s["gru4rec"]["HitRate@50"]["n"] == 2
    for label in s:
        for k, v in s[label].items():
            assert 0.0 <= v["mean"] <= 1.0, (label, k)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["protocol"] == "window" and len(saved["runs"]) == 5
    assert saved["runs"][1]["config"]["hidden"] == 8 and saved["runs"][1]["best_epoch"] in (1, 2)
    md = (tmp_path / "results.md").read_text()
    assert "| sdm h2 |" in md and "HitRate@20" in md and "±" in md
    csv_head = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert csv_head.startswith("model,runs,") and "Recall@100_mean" in csv_head
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["sdm_h2_attention.png", "sdm_h2_gate.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 5000 for p in pngs)


def test_leave_one_out_metrics(tmp_path, tiny_prepared):
    src = open_source(str(tiny_prepared.parent / "events"), "synth", None)
    out = tmp_path / "loo"
    prepare(src, out, resolve_config(src, min_item_count=2, split="loo"), engine="local", progress=False)
    cfg = TrainConfig(epochs=1, batch_size=64)
    report = run_experiment(ExperimentSpec(str(out), expand_models(["item_cf", "narm"]), [0], None, cfg, cfg,
                                           model_options=TINY), log=None)
    assert report["protocol"] == "loo"
    assert set(report["summary"]["narm"]) == {f"{m}@{k}" for m in ("Hit", "NDCG") for k in (10, 20, 50)}
    assert "NDCG@20" in report["table"]


def test_cli_evaluate(tiny_prepared, tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tiny_prepared), "--models", "youtube_dnn", "--seeds", "1", "--epochs", "1",
               "--hidden", "8", "--out", str(tmp_path), "--no-plots", "--quiet", "--index", "hnsw"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| youtube_dnn |" in out and (tmp_path / "results.md").exists()
    assert main(["evaluate", "--data", str(tiny_prepared), "--models", "bert4rec", "--out", str(tmp_path)]) == 2
    assert "unknown model 'bert4rec'" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tiny_prepared), "--models", "sdm@hidden=30,heads=4", "--out", str(tmp_path)]) == 2
    assert "hidden=30 must be divisible by heads=4" in capsys.readouterr().err


def test_parse_model_entries():
    e = parse_model("sdm:PSDMMAL@heads=2,fusion=add,attn_scale=false#x")
    assert (e.name, e.options, e.label) == ("sdm:PSDMMAL", {"heads": 2, "fusion": "add", "attn_scale": False}, "x")
    assert parse_model("sdm:PSDMMAL@heads=2").label == "PSDMMAL heads=2"
    with pytest.raises(ValueError, match="must be KEY=VALUE"):
        parse_model("gru4rec@layers")
    with pytest.raises(ValueError, match="unknown ablation 'depth'"):
        expand_models(["gru4rec"], ["depth"])
    labels = [e.label for e in expand_models([], ["heads", "fusion"])]
    assert labels == ["heads=1", "heads=2", "heads=4", "heads=8", "fusion=multiply", "fusion=concat", "fusion=add", "fusion=gated"]


def test_unigram_sampler_gets_item_counts(tiny_prepared):
    cfg = TrainConfig(epochs=1, batch_size=64)
    report = run_experiment(ExperimentSpec(str(tiny_prepared), expand_models(["gru4rec@loss=sampled,sampler=unigram,num_sampled=50"]),
                                           [0], None, cfg, cfg, model_options=TINY), log=None)
    assert report["runs"][0]["history"][0]["targets"] > 0


def test_a_run_records_the_learned_seen_penalty(tiny_prepared):
    """A matcher with ``seen_penalty`` trained by the experiment records what it learned (with the sampled softmax, the
    synthetic data's default); one without records none."""
    cfg = TrainConfig(epochs=1, batch_size=64)
    report = run_experiment(ExperimentSpec(str(tiny_prepared), expand_models(["gru4rec@seen_penalty=true,num_sampled=50", "gru4rec"]),
                                           [0], None, cfg, cfg, model_options=TINY), log=None)
    with_penalty, without = report["runs"]
    assert with_penalty["learned_seen_penalty"] > 0 and with_penalty["learned_seen_penalty"] != pytest.approx(0.6931, abs=1e-6)
    assert "learned_seen_penalty" not in without


def test_without_validation_the_last_epoch_is_kept(tmp_path, tiny_prepared):
    src = open_source(str(tiny_prepared.parent / "events"), "synth", None)
    out = tmp_path / "noval"
    prepare(src, out, resolve_config(src, min_item_count=2, val=False), engine="local", progress=False)
    cfg = TrainConfig(epochs=2, batch_size=64)
    report = run_experiment(ExperimentSpec(str(out), expand_models(["gru4rec"]), [0], None, cfg, cfg, model_options=TINY),
                            log=None)
    assert report["selection"].startswith("last epoch") and report["runs"][0]["best_epoch"] == 2
    with pytest.raises(FileNotFoundError):
        run_experiment(ExperimentSpec(str(tmp_path / "missing"), expand_models(["gru4rec"]), [0], None, TrainConfig(epochs=1)),
                       log=None)
