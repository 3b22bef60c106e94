"""Sessions, long-term behaviours and train / validation / test rows (SDM §3.1, §4.1).

Notation: n events of one or more *complete* users, sorted by (user, timestamp,
input order) — ties in timestamp keep the input order. ``g`` is the user group
of each event, ``ustart[g]`` / ``uend[g]`` its first / one-past-last event.

Sessions (§3.1). A new session starts at a user's first event, when the backend
session id changes, when the gap to the previous event is >= ``session_gap_s``
(600 s), and when a session would exceed ``max_session_len`` (50) events. The
rule is causal (a boundary depends only on earlier events), so the sessions of a
prefix of a user's history are the prefix of its sessions: the same code serves
training (all events) and serving (the events so far).

Long-term behaviours of a session that starts at time T: the user's events with
``T - long_term_s <= timestamp < T`` (7 days, strictly before T, so events tied
with the session start are excluded); for every item feature f the most recent
distinct values, at most ``long_term_max`` (20), most recent first.

History (BST): the user's last ``hist_len`` (20) events before the session in
sequence order, oldest first: item id, timestamp and behaviour (side features of
history items come from the item table, ``items.parquet``). BST's sequence at
position t of a session is ``(hist + session[:t])[-20:]``, so one row per session
carries what BST needs.

Windows. Every user's events split at two indices, ``a_val <= a_test``:
training events are ``[ustart, a_val)``, validation ``[a_val, a_test)``, test
``[a_test, uend)``. ``split`` chooses them:

* ``dataset-day`` — the dataset's last calendar day (timestamps shifted by
  ``tz_offset_s``) is test, the day before it validation (the paper's Taobao
  setting);
* ``user-day`` — each user's last active day is test, the previous active day
  validation (the sensible default for MovieLens, whose last day holds 11 users);
* ``loo`` — leave-one-out: the last event is test, the one before validation
  (RecBole's protocol).

With ``val=False`` the validation window is empty and training runs up to the
test window.

Rows. A *training row* is a session restricted to training events, kept when
it has >= ``min_train_len`` (2) events; the model trains every position of it
(one row per session, not one per prefix). Its ``targets`` are empty, unless
``train_horizon_s`` > 0: then they are the distinct items of the user's
training events after the session, within that many seconds of its last event
(never past the training window), the training counterpart of an evaluation
row's ground truth ("the rest of the day"). An *evaluation row* (validation or
test) follows §4.1: in a window of m >= 2 events the first
``max(1, floor(test_fraction * m))`` are input and the rest, deduplicated, are
the ground truth; the short-term input is the session (as sessionized over the
whole history) that contains the last input event, cut there; its long-term
behaviours and history are those of that session. Under ``loo`` the input is
everything before the held-out event and the ground truth is that one event.
Ground-truth items unseen in training are kept as the unknown code 1, one entry
per distinct raw item, so they count in |truth| and can never be hit.

Input modes (``input``). ``session`` (the default) is the paper's protocol above.
``last-n`` gives every model the same history RecBole's peers see: the last
``input_events`` (N, 50) events before the target, whatever their age or
session. The short-term input (``seq_*``) is the part of those N events that
lies in the session of the last input event (sessions split as above); the rest
of the N events is the long-term input: ``lt_*`` holds all their distinct values
(most recent first; no 7-day window, ``long_term_max`` must allow N) and
``hist_*`` the events themselves (oldest first, ``hist_len`` must allow N), so
``hist ⊕ seq`` is the whole last-N sequence in order, for the matchers that
read one sequence. An evaluation or serving row predicts the event after its
input: its ``seq`` is at most N events and ``hist`` the N - len(seq) before them.
A training row trains every position of its session: its ``hist`` / ``lt_*``
are the N - 1 events before the session, the exact window of its first target
(position 0), and later positions see their session prefix on top of them. The
short-term is the session of the last *input* event, not of the target: a
target that opens a new session has no "session so far", and serving cannot
know whether the next event will open one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numba
import numpy as np

from seqrec import features as F

if TYPE_CHECKING:
    import pyarrow as pa

SPLITS = ("dataset-day", "user-day", "loo")
INPUTS = ("session", "last-n")  # the paper's session protocol; RecBole's last-N history (see the module docstring)
DAY_S = 86_400


@dataclass(frozen=True)
class Protocol:
    """Session and split parameters (SDM §3.1, §4.1); recorded in the manifest."""

    split: str = "dataset-day"
    session_gap_s: int = 600
    max_session_len: int = 50
    long_term_s: int = 7 * DAY_S
    long_term_max: int = 20
    hist_len: int = 20
    test_fraction: float = 0.25
    val: bool = True
    min_train_len: int = 2
    tz_offset_s: int = 0
    input: str = "session"  # session | last-n: what a row's input holds (see the module docstring)
    input_events: int = 50  # N of the last-n input
    # > 0: a training row's ``targets`` are the distinct items of the user's training events within this many
    # seconds after the session's last event (what a matcher's ``horizon_weight`` trains on); 0: none (the paper's)
    train_horizon_s: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not one of {SPLITS}")
        for name in ("session_gap_s", "max_session_len", "long_term_max", "hist_len", "min_train_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.long_term_s < 0:
            raise ValueError(f"long_term_s={self.long_term_s} must be >= 0")
        if self.train_horizon_s < 0:
            raise ValueError(f"train_horizon_s={self.train_horizon_s} must be >= 0 (0: training rows carry no targets)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction={self.test_fraction} must be in (0, 1), e.g. 0.25 as in SDM §4.1")
        if self.input not in INPUTS:
            raise ValueError(f"input={self.input!r} is not one of {INPUTS}")
        if isinstance(self.input_events, bool) or not isinstance(self.input_events, int) or self.input_events < 1:
            raise ValueError(f"input_events={self.input_events!r} must be an integer >= 1 (RecBole's peers use 50)")
        if self.input == "last-n":
            for name in ("long_term_max", "hist_len"):
                if getattr(self, name) < self.input_events:
                    raise ValueError(
                        f"input='last-n' with input_events={self.input_events} needs {name} >= {self.input_events} "
                        f"(got {getattr(self, name)}): the long-term input holds up to N events; raise --{name.replace('_', '-')} "
                        "or leave it unset (prepare sets it to at least N)"
                    )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Block:
    """Encoded events of complete users, sorted by (user, timestamp, input order)."""

    ts: np.ndarray  # (n,) int64
    item_feats: np.ndarray  # (Fi, n) int32 codes; row 0 is the item id
    behavior: np.ndarray  # (n,) int32 codes
    user_feats: np.ndarray  # (Fu, n) int32 codes; row 0 is the user id
    ustart: np.ndarray  # (U,) int64 first event of each user
    uend: np.ndarray  # (U,) int64 one past the last event
    session_key: np.ndarray | None = None  # (n,) int64 backend session id, -1 when missing
    item_key: np.ndarray | None = None  # (n,) int64 raw item identity (for deduplicating ground truth)

    @property
    def n(self) -> int:
        return len(self.ts)

    def group(self) -> np.ndarray:
        """(n,) user group of every event."""
        return np.repeat(np.arange(len(self.ustart)), self.uend - self.ustart)


def user_bounds(new_user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From an (n,) bool 'first event of a user' mask to (ustart, uend)."""
    ustart = np.flatnonzero(new_user).astype(np.int64)
    uend = np.append(ustart[1:], len(new_user)).astype(np.int64)
    return ustart, uend


