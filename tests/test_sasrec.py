"""SASRec: causal, padding-blind, one pass = per prefix (also past max_len), learns, round-trips, trains in the engine."""

from __future__ import annotations

import pytest
import torch
from batchgen import pad_batch, prefix_batch, random_batch, tiny_spec

from seqrec import features as F
from seqrec.models import MATCHERS, build_model, make_config, model_names

SPEC = tiny_spec()
TINY = dict(hidden=16, id_dim=8, side_dim=4, profile_dim=4, heads=2, blocks=2)


def tiny(**kw):
    torch.manual_seed(0)
    return build_model("sasrec", SPEC, **dict(TINY, **kw)).eval()


def test_registered_as_a_matcher():
    assert "sasrec" in MATCHERS and "sasrec" in model_names()
    model = tiny()
    batch = random_batch(SPEC, b=3, t=7)
    assert model.user_states(batch).shape == (3, 7, 16)
    assert model.encode_users(batch).shape == (3, 16)
    assert model.item_embeddings().shape == (99, 16)
    assert model.items is None  # the input table is the output table V (shared, as in the paper)


@pytest.mark.parametrize("max_len", [50, 4])
def test_future_items_do_not_change_earlier_states(max_len):
    model = tiny(max_len=max_len)
    batch = random_batch(SPEC, b=3, t=9, lengths=[9, 9, 9])
    states = model.user_states(batch)  # (B, T, D)
    for t in (0, 3, 6):
        changed = random_batch(SPEC, b=3, t=9, lengths=[9, 9, 9], seed=t + 1)
        changed.seq = {k: torch.cat([v[:, : t + 1], changed.seq[k][:, t + 1 :]], 1) for k, v in batch.seq.items()}
        assert not torch.equal(changed.items[:, t + 1 :], batch.items[:, t + 1 :])
        other = model.user_states(changed)
        torch.testing.assert_close(other[:, : t + 1], states[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(other[:, t + 1 :], states[:, t + 1 :])  # and later states do see them


@pytest.mark.parametrize("max_len", [50, 4])
def test_right_padding_changes_nothing(max_len):
    model = tiny(max_len=max_len, loss="full")
    batch = random_batch(SPEC, b=3, t=7)  # lengths 7, 5, 3
    padded = pad_batch(batch, extra_t=5, extra_l=0)
    with torch.no_grad():
        s, p = model.user_states(batch), model.user_states(padded)
    torch.testing.assert_close(p[:, :7], s, atol=1e-6, rtol=0)
    assert float(p[:, 7:].abs().sum()) == 0.0 and float(s[2, 3:].abs().sum()) == 0.0  # padding positions are zero
    torch.testing.assert_close(model.encode_users(padded), model.encode_users(batch), atol=1e-6, rtol=0)
    torch.testing.assert_close(model(padded).loss, model(batch).loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_len", [50, 4])
def test_one_pass_equals_encoding_each_prefix(max_len):
    """user_states at t = encode_users of the prefix 0..t; past max_len, = the model on the last max_len items."""
    model = tiny(max_len=max_len)
    batch = random_batch(SPEC, b=3, t=7, lengths=[7, 5, 2])
    states = model.user_states(batch)  # (B, T, D)
    for b in range(3):
        n = int(batch.seq_len[b])
        for t in range(1, n + 1):
            prefix = prefix_batch(batch, b, t)
            v = model.encode_users(prefix)[0]
            torch.testing.assert_close(v, states[b, t - 1], atol=1e-5, rtol=0)
            if t > max_len:  # the paper's input: only the last max_len items, positions 0..max_len-1
                last = prefix.select(0)
                last.seq = {k: x[:, t - max_len :] for k, x in prefix.seq.items()}
                last.seq_len = torch.tensor([max_len])
                torch.testing.assert_close(model.user_states(last)[0, -1], v, atol=1e-5, rtol=0)


def test_training_mode_is_causal_too():
    """Dropout on (attention dropout included) still leaks nothing from the future."""
    model = tiny(dropout=0.3).train()
    batch = random_batch(SPEC, b=2, t=6, lengths=[6, 6])
    changed = random_batch(SPEC, b=2, t=6, lengths=[6, 6], seed=7)
    changed.seq = {k: torch.cat([v[:, :3], changed.seq[k][:, 3:]], 1) for k, v in batch.seq.items()}
    torch.manual_seed(1)
    a = model.user_states(batch)
    torch.manual_seed(1)
    b = model.user_states(changed)
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=1e-6, rtol=0)


def test_attends_to_an_earlier_position():
    """Two interleaved runs a, b, a+1, b+1, ...: the next item is the one two steps back + 1, which the current
    item does not tell; only attention to position t-1 (found through the positional embeddings) solves it."""
    n_items = 40
    spec = tiny_spec(n_items=n_items)
    g = torch.Generator().manual_seed(3)
    ab = torch.randint(0, n_items - 2, (64, 2), generator=g)
    k = torch.arange(8)
    items = (ab[:, k % 2] + (k // 2)[None, :]) % (n_items - 2) + 2  # (64, 8)
    batch = random_batch(spec, b=64, t=8, l=3, lengths=[8] * 64)
    batch.seq[F.ITEM_ID] = items
    torch.manual_seed(0)
    model = build_model("sasrec", spec, **dict(TINY, loss="full", dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        scores = model.user_states(batch) @ model.item_embeddings().T  # (B, T, N)
    pred = scores[:, 1:-1, 2:].argmax(-1) + 2  # positions 1..T-2 have an item two steps back
    acc = (pred == items[:, 2:]).float().mean()
    assert acc > 0.9, f"accuracy {acc:.2f}"


def test_unshared_embeddings_with_side_info():
    model = tiny(share_embeddings=False, side_info=True)
    assert list(model.items.tables) == [f.name for f in SPEC.item_features]
    batch = random_batch(SPEC, b=3, t=7)
    other = random_batch(SPEC, b=3, t=7, seed=5)
    other.seq = dict(batch.seq, **{F.CATEGORY: other.seq[F.CATEGORY]})  # same ids, other categories
    assert not torch.allclose(model.encode_users(batch), model.encode_users(other))
    assert torch.isfinite(model(batch).loss)


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    from seqrec.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("sasrec", SPEC, **dict(TINY, max_len=5))
    batch = random_batch(SPEC, b=3, t=7)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(batch).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", model, opt, epoch=1, step=1, dataset={"content_hash": "c", "vocab_hash": "v1", "source": "tiny"})
    again, meta = load_checkpoint(tmp_path / "ck", vocab_hash="v1")
    assert meta["kind"] == "matcher" and again.name == "sasrec" and not again.training
    assert again.config == model.config and again.config.max_len == 5
    model.eval()
    torch.testing.assert_close(again.user_states(batch), model.user_states(batch))
    torch.testing.assert_close(again.encode_users(batch), model.encode_users(batch))


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="hidden=30 must be divisible by heads=4"):
        make_config("sasrec", SPEC, hidden=30, heads=4)
    with pytest.raises(ValueError, match="side_info=True needs share_embeddings=False"):
        make_config("sasrec", SPEC, side_info=True)
    with pytest.raises(ValueError, match="blocks=0 must be >= 1"):
        make_config("sasrec", SPEC, blocks=0)
    with pytest.raises(ValueError, match="max_len=0 must be >= 1"):
        make_config("sasrec", SPEC, max_len=0)
    with pytest.raises(ValueError, match="empty session"):
        tiny().encode_users(random_batch(SPEC, lengths=[3, 0, 2]))


def test_trains_through_the_shared_engine(tiny_prepared):
    """`seqrec train sasrec` path: the factory builds it and the one loop trains it; the loss falls."""
    from seqrec.config import TrainConfig
    from seqrec.data.prepare import read_split
    from seqrec.train.factory import build
    from seqrec.train.loop import fit

    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, patience=None)
    model, spec, _ = build("sasrec", tiny_prepared, {"hidden": 16, "max_len": 8}, seed=cfg.seed)
    res = fit(model, read_split(tiny_prepared, "train"), spec, cfg, log=None)
    losses = [h.loss for h in res.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
