"""The user-behaviour store (seqrec.store): both backends, SQLite and a real redis-server, pass the same tests:
atomic batches, trimming, acknowledged events that survive a crash, and stored behaviours that become, column for
column, the rows `seqrec data prepare` wrote for the same events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from serving_inputs import raw_events, request_for

from seqrec import features as F
from seqrec.serving import Event, Request, RequestLimits, RowBuilder
from seqrec.store import Retention, check_batch, merge, open_store, resolve_url

BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """A fresh store URL of each backend (Redis: an emptied database of the session's server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite'}"
    server = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(server.url).flushdb()
    return server.url


def test_events_come_back_in_time_then_arrival_order_with_ids_side_info_and_profile(store_url):
    with open_store(store_url) as store:
        n = store.append([Request(7, [Event(5, 200), Event("x-1", 100, "pv", {"category_id": 3}), Event(6, 200, "buy")],
                                  {"age": 2}),
                          Request("u2", [Event(1, 50)])])
        assert n == 4
        store.append([Request("7", [Event(8, 150)], {"gender": "f"})])  # 7 and "7" are one user, as in the vocabularies
        mine, other, nobody = store.recent([7, "u2", "nobody"])
        store.delete("u2")
        assert store.count("u2") == 0 and store.recent(["u2"])[0].events == [] and store.count(7) == 4
    assert [(e.item_id, e.timestamp, e.behavior, e.side) for e in mine.events] == [
        ("x-1", 100, "pv", {"category_id": 3}), (8, 150, None, {}), (5, 200, None, {}), (6, 200, "buy", {})]  # ties: arrival
    assert mine.user_id == 7 and mine.profile == {"age": 2, "gender": "f"}
    assert [e.item_id for e in other.events] == [1] and nobody.events == [] and nobody.profile == {}


def test_a_batch_with_one_bad_event_writes_nothing_and_the_error_names_it(store_url):
    good = Request("a", [Event(1, 100), Event(2, 110)])
    bad = Request("b", [Event(3, 100), Event(4, 105), Event(5, -5)])
    with open_store(store_url) as store:
        with pytest.raises(ValueError, match=r"^users\[1\]\.events\[2\]\.timestamp: negative timestamp -5"):
            store.append([good, bad])
        with pytest.raises(ValueError, match=r"users\[0\]\.events\[0\]\.item_id is 300 characters long"):
            store.append([Request("c", [Event("i" * 300, 1)])])
        with pytest.raises(ValueError, match="3 events in the batch are more than max_events=2"):
            store.append([good, Request("d", [Event(1, 1)])], RequestLimits(max_events=2))
        with pytest.raises(ValueError, match="no users in the batch"):
            store.append([])
        assert [store.count(u) for u in "abcd"] == [0, 0, 0, 0]
        assert [r.events for r in store.recent("abcd")] == [[], [], [], []]


def test_a_failure_inside_the_sqlite_transaction_rolls_the_whole_batch_back(tmp_path, monkeypatch):
    from seqrec.store import SQLiteStore

    store = open_store(f"sqlite:///{tmp_path / 'e.sqlite'}")
    calls = []

    def trim(user):  # fails at the second user, after the first user's rows are written
        calls.append(user)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(store, "_trim", trim)
    batch = [Request("a", [Event(1, 1)]), Request("b", [Event(2, 2)])]
    with pytest.raises(OSError, match="disk full"):
        store.append_once(batch, "key-1")
    monkeypatch.setattr(store, "_trim", SQLiteStore._trim.__get__(store))
    assert store.count("a") == store.count("b") == 0 and store.recent(["a"])[0].profile == {}
    assert store.append_once(batch, "key-1") == (2, False)  # the key was rolled back with the batch: the retry writes


def test_a_batch_sent_again_with_its_idempotency_key_is_stored_once(store_url):
    batch = [Request("a", [Event(1, 100), Event(2, 110)], {"age": 3}), Request("b", [Event(3, 100)])]
    with open_store(store_url) as store:
        assert store.append_once(batch, "k-1") == (3, False)
        assert store.append_once(batch, "k-1") == (3, True)  # a retry: nothing written again
        assert store.append_once([Request("a", [Event(9, 120)])], "k-1") == (3, True)  # the key decides, not the content
        assert store.append_once(batch, "k-2") == (3, False)  # another key: another batch
        assert store.append(batch) == 3  # no key: at least once, as before
        assert store.count("a") == 6 and store.count("b") == 3
        with pytest.raises(ValueError, match="Idempotency-Key of 201 characters"):
            store.append_once(batch, "k" * 201)
    with open_store(store_url) as store:  # the key is stored with the batch: a new connection (a restarted replica) knows it
        assert store.append_once(batch, "k-2") == (3, True)
        assert store.count("a") == 6 and [e.item_id for e in store.recent(["a"])[0].events] == [1, 1, 1, 2, 2, 2]


