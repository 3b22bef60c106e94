"""SDM and the neural matching baselines: causal = per-prefix, shapes, padding, learning, configs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as nnf
from batchgen import pad_batch, prefix_batch, random_batch, tiny_spec

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.models import build_model, is_ranker, make_config, model_from_dict, model_names
from seqrec.models.common import SoftmaxLoss, next_item_targets
from seqrec.models.sdm import SDMConfig

SPEC = tiny_spec()
TINY = dict(hidden=16, id_dim=8, side_dim=4, profile_dim=4, heads=4)
ALL = [n for n in model_names() if not is_ranker(n)]  # the matchers


def tiny(name: str, **kw):
    opts = dict(TINY, **kw)
    if not name.startswith("sdm"):
        opts.pop("heads")
    torch.manual_seed(0)
    return build_model(name, SPEC, **opts).eval()


@pytest.mark.parametrize("name", ALL)
def test_all_positions_equal_per_prefix_samples(name):
    """One causal pass over a session = the paper's one sample per prefix (user vectors and loss)."""
    model = tiny(name, loss="full", next_n=1)
    batch = random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2])
    states = model.user_states(batch)  # (B, T, D)
    vecs, targets = [], []
    for b in range(3):
        n = int(batch.seq_len[b])
        for t in range(1, n + 1):
            v = model.encode_users(prefix_batch(batch, b, t))[0]
            torch.testing.assert_close(v, states[b, t - 1], atol=1e-5, rtol=0)
            if t < n:
                vecs.append(v)
                targets.append(batch.items[b, t])
    logits = torch.stack(vecs) @ model.item_embeddings().T
    logits[:, :2] = float("-inf")
    per_prefix = nnf.cross_entropy(logits, torch.stack(targets))
    out = model(batch)
    assert out.n_targets == len(targets) == 6 + 4 + 1
    torch.testing.assert_close(out.loss, per_prefix, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_horizon_targets_train_the_last_state_per_prefix_sample(name):
    """``horizon_weight`` w: each row's horizon targets (the items after its session, from ``prepare
    --train-horizon-hours``) are extra samples of the session's last state, weighted w against the next-item ones:
    (Σ next + w Σ horizon) / (P + w H), built here per prefix sample; padding and unknown targets train nothing."""
    w = 0.5
    model = tiny(name, loss="full", next_n=1, horizon_weight=w)
    batch = random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2])
    batch.targets = torch.tensor([[11, 12, 13], [F.UNKNOWN, 14, F.PAD], [F.PAD, F.PAD, F.PAD]])
    ce = lambda v, y: nnf.cross_entropy(  # noqa: E731
        (v @ model.item_embeddings().T).index_fill(-1, torch.tensor([0, 1]), float("-inf")), y, reduction="sum")
    nxt, hor, p, h = 0.0, 0.0, 0, 0
    for b in range(3):
        n = int(batch.seq_len[b])
        for t in range(1, n):
            nxt, p = nxt + ce(model.encode_users(prefix_batch(batch, b, t)), batch.items[b, t: t + 1]), p + 1
        last = model.encode_users(prefix_batch(batch, b, n))
        for y in batch.targets[b].tolist():
            if y >= F.FIRST_CODE:
                hor, h = hor + ce(last, torch.tensor([y])), h + 1
    out = model(batch)
    assert (p, h) == (6 + 4 + 1, 3 + 1) and out.n_targets == p + h
    torch.testing.assert_close(out.loss, (nxt + w * hor) / (p + w * h), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny(name, loss="full", next_n=1)(batch).loss, nxt / p, atol=1e-5, rtol=0)  # w = 0


