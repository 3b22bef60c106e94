"""Random event tables full of the edge cases the protocol must get right (for tests only)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seqrec import features as F

DAY = 86_400
T0 = 1_511_539_200  # 2017-11-25 00:00 China time


def random_events(seed: int, n_users: int = 40, n_items: int = 30, days: int = 10, session_ids: bool = False,
                  string_ids: bool = False) -> pa.Table:
    """Users with one event, bursts with tied timestamps, gaps of exactly 600 s, runs of 50 and 51 events,
    events spread over several days; input order is shuffled within timestamp ties."""
    rng = np.random.default_rng(seed)
    users, items, ts, beh, sid = [], [], [], [], []
    for u in range(n_users):
        kind = rng.integers(0, 6)
        t = T0 + int(rng.integers(0, days * DAY))
        if kind == 0:  # a single event
            n = 1
            gaps = np.zeros(0, np.int64)
        elif kind == 1:  # one run of exactly 50 or 51 events, 1-minute gaps
            n = int(rng.choice([50, 51, 52, 101]))
            gaps = np.full(n - 1, 60)
        else:
            n = int(rng.integers(2, 120))
            gaps = rng.choice([0, 0, 1, 599, 600, 601, 3600, DAY, 3 * DAY, 8 * DAY], size=n - 1)
        tt = t + np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
        if rng.random() < 0.5 or tt[-1] >= T0 + days * DAY:  # end on the last day (some with many events there)
            tt = tt - tt[-1] + T0 + days * DAY - 1 - int(rng.integers(0, 4 * 3600))
        # most recent items of a user concentrate on few values so long-term subsets fill up or not
        it = rng.integers(0, n_items, n) if rng.random() < 0.5 else rng.integers(0, 5, n)
        users += [u * 7 + 3] * n
        items += list(it)
        ts += list(tt)
        beh += list(rng.choice(["pv", "pv", "pv", "cart", "fav", "buy"], size=n))
        sid += list(np.cumsum(rng.random(n) < 0.1))
    order = rng.permutation(len(users))  # input order is not time order
    users, items, ts = np.array(users)[order], np.array(items)[order], np.array(ts)[order]
    beh, sid = np.array(beh)[order], np.array(sid)[order]
    cols = {
        F.USER_ID: pa.array([f"u{x}" for x in users]) if string_ids else pa.array(users, pa.int64()),
        F.ITEM_ID: pa.array([f"i{x}" for x in items]) if string_ids else pa.array(items + 100, pa.int64()),
        F.TIMESTAMP: pa.array(ts, pa.int64()),
        F.BEHAVIOR: pa.array(beh, pa.string()),
        F.CATEGORY: pa.array((items % 7 + 1).astype(np.int64)),
        F.BRAND: pa.array([f"b{x % 11}" for x in items]),
        F.GENDER: pa.array((users % 2 + 1).astype(np.int64)),
    }
    if session_ids:
        cols[F.SESSION_ID] = pa.array(sid.astype(np.int64))
    return pa.table(cols)


SIDE = (F.CATEGORY, F.BRAND)
PROFILE = (F.GENDER,)


def assert_splits_equal(got: dict, ref: dict) -> None:
    """Prepared rows (``{split: [row dict, ...]}``) equal the reference's, split by split and row by row; the random data
    must have made train and test rows."""
    for s in ("train", "val", "test"):
        assert len(got[s]) == len(ref[s]), s
        for a, b in zip(got[s], ref[s]):
            assert a == b
    assert got["train"] and got["test"], "the random data must exercise train and test rows"