def test_the_store_trims_to_the_window_keeps_the_last_few_and_caps_the_count(store_url):
    r = Retention(window_s=1000, keep_last=3, max_events=10)
    with open_store(store_url, r) as store:
        store.append([Request("w", [Event(i, t) for i, t in enumerate([0, 10, 20, 500, 1500, 1600])])])
        # newest 1600: the window starts at 600, so 0, 10 and 20 go; 500 stays as one of the last keep_last=3
        assert [e.timestamp for e in store.recent(["w"])[0].events] == [500, 1500, 1600] and store.count("w") == 3
        store.append([Request("w", [Event(9, 100_000)])])  # a user back after a long pause keeps the last keep_last
        assert [e.timestamp for e in store.recent(["w"])[0].events] == [1500, 1600, 100_000]
        store.append([Request("w", [Event(i, 100_001 + i) for i in range(25)])])  # never more than max_events
        kept = store.recent(["w"])[0].events
        assert store.count("w") == 10 and [e.timestamp for e in kept] == list(range(100_016, 100_026))
    assert r.first_kept([0, 10, 20, 500, 1500, 1600]) == 3 and Retention().first_kept([]) == 0


def test_the_retention_follows_the_protocol_and_refuses_bad_values():
    from seqrec.data.sessions import Protocol

    r = Retention.for_protocol(Protocol(long_term_s=7 * 86_400, hist_len=20, max_session_len=50), idle_ttl_s=3600)
    assert (r.window_s, r.keep_last, r.max_events, r.idle_ttl_s) == (8 * 86_400, 70, 1000, 3600)
    with pytest.raises(ValueError, match="keep_last=5 is more than max_events=4"):
        Retention(keep_last=5, max_events=4)
    with pytest.raises(ValueError, match=r"idle_ttl_s=0: seconds >= 1"):
        Retention(idle_ttl_s=0)


def test_idle_users_expire(store_url):
    with open_store(store_url, Retention(idle_ttl_s=1)) as store:
        if hasattr(store, "PURGE_EVERY_S"):
            store.PURGE_EVERY_S = 0.0
        store.append([Request("idle", [Event(1, 10)], {"age": 1})])
        assert store.count("idle") == 1
        time.sleep(1.3)
        assert store.recent(["idle"])[0].events == []
        store.append([Request("busy", [Event(2, 10)])])  # SQLite purges idle users as it appends
        assert store.count("idle") == 0 and store.count("busy") == 1


_APPEND_AND_HANG = """
import sys, time
from seqrec.serving import Event, Request
from seqrec.store import open_store
store = open_store(sys.argv[1])
store.append([Request("crash", [Event(i, 1000 + i) for i in range(5)])])
print("ack", flush=True)
time.sleep(600)
"""