@pytest.mark.parametrize("name", ALL)
def test_the_seen_penalty_loss_equals_per_prefix_samples(name):
    """With ``seen_penalty`` each prefix's softmax scores the items it has seen (its session so far and the row's
    long-term items) lower by the learned penalty: the reference builds that set per prefix sample; the penalty is
    trained (it gets a gradient)."""
    model = tiny(name, loss="full", next_n=1, seen_penalty=True)
    with torch.no_grad():
        model.seen_logit.fill_(0.5)
    batch = random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2])
    penalty = float(nnf.softplus(torch.tensor(0.5)))
    rows, targets = [], []
    for b in range(3):
        n = int(batch.seq_len[b])
        for t in range(1, n):
            prefix = prefix_batch(batch, b, t)
            logits = (model.encode_users(prefix)[0] @ model.item_embeddings().T).clone()
            seen = set(prefix.items[0].tolist()) | set(prefix.long_term[F.ITEM_ID][0].tolist())
            logits[sorted(seen - {F.PAD})] -= penalty
            logits[:2] = float("-inf")
            rows.append(logits)
            targets.append(batch.items[b, t])
    per_prefix = nnf.cross_entropy(torch.stack(rows), torch.stack(targets))
    out = model(batch)
    torch.testing.assert_close(out.loss, per_prefix, atol=1e-5, rtol=0)
    out.loss.backward()
    assert model.seen_logit.grad is not None and float(model.seen_logit.grad) != 0.0
    assert tiny(name).seen_penalty() is None  # off by default: the paper's model


def test_the_sampled_loss_penalizes_seen_positives_and_negatives():
    """The sampled softmax lowers the positive's and each negative's logit by the penalty where that row has seen
    the item; the reference checks membership one (row, item) at a time."""
    torch.manual_seed(0)
    sm = SoftmaxLoss(n_items=12, dim=4, loss="sampled", num_sampled=6, sampler="log_uniform")
    users, targets = torch.randn(4, 4), torch.tensor([2, 5, 7, 11])
    seen = torch.tensor([[2, 3, 0], [4, 9, 9], [7, 8, 10], [0, 0, 0]])  # row 0 and 2 saw their target
    neg = torch.tensor([3, 9, 10, 6, 2, 5])
    log_q = sm.log_q_log_uniform(neg)
    sm._sample = lambda s, device: (neg, log_q)
    penalty = torch.tensor(0.8)
    got = sm(users, targets, seen, penalty)
    log_s = torch.log(torch.tensor(6.0))
    rows = []
    for p in range(4):
        s = set(seen[p].tolist())
        pos = users[p] @ sm.items.weight[targets[p]] - (log_s + sm._log_q(targets[p:p + 1])[0]) - 0.8 * (int(targets[p]) in s)
        negs = [users[p] @ sm.items.weight[n] - (log_s + log_q[j]) - 0.8 * (int(n) in s) if n != targets[p] else
                torch.tensor(float("-inf")) for j, n in enumerate(neg)]
        rows.append(torch.stack([pos, *negs]))
    ref = nnf.cross_entropy(torch.stack(rows), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(got, sm(users, targets))


def test_join_history_puts_each_rows_history_before_its_session():
    """The reference joins the lists of each row by hand."""
    from batchgen import with_history

    from seqrec.models.common import join_history

    batch = with_history(random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2]), [4, 0, 6])
    joined, offset = join_history(batch)
    assert offset.tolist() == [4, 0, 6] and joined.seq_len.tolist() == [11, 5, 8]
    for r in range(3):
        h, n = int(offset[r]), int(batch.seq_len[r])
        for got, hist, seq in ((joined.items, batch.hist_item, batch.items), (joined.seq_time, batch.hist_time, batch.seq_time),
                               (joined.seq_behavior, batch.hist_behavior, batch.seq_behavior)):
            want = hist[r, :h].tolist() + seq[r, :n].tolist()
            assert got[r].tolist() == want + [0] * (got.shape[1] - len(want))


SEQUENCE = ["gru4rec", "narm", "sasrec", "youtube_dnn"]