def sessionize(block: Block, protocol: Protocol) -> np.ndarray:
    """(S,) start index of every session, increasing; session k is [starts[k], starts[k+1])."""
    n = block.n
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.zeros(n, bool)
    new[block.ustart] = True
    new[1:] |= np.diff(block.ts) >= protocol.session_gap_s
    if block.session_key is not None:
        new[1:] |= block.session_key[1:] != block.session_key[:-1]
    base_start = np.flatnonzero(new)
    base = np.cumsum(new) - 1  # (n,) base session of each event
    pos = np.arange(n) - base_start[base]  # position inside the base session
    return np.flatnonzero(pos % protocol.max_session_len == 0).astype(np.int64)


def session_ends(starts: np.ndarray, n: int) -> np.ndarray:
    return np.append(starts[1:], n).astype(np.int64)


def windows(block: Block, protocol: Protocol, test_day: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a_val, a_test), each (U,): the first validation and the first test event of every user.

    ``test_day`` (days since the epoch after the tz shift) is required for ``dataset-day``.
    """
    ustart, uend = block.ustart, block.uend
    if len(ustart) == 0:
        return ustart.copy(), ustart.copy()
    if protocol.split == "loo":
        a_test = np.maximum(ustart, uend - 1)
        a_val = np.maximum(ustart, uend - 2) if protocol.val else a_test
        return a_val, a_test
    day = (block.ts + protocol.tz_offset_s) // DAY_S
    g = block.group()
    if protocol.split == "dataset-day":
        if test_day is None:
            raise ValueError("split='dataset-day' needs the dataset's last day (test_day)")
        test_d = np.full(len(ustart), test_day, np.int64)
    else:  # user-day: each user's own last active day
        test_d = day[uend - 1]
    # events are sorted by time inside a user, so "day < d" events come first
    a_test = ustart + np.add.reduceat((day < test_d[g]).astype(np.int64), ustart)
    if not protocol.val:
        return a_test.copy(), a_test
    if protocol.split == "dataset-day":
        val_d = test_d - 1
    else:  # the last active day before the test day
        has_prev = a_test > ustart
        val_d = np.where(has_prev, day[np.maximum(a_test - 1, 0)], test_d)
    a_val = ustart + np.add.reduceat((day < val_d[g]).astype(np.int64), ustart)
    a_val = np.minimum(a_val, a_test)
    return a_val, a_test


@dataclass
class Cuts:
    """Rows to build: short-term input [start, end) of user ``user``; ground truth [truth_lo, truth_hi)."""

    user: np.ndarray  # (R,) int64 group
    start: np.ndarray  # (R,) int64
    end: np.ndarray  # (R,) int64 exclusive
    truth_lo: np.ndarray  # (R,) int64
    truth_hi: np.ndarray  # (R,) int64
    # last-n input: the N input events end here (exclusive), the row's first target; None: at ``end``
    input_end: np.ndarray | None = None


def training_cuts(block: Block, starts: np.ndarray, a_val: np.ndarray, protocol: Protocol) -> tuple[Cuts, dict]:
    """Sessions restricted to training events with >= min_train_len events."""
    ends = session_ends(starts, block.n)
    g = block.group()[starts]
    train_end = a_val[g]
    clipped = np.minimum(ends, train_end)
    length = clipped - starts
    keep = length >= protocol.min_train_len
    counts = {
        "sessions_in_train_window": int((length >= 1).sum()),
        "train_sessions_too_short": int(((length >= 1) & ~keep).sum()),
        "train_sessions_cut_at_window": int(((length >= 1) & (clipped < ends)).sum()),
    }
    g, start, end = g[keep], starts[keep], clipped[keep]
    if protocol.train_horizon_s > 0:
        lo, hi = end, horizon_end(block, g, end, block.ts[end - 1] + protocol.train_horizon_s, train_end[keep])
    else:
        lo, hi = np.zeros(len(g), np.int64), np.zeros(len(g), np.int64)
    # a training row's first target is its second event: the last-n window ends there
    return Cuts(g, start, end, lo, hi, input_end=start + 1), counts


def horizon_end(block: Block, users: np.ndarray, lo: np.ndarray, limit: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """(R,) for each row: one past the last event of user ``users[r]`` from ``lo[r]`` on with a timestamp
    < ``limit[r]``, at most ``cap[r]`` (events are sorted by user, then time: one search over (user, time) keys)."""
    if len(users) == 0:
        return lo.copy()
    t0, span = int(block.ts.min()), int(block.ts.max() - block.ts.min()) + 1
    key = block.group().astype(np.int64) * span + (block.ts - t0)  # non-decreasing
    # a limit past the user's last event lands past it (on a later user's keys): the cap, <= the user's end, bounds it
    hi = np.searchsorted(key, users * span + np.minimum(limit - t0, span), side="left")
    return np.clip(hi, lo, cap).astype(np.int64)


def eval_cuts(
    block: Block, starts: np.ndarray, lo: np.ndarray, hi: np.ndarray, protocol: Protocol
) -> tuple[Cuts, dict]:
    """Evaluation rows for the per-user window [lo, hi) (validation or test)."""
    ustart = block.ustart
    m = hi - lo
    users = np.arange(len(ustart), dtype=np.int64)
    if protocol.split == "loo":
        ok = (m == 1) & (lo > ustart)
        j = lo - 1  # input: everything before the held-out event
    else:
        ok = m >= 2
        n_in = np.maximum(1, np.floor(protocol.test_fraction * m).astype(np.int64))
        j = lo + n_in - 1  # last input event
    counts = {"users_with_window_events": int((m > 0).sum()), "users_without_ground_truth": int(((m > 0) & ~ok).sum())}
    users, j, hi = users[ok], j[ok], hi[ok]
    # the session containing event j, cut after j
    sess = np.searchsorted(starts, j, side="right") - 1
    return Cuts(users, starts[sess], j + 1, j + 1, hi.astype(np.int64)), counts


def serving_cuts(block: Block, starts: np.ndarray) -> Cuts:
    """One row per user: the latest session up to the user's last event (no ground truth)."""
    j = block.uend - 1
    sess = np.searchsorted(starts, j, side="right") - 1
    users = np.arange(len(block.ustart), dtype=np.int64)
    return Cuts(users, starts[sess], j + 1, j + 1, j + 1)


