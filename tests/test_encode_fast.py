"""The one-request encode path equals the general one: RowBuilder's one-row build (vs rows_table over a batch),
its Arrow-free vocabulary lookups (vs Arrow's cast), collate of one row, and SDM's last-position encode_users
(vs the user states at every position)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from batchgen import random_batch, tiny_spec
from serving_inputs import raw_events, request_for

from seqrec import features as F
from seqrec.batch import collate, pad_lists
from seqrec.models import build_model
from seqrec.models.common import MatchingModel
from seqrec.serving import Event, Request, RowBuilder


@pytest.fixture(scope="module")
def builder(tiny_prepared):
    return RowBuilder(tiny_prepared)


def varied_requests(tiny_prepared, builder: RowBuilder) -> list[Request]:
    """Prepared rows' users (side info, profiles) and hand-made edge cases."""
    from seqrec.data.prepare import read_split

    ev = raw_events(tiny_prepared.parent)
    reqs = [request_for(r, ev, builder) for r in read_split(tiny_prepared, "test").slice(0, 12).to_pylist()]
    items = builder.vocab[F.ITEM_ID].to_pylist()
    user = builder.vocab[F.USER_ID][0].as_py()
    t0 = 1_600_000_000
    reqs += [
        Request("no-such-user", [Event(items[0], t0)]),  # one event: no long-term, no history
        Request(user, [Event(99_999_999, t0), Event("not-a-number", t0 + 5), Event(str(items[1]), t0 + 9),
                       Event(-3, t0 + 12), Event(2**70, t0 + 15), Event(True, t0 + 20), Event(items[2], t0 + 30)]),
        # a 100-event run with no gap: split every max_session_len (50) events; the latest part is the row
        Request(user, [Event(items[i % 40], t0 + 10 * i) for i in range(100)]),
        # sessions over 9 days (long-term window, history), pairs of tied timestamps, events out of order
        Request(user, [Event(items[(7 * i) % 60], t0 + 1_800 * (i // 2), "pv" if i % 4 else None)
                       for i in range(400, 0, -1)] + [Event(items[3], t0 + 1_800 * 200 + 60)]),
        # side info and behaviours given, known and unknown; a profile that overrides the stored one
        Request(user, [Event(items[4], t0, "no-such-behaviour", {F.CATEGORY: "nope"}), Event(items[5], t0 + 1, None,
                       {F.BRAND: builder.vocab[F.BRAND][0].as_py()})], {F.AGE: "nope"} if F.AGE in builder.user_names else {}),
    ]
    return reqs


@pytest.mark.parametrize("relabel_from", [None, 0])  # the tiny catalogue's codes, or every feature's, relabelled
def test_one_request_row_equals_the_batch_row(tiny_prepared, builder, relabel_from, monkeypatch):
    """rows([r]) (RowBuilder._one_row) == row i of rows(all) (training's rows_table), reports included."""
    if relabel_from is not None:
        monkeypatch.setattr("seqrec.serving._RELABEL_FROM", relabel_from)
    reqs = varied_requests(tiny_prepared, builder)
    many, many_reports = builder.rows(reqs)
    assert many.schema == builder.rows(reqs[:1])[0].schema
    for i, req in enumerate(reqs):
        one, (report,) = builder.rows([req])
        assert one.schema == many.schema
        assert one.to_pylist() == many.slice(i, 1).to_pylist(), i
        assert report == many_reports[i], i
    lens = many[F.SEQ_LEN].to_pylist()
    assert max(lens) == builder.protocol.max_session_len and min(lens) == 1  # the split and the one-event cases ran
    assert any(n > 0 for n in pc.list_value_length(many[F.long_term_col(F.ITEM_ID)]).to_pylist())


@pytest.mark.parametrize("relabel_from", [None, 0])
def test_one_request_row_equals_the_batch_row_under_the_last_n_input(tiny_prepared, builder, relabel_from, monkeypatch):
    """The same with RecBole's last-N input (seqrec.data.sessions: seq, lt_* and hist from the last N events)."""
    from dataclasses import replace

    if relabel_from is not None:
        monkeypatch.setattr("seqrec.serving._RELABEL_FROM", relabel_from)

    last_n = RowBuilder.__new__(RowBuilder)
    last_n.__dict__.update(builder.__dict__)
    last_n.protocol = replace(builder.protocol, input="last-n", input_events=12, long_term_max=12, hist_len=12)
    reqs = varied_requests(tiny_prepared, builder)
    many, _ = last_n.rows(reqs)
    for i, req in enumerate(reqs):
        assert last_n.rows([req])[0].to_pylist() == many.slice(i, 1).to_pylist(), i
    assert many[F.SEQ_LEN].to_pylist() != builder.rows(reqs)[0][F.SEQ_LEN].to_pylist()  # the input differs


def test_side_info_the_catalogue_holds_changes_nothing(builder):
    """Events that give their items' catalogue values as side info get the row of events that give none."""
    items = builder.vocab[F.ITEM_ID].to_pylist()[:6]

    def raw_side(name: str, item_code: int):  # the catalogue's raw value of the item's side feature
        code = int(builder.item_side[name][item_code])
        return builder.vocab[name][code - F.FIRST_CODE].as_py() if code >= F.FIRST_CODE else None

    plain = Request(5, [Event(item, 1_600_000_000 + 60 * i) for i, item in enumerate(items)])
    given = Request(5, [Event(e.item_id, e.timestamp, None, {name: raw_side(name, code) for name in builder.item_names[1:]})
                        for e, code in zip(plain.events, builder.encode(F.ITEM_ID, items))])
    for reqs in ([plain], [plain, plain]):
        a, ra = builder.rows(reqs)
        b, rb = builder.rows([given] * len(reqs))
        assert a.to_pylist() == b.to_pylist() and ra == rb


PLAIN = [5, "5", None, "007", "0", 0, -1, 2**63, -(2**63) - 1, 2**80, "9" * 18]  # no Arrow needed
NOT_PLAIN = ["9" * 19, "+5", " 5", "-5", "0x10", "", "5.0", 5.0, True, "٥"]  # Arrow's cast decides
INTS = [5, 0, -1, 2**63 - 1, -(2**63)]  # JSON integers: one numpy conversion


@pytest.mark.parametrize("values,plain", [(PLAIN, True), (NOT_PLAIN, False), (INTS, True), ([*INTS, 2**64], True),
                                          ([None, None], True), ([], True)])
def test_plain_vocabulary_lookups_equal_the_arrow_cast(builder, values, plain):
    """RowBuilder._encode_plain gives Arrow's cast's codes, or leaves the values to it."""
    arrow = RowBuilder.__new__(RowBuilder)
    arrow.__dict__.update(builder.__dict__)
    arrow._encode_plain = lambda name, table, values: None  # every value through pa.array + cast
    for name in [*builder.item_names, *builder.user_names, F.BEHAVIOR]:
        known = builder.vocab[name].to_pylist()[:3]
        for vals in ([*values, *known], [*values, *known, *[str(v) for v in known]]):
            got, want = builder.encode(name, vals), arrow.encode(name, vals)
            assert got.tolist() == want.tolist() and got.dtype == want.dtype, name
            text = pa.types.is_string(builder.vocab[name].type)  # a string vocabulary: plain when ASCII
            expect = all(v is None or str(v).isascii() for v in vals) if text else plain
            assert (builder._encode_plain(name, builder._lookup(name), vals) is not None) == expect, name


def test_collate_of_one_row_equals_the_general_path(tiny_prepared, builder):
    """collate's one-row path (Python values) == its Arrow path (the same row twice, row 0)."""
    for req in varied_requests(tiny_prepared, builder):
        row, _ = builder.rows([req])
        one = collate(row, builder.spec)
        general = collate(pa.concat_tables([row, row]), builder.spec).select(0)
        assert_batches_equal(one, general)
        # cut or padded to a width, as collate pads the session to the batch's longest
        column = row[F.seq_col(F.ITEM_ID)]
        for width in (None, 0, 1, 3, 80):
            want = pad_lists(pa.concat_arrays([column.chunk(0), column.chunk(0)]), width=width)[:1]
            assert pad_lists(column, width=width).tolist() == want.tolist()


def assert_batches_equal(a, b) -> None:
    for name, x in vars(a).items():
        y = getattr(b, name)
        if isinstance(x, dict):
            assert x.keys() == y.keys(), name
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (name, k)
        elif x is None:
            assert y is None, name
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), name


SPEC = tiny_spec()
TINY = dict(hidden=16, id_dim=8, side_dim=4, profile_dim=4, heads=4)


@pytest.mark.parametrize("name,options", [
    ("sdm:PSDMMAL", {}), ("sdm:PSDMMAL", {"fusion": "add"}), ("sdm:PSDMMAL", {"fusion": "concat"}),
    ("sdm:PSDMMAL", {"fusion": "multiply"}), ("sdm:PSDMMAL", {"lstm_layers": 2, "attn_scale": False}),
    ("sdm:PSDMMAL-N", {}), ("sdm:PSDMMAL-NoS", {}), ("sdm:PSDMMA", {}), ("sdm:SDMMA", {}),
])
def test_sdm_encode_users_equals_the_last_user_state(name, options):
    """SDM.encode_users (last position only, fused long-term attention) == user_states at each row's last event."""
    torch.manual_seed(0)
    model = build_model(name, SPEC, **TINY, **options).eval()
    cases = [random_batch(SPEC, b=4, t=9, l=6, seed=1, lengths=[9, 5, 1, 3], lt_lengths=[6, 0, 3, 1]),
             random_batch(SPEC, b=3, t=7, l=5, seed=2, lt_lengths=[0, 0, 0]),
             random_batch(SPEC, b=1, t=4, l=0, seed=3, lengths=[4], lt_lengths=[0])]
    for batch in cases:
        with torch.no_grad():
            torch.testing.assert_close(model.encode_users(batch), MatchingModel.encode_users(model, batch),
                                       atol=1e-6, rtol=1e-5)
    if model.long_term is not None:
        e_u = model.profile(cases[0].user)
        torch.testing.assert_close(model.long_term.fused(cases[0].long_term, e_u),
                                   model.long_term(cases[0].long_term, e_u)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,options", [
    ("sdm:PSDMMAL", {}), ("sdm:PSDMMAL", {"fusion": "concat"}), ("sdm:PSDMMAL", {"lstm_layers": 2, "attn_scale": False}),
    ("sdm:PSDMMAL-NoS", {}), ("sdm:PSDMMA", {}), ("sdm:SDMMA", {}),
])
def test_the_onnx_runtime_gives_pytorchs_user_vectors(name, options):
    """with_runtime(model, "onnx"): the exported encode_users, one row per call, equals PyTorch's on padded batches,
    rows without long-term behaviours, a batch whose long-term columns are empty, and after a pickle round trip."""
    import pickle

    from seqrec.inference import OnnxUserVectors, with_runtime

    torch.manual_seed(0)
    model = build_model(name, SPEC, **TINY, **options).eval()
    fast = with_runtime(model, "onnx")
    assert isinstance(fast.runtime, OnnxUserVectors) and model.runtime is None  # the model itself is left alone
    cases = [random_batch(SPEC, b=4, t=9, l=6, seed=1, lengths=[9, 5, 1, 3], lt_lengths=[6, 0, 3, 1]),
             random_batch(SPEC, b=3, t=7, l=5, seed=2, lt_lengths=[0, 0, 0]),
             random_batch(SPEC, b=1, t=4, l=0, seed=3, lengths=[4], lt_lengths=[0])]
    again = pickle.loads(pickle.dumps(fast))
    for batch in cases:
        with torch.no_grad():
            want = model.encode_users(batch)
            torch.testing.assert_close(fast.encode_users(batch), want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(again.encode_users(batch), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"row 1 has an empty session"):  # checked before the graph is called
        fast.encode_users(random_batch(SPEC, b=2, t=5, l=3, lengths=[5, 0]))
    fast.train()  # training takes PyTorch's general path (dropout, gradients)
    assert fast.encode_users(cases[0]).requires_grad


def test_runtime_choices_and_refusals_name_the_problem(tiny_artifacts):
    from seqrec.inference import with_runtime
    from seqrec.serving import load_model

    sdm = build_model("sdm:PSDMMAL", SPEC, **TINY)
    gru = build_model("gru4rec", SPEC, hidden=16, id_dim=8, side_dim=4)
    assert with_runtime(sdm, "auto").runtime is not None and with_runtime(sdm, "torch") is sdm
    assert with_runtime(gru, "auto") is gru  # the other matchers run in PyTorch
    with pytest.raises(ValueError, match="runtime='tensorrt'; choose one of"):
        with_runtime(sdm, "tensorrt")
    with pytest.raises(ValueError, match="is SDM's"):
        with_runtime(gru, "onnx")
    with pytest.raises(ValueError, match="CPU-only"):
        with_runtime(sdm, "onnx", device="cuda")
    assert load_model(tiny_artifacts["sdm"], "matcher").version["runtime"] == "onnx"
    assert load_model(tiny_artifacts["sdm"], "matcher", runtime="torch").version["runtime"] == "torch"


def test_sdm_encode_users_refuses_an_empty_session_and_trains_on_the_general_path():
    torch.manual_seed(0)
    model = build_model("sdm:PSDMMAL", SPEC, **TINY, dropout=0.0).eval()
    batch = random_batch(SPEC, b=2, t=5, l=3, lengths=[5, 0])
    with pytest.raises(ValueError, match=r"row 1 has an empty session \(seq_len=0\)"):
        model.encode_users(batch)
    ok = random_batch(SPEC, b=2, t=5, l=3)
    want = model.encode_users(ok)
    model.train()  # dropout 0: the general path gives the same vectors, with gradients
    got = model.encode_users(ok)
    assert got.requires_grad
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_encode_of_one_request_equals_the_general_path(tiny_prepared, tiny_artifacts, builder):
    """seqrec.serving.encode on one request at a time == the matcher's user states over the batch's rows."""
    from seqrec.serving import encode, load_model

    matcher = load_model(tiny_artifacts["sdm"], "matcher")
    reqs = varied_requests(tiny_prepared, builder)
    many, _ = builder.rows(reqs)
    with torch.no_grad():
        want = MatchingModel.encode_users(matcher.model.eval(), collate(many, builder.spec)).numpy()
    for i, req in enumerate(reqs):
        got = encode(builder, matcher, [req])
        assert got.rows.to_pylist() == many.slice(i, 1).to_pylist()
        torch.testing.assert_close(torch.from_numpy(got.vecs[0]), torch.from_numpy(want[i]), atol=1e-5, rtol=1e-5)