@pytest.mark.parametrize("name", SEQUENCE)
def test_history_input_states_equal_the_model_on_history_then_the_session_prefix(name):
    """With ``history_input`` the state at session position t is the model run on the row's history followed by
    the session's events 0..t (the reference builds that one sequence per prefix, without the history option); the
    loss trains the session's positions only."""
    from batchgen import with_history

    batch = with_history(random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2]), [4, 0, 6])
    model = tiny(name, loss="full", history_input=True)
    plain = tiny(name, loss="full")
    plain.load_state_dict(model.state_dict())
    states = model.user_states(batch)
    for b in range(3):
        h = int((batch.hist_item[b] != F.PAD).sum())
        for t in range(int(batch.seq_len[b])):
            one = prefix_batch(batch, b, t + 1)
            items = torch.cat([batch.hist_item[b, :h], one.items[0]])[None]
            seq = dataclasses.replace(one, seq={F.ITEM_ID: items}, seq_len=torch.tensor([h + t + 1]),
                                      seq_time=torch.cat([batch.hist_time[b, :h], one.seq_time[0]])[None],
                                      seq_behavior=torch.cat([batch.hist_behavior[b, :h], one.seq_behavior[0]])[None])
            torch.testing.assert_close(states[b, t], plain.encode_users(seq)[0], atol=1e-5, rtol=0)
    assert model(batch).n_targets == plain(batch).n_targets == 6 + 4 + 1


@pytest.mark.parametrize("name", ["sdm:PSDMMAL", "shan", "binn"])
def test_history_input_is_refused_where_the_model_reads_history_itself(name):
    with pytest.raises(ValueError, match="history_input=true is for the models that read one sequence"):
        tiny(name, history_input=True, side_info=False)
    with pytest.raises(ValueError, match="set side_info=false"):
        tiny("gru4rec", history_input=True, side_info=True)


@pytest.mark.parametrize("name", ALL)
def test_padding_changes_nothing(name):
    model = tiny(name, loss="full")
    batch = random_batch(SPEC, b=3, t=7, l=5)
    padded = pad_batch(batch, extra_t=4, extra_l=3)
    torch.testing.assert_close(model.encode_users(batch), model.encode_users(padded), atol=1e-6, rtol=0)
    torch.testing.assert_close(model(batch).loss, model(padded).loss, atol=1e-6, rtol=0)


def test_shapes_with_distinct_sizes():
    b, t, l, d, h, n = 3, 7, 5, 16, 4, 99  # noqa: E741 - l is the SDM notation L (long-term length)
    model = tiny("sdm:PSDMMAL", hidden=d, heads=h)
    batch = random_batch(SPEC, b=b, t=t, l=l)
    assert model.user_states(batch).shape == (b, t, d)
    assert model.encode_users(batch).shape == (b, d)
    assert model.item_embeddings().shape == (n, d)
    det = model.explain(batch)
    assert det.self_attention.shape == (b, h, t, t)
    assert det.user_attention.shape == (b, t, t)
    assert det.gate.shape == (b, t, d)
    assert {k: v.shape for k, v in det.long_term.items()} == {f.name: (b, l) for f in SPEC.item_features}
    # causal: no weight on future positions; each valid row sums to 1
    assert torch.all(det.self_attention.triu(1) == 0)
    torch.testing.assert_close(det.self_attention.sum(-1), torch.ones(b, h, t))
    assert ((det.gate > 0) & (det.gate < 1)).all()


def test_empty_long_term_is_defined_not_nan():
    model = tiny("sdm:PSDMMAL")
    batch = random_batch(SPEC, b=3, t=7, l=5, lt_lengths=[0, 0, 0])
    out = model.encode_users(batch)
    assert torch.isfinite(out).all()
    det = model.explain(batch)
    assert all(float(w.abs().sum()) == 0.0 for w in det.long_term.values())
    # a user with an empty subset gets the same p as one whose subset is all padding of another width
    torch.testing.assert_close(model.encode_users(pad_batch(batch, 0, 4)), out)
    torch.testing.assert_close(model(batch).loss.isfinite(), torch.tensor(True))


def test_long_term_and_profile_are_used():
    model = tiny("sdm:PSDMMAL")
    a = random_batch(SPEC, seed=1)
    b = random_batch(SPEC, seed=1)
    b.long_term = {k: torch.flip(v, [0]) for k, v in b.long_term.items()}
    assert not torch.allclose(model.encode_users(a), model.encode_users(b))
    c = random_batch(SPEC, seed=1)
    c.user = {k: (v + 1).clamp_max(3) for k, v in c.user.items()}
    assert not torch.allclose(model.encode_users(a), model.encode_users(c))
    # SDMMA has neither: changing them changes nothing
    sdmma = tiny("sdm:SDMMA")
    torch.testing.assert_close(sdmma.encode_users(a), sdmma.encode_users(b))
    torch.testing.assert_close(sdmma.encode_users(a), sdmma.encode_users(c))


