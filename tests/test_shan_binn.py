"""SHAN and BINN (SDM Table 2 baselines): one pass = a by-hand per-prefix reference, empty long-term history,
long-term / profile / context used, every parameter trained, checkpoint round trip, the shared training loop.

The shared matcher tests (causal = per-prefix loss, padding, next-item learning) run them too (tests/test_sdm.py).
"""

from __future__ import annotations

import pytest
import torch
from batchgen import pad_batch, prefix_batch, random_batch, tiny_spec

from seqrec import features as F
from seqrec.models import MATCHERS, build_model, make_config, model_from_dict, model_names
from seqrec.models.binn import GAP_BUCKETS, gap_buckets

SPEC = tiny_spec()
TINY = dict(hidden=16, id_dim=8, side_dim=4, profile_dim=4)
NAMES = ["shan", "binn"]


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return build_model(name, SPEC, **dict(TINY, **kw)).eval()


def shan_reference(model, batch, b: int, t: int) -> torch.Tensor:
    """SHAN's user vector for row b after its first t events, from the paper's equations on unpadded inputs."""
    one = batch.select(b)
    u = model.profile(one.user)[0]  # (D,)
    zs, any_long = [], False
    for n in model.items.names:
        codes = one.long_term[n][0]
        codes = codes[codes != F.PAD]  # (L_f,) the real entries only
        g = model.items.tables[n](codes)  # (L_f, d_f)
        if len(codes):
            alpha = torch.softmax(torch.relu(model.long_term.keys[n](g)) @ u, dim=0)  # layer 1 (L_f,)
            zs.append(alpha @ g)
            any_long = True
        else:
            zs.append(g.new_zeros(model.items.dims[n]))
    e = model.items({k: v[:, :t] for k, v in one.seq.items()})[0]  # (t, E) items 0..t-1
    x = torch.cat([torch.cat(zs)[None], e]) if any_long else e  # the long-term slot only when there is a history
    beta = torch.softmax(torch.relu(model.keys(x)) @ u, dim=0)  # layer 2
    return model.out(beta @ x)  # (D,)


def binn_reference(model, batch, b: int, t: int) -> torch.Tensor:
    """BINN's user vector for row b after its first t events: plain LSTM runs on unpadded inputs."""
    one = batch.select(b)
    x = model.items({k: v[:, :t] for k, v in one.seq.items()})  # (1, t, E)
    if model.config.context:
        beh = model.behavior(one.seq_behavior[:, :t])  # (1, t, side_dim)
        times = one.seq_time[0, :t].tolist()
        buckets = [0] + [min(GAP_BUCKETS - 1, 1 + int(torch.log2(torch.tensor(1.0 + max(0, times[i] - times[i - 1]))).floor()))
                         for i in range(1, t)]
        x = torch.cat([x, beh, model.gap(torch.tensor([buckets]))], -1)
    h = model.session(x)[0][0, -1]  # (D,) the state after event t-1
    ps = []
    for n in model.items.names:
        codes = one.long_term[n][0]
        codes = codes[codes != F.PAD]
        if len(codes):
            _, (h_n, _) = model.preference.lstm[n](model.items.tables[n](codes)[None])  # (2, 1, D)
            ps.append(torch.cat([h_n[0, 0], h_n[1, 0]]))
        else:
            ps.append(h.new_zeros(2 * model.config.hidden))
    return model.out(torch.cat([h, *ps]))


REFERENCE = {"shan": shan_reference, "binn": binn_reference}


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_the_matcher_interface(name):
    assert name in MATCHERS and name in model_names()
    b, t, d, n = 3, 7, 16, 99
    model = tiny(name)
    batch = random_batch(SPEC, b=b, t=t, l=5, lengths=[7, 5, 2])
    assert model.user_states(batch).shape == (b, t, d)
    assert model.encode_users(batch).shape == (b, d)
    assert model.item_embeddings().shape == (n, d)
    out = model(batch)
    assert torch.isfinite(out.loss) and out.n_targets == 6 + 4 + 1


