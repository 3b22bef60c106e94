"""BST and the ranking baselines (WDL, WDL(+Seq), DIN): samples, shapes, invariances, learning."""

from __future__ import annotations

import pytest
import torch
from batchgen import category_sessions, item_side_table, pad_batch, random_batch, tiny_spec, with_history

from seqrec import features as F
from seqrec.metrics import auc
from seqrec.models import RANKERS, build_model, model_from_dict
from seqrec.models.ranking import hash_cross, time_buckets
from seqrec.train.engine import train_step

TINY = dict(mlp=(32, 16), id_dim=8, side_dim=8, other_dim=4, cross_buckets=64, dropout=0.0)
BST_TINY = dict(TINY, pos_dim=8, heads=4)  # d = 8 + 8 + 8 = 24
CONFIGS = {
    "bst": BST_TINY,
    "bst b=2": dict(BST_TINY, blocks=2),
    "bst all": dict(BST_TINY, output="all"),
    "bst sinusoid": dict(BST_TINY, positions="sinusoid"),
    "wdl": TINY,
    "wdl_seq": TINY,
    "din": dict(TINY, attention_hidden=(8,)),
}


def make(label: str, spec=None, **extra):
    spec = spec or tiny_spec()
    torch.manual_seed(0)
    model = build_model(label.split()[0], spec, **{**CONFIGS[label], **extra})
    model.set_item_table(*item_side_table(spec))
    return model.eval()


def batch_with_history(spec, seed=0):
    b = random_batch(spec, b=3, t=7, seed=seed, lengths=[7, 4, 2])
    return with_history(b, [4, 1, 0], h=5)


def reference_samples(batch, window: int):
    """Slow reference: per row and position, the last ``window`` behaviours of history + session before it."""
    out = []
    for r in range(batch.size):
        h = [(int(i), int(t), int(bh)) for i, t, bh in zip(batch.hist_item[r], batch.hist_time[r], batch.hist_behavior[r]) if i != 0]
        n = int(batch.seq_len[r])
        s = [(int(batch.items[r, j]), int(batch.seq_time[r, j]), int(batch.seq_behavior[r, j])) for j in range(n)]
        for p in range(n):
            before = (h + s[:p])[-window:]
            if not before or s[p][0] < F.FIRST_CODE:
                continue
            pad = [(0, 0, 0)] * (window - len(before))
            out.append({"items": [x[0] for x in pad + before], "times": [x[1] for x in pad + before],
                        "last": before[-1][2], "positive": s[p][0], "moment": before[-1][1], "row": r, "p": p})
    return out


@pytest.mark.parametrize("window", [3, 20])
def test_training_samples_equal_the_per_position_reference(window):
    spec = tiny_spec()
    model = make("wdl", spec, window=window, negatives=2)
    batch = batch_with_history(spec)
    inp = model.training_input(batch)
    ref = reference_samples(batch, window)
    assert inp.size == len(ref) == 7 + 4 + 1  # row 2 has no history: its first position has no sample
    assert inp.window.tolist() == [x["items"] for x in ref]
    assert inp.window_time.tolist() == [x["times"] for x in ref]
    assert inp.last_behavior.tolist() == [x["last"] for x in ref]
    assert inp.time.tolist() == [x["moment"] for x in ref]
    assert inp.candidates[:, 0].tolist() == [x["positive"] for x in ref]
    assert inp.user[F.AGE].tolist() == [int(batch.user[F.AGE][x["row"]]) for x in ref]
    assert inp.candidates.shape == (len(ref), 3) and inp.labels[:, 0].eq(1).all() and inp.labels[:, 1:].eq(0).all()
    # negatives never equal the positive (an accidental hit becomes padding)
    assert not (inp.candidates[:, 1:] == inp.candidates[:, :1]).any()
    target = make("wdl", spec, window=window, moment="target").training_input(batch)
    assert target.time.tolist() == [int(batch.seq_time[x["row"], x["p"]]) for x in ref]