def test_variants_are_configurations():
    nos = tiny("sdm:PSDMMAL-NoS")
    assert list(nos.items.tables) == [F.ITEM_ID]
    full = tiny("sdm:PSDMMAL")
    assert list(full.items.tables) == [f.name for f in SPEC.item_features]
    assert tiny("sdm:SDMMA").profile is None and tiny("sdm:PSDMMA").long_term is None
    n5 = tiny("sdm:PSDMMAL-N")
    assert n5.config.next_n == 5
    batch = random_batch(SPEC, lengths=[7, 5, 2])
    assert n5(batch).n_targets == (6 + 5 + 4 + 3 + 2) + (4 + 3 + 2 + 1) + 1


def test_next_item_targets_by_hand():
    items = torch.tensor([[5, 6, 1, 7, 0], [8, 9, 0, 0, 0]])
    pairs, tgt = next_item_targets(items, torch.tensor([4, 2]), n=2)
    got = sorted(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), tgt.tolist()))
    # unknown item (1) is never a target; row 1 has one pair
    assert got == [(0, 0, 6), (0, 1, 7), (0, 2, 7), (1, 0, 9)]


@pytest.mark.parametrize("name,loss", [("sdm:PSDMMAL", "full"), ("sdm:PSDMMAL", "sampled"), ("gru4rec", "sampled"), ("narm", "full"),
                                       ("youtube_dnn", "full"), ("sasrec", "full"), ("sasrec", "sampled"), ("shan", "full"),
                                       ("binn", "full"), ("binn", "sampled")])
def test_learns_next_item_given_previous(name, loss):
    """Toy data: the next item is (previous + 1) mod cycle; every model should learn it."""
    n_items = 40
    spec = tiny_spec(n_items=n_items)
    g = torch.Generator().manual_seed(3)
    start = torch.randint(0, n_items - 2, (64, 1), generator=g)
    items = (start + torch.arange(8)[None, :]) % (n_items - 2) + 2  # (64, 8)
    batch = random_batch(spec, b=64, t=8, l=3, lengths=[8] * 64)
    batch.seq[F.ITEM_ID] = items
    opts = dict(TINY, loss=loss, num_sampled=20, dropout=0.0)
    if not name.startswith("sdm"):
        opts.pop("heads")
    torch.manual_seed(0)
    model = build_model(name, spec, **opts)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(150):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    scores = model.user_states(batch) @ model.item_embeddings().T  # (B, T, N)
    pred = scores[:, :-1, 2:].argmax(-1) + 2
    acc = (pred == items[:, 1:]).float().mean()
    assert losses[-1] < losses[0] / 2, f"{name}/{loss}: loss {losses[0]:.2f} → {losses[-1]:.2f}"
    assert acc > 0.9, f"{name}/{loss}: next-item accuracy {acc:.2f} (loss {losses[0]:.2f} → {losses[-1]:.2f})"


def test_log_uniform_sampler_matches_its_distribution():
    torch.manual_seed(0)
    sm = SoftmaxLoss(n_items=12, dim=4, loss="sampled", num_sampled=10, sampler="log_uniform")
    draws, log_q = sm._sample(200_000, "cpu")
    assert draws.min() >= 2 and draws.max() <= 11
    freq = torch.bincount(draws - 2, minlength=10).float() / draws.numel()
    expected = torch.tensor([torch.log(torch.tensor((k + 2) / (k + 1))) / torch.log(torch.tensor(11.0)) for k in range(10)])
    torch.testing.assert_close(freq, expected, atol=4e-3, rtol=0)
    torch.testing.assert_close(log_q.exp(), expected[draws - 2], atol=1e-6, rtol=0)
    assert freq[0] > freq[-1] * 5  # frequent (low codes) sampled more


