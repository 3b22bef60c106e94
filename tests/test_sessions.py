"""The vectorised sessionizer / long-term builder / splitter against the slow per-user reference."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from eventgen import DAY, PROFILE, SIDE, T0, assert_splits_equal, random_events

from seqrec import features as F
from seqrec.data import sessions as S
from seqrec.data.prepare import prepare, read_split, resolve_config
from seqrec.data.reference import reference_prepare
from seqrec.data.table_source import TableSource


def _prepare_local(tmp_path, table, name="out", has_session_id=False, side=SIDE, profile=PROFILE, **opts):
    src = TableSource(table, side, profile, has_session_id=has_session_id)
    cfg = resolve_config(src, **opts)
    prepare(src, tmp_path / name, cfg, engine="local", progress=False)
    return {s: read_split(tmp_path / name, s).to_pylist() for s in ("train", "val", "test")}, cfg


@pytest.mark.parametrize("split", ["dataset-day", "user-day", "loo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pipeline_equals_reference(tmp_path, split, seed):
    sid = seed == 1
    table = random_events(seed, n_users=60, session_ids=sid, string_ids=seed == 2)
    got, cfg = _prepare_local(tmp_path, table, has_session_id=sid, split=split, min_item_count=2, max_user_events=110)
    ref = reference_prepare(table.to_pandas(), cfg, SIDE, PROFILE, has_session_id=sid)
    assert_splits_equal(got, ref)


def test_reference_agreement_with_other_parameters(tmp_path):
    table = random_events(5, n_users=50)
    opts = dict(split="user-day", session_gap_s=3600, max_session_len=7, long_term_s=2 * DAY, long_term_max=3,
                hist_len=5, test_fraction=0.5, val=False, min_item_count=1, max_user_events=0, tz_offset_hours=8)
    got, cfg = _prepare_local(tmp_path, table, **opts)
    ref = reference_prepare(table.to_pandas(), cfg, SIDE, PROFILE)
    assert got == ref
    assert max(r[F.SEQ_LEN] for r in got["train"]) == 7
    assert max(len(r[F.long_term_col(F.ITEM_ID)]) for r in got["train"]) <= 3


@pytest.mark.parametrize("split,hours", [("dataset-day", 24), ("user-day", 3), ("loo", 48)])
def test_training_horizon_targets_equal_reference(tmp_path, split, hours):
    table = random_events(7, n_users=60)
    got, cfg = _prepare_local(tmp_path, table, split=split, min_item_count=1, max_user_events=0,
                              train_horizon_s=hours * 3600)
    ref = reference_prepare(table.to_pandas(), cfg, SIDE, PROFILE)
    assert_splits_equal(got, ref)
    assert sum(len(r[F.TARGETS]) for r in got["train"]) > 0


def test_training_horizon_targets_stop_at_the_horizon_and_the_training_window(tmp_path):
    # day 0: sessions A (0, 60 s) and B (1 h later); day 1: session C; day 2 (validation) and 3 (test)
    ts = [T0, T0 + 60, T0 + 3600, T0 + 3660, T0 + DAY, T0 + DAY + 60, T0 + 2 * DAY, T0 + 2 * DAY + 60,
          T0 + 3 * DAY, T0 + 3 * DAY + 60]
    items = [100, 101, 102, 100, 103, 104, 105, 106, 107, 108]
    table = _one_user(ts, items)
    got, _ = _prepare_local(tmp_path, table, side=(), profile=(), split="dataset-day", min_item_count=1,
                            train_horizon_s=DAY)
    import pyarrow.parquet as pq

    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    targets = [[raw[c] for c in r[F.TARGETS]] for r in got["train"]]
    # A: B's items (100 once, deduplicated), then C's first (T0 + DAY, less than a day after A's last event + 60 s)
    # but not C's second; B: C's two; C: nothing (the validation day is not training data)
    assert targets == [[102, 100, 103], [103, 104], []]
    off, _ = _prepare_local(tmp_path, table, name="off", side=(), profile=(), split="dataset-day", min_item_count=1)
    assert all(r[F.TARGETS] == [] for r in off["train"])


def _one_user(ts, items=None, sid=None):
    n = len(ts)
    cols = {
        F.USER_ID: pa.array([7] * n, pa.int64()),
        F.ITEM_ID: pa.array(items if items is not None else list(range(100, 100 + n)), pa.int64()),
        F.TIMESTAMP: pa.array(ts, pa.int64()),
        F.BEHAVIOR: pa.array(["pv"] * n),
    }
    if sid is not None:
        cols[F.SESSION_ID] = pa.array(sid, pa.int64())
    return pa.table(cols)


def _block_sessions(table, has_sid=False, **proto):
    """Session lengths of one user's events (already in time order)."""
    n = table.num_rows
    block = S.Block(
        ts=table[F.TIMESTAMP].to_numpy(),
        item_feats=np.zeros((1, n), np.int32),
        behavior=np.zeros(n, np.int32),
        user_feats=np.zeros((1, n), np.int32),
        ustart=np.array([0]),
        uend=np.array([n]),
        session_key=table[F.SESSION_ID].to_numpy() if has_sid else None,
    )
    starts = S.sessionize(block, S.Protocol(**proto))
    return [int(x) for x in np.diff(np.append(starts, n))]