@pytest.mark.parametrize("side_info", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_one_pass_equals_the_paper_equations_per_prefix(name, side_info):
    """user_states at t = the model's equations run on the unpadded prefix 0..t (and = encode_users of that prefix);
    row 1 has no long-term history, row 2 a short one."""
    model = tiny(name, side_info=side_info)
    batch = random_batch(SPEC, b=3, t=7, l=5, lengths=[7, 5, 2], lt_lengths=[5, 0, 2])
    with torch.no_grad():
        states = model.user_states(batch)  # (B, T, D)
        for b in range(3):
            for t in range(1, int(batch.seq_len[b]) + 1):
                ref = REFERENCE[name](model, batch, b, t)
                torch.testing.assert_close(states[b, t - 1], ref, atol=1e-5, rtol=0)
                torch.testing.assert_close(model.encode_users(prefix_batch(batch, b, t))[0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_future_items_do_not_change_earlier_states(name):
    model = tiny(name, side_info=True)
    batch = random_batch(SPEC, b=3, t=8, lengths=[8, 8, 8])
    states = model.user_states(batch)
    other_items = random_batch(SPEC, b=3, t=8, lengths=[8, 8, 8], seed=9).seq
    changed = batch.select(slice(None))  # same user, long-term history and behaviours; events 4.. replaced
    changed.seq = {k: torch.cat([v[:, :4], other_items[k][:, 4:]], 1) for k, v in batch.seq.items()}
    changed.seq_time = torch.cat([batch.seq_time[:, :4], batch.seq_time[:, 4:] + 1000], 1)
    other = model.user_states(changed)
    torch.testing.assert_close(other[:, :4], states[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(other[:, 4:], states[:, 4:])


@pytest.mark.parametrize("name", NAMES)
def test_empty_long_term_history_is_defined_and_trains(name):
    """No long-term entries (common on ml-100k): finite vectors, loss and gradients, whatever the padding width."""
    model = tiny(name).train()
    batch = random_batch(SPEC, b=3, t=7, l=5, lt_lengths=[0, 0, 0])
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    vec = model.encode_users(batch)
    assert torch.isfinite(vec).all()
    none = random_batch(SPEC, b=3, t=7, l=5, lt_lengths=[0, 0, 0])
    none.long_term = {k: v[:, :0] for k, v in none.long_term.items()}  # (B, 0): collate's width when no row has any
    torch.testing.assert_close(model.encode_users(none), vec, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.encode_users(pad_batch(batch, extra_t=0, extra_l=4)), vec, atol=1e-6, rtol=0)
    # a row without history gives the same vector alone as beside rows that have one
    mixed = random_batch(SPEC, b=3, t=7, l=5, lt_lengths=[5, 0, 3])
    torch.testing.assert_close(model.encode_users(mixed)[1], model.encode_users(mixed.select(1))[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_long_term_history_is_used(name):
    model = tiny(name)
    a = random_batch(SPEC, seed=1, lt_lengths=[5, 5, 5])
    b = random_batch(SPEC, seed=1, lt_lengths=[5, 5, 5])
    b.long_term = {k: torch.flip(v, [0]) for k, v in b.long_term.items()}  # other rows' histories
    assert not torch.allclose(model.encode_users(a), model.encode_users(b))


def test_shan_queries_with_the_user_profile():
    model = tiny("shan")
    a = random_batch(SPEC, seed=1)
    c = random_batch(SPEC, seed=1)
    c.user = {k: (v + 1).clamp_max(3) for k, v in c.user.items()}
    assert not torch.allclose(model.encode_users(a), model.encode_users(c))


def test_binn_context_reads_behaviour_and_time_gaps():
    a = random_batch(SPEC, seed=1)
    other_behaviour = random_batch(SPEC, seed=1)
    other_behaviour.seq_behavior = other_behaviour.seq_behavior * 2  # codes 2 → 4 on real positions
    other_gaps = random_batch(SPEC, seed=1)
    other_gaps.seq_time = other_gaps.seq_time * 1000
    model = tiny("binn")
    for changed in (other_behaviour, other_gaps):
        assert not torch.allclose(model.encode_users(a), model.encode_users(changed))
    plain = tiny("binn", context=False)
    assert plain.behavior is None and plain.gap is None
    for changed in (other_behaviour, other_gaps):
        torch.testing.assert_close(plain.encode_users(a), plain.encode_users(changed))


def test_gap_buckets_by_hand():
    times = torch.tensor([[100, 100, 101, 103, 110, 10**12, 0, 0]])  # then right padding
    # first event 0; gaps 0, 1, 2, 7 s → 1 + floor(log2(1 + gap)); a huge gap is capped; padding never negative
    assert gap_buckets(times).tolist() == [[0, 1, 2, 2, 4, GAP_BUCKETS - 1, 1, 1]]


@pytest.mark.parametrize("side_info", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name, side_info):
    """DDP needs every parameter in the graph of every step; side features only when ``side_info``."""
    model = tiny(name, side_info=side_info).train()
    tables = [F.ITEM_ID] + ([f.name for f in SPEC.item_side] if side_info else [])
    assert list(model.items.tables) == tables
    model(random_batch(SPEC, b=3, t=7, l=5)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_rebuilds_the_same_model(name, tmp_path):
    from seqrec.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model(name, SPEC, **dict(TINY, side_info=True, loss="sampled", num_sampled=7))
    batch = random_batch(SPEC, b=3, t=7)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(batch).loss.backward()
    opt.step()
    model.eval()
    copy = model_from_dict({"model": model.name, "config": model.config.to_dict()})
    copy.load_state_dict(model.state_dict())
    copy.eval()
    torch.testing.assert_close(copy.encode_users(batch), model.encode_users(batch))
    save_checkpoint(tmp_path / "ck", model, opt, epoch=1, step=1, dataset={"content_hash": "c", "vocab_hash": "v1", "source": "tiny"})
    again, meta = load_checkpoint(tmp_path / "ck", vocab_hash="v1")
    assert meta["kind"] == "matcher" and again.name == name and not again.training
    assert again.config == model.config and again.config.side_info and again.config.loss == "sampled"
    torch.testing.assert_close(again.user_states(batch), model.user_states(batch))
    torch.testing.assert_close(again.item_embeddings(), model.item_embeddings())


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown SHANConfig options \['heads'\]"):
        make_config("shan", SPEC, heads=2)
    with pytest.raises(ValueError, match=r"unknown BINNConfig options \['lstm_layers'\]"):
        make_config("binn", SPEC, lstm_layers=2)
    with pytest.raises(ValueError, match="only sdm has paper variants"):
        make_config("shan:PSDMMAL", SPEC)
    for name in NAMES:
        with pytest.raises(ValueError, match="empty session"):
            tiny(name).encode_users(random_batch(SPEC, lengths=[3, 0, 2]))


@pytest.mark.parametrize("name", NAMES)
def test_trains_through_the_shared_engine(name, tiny_prepared):
    """`seqrec train shan|binn`: the factory builds it on prepared rows (real long-term subsets, empty ones included)
    and the one loop trains it; the loss falls."""
    from seqrec.config import TrainConfig
    from seqrec.data.prepare import read_split
    from seqrec.train.factory import build
    from seqrec.train.loop import fit

    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, patience=None)
    model, spec, _ = build(name, tiny_prepared, {"hidden": 16}, seed=cfg.seed)
    res = fit(model, read_split(tiny_prepared, "train"), spec, cfg, log=None)
    losses = [h.loss for h in res.history]
    assert len(losses) == 2 and all(x == x for x in losses) and losses[-1] < losses[0]
