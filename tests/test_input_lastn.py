"""The last-n input (``--input last-n``, issue #16): every row's input is the last N events before its target.

The rows `seqrec data prepare` builds in this mode are checked against a hand-built log with the rows
written out by hand, and against the slow per-target reference (``seqrec.data.reference.last_n_input``)
on random logs; the N bounds, the default (session) mode, the option checks, and serving rows (which
follow the manifest's mode) are checked too.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eventgen import PROFILE, SIDE, assert_splits_equal, random_events

from seqrec import features as F
from seqrec.data import sessions as S
from seqrec.data.prepare import load_manifest, prepare, read_split, resolve_config
from seqrec.data.reference import reference_prepare
from seqrec.data.table_source import TableSource

ITEM, HIST, LT = F.seq_col(F.ITEM_ID), F.hist_col(F.ITEM_ID), F.long_term_col(F.ITEM_ID)


def _prepare(tmp_path, table, name="out", side=SIDE, profile=PROFILE, has_session_id=False, **opts):
    src = TableSource(table, side, profile, has_session_id=has_session_id)
    cfg = resolve_config(src, **opts)
    prepare(src, tmp_path / name, cfg, engine="local", progress=False)
    return {s: read_split(tmp_path / name, s).to_pylist() for s in ("train", "val", "test")}, cfg


# --- a hand-built log -------------------------------------------------------------------------------

# user 1: sessions [A B] [C D E] [F G] [H] (gaps >= 10 min between them); D is A again (item 10).
# user 2: one session X Y Z, its timestamps between user 1's.
LOG = [
    (1, 10, 0), (1, 11, 60),
    (1, 12, 10_000), (1, 10, 10_060), (1, 13, 10_120),
    (1, 14, 50_000), (1, 15, 50_060),
    (1, 16, 90_000),
    (2, 20, 10_030), (2, 21, 10_090), (2, 22, 10_150),
]


def _log() -> pa.Table:
    u, i, t = zip(*LOG)
    return pa.table({F.USER_ID: pa.array(u, pa.int64()), F.ITEM_ID: pa.array(i, pa.int64()),
                     F.TIMESTAMP: pa.array(t, pa.int64()), F.BEHAVIOR: pa.array(["pv"] * len(u))})


def _raw(tmp_path, rows: list[dict]) -> list[dict]:
    """Rows with item codes decoded to raw ids (None = unknown) and only the input / truth columns."""
    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    return [{"user": r[F.USER_RAW], "seq": [raw.get(c) for c in r[ITEM]], "hist": [raw.get(c) for c in r[HIST]],
             "lt": [raw.get(c) for c in r[LT]], "truth": [raw.get(c) for c in r[F.TARGETS]]} for r in rows]


# per N: the rows written out by hand from the definition (the last N events before the target; the part in
# the session of the last input event is `seq`, the rest `hist` oldest first and `lt` distinct, newest first).
# Leave-one-out: user 1's test target is H, validation G, training window A..F; user 2's Z, Y, X.
EXPECTED = {
    4: {
        # [A B]: first target B, window [A]. [C D E]: first target D, window [A B C] → rest [A B].
        # [F G] has one training event (G is validation): no row.
        "train": [dict(user=1, seq=[10, 11], hist=[], lt=[], truth=[]),
                  dict(user=1, seq=[12, 10, 13], hist=[10, 11], lt=[11, 10], truth=[])],
        # G: window [C D E F], last input F → seq [F]; Y: window [X]
        "val": [dict(user=1, seq=[14], hist=[12, 10, 13], lt=[13, 10, 12], truth=[None]),
                dict(user=2, seq=[20], hist=[], lt=[], truth=[None])],
        # H: window [D E F G] → seq [F G], rest [D E]; Z: window [X Y]
        "test": [dict(user=1, seq=[14, None], hist=[10, 13], lt=[13, 10], truth=[None]),
                 dict(user=2, seq=[20, None], hist=[], lt=[], truth=[None])],
    },
    2: {
        # [C D E]: first target D, window [B C] → rest [B]
        "train": [dict(user=1, seq=[10, 11], hist=[], lt=[], truth=[]),
                  dict(user=1, seq=[12, 10, 13], hist=[11], lt=[11], truth=[])],
        # G: window [E F] → seq [F], rest [E]
        "val": [dict(user=1, seq=[14], hist=[13], lt=[13], truth=[None]),
                dict(user=2, seq=[20], hist=[], lt=[], truth=[None])],
        "test": [dict(user=1, seq=[14, None], hist=[], lt=[], truth=[None]),
                 dict(user=2, seq=[20, None], hist=[], lt=[], truth=[None])],
    },
}


@pytest.mark.parametrize("n", sorted(EXPECTED))
def test_hand_built_log_gives_the_rows_written_by_hand(tmp_path, n):
    got, cfg = _prepare(tmp_path, _log(), side=(), profile=(), split="loo", min_item_count=1, max_user_events=0,
                        input="last-n", input_events=n)
    cap = max(20, n)  # the caps become at least N
    assert (cfg.protocol.input, cfg.protocol.input_events, cfg.protocol.long_term_max, cfg.protocol.hist_len) == ("last-n", n, cap, cap)
    for split in ("train", "val", "test"):
        assert _raw(tmp_path, got[split]) == EXPECTED[n][split], split
    # the reference builds the same rows
    assert reference_prepare(_log().to_pandas(), cfg) == got


def test_hand_built_log_in_the_session_protocol_is_unchanged(tmp_path):
    # the default: the session of the last input event, plus 7 days of long-term behaviours and 20 events of history
    got, cfg = _prepare(tmp_path, _log(), side=(), profile=(), split="loo", min_item_count=1, max_user_events=0)
    assert cfg.protocol.input == "session"
    test = _raw(tmp_path, got["test"])
    assert test[0] == dict(user=1, seq=[14, None], hist=[10, 11, 12, 10, 13], lt=[13, 10, 12, 11], truth=[None])


# --- the pipeline against the slow per-target reference on random logs --------------------------------


@pytest.mark.parametrize("split", ["dataset-day", "user-day", "loo"])
@pytest.mark.parametrize("seed,n", [(0, 3), (1, 7), (2, 50)])
def test_last_n_pipeline_equals_the_per_target_reference(tmp_path, split, seed, n):
    sid = seed == 1
    table = random_events(seed, n_users=60, session_ids=sid, string_ids=seed == 2)
    got, cfg = _prepare(tmp_path, table, has_session_id=sid, split=split, min_item_count=2, max_user_events=110,
                        input="last-n", input_events=n)
    ref = reference_prepare(table.to_pandas(), cfg, SIDE, PROFILE, has_session_id=sid)
    assert_splits_equal(got, ref)


@pytest.mark.parametrize("n", [1, 5, 50])
def test_the_input_never_exceeds_n_events(tmp_path, n):
    table = random_events(3, n_users=60)
    got, cfg = _prepare(tmp_path, table, split="loo", min_item_count=1, max_user_events=0, input="last-n", input_events=n)
    ev = table.to_pandas().sort_values([F.USER_ID, F.TIMESTAMP], kind="stable")
    before = {u: len(g) - 1 for u, g in ev.groupby(F.USER_ID)}  # events before each user's test target
    for r in got["test"]:  # the whole input (history, then session) is the last min(N, events before) events
        assert len(r[HIST]) + r[F.SEQ_LEN] == min(n, before[r[F.USER_RAW]])
        assert len(r[F.hist_col(F.TIMESTAMP)]) == len(r[HIST]) and 1 <= r[F.SEQ_LEN] <= n
    for split in ("train", "val", "test"):
        for r in got[split]:
            assert len(r[HIST]) <= (n - 1 if split == "train" else n - r[F.SEQ_LEN])
            for f in (F.ITEM_ID, *SIDE):  # the long-term subsets are the distinct values of the history
                lt = r[F.long_term_col(f)]
                assert len(lt) == len(set(lt)) <= len(r[HIST])
            assert set(r[LT]) == set(r[HIST])
            assert r[F.hist_col(F.TIMESTAMP)] == sorted(r[F.hist_col(F.TIMESTAMP)])
            if r[HIST]:  # history then session: one sequence in time order
                assert r[F.hist_col(F.TIMESTAMP)][-1] <= r[F.seq_col(F.TIMESTAMP)][0]
    assert any(r[F.SEQ_LEN] + len(r[HIST]) == n for r in got["test"]) or n == 50


def test_the_default_is_the_session_protocol_and_the_manifest_records_the_mode(tmp_path):
    table = random_events(4, n_users=40)
    default, cfg = _prepare(tmp_path, table, "default", split="loo", min_item_count=1)
    explicit, _ = _prepare(tmp_path, table, "explicit", split="loo", min_item_count=1, input="session")
    assert cfg.protocol.input == "session" and (cfg.protocol.long_term_max, cfg.protocol.hist_len) == (20, 20)
    assert default == explicit
    last_n, _ = _prepare(tmp_path, table, "lastn", split="loo", min_item_count=1, input="last-n")
    proto = load_manifest(tmp_path / "lastn")["config"]["protocol"]
    assert (proto["input"], proto["input_events"], proto["long_term_max"], proto["hist_len"]) == ("last-n", 50, 50, 50)
    assert load_manifest(tmp_path / "default")["config"]["protocol"]["input"] == "session"
    assert last_n != default
    # an older manifest without the fields reads as the session protocol
    old = dict(proto)
    del old["input"], old["input_events"]
    old.update(long_term_max=20, hist_len=20)
    assert S.Protocol(**old).input == "session"


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="input='nope' is not one of"):
        S.Protocol(input="nope")
    with pytest.raises(ValueError, match=r"needs long_term_max >= 50 \(got 20\).*--long-term-max"):
        S.Protocol(input="last-n")
    with pytest.raises(ValueError, match=r"needs hist_len >= 10 \(got 5\).*--hist-len"):
        S.Protocol(input="last-n", input_events=10, long_term_max=10, hist_len=5)
    with pytest.raises(ValueError, match="input_events=0 must be an integer >= 1"):
        S.Protocol(input="last-n", input_events=0)
    src = TableSource(_log(), (), ())
    with pytest.raises(ValueError, match="needs long_term_max >= 50"):
        resolve_config(src, input="last-n", long_term_max=20)  # an explicit cap below N is not raised silently
    with pytest.raises(ValueError, match=r"--input-events\) needs input='last-n'"):
        resolve_config(src, input_events=30)
    with pytest.raises(ValueError, match="--long-term-days.*no effect with input='last-n'"):
        resolve_config(src, input="last-n", long_term_s=86_400)
    assert resolve_config(src, input="last-n", input_events=8, long_term_max=30).protocol.long_term_max == 30


def test_cli_prepare_last_n(tmp_path, capsys):
    from seqrec.cli import main

    path = tmp_path / "events.csv"
    path.write_text("uid,sku,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in LOG))
    out = tmp_path / "out"
    assert main(["data", "prepare", str(path), "--format", "csv", "--column", "user_id=uid", "--column", "item_id=sku",
                 "--column", "timestamp=ts", "--split", "loo", "--min-item-count", "1", "--input", "last-n",
                 "--input-events", "4", "--engine", "local", "--no-progress", "--out", str(out)]) == 0
    proto = load_manifest(out)["config"]["protocol"]
    assert (proto["input"], proto["input_events"], proto["long_term_max"]) == ("last-n", 4, 20)
    test = read_split(out, "test").to_pylist()
    assert [len(r[HIST]) + r[F.SEQ_LEN] for r in test] == [4, 2]


# --- serving and the store follow the manifest's mode -------------------------------------------------


def test_serving_rows_follow_the_manifest_last_n_mode(tmp_path):
    from seqrec.serving import Event, Request, RowBuilder
    from seqrec.store import Retention

    table = random_events(6, n_users=50)
    got, cfg = _prepare(tmp_path, table, split="loo", min_item_count=1, max_user_events=0, input="last-n", input_events=7)
    builder = RowBuilder(tmp_path / "out")
    assert builder.protocol == cfg.protocol
    ev = table.to_pandas().assign(_row=range(table.num_rows)).sort_values([F.USER_ID, F.TIMESTAMP, "_row"], kind="stable")
    by_user = {u: g.to_dict("records") for u, g in ev.groupby(F.USER_ID)}
    requests = [Request(r[F.USER_RAW], [Event(e[F.ITEM_ID], e[F.TIMESTAMP], e[F.BEHAVIOR], {f: e[f] for f in SIDE})
                                        for e in by_user[r[F.USER_RAW]][:-1]],  # everything before the test target
                        {f: by_user[r[F.USER_RAW]][0][f] for f in PROFILE})
                for r in got["test"]]
    served, _ = builder.rows(requests)
    for name in served.column_names:
        if name not in (F.TARGETS, F.USER_RAW):
            assert served[name].to_pylist() == [r[name] for r in got["test"]], name
    # a store keeps at least the N events a served row reads, however old
    assert Retention.for_protocol(cfg.protocol).keep_last >= cfg.protocol.input_events