def test_session_boundaries_exact():
    # gap of exactly 600 s starts a new session (>= 10 minutes), 599 s does not
    assert _block_sessions(_one_user([0, 599, 1199, 1200])) == [2, 2]
    # 50 events in one session, the 51st starts another
    assert _block_sessions(_one_user(list(range(0, 50 * 60, 60)))) == [50]
    assert _block_sessions(_one_user(list(range(0, 51 * 60, 60)))) == [50, 1]
    assert _block_sessions(_one_user(list(range(0, 101 * 60, 60)))) == [50, 50, 1]
    # ties keep input order and never split a session
    assert _block_sessions(_one_user([5, 5, 5, 5])) == [4]
    # a session-id change splits even without a gap
    assert _block_sessions(_one_user([0, 1, 2, 3], sid=[1, 1, 2, 2]), has_sid=True) == [2, 2]
    # a single event is a session of its own
    assert _block_sessions(_one_user([42])) == [1]
    # the max length restarts after a gap split
    assert _block_sessions(_one_user([0, 1, 2, 1000, 1001, 1002, 1003]), max_session_len=3) == [3, 3, 1]


def test_ties_follow_input_order(tmp_path):
    # three events in the same second: the session keeps them in input order
    t = _one_user([T0, T0, T0, T0 + 10], items=[103, 101, 102, 104])
    got, _ = _prepare_local(tmp_path, t, side=(), profile=(), split="loo", val=False, min_item_count=1)
    assert got["train"], "expected training rows"
    # decode codes back to raw ids with the vocabulary
    import pyarrow.parquet as pq

    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    first = [raw[c] for c in got["train"][0][F.seq_col(F.ITEM_ID)]]
    assert first == [103, 101, 102]  # the last event is held out (leave-one-out)


def test_long_term_window_and_distinct(tmp_path):
    # user history: items at days 0..9, a session at day 9: long-term = days 2..8 (7 days before), distinct, most recent first
    ts = [T0 + d * DAY for d in range(9)] + [T0 + 9 * DAY, T0 + 9 * DAY + 60]
    items = [100, 101, 102, 103, 104, 103, 105, 106, 105, 200, 201]
    t = _one_user(ts, items)
    got, _ = _prepare_local(tmp_path, t, side=(), profile=(), split="loo", val=False, min_item_count=1)
    import pyarrow.parquet as pq

    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    # test row: input = all but the last event; the short-term session is [200] at day 9
    row = got["test"][0]
    assert [raw[c] for c in row[F.seq_col(F.ITEM_ID)]] == [200]
    lt = [raw[c] for c in row[F.long_term_col(F.ITEM_ID)]]
    # events at day 2..8 are within 7 days (day 2 is exactly 7 days before: included); 105 and 103 once each
    assert lt == [105, 106, 103, 104, 102]
    assert row[F.TARGETS] == [F.UNKNOWN]  # 201 occurs only as the held-out event: unseen in training
    assert [raw[c] for c in row[F.hist_col(F.ITEM_ID)]] == items[:9]


def test_long_term_excludes_events_tied_with_session_start(tmp_path):
    # a 3-event run capped at max_session_len=2: the second session starts at a timestamp shared with the first
    t = _one_user([T0, T0 + 5, T0 + 5, T0 + 5 + 3600], items=[100, 101, 102, 103])
    got, _ = _prepare_local(tmp_path, t, side=(), profile=(), split="loo", val=False, min_item_count=1,
                            max_session_len=2, min_train_len=1)
    second = [r for r in got["train"] if r[F.SEQ_LEN] == 1 and r[F.SESSION_START] == T0 + 5][0]
    # event 101 (same second as the session start) is not long-term; event 100 (5 s earlier) is
    assert len(second[F.long_term_col(F.ITEM_ID)]) == 1


def test_empty_long_term_is_an_empty_list(tmp_path):
    got, _ = _prepare_local(tmp_path, _one_user([T0, T0 + 60]), side=(), profile=(), split="loo", val=False, min_item_count=1)
    assert got["train"] == [] or all(isinstance(r[F.long_term_col(F.ITEM_ID)], list) for r in got["train"])
    assert got["test"][0][F.long_term_col(F.ITEM_ID)] == []


