"""seqrec.inference: the model-over-rows helpers that offline evaluation and serving share."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_inference_sits_below_evaluation_and_serving():
    """Layering: importing seqrec.inference loads neither evaluation, serving, the Serve app nor Ray."""
    code = ("import sys, seqrec.inference; "
            "print(sorted(m for m in sys.modules if m in ('seqrec.evaluate', 'seqrec.serving', 'seqrec.experiment', 'ray') "
            "or m.startswith('serve_apps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_evaluation_and_serving_call_the_same_functions():
    import seqrec.evaluate as evaluate
    import seqrec.inference as inference

    for name in ("encode_table", "score_table", "chunk_candidates", "seen_items"):
        assert getattr(evaluate, name) is getattr(inference, name), name


RANKERS = {  # tiny configurations of every ranker and every sequence path of BST
    "bst": ("bst", {}),
    "bst b=2": ("bst", {"blocks": 2}),
    "bst output=all": ("bst", {"output": "all"}),
    "bst sinusoid": ("bst", {"positions": "sinusoid"}),
    "bst match+covisit+seen": ("bst", {"match_features": True, "covisit": True, "seen": True}),
    "din": ("din", {}),
    "wdl": ("wdl", {}),
    "wdl_seq": ("wdl_seq", {}),
    "wdl match": ("wdl", {"match_features": True}),
}


def _ranker_input(label: str):
    """A tiny ranker and a RankInput unlike the one its graph is traced with: 3 rows (one with 2 behaviours), 17
    candidates, behaviours 1, 2, 4, ..., 2^k seconds before the last (time buckets' edges), and for a ranker that
    reads them the matcher's scores and co-visitation scores."""
    import dataclasses

    import numpy as np
    import torch
    from batchgen import item_side_table, random_batch, tiny_spec, with_history

    from seqrec.models import build_model
    from seqrec.models.itemcf import ItemCF
    from seqrec.models.ranking import COVISIT, match_inputs

    name, opts = RANKERS[label]
    spec = tiny_spec(n_items=400)
    torch.manual_seed(0)
    heads = {"heads": 2} if name == "bst" else {}
    model = build_model(name, spec, id_dim=16, side_dim=8, mlp="64-32", dropout=0.0, **heads, **opts).eval()
    model.set_item_table(*item_side_table(spec))
    batch = with_history(random_batch(spec, b=3, t=6, l=4, lengths=[6, 4, 2]), [5, 2, 0], h=6)
    batch.hist_time[:] = batch.seq_time[:, :1] - torch.pow(2, torch.arange(6, 0, -1))  # gaps at powers of two
    if model.config.covisit:  # an item-CF table from sessions that repeat the batch's behaviours
        sessions = np.concatenate([batch.hist_item, batch.items], 1).repeat(20, 0)
        sessions = np.where(sessions >= 2, sessions, np.random.default_rng(0).integers(2, spec.n_items, sessions.shape))
        model.set_covisitation(ItemCF(COVISIT).fit(sessions, np.full(len(sessions), sessions.shape[1]), spec.n_items))
    cands = torch.randint(2, spec.n_items, (3, 17), generator=torch.Generator().manual_seed(1))
    cands[:, 0] = batch.items[:, 0]  # a candidate the user has seen
    scores = torch.sort(torch.randn(3, 17), dim=1, descending=True).values
    inp = model.inference_input(batch, cands)
    assert not model.config.covisit or bool((inp.covisit > 0).any())
    assert not model.config.seen or bool((inp.seen[:, 0] == 1).all() and (inp.seen[:, 1:] == 0).any())
    if model.config.match_features:
        inp = dataclasses.replace(inp, **dict(zip(("match_rank", "match_gap"), match_inputs(scores))))
    return model, batch, cands, inp


@pytest.mark.parametrize("label", list(RANKERS))
def test_the_exported_ranker_graph_computes_the_pytorch_logits(label):
    """OnnxLogits(int8=False): the traced graph in ONNX Runtime gives PyTorch's logits on rows and candidate counts
    other than the traced ones (the cross features' hash, time buckets at powers of two and the attention included)."""
    import torch

    from seqrec.inference import OnnxLogits

    model, _, _, inp = _ranker_input(label)
    graph = OnnxLogits(model, int8=False)
    with torch.inference_mode():
        ref = model.logits(inp)
        got = graph(inp)
    assert got.shape == ref.shape == (3, 17)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("label", list(RANKERS))
def test_smoothing_keeps_every_rankers_logits_and_int8_follows_them(label):
    """The first layer's SmoothQuant form (input / s, weight · s) computes the same logits as the model in fp32, for
    every ranker, with positive scales of mean 1 from the synthetic calibration input; the int8 graph then follows
    fp32 (its error is int8's, not a broken export), and the original model is untouched."""
    import torch

    from seqrec.inference import OnnxLogits, _smoothed, calibration_input, smoothing_scales

    model, batch, cands, inp = _ranker_input(label)
    calib = calibration_input(model, rows=2, candidates=40)
    assert calib.candidates.shape == (2, 40) and bool((calib.candidates >= 2).all())
    scales = smoothing_scales(model)
    assert scales.shape == (model.head.first_candidate.in_features,)
    assert bool((scales > 0).all()) and abs(float(scales.mean()) - 1) < 1e-5
    with torch.inference_mode():
        ref = model.logits(inp)
        torch.testing.assert_close(_smoothed(model, scales).logits(inp), ref, rtol=1e-4, atol=1e-5)
        assert isinstance(model.head.first_candidate, torch.nn.Linear)
        got = OnnxLogits(model, first_layer=True)(inp)  # the first layer in int8 too, smoothed
    assert (got - ref).abs().mean() < 0.05 * ref.std()
    assert torch.corrcoef(torch.stack([ref.flatten(), got.flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("label", ["bst", "bst match+covisit+seen", "din"])
def test_the_context_half_as_int8_bias_gives_the_same_logits(label, monkeypatch):
    """_context_as_bias replaces the first layer's int8 chain and the context add by one DynamicQuantizeMatMul with
    the context half as its bias: the graph then has no separate add, and its logits equal the unfused graph's."""
    import onnx
    import torch

    import seqrec.inference as inference

    monkeypatch.setenv("SEQREC_ONNX_CACHE", "off")  # the unfused graph below comes from patched code, not new source
    model, _, _, inp = _ranker_input(label)
    fused = inference.OnnxLogits(model)
    ops = {n.name: n.op_type for n in onnx.load_from_string(fused.graph).graph.node}
    assert ops["/head/first_candidate/MatMul_quant"] == "DynamicQuantizeMatMul" and "/head/Add" not in ops
    monkeypatch.setattr(inference, "_context_as_bias", lambda m: m)
    plain = inference.OnnxLogits(model)
    assert "/head/Add" in {n.name for n in onnx.load_from_string(plain.graph).graph.node}
    with torch.inference_mode():
        torch.testing.assert_close(fused(inp), plain(inp), rtol=1e-5, atol=1e-6)


def test_int8_ranker_tracks_fp32_and_leaves_the_fp32_model_alone():
    """with_precision("int8") gives a copy that scores in ONNX Runtime with int8 weights: its logits follow fp32's
    closely (same top candidates), a user's scores do not depend on the users scored with it, the original keeps
    its weights and scores in PyTorch, fp32 is the model itself, and the copy survives pickling (Ray)."""
    import pickle

    import torch
    from batchgen import item_side_table, random_batch, tiny_spec, with_history

    from seqrec.inference import with_precision
    from seqrec.models import build_model

    spec = tiny_spec(n_items=400)
    torch.manual_seed(0)
    model = build_model("bst", spec, id_dim=16, side_dim=8, mlp="256-128-64", heads=2, dropout=0.0).eval()
    model.set_item_table(*item_side_table(spec))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = with_history(random_batch(spec, b=3, t=6, l=4), [5, 2, 0], h=6)
    cands = torch.randint(2, spec.n_items, (3, 60), generator=torch.Generator().manual_seed(1))
    q = with_precision(model, "int8")
    assert with_precision(model, "fp32") is model and q is not model
    assert model.runtime is None and q.runtime is not None
    # the MLP's hidden layers, 256 → 128 and 128 → 64, found by their exported node names; the first layer fp32
    assert [n.split("/")[2] for n in q.runtime.quantized] == ["rest", "rest"] and q.runtime.smoothing is None
    from seqrec.inference import OnnxLogits

    first = OnnxLogits(model, first_layer=True)  # the first layer's candidate half too, smoothed: bench_rank's other row
    assert [n.split("/")[2] for n in first.quantized] == ["first_candidate", "rest", "rest"] and first.smoothing is not None
    with torch.inference_mode():
        ref, got = model.score(batch, cands), q.score(batch, cands)
    assert not torch.equal(ref, got)  # int8 did run
    assert torch.corrcoef(torch.stack([ref.flatten(), got.flatten()]))[0, 1] > 0.99
    assert (ref - got).abs().mean() < 0.05 * ref.std()
    top_ref, top_got = ref.topk(10).indices, got.topk(10).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_ref, top_got)) / top_ref.numel()
    assert overlap >= 0.8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.inference_mode():
        alone = torch.cat([q.score(batch.select([i]), cands[i:i + 1]) for i in range(3)])
        again = pickle.loads(pickle.dumps(q)).score(batch, cands)
        assert torch.equal(model.score(batch, cands), ref)
    assert torch.equal(alone, got)
    assert torch.equal(again, got)


def test_precision_choices_and_refusals_name_the_problem():
    import pytest
    from batchgen import tiny_spec

    from seqrec.inference import resolve_precision, with_precision
    from seqrec.models import build_model

    assert resolve_precision("auto", "cpu") == "int8" and resolve_precision("auto", "cuda") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision='fp16'; choose one of"):
        resolve_precision("fp16")
    with pytest.raises(ValueError, match="applies to rankers"):
        with_precision(build_model("sdm:PSDMMAL", tiny_spec(), hidden=8, heads=2), "int8")
    with pytest.raises(ValueError, match="CPU-only"):
        with_precision(build_model("bst", tiny_spec(), id_dim=8, side_dim=4, mlp="16-8", heads=2), "int8", device="cuda")


def test_a_served_ranker_records_its_precision(tiny_artifacts):
    from seqrec.serving import load_model

    assert load_model(tiny_artifacts["bst"], "ranker").version["precision"] == "fp32"
    assert load_model(tiny_artifacts["bst"], "ranker", precision="auto").version["precision"] == "int8"
    assert load_model(tiny_artifacts["sdm"], "matcher").version["precision"] == "fp32"


def test_exported_graphs_are_kept_by_content_and_reused(tmp_path, monkeypatch):
    """_cached_graph: a second load of the same model reads the kept graph (the exporter is not called, the outputs
    are the same); another parameter value, a corrupted file or SEQREC_ONNX_CACHE=off export again; the least
    recently used graphs beyond GRAPH_CACHE_KEEP go; an unwritable cache still gives the graph."""
    import torch
    from batchgen import item_side_table, random_batch, tiny_spec, with_history

    import seqrec.inference as inference
    from seqrec.models import build_model

    spec = tiny_spec(n_items=400)
    torch.manual_seed(0)
    sdm = build_model("sdm:PSDMMAL", spec, hidden=16, id_dim=8, side_dim=4, profile_dim=4, heads=4).eval()
    bst = build_model("bst", spec, id_dim=16, side_dim=8, mlp="64-32", heads=2, dropout=0.0).eval()
    bst.set_item_table(*item_side_table(spec))
    batch = with_history(random_batch(spec, b=3, t=6, l=4), [5, 2, 0], h=6)
    cands = torch.randint(2, spec.n_items, (3, 20), generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("SEQREC_ONNX_CACHE", str(tmp_path / "cache"))
    exports = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (exports.append(1), real(*a, **k))[1])

    vectors, logits = inference.OnnxUserVectors(sdm), inference.OnnxLogits(bst)
    assert len(exports) == 2 and len(list((tmp_path / "cache").glob("*.onnx"))) == 2
    again_v, again_l = inference.OnnxUserVectors(sdm), inference.OnnxLogits(bst)
    assert len(exports) == 2  # both read from the cache
    assert again_v.graph == vectors.graph and again_l.graph == logits.graph
    assert again_l.quantized == logits.quantized and torch.equal(again_l.smoothing, logits.smoothing)
    with torch.inference_mode():
        torch.testing.assert_close(again_v(batch), vectors(batch), atol=0, rtol=0)
        inp = bst.inference_input(batch, cands)
        assert torch.equal(again_l(inp), logits(inp))

    with torch.no_grad():
        sdm.items.tables["item_id"].weight[5] += 1.0  # another model: another key
    changed = inference.OnnxUserVectors(sdm)
    assert len(exports) == 3 and changed.graph != vectors.graph
    for f in (tmp_path / "cache").glob("*.onnx"):  # a truncated file is not trusted
        f.write_bytes(f.read_bytes()[:100])
    inference.OnnxUserVectors(sdm)
    assert len(exports) == 4
    monkeypatch.setattr(inference, "GRAPH_CACHE_KEEP", 1)
    inference.OnnxLogits(bst, first_layer=False)  # a new key: written, then all but the newest go
    assert len(exports) == 5 and len(list((tmp_path / "cache").glob("*.onnx"))) == 1
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    monkeypatch.setenv("SEQREC_ONNX_CACHE", "off")
    inference.OnnxLogits(bst, first_layer=False)
    assert len(exports) == 6 and inference.graph_cache_dir() is None
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("SEQREC_ONNX_CACHE", str(tmp_path / "file" / "cache"))  # cannot be created: warn, still build
    assert inference.OnnxUserVectors(sdm).graph and len(exports) == 7