def test_unigram_sampler_and_accidental_hits():
    torch.manual_seed(0)
    sm = SoftmaxLoss(n_items=6, dim=4, loss="sampled", num_sampled=50_000, sampler="unigram")
    with pytest.raises(ValueError, match="set_item_counts"):
        sm._sample(3, "cpu")
    sm.set_item_counts(torch.tensor([0, 0, 10, 5, 3, 2]))
    draws, _ = sm._sample(100_000, "cpu")
    freq = torch.bincount(draws, minlength=6).float() / draws.numel()
    torch.testing.assert_close(freq[2:], torch.tensor([0.5, 0.25, 0.15, 0.10]), atol=5e-3, rtol=0)
    # when every negative equals the true item, the loss is 0 (negatives removed), never NaN
    sm.set_item_counts(torch.tensor([0, 0, 1, 0, 0, 0]))
    loss = sm(torch.randn(3, 4), torch.tensor([2, 2, 2])).detach()
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="item counts have 3 entries"):
        sm.set_item_counts(torch.ones(3))


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="hidden=30 must be divisible by heads=4"):
        make_config("sdm", SPEC, hidden=30, heads=4)
    with pytest.raises(ValueError, match="unknown SDM variant 'PSDM'"):
        make_config("sdm:PSDM", SPEC)
    with pytest.raises(ValueError, match="fusion='mean'"):
        make_config("sdm", SPEC, fusion="mean")
    with pytest.raises(ValueError, match="long_term=True needs user_profile=True"):
        make_config("sdm", SPEC, user_profile=False, long_term=True)
    with pytest.raises(ValueError, match="unknown model 'bert4rec'"):
        make_config("bert4rec", SPEC)
    with pytest.raises(ValueError, match=r"unknown GRU4RecConfig options \['heads'\]"):
        make_config("gru4rec", SPEC, heads=2)
    with pytest.raises(ValueError, match="only sdm has paper variants"):
        make_config("narm:PSDMMAL", SPEC)
    with pytest.raises(ValueError, match="horizon_weight=-1.0 must be >= 0"):
        make_config("sdm", SPEC, horizon_weight=-1.0)
    with pytest.raises(ValueError, match="empty session"):
        tiny("sdm").encode_users(random_batch(SPEC, lengths=[3, 0, 2]))


def test_auto_loss_resolves_by_catalogue_size():
    assert make_config("gru4rec", SPEC).loss == "full"
    big = tiny_spec(n_items=200_000)
    assert make_config("gru4rec", big).loss == "sampled"


@pytest.mark.parametrize("name", ["sdm:PSDMMAL-N", "narm"])
def test_model_rebuilds_from_its_config_dict(name):
    model = tiny(name)
    copy = model_from_dict({"model": model.name, "config": model.config.to_dict()})
    copy.load_state_dict(model.state_dict())
    copy.eval()
    batch = random_batch(SPEC)
    torch.testing.assert_close(model.encode_users(batch), copy.encode_users(batch))
    assert isinstance(SDMConfig.from_dict(tiny("sdm").config.to_dict()), SDMConfig)


def test_batch_to_and_select():
    batch = random_batch(SPEC)
    one = batch.select(1)
    assert isinstance(one, Batch) and one.size == 1 and one.seq[F.CATEGORY].shape == (1, 7)
    assert batch.to("cpu").items.dtype == torch.long


def test_model_modules_do_not_import_ray_faiss_fastapi():
    code = (
        "import sys, pkgutil, importlib, seqrec.models as m\n"
        "for mod in pkgutil.iter_modules(m.__path__): importlib.import_module('seqrec.models.' + mod.name)\n"
        "bad = sorted(x for x in ('ray', 'faiss', 'fastapi') if x in sys.modules)\n"
        "assert not bad, f'seqrec.models imported {bad}'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_fused_attention_equals_the_explicit_one():
    """Training uses fused scaled-dot-product attention; explain() the explicit softmax that returns weights."""
    model = tiny("sdm:PSDMMAL")
    h = torch.randn(3, 7, 16)
    fused, none = model.attention(h, weights=False)
    explicit, w = model.attention(h, weights=True)
    assert none is None and w.shape == (3, 4, 7, 7)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    unscaled = tiny("sdm:PSDMMAL", attn_scale=False)
    torch.testing.assert_close(unscaled.attention(h)[0], unscaled.attention(h, weights=True)[0], atol=1e-5, rtol=0)