def test_no_leakage(tmp_path):
    table = random_events(11, n_users=80)
    for split in ("dataset-day", "user-day", "loo"):
        got, cfg = _prepare_local(tmp_path, table, name=split, split=split, min_item_count=1, max_user_events=0)
        for s, rows in got.items():
            for r in rows:
                start = r[F.SESSION_START]
                # long-term and history strictly before / not after the session start
                assert all(t <= start for t in r[F.hist_col(F.TIMESTAMP)])
                assert r[F.seq_col(F.TIMESTAMP)][0] == start
        # no test-window event in a training row: every training row ends before its user's first test event
        by_user = {}
        for r in got["test"] + got["val"]:
            first_eval = r[F.seq_col(F.TIMESTAMP)][-1]  # last input event of the eval row
            by_user.setdefault(r[F.USER_RAW], []).append(first_eval)
        if split == "dataset-day":
            test_day = int((pc.max(table[F.TIMESTAMP]).as_py()) // DAY)
            for r in got["train"]:
                assert max(r[F.seq_col(F.TIMESTAMP)]) < (test_day - 1) * DAY  # before the validation day too
        for r in got["train"]:
            if r[F.USER_RAW] in by_user:
                # training rows end before the user's validation/test windows begin
                assert max(r[F.seq_col(F.TIMESTAMP)]) <= min(by_user[r[F.USER_RAW]])


def test_long_term_strictly_before_session_start(tmp_path):
    table = random_events(3, n_users=60)
    got, cfg = _prepare_local(tmp_path, table, split="user-day", min_item_count=1, max_user_events=0, long_term_max=1000)
    # rebuild each user's (timestamp, item) events from the input and check every long-term item occurs before start
    ev = table.to_pandas().sort_values([F.USER_ID, F.TIMESTAMP], kind="stable")
    import pyarrow.parquet as pq

    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    checked = 0
    for s in ("train", "val", "test"):
        for r in got[s]:
            u = ev[ev[F.USER_ID] == r[F.USER_RAW]]
            start = r[F.SESSION_START]
            window = u[(u[F.TIMESTAMP] < start) & (u[F.TIMESTAMP] >= start - 7 * DAY)]
            allowed = set(window[F.ITEM_ID])
            for c in r[F.long_term_col(F.ITEM_ID)]:
                assert raw[c] in allowed
                checked += 1
    assert checked > 100


def test_eval_rows_follow_sdm_4_1(tmp_path):
    # 8 events on the last day: first 2 (25%) are input, the other 6 deduplicated are the truth
    ts = [T0 + i * 60 for i in range(4)] + [T0 + DAY + i * 60 for i in range(8)]
    items = [104, 105, 106, 107] + [104, 105, 106, 106, 107, 104, 108, 109]
    got, _ = _prepare_local(tmp_path, _one_user(ts, items), side=(), profile=(), split="dataset-day", val=False, min_item_count=1)
    import pyarrow.parquet as pq

    vocab = pq.read_table(tmp_path / "out" / "vocab" / f"{F.ITEM_ID}.parquet").to_pydict()
    raw = dict(zip(vocab["code"], vocab["raw"]))
    (row,) = got["test"]
    assert [raw[c] for c in row[F.seq_col(F.ITEM_ID)]] == [104, 105]
    # 106 twice → once; 104 is truth even though it is in the input (exclusion is an evaluation option);
    # 108 and 109 appear only on the test day: unseen in training → unknown code 1, one entry per raw item
    code = {v: k for k, v in raw.items()}
    assert row[F.TARGETS] == [code[106], code[107], code[104], F.UNKNOWN, F.UNKNOWN]
    assert len(got["train"]) == 1 and got["train"][0][F.SEQ_LEN] == 4


def test_protocol_validation_messages():
    with pytest.raises(ValueError, match="split='week' is not one of"):
        S.Protocol(split="week")
    with pytest.raises(ValueError, match="test_fraction=1.5 must be in"):
        S.Protocol(test_fraction=1.5)
    with pytest.raises(ValueError, match="max_session_len=0 must be >= 1"):
        S.Protocol(max_session_len=0)
    with pytest.raises(ValueError, match="train_horizon_s=-1 must be >= 0"):
        S.Protocol(train_horizon_s=-1)


def test_serving_cut_is_the_latest_session():
    # serving input: the session that holds the user's last event, even of length 1
    for ts, expected in (([0, 60, 1000, 1060], (2, 4)), ([0, 60, 5000], (2, 3)), ([7], (0, 1))):
        n = len(ts)
        block = S.Block(ts=np.array(ts, np.int64), item_feats=np.zeros((1, n), np.int32), behavior=np.zeros(n, np.int32),
                        user_feats=np.zeros((1, n), np.int32), ustart=np.array([0]), uend=np.array([n]))
        cuts = S.serving_cuts(block, S.sessionize(block, S.Protocol()))
        assert (int(cuts.start[0]), int(cuts.end[0])) == expected
