"""seqrec.inference: the model-over-rows helpers that offline evaluation and serving share."""

from __future__ import annotations

import subprocess
import sys


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


def test_int8_ranker_tracks_fp32_and_leaves_the_fp32_model_alone():
    """with_precision("int8") quantizes only the MLP's hidden layers of a copy: its logits follow fp32's closely
    (same top candidates), the original keeps its fp32 weights, and fp32 is the model itself."""
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
    kinds = {type(m).__module__ for m in q.head.rest.modules()}
    assert any("quantized" in k for k in kinds) and not any("quantized" in type(m).__module__ for m in q.blocks.modules())
    with torch.inference_mode():
        ref, got = model.score(batch, cands), q.score(batch, cands)
    assert torch.corrcoef(torch.stack([ref.flatten(), got.flatten()]))[0, 1] > 0.99
    assert (ref - got).abs().mean() < 0.05 * ref.std()
    top_ref, top_got = ref.topk(10).indices, got.topk(10).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_ref, top_got)) / top_ref.numel()
    assert overlap >= 0.8
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.inference_mode():  # a user's int8 scores do not depend on the other users scored with it
        alone = torch.cat([q.score(batch.select([i]), cands[i:i + 1]) for i in range(3)])
    assert torch.equal(alone, got)


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