@pytest.mark.parametrize("label", list(CONFIGS))
def test_shapes_and_loss(label):
    spec = tiny_spec()
    model = make(label, spec)
    batch = batch_with_history(spec)
    model.train()
    out = model(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.n_targets > 0
    out.loss.backward()
    model.eval()
    cands = torch.randint(2, spec.n_items, (3, 5))
    assert model.score(batch, cands).shape == (3, 5)


@pytest.mark.parametrize("label", list(CONFIGS))
def test_scoring_300_candidates_equals_one_by_one(label):
    spec = tiny_spec(n_items=400)
    model = make(label, spec)
    batch = batch_with_history(spec)
    cands = torch.randint(2, spec.n_items, (3, 300), generator=torch.Generator().manual_seed(3))
    together = model.score(batch, cands)
    alone = torch.cat([model.score(batch, cands[:, j : j + 1]) for j in range(300)], dim=1)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_bst_fast_path_equals_full_sequence():
    spec = tiny_spec()
    model = make("bst", spec)
    batch = batch_with_history(spec)
    inp = model.inference_input(batch, torch.randint(2, spec.n_items, (3, 9)))
    tokens = model.tokens(inp.candidates, model.side_of(inp.candidates)[..., :1])
    with torch.no_grad():
        torch.testing.assert_close(model.encode(inp, tokens, fast=True)[1], model.encode(inp, tokens, fast=False)[1], atol=1e-5, rtol=1e-5)
    # b = 2: the last block at the candidate's row only equals the last row of the full block
    deep = make("bst b=2", spec)
    with torch.no_grad():
        got = deep.encode(inp, tokens)[1]
        r, c = inp.candidates.shape
        w_pos, c_pos = deep.positions(inp)
        window = torch.cat([deep.tokens(inp.window, deep.window_side(inp)), w_pos], dim=-1)
        cand = torch.cat([tokens, c_pos.expand(r, c, -1)], dim=-1)
        for j in range(c):
            x = torch.cat([window, cand[:, j : j + 1]], dim=1)
            mask = torch.cat([inp.window != 0, torch.ones(r, 1, dtype=torch.bool)], dim=1)
            for block in deep.blocks:
                x = block(x, mask)
            torch.testing.assert_close(got[:, j], x[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("label", list(CONFIGS))
def test_padding_does_not_change_outputs(label):
    spec = tiny_spec()
    model = make(label, spec)
    batch = batch_with_history(spec)
    padded = pad_batch(batch, extra_t=4, extra_l=2)
    z = torch.zeros(3, 3, dtype=torch.long)
    padded.hist_item, padded.hist_time, padded.hist_behavior = (
        torch.cat([x, z], 1) for x in (batch.hist_item, batch.hist_time, batch.hist_behavior))
    cands = torch.randint(2, spec.n_items, (3, 6))
    torch.testing.assert_close(model.score(batch, cands), model.score(padded, cands))
    torch.manual_seed(5)
    a = model(batch).loss
    torch.manual_seed(5)
    b = model(padded).loss
    torch.testing.assert_close(a, b)


def test_time_differences_are_used_by_bst_only():
    spec = tiny_spec()
    batch = batch_with_history(spec)
    older = batch.select(slice(None))
    older.hist_time = torch.where(batch.hist_item != 0, batch.hist_time - 7 * 86400, batch.hist_time)  # history a week earlier
    cands = torch.randint(2, spec.n_items, (3, 4))
    changed = lambda m: (m.score(batch, cands) - m.score(older, cands)).abs().amax(1)  # noqa: E731
    diff = changed(make("bst", spec))
    assert diff[0] > 1e-4 and diff[1] > 1e-4 and diff[2] == 0  # row 2 has no history
    for label in ("bst sinusoid", "wdl", "wdl_seq", "din"):  # order only, or no positions at all
        assert changed(make(label, spec)).max() == 0, label
    # the sinusoidal variant uses the order instead
    swapped = batch.select(slice(None))
    swapped.hist_item = batch.hist_item.clone()
    swapped.hist_item[0, [0, 3]] = batch.hist_item[0, [3, 0]]
    m = make("bst sinusoid", spec)
    assert (m.score(batch, cands)[0] - m.score(swapped, cands)[0]).abs().max() > 1e-4


def test_log_buckets_match_a_bit_length_reference_at_every_power_of_two():
    """time_buckets and match_buckets against int.bit_length (floor(log2 x) = bit_length - 1), at 2^k - 1, 2^k, 2^k + 1
    for every k up to 2^61 and 0..4999: exact integer buckets, the same in PyTorch and in ONNX Runtime's graph."""
    from seqrec.models.ranking import MATCH_BUCKETS, TIME_BUCKETS, match_buckets

    values = list(range(-5, 5000)) + [2**k + d for k in range(1, 62) for d in (-1, 0, 1)]
    time_ref = [1 if v < 1 else min(2 + v.bit_length() - 1, TIME_BUCKETS - 1) for v in values]
    assert time_buckets(torch.tensor(values)).tolist() == time_ref
    ranks = [v for v in values if v < 2**40]
    match_ref = [0 if v < 0 else min(1 + (v + 1).bit_length() - 1, MATCH_BUCKETS - 1) for v in ranks]
    assert match_buckets(torch.tensor(ranks)).tolist() == match_ref


def test_seen_marks_candidates_among_the_behaviours_before_each_position():
    """RankConfig.seen against a per-position reference: in training, a candidate is seen when it is in the row's
    history or in the session before the position; at inference, in the history or anywhere in the session."""
    spec = tiny_spec(n_items=12)  # a small catalogue: negatives often repeat a behaviour
    torch.manual_seed(0)
    model = make("bst", spec, seen=True, negatives=8)
    model.set_item_table(*item_side_table(spec))
    batch = with_history(random_batch(spec, b=3, t=6, l=2), [4, 1, 0], h=4)
    inp = model.training_input(batch)
    hist = [[int(x) for x in row if x >= F.FIRST_CODE] for row in batch.hist_item]
    samples = [(r, t) for r in range(batch.size) for t in range(int(batch.seq_len[r]))
               if int(batch.items[r, t]) >= F.FIRST_CODE and len(hist[r]) + t >= 1]  # training_input's positions
    assert inp.seen.shape == inp.candidates.shape and len(samples) == inp.candidates.shape[0]
    for i, (r, t) in enumerate(samples):
        before = set(hist[r]) | {int(x) for x in batch.items[r, :t]}
        ref = [float(c >= F.FIRST_CODE and c in before) for c in inp.candidates[i].tolist()]
        assert inp.seen[i].tolist() == ref, (r, t)
    assert 0 < float(inp.seen.mean()) < 1
    cands = torch.arange(2, spec.n_items).repeat(batch.size, 1)
    seen = model.inference_input(batch, cands).seen
    for r in range(batch.size):
        before = set(hist[r]) | {int(x) for x in batch.items[r, : int(batch.seq_len[r])]}
        assert seen[r].tolist() == [float(c in before) for c in cands[r].tolist()]
    loss = model(batch).loss
    loss.backward()
    assert model.seen_weight.grad is not None and model.other.seen_feature.weight.grad.abs().sum() > 0


def test_cross_codes_hash_each_cross_with_its_own_salt():
    """OtherFeatures.cross_codes (every cross in one pass) against hash_cross called per cross, salt j for cross j."""
    spec = tiny_spec(n_items=80)
    model = make("bst", spec)
    model.set_item_table(*item_side_table(spec))
    batch = with_history(random_batch(spec, b=3, t=5, l=2), [4, 1, 0], h=4)
    cands = torch.randint(2, spec.n_items, (3, 9), generator=torch.Generator().manual_seed(3))
    inp = model.inference_input(batch, cands)
    side = model.side_of(cands)
    other = model.other
    got = other.cross_codes(inp, side)
    assert got.shape == (3, 9, len(other.crosses))
    for j, (p, q) in enumerate(other.crosses):
        b = cands if q == F.ITEM_ID else side[..., other.side.index(q)]
        assert torch.equal(got[..., j], hash_cross(inp.user[p][:, None], b, j, other.buckets))


def test_time_buckets_and_cross_hash():
    gaps = torch.tensor([-5, 0, 1, 2, 3, 4, 3600, 10**12])
    assert time_buckets(gaps).tolist() == [1, 1, 2, 3, 3, 4, 2 + 11, 39]
    a, b = torch.tensor([2, 3, 2**31 - 1]), torch.tensor([5, 5, 2**31 - 1])
    h = hash_cross(a, b, 0, 1000)
    assert h.tolist() == hash_cross(a, b, 0, 1000).tolist() and ((h >= 0) & (h < 1000)).all()
    assert hash_cross(a, b, 1, 1000).tolist() != h.tolist()  # each cross has its own salt


@pytest.mark.parametrize("label", ["bst", "wdl", "wdl_seq", "din"])
def test_each_ranker_learns_a_category_match_task(label):
    """Label = the candidate shares the session's category; AUC on fresh sessions must exceed 0.9."""
    spec = tiny_spec(n_items=60)
    torch.manual_seed(0)
    model = build_model(label, spec, **{**CONFIGS[label], "negatives": 2})
    side, counts = item_side_table(spec)
    side[:, 0] = 2 + torch.arange(spec.n_items) % 6  # 6 categories
    side[:2, 0] = torch.tensor([0, 1])
    model.set_item_table(side, counts)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        train_step(model, category_sessions(spec, side, 32, 6, seed=step), opt, 5.0)
    model.eval()
    test = category_sessions(spec, side, 64, 6, seed=10_000)
    cat = side[test.items[:, 0], 0]
    g = torch.Generator().manual_seed(1)
    items = torch.arange(2, spec.n_items)
    pos = torch.stack([items[side[items, 0] == c][torch.randint(9, (4,), generator=g)] for c in cat])
    neg = torch.stack([items[side[items, 0] != c][torch.randint(40, (4,), generator=g)] for c in cat])
    scores = model.score(test, torch.cat([pos, neg], 1))
    labels = torch.cat([torch.ones(64, 4), torch.zeros(64, 4)], 1)
    assert auc(labels.flatten().numpy(), scores.flatten().numpy()) > 0.9


def test_checkpoint_dict_round_trip():
    spec = tiny_spec()
    model = make("bst b=2", spec)
    again = model_from_dict({"model": model.name, "config": model.config.to_dict()})
    again.load_state_dict(model.state_dict())
    again.eval()
    batch = batch_with_history(spec)
    cands = torch.randint(2, spec.n_items, (3, 4))
    torch.testing.assert_close(model.score(batch, cands), again.score(batch, cands))
    assert set(RANKERS) == {"bst", "wdl", "wdl_seq", "din"}


def test_bad_configs_and_inputs_get_clear_errors():
    spec = tiny_spec()
    with pytest.raises(ValueError, match="not divisible by heads=5"):
        build_model("bst", spec, heads=5)
    with pytest.raises(ValueError, match="seq_side=3: the dataset has 2 item side features"):
        build_model("wdl", spec, seq_side=3)
    with pytest.raises(ValueError, match="positions='rope'"):
        build_model("bst", spec, positions="rope")
    with pytest.raises(ValueError, match="unknown BSTConfig options \\['hidden'\\]"):
        build_model("bst", spec, hidden=64)
    model = build_model("wdl", spec, **TINY)
    with pytest.raises(ValueError, match="call set_item_table"):
        model(batch_with_history(spec))
    with pytest.raises(ValueError, match="do not match the model's 99 items"):
        model.set_item_table(torch.zeros(10, 2), torch.zeros(10))
    model = make("wdl", spec)
    batch = batch_with_history(spec)
    with pytest.raises(ValueError, match="candidates must be \\(B=3, C\\)"):
        model.score(batch, torch.ones(2, 4, dtype=torch.long))
    empty = batch.select(slice(None))
    empty.seq_len = torch.tensor([7, 4, 0])
    with pytest.raises(ValueError, match="row 2 has no behaviours"):
        model.score(empty, torch.full((3, 2), 5))


def test_hard_negatives_come_from_the_matchers_top_items():
    from seqrec.models.ranking import MatcherNegatives

    spec = tiny_spec()
    torch.manual_seed(0)
    matcher = build_model("sdm:PSDMMAL", spec, hidden=8, id_dim=4, side_dim=2, profile_dim=2).eval()
    model = make("wdl", spec, negatives=1, hard_negatives=2)
    batch = batch_with_history(spec)
    with pytest.raises(ValueError, match="hard_negatives=2 needs a source"):
        model.training_input(batch)
    model.set_negative_source(MatcherNegatives(matcher, 2, top=5))
    inp = model.training_input(batch)
    assert inp.candidates.shape[1] == 1 + 1 + 2
    ref = reference_samples(batch, model.config.window)
    with torch.no_grad():
        states = matcher.user_states(batch)
        scores = states @ matcher.item_embeddings().T  # (B, T, N)
    for i, x in enumerate(ref):
        hard = inp.candidates[i, 2:]
        if x["p"] == 0:
            assert hard.eq(0).all()  # no matcher state before the session's first event
            continue
        s = scores[x["row"], x["p"] - 1].clone()
        s[:2] = float("-inf")
        s[x["positive"]] = float("-inf")
        top5 = set(s.topk(5).indices.tolist())
        assert set(hard.tolist()) <= top5 and len(set(hard.tolist())) == 2 and x["positive"] not in hard.tolist()
    assert "matcher" not in model.state_dict() and not any(k.startswith("negative_source") for k in model.state_dict())
    model.train()
    model(batch).loss.backward()


def test_din_activation_unit_equals_the_concatenation_it_factors():
    """DIN's factored first layer (per-behaviour, per-candidate and pair terms) against the MLP over the built
    [b, c, b - c, b * c] concatenation, with more than one hidden layer and gradients."""
    spec = tiny_spec()
    model = make("din", spec, attention_hidden=(6, 4))
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(3, 7, model.tokens.dim, generator=g, requires_grad=True)
    cand = torch.randn(3, 5, model.tokens.dim, generator=g, requires_grad=True)
    got, ref = model.attention(tok, cand), model.attention_reference(tok, cand)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    gt = torch.autograd.grad(got.square().sum(), (tok, cand))
    gr = torch.autograd.grad(ref.square().sum(), (tok, cand))
    for a, b in zip(gt, gr):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