@numba.njit(cache=True)
def _long_term(ts, ustart, start, values, vocab_sizes, window_s, max_len):  # pragma: no cover - numba
    # values: (F, n) codes; out: (F, R, max_len) most recent distinct values first
    n_f = values.shape[0]
    n_r = start.shape[0]
    out = np.zeros((n_f, n_r, max_len), np.int32)
    lens = np.zeros((n_f, n_r), np.int32)
    for f in range(n_f):
        stamp = np.full(vocab_sizes[f], -1, np.int64)  # stamp[v] == r: v already taken for row r
        for r in range(n_r):
            s = start[r]
            us = ustart[r]
            t0 = ts[s]
            e = s
            while e > us and ts[e - 1] >= t0:  # skip events tied with the session start
                e -= 1
            lo = t0 - window_s
            cnt = 0
            i = e - 1
            while i >= us and cnt < max_len and ts[i] >= lo:
                v = values[f, i]
                if stamp[v] != r:
                    stamp[v] = r
                    out[f, r, cnt] = v
                    cnt += 1
                i -= 1
            lens[f, r] = cnt
    return out, lens


@numba.njit(cache=True)
def _distinct_recent(lo, hi, values, vocab_sizes, max_len, offsets):  # pragma: no cover - numba
    # the distinct values of events [lo[r], hi[r]), most recent first, at most max_len; row r's go to
    # out[f, offsets[r]:offsets[r + 1]] (room for min(hi - lo, max_len) values), the first lens[f, r] of them used
    n_f = values.shape[0]
    n_r = lo.shape[0]
    out = np.zeros((n_f, offsets[n_r]), np.int32)
    lens = np.zeros((n_f, n_r), np.int32)
    for f in range(n_f):
        stamp = np.full(vocab_sizes[f], -1, np.int64)  # stamp[v] == r: v already taken for row r
        for r in range(n_r):
            cnt = 0
            i = hi[r] - 1
            while i >= lo[r] and cnt < max_len:
                v = values[f, i]
                if stamp[v] != r:
                    stamp[v] = r
                    out[f, offsets[r] + cnt] = v
                    cnt += 1
                i -= 1
            lens[f, r] = cnt
    return out, lens