def test_acknowledged_events_survive_a_killed_sqlite_writer(tmp_path):
    """A replica killed (SIGKILL) right after acknowledging: its events are in the file for the next process."""
    url = f"sqlite:///{tmp_path / 'e.sqlite'}"
    proc = subprocess.Popen([sys.executable, "-c", _APPEND_AND_HANG, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ack"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with open_store(url) as store:
        assert [e.item_id for e in store.recent(["crash"])[0].events] == list(range(5))
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_acknowledged_events_survive_a_new_client_and_a_killed_redis_server(redis_server):
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    with open_store(redis_server.url) as store:
        assert store.durability == {"appendonly": "yes", "appendfsync": "always"}
        store.append([Request("crash", [Event(i, 1000 + i) for i in range(5)], {"age": 4})])
    with open_store(redis_server.url) as other:  # another client (another replica)
        assert [e.item_id for e in other.recent(["crash"])[0].events] == list(range(5))
    redis_server.kill()  # SIGKILL: no save on shutdown; only the fsynced append-only file remains
    redis_server.start()
    with open_store(redis_server.url) as store:
        back = store.recent(["crash"])[0]
        assert [e.item_id for e in back.events] == list(range(5)) and back.profile == {"age": 4}


@pytest.mark.parametrize("split", ["val", "test"])
def test_stored_behaviours_become_the_rows_prepare_wrote(store_url, tiny_prepared, split):
    """Each user's events up to a prepared row's last input event, appended to the store, read back (bounded and
    trimmed by the protocol's retention) and built by serving's RowBuilder: the prepared row, column for column."""
    from seqrec.data.prepare import read_split

    builder = RowBuilder(tiny_prepared)
    prepared = read_split(tiny_prepared, split).slice(0, 40)
    rows = prepared.to_pylist()
    ev = raw_events(tiny_prepared.parent)
    full = [request_for(r, ev, builder) for r in rows]
    assert len({str(r.user_id) for r in full}) == len(full)
    retention = Retention.for_protocol(builder.protocol)
    with open_store(store_url, retention) as store:
        for i in range(0, len(full), 10):
            store.append(full[i:i + 10], RequestLimits(max_events=100_000))
        stored = store.recent([r[F.USER_RAW] for r in rows])
        counts = [store.count(r.user_id) for r in full]
    if split == "test":  # the 9-day data's test rows reach past the 8-day window: it trimmed old events ...
        assert sum(counts) < sum(len(r.events) for r in full)
    assert all(len(s.events) == c for s, c in zip(stored, counts))
    served, reports = builder.rows(stored)  # ... and the rows are still prepare's
    for name in prepared.column_names:
        if name not in (F.TARGETS, F.USER_RAW):
            assert served[name].to_pylist() == prepared[name].to_pylist(), name
    assert served[F.USER_RAW].to_pylist() == [str(r[F.USER_RAW]) for r in rows]
    assert all(s.profile == r.profile for s, r in zip(stored, full))


def test_bulk_load_warms_the_store_with_each_users_recent_behaviours(store_url, tiny_prepared):
    from seqrec.store import load_dataset

    builder = RowBuilder(tiny_prepared)
    retention = Retention.for_protocol(builder.protocol)
    ev = raw_events(tiny_prepared.parent)
    with open_store(store_url, retention) as store:
        got = load_dataset(store, tiny_prepared, tiny_prepared.parent / "events", "synth", batch_events=3000)
        users = sorted(set(ev[F.USER_ID].to_pylist()))
        assert got["users"] == len(users) and got["events_read"] == ev.num_rows
        assert 0 < got["events_written"] < ev.num_rows and sum(store.count(u) for u in users) == got["events_written"]
        sample = users[:: max(1, len(users) // 12)]
        stored = store.recent(sample)
    table = ev.to_pylist()
    whole = []
    for u in sample:
        mine = [e for e in table if e[F.USER_ID] == u]
        whole.append(Request(u, [Event(e[F.ITEM_ID], e[F.TIMESTAMP], e[F.BEHAVIOR], {n: e[n] for n in builder.item_names[1:]})
                                 for e in mine], {n: mine[-1][n] for n in builder.user_names[1:]}))
    for s, w in zip(stored, whole):  # the store holds the tail the retention keeps of each user's events
        assert s.events == retention.select(w.events) and s.profile == w.profile
    # and the row of the stored tail is the row of the whole history
    assert builder.rows(stored)[0].to_pylist() == builder.rows(whole)[0].to_pylist()


def test_request_events_come_after_the_stored_ones_for_that_request_only():
    stored = Request("u", [Event(1, 100), Event(2, 200)], {"age": 1, "gender": "f"})
    req = Request("u", [Event(3, 200), Event(4, 150)], {"age": 5})
    both = merge(stored, req)
    assert [e.item_id for e in both.events] == [1, 2, 3, 4] and both.profile == {"age": 5, "gender": "f"}
    assert len(stored.events) == 2  # not written into the stored request


def test_store_urls_name_the_backends_and_relative_sqlite_paths_resolve(tmp_path):
    with pytest.raises(ValueError, match=r"the scheme must be one of \('sqlite', 'redis', 'rediss'\)"):
        open_store("postgres://localhost/db")
    with pytest.raises(ValueError, match="sqlite:///relative/file.sqlite or sqlite:////absolute"):
        open_store("sqlite://host/file.sqlite")
    assert resolve_url("sqlite:///a/e.sqlite", tmp_path) == f"sqlite:///{tmp_path / 'a' / 'e.sqlite'}"
    assert resolve_url(f"sqlite:///{tmp_path}/e.sqlite") == f"sqlite:///{tmp_path}/e.sqlite"
    assert resolve_url("redis://h:1/0") == "redis://h:1/0"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with open_store("sqlite:///rel/events.sqlite") as store:
            store.append([Request(1, [Event(1, 1)])])
        assert (tmp_path / "rel" / "events.sqlite").exists()
    finally:
        os.chdir(old)


def test_check_batch_prefixes_the_user_and_passes_a_good_batch():
    check_batch([Request(1, [Event(1, 1)]), Request(2, [], {"age": 3})])  # a profile alone is fine
    with pytest.raises(ValueError, match=r"^users\[1\]\.user_id is 300 characters long"):
        check_batch([Request(1, []), Request("u" * 300, [])])


def test_seqrec_store_load_warms_the_store_seqrec_serve_reads_by_default(tiny_prepared, tmp_path, capsys):
    from seqrec.cli import default_store, main

    url = f"sqlite:///{tmp_path / 'warm.sqlite'}"
    assert main(["store", "load", "--data", str(tiny_prepared), "--source", str(tiny_prepared.parent / "events"),
                 "--format", "synth", "--store", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stored ") and f"in {url}" in out and "last 8 days, at least 70 and at most 1000 events" in out
    ev = raw_events(tiny_prepared.parent)
    with open_store(url) as store:
        assert store.count(ev[F.USER_ID][0].as_py()) > 0
    assert default_store(tiny_prepared) == f"sqlite:///{tiny_prepared.resolve() / 'events.sqlite'}"