def input_ranges(block: Block, cuts: Cuts, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """(short-term start, history start), each (R,): a row's ``seq`` is events [start, end), ``hist`` [hist_lo, start).

    ``session`` input: the cut's session and the ``hist_len`` events before it. ``last-n``: the N events
    that end at the row's first target (``cuts.input_end``, else ``end``) — the session's part of them is
    ``seq``, the rest ``hist`` (and the long-term subsets).
    """
    ustart = block.ustart[cuts.user]
    if protocol.input == "session":
        return cuts.start, np.maximum(ustart, cuts.start - protocol.hist_len)
    w_end = cuts.end if cuts.input_end is None else cuts.input_end
    lo = np.maximum(ustart, w_end - protocol.input_events)
    return np.maximum(cuts.start, lo), lo


def long_term(block: Block, cuts: Cuts, vocab_sizes: np.ndarray, protocol: Protocol) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per item feature: (flat values, lengths) of the long-term subsets of every row.

    ``session`` input: the 7-day window before the session; ``last-n``: the events of the last-N window
    before the short-term part (:func:`input_ranges`), however old.
    """
    n_f = block.item_feats.shape[0]
    if len(cuts.start) == 0:
        return [(np.zeros(0, np.int32), np.zeros(0, np.int32)) for _ in range(n_f)]
    sizes = np.maximum(np.asarray(vocab_sizes, np.int64), block.item_feats.max(axis=1).astype(np.int64) + 1)
    values = np.ascontiguousarray(block.item_feats)
    if protocol.input == "last-n":  # flat output: room for min(events, cap) values per row, not R x cap
        start, lo = input_ranges(block, cuts, protocol)
        room = np.minimum(start - lo, protocol.long_term_max).astype(np.int64)
        offsets = np.zeros(len(room) + 1, np.int64)
        np.cumsum(room, out=offsets[1:])
        out, lens = _distinct_recent(lo.astype(np.int64), start.astype(np.int64), values, sizes, protocol.long_term_max, offsets)
        pos = np.arange(offsets[-1]) - np.repeat(offsets[:-1], room)  # position of every slot inside its row
        return [(out[f][pos < np.repeat(lens[f], room)], lens[f]) for f in range(n_f)]
    out, lens = _long_term(
        block.ts,
        block.ustart[cuts.user],
        cuts.start,
        values,
        sizes,
        np.int64(protocol.long_term_s),
        protocol.long_term_max,
    )
    res = []
    for f in range(n_f):
        mask = np.arange(protocol.long_term_max)[None, :] < lens[f][:, None]  # (R, max)
        res.append((out[f][mask], lens[f]))
    return res


def ranges_index(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[r], hi[r]) over rows, vectorised."""
    length = np.maximum(hi - lo, 0)
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(length) - length  # (R,) start of each row in the output
    return np.repeat(lo - offsets, length) + np.arange(total)


def dedup_truth(block: Block, cuts: Cuts) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth item codes (first occurrence order, one per distinct raw item) and lengths."""
    idx = ranges_index(cuts.truth_lo, cuts.truth_hi)
    length = cuts.truth_hi - cuts.truth_lo
    if len(idx) == 0:
        return np.zeros(0, np.int32), length.astype(np.int32)
    row = np.repeat(np.arange(len(length)), length)
    key = block.item_key[idx] if block.item_key is not None else block.item_feats[0, idx].astype(np.int64)
    combined = row.astype(np.int64) * (int(key.max()) + 1) + key
    _, first = np.unique(combined, return_index=True)
    first.sort()
    kept_rows = row[first]
    return block.item_feats[0, idx[first]], np.bincount(kept_rows, minlength=len(length)).astype(np.int32)


def _list(values: np.ndarray, lengths: np.ndarray, value_type) -> "pa.ListArray":
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, value_type))


def row_schema(item_names: list[str], user_names: list[str], user_raw_type) -> "pa.Schema":
    """The session-row schema shared by every split (column names from seqrec.features)."""
    import pyarrow as pa

    ids = pa.list_(pa.int32())
    fields = [pa.field(F.USER_RAW, user_raw_type)]
    fields += [pa.field(u, pa.int32()) for u in user_names]
    fields += [pa.field(F.SESSION_START, pa.int64()), pa.field(F.SEQ_LEN, pa.int32())]
    fields += [pa.field(F.seq_col(f), ids) for f in item_names]
    fields += [pa.field(F.seq_col(F.TIMESTAMP), pa.list_(pa.int64())), pa.field(F.seq_col(F.BEHAVIOR), ids)]
    fields += [pa.field(F.long_term_col(f), ids) for f in item_names]
    fields += [pa.field(F.hist_col(F.ITEM_ID), ids)]
    fields += [pa.field(F.hist_col(F.TIMESTAMP), pa.list_(pa.int64())), pa.field(F.hist_col(F.BEHAVIOR), ids)]
    fields += [pa.field(F.TARGETS, ids)]
    return pa.schema(fields)


def rows_table(
    block: Block,
    cuts: Cuts,
    protocol: Protocol,
    item_names: list[str],
    user_names: list[str],
    item_vocab_sizes: np.ndarray,
    user_raw: "pa.Array",
) -> "pa.Table":
    """Build the session rows of ``cuts`` (schema: :func:`row_schema`). ``user_raw`` is indexed by group."""
    import pyarrow as pa

    i32, i64 = pa.int32(), pa.int64()
    schema = row_schema(item_names, user_names, user_raw.type)
    cols: dict[str, pa.Array] = {F.USER_RAW: user_raw.take(pa.array(cuts.user, i64))}
    last = cuts.end - 1
    for k, name in enumerate(user_names):
        cols[name] = pa.array(block.user_feats[k, last], i32) if len(last) else pa.array([], i32)
    start, h_lo = input_ranges(block, cuts, protocol)  # the session's cut, or its part of the last N events
    cols[F.SESSION_START] = pa.array(block.ts[start], i64)
    seq_len = (cuts.end - start).astype(np.int32)
    cols[F.SEQ_LEN] = pa.array(seq_len, i32)
    idx = ranges_index(start, cuts.end)
    for k, name in enumerate(item_names):
        cols[F.seq_col(name)] = _list(block.item_feats[k, idx], seq_len, i32)
    cols[F.seq_col(F.TIMESTAMP)] = _list(block.ts[idx], seq_len, i64)
    cols[F.seq_col(F.BEHAVIOR)] = _list(block.behavior[idx], seq_len, i32)
    for name, (vals, lens) in zip(item_names, long_term(block, cuts, item_vocab_sizes, protocol)):
        cols[F.long_term_col(name)] = _list(vals, lens, i32)
    h_len = (start - h_lo).astype(np.int32)
    h_idx = ranges_index(h_lo, start)
    cols[F.hist_col(F.ITEM_ID)] = _list(block.item_feats[0, h_idx], h_len, i32)
    cols[F.hist_col(F.TIMESTAMP)] = _list(block.ts[h_idx], h_len, i64)
    cols[F.hist_col(F.BEHAVIOR)] = _list(block.behavior[h_idx], h_len, i32)
    t_vals, t_lens = dedup_truth(block, cuts)
    cols[F.TARGETS] = _list(t_vals, t_lens, i32)
    return pa.table(cols, schema=schema)
