"""A slow, obviously correct reference of ``seqrec data prepare`` (pandas ``groupby().apply()``).

It restates SDM §3.1 / §4.1 one user at a time with plain Python loops, written
from the protocol text rather than from the vectorised code; with ``input="last-n"``
every row's input is built per target from the last N events before it
(:func:`last_n_input`). Tests compare the
vectorised pipeline with it on randomised inputs, and ``benchmarks/bench_prepare.py``
uses it as the naive baseline. Do not use it for real data.
"""

from __future__ import annotations

import math

import pandas as pd

from seqrec import features as F
from seqrec.data.prepare import PrepareConfig

DAY = 86_400


def _filters(df: pd.DataFrame, cfg: PrepareConfig) -> tuple[pd.DataFrame, int | None]:
    if cfg.time_range is not None:
        df = df[(df[F.TIMESTAMP] >= cfg.time_range[0]) & (df[F.TIMESTAMP] < cfg.time_range[1])]
    if cfg.behaviors is not None:
        df = df[df[F.BEHAVIOR].isin(list(cfg.behaviors))]
    p = cfg.protocol
    test_day = int((df[F.TIMESTAMP].max() + p.tz_offset_s) // DAY) if p.split == "dataset-day" else None
    if cfg.max_user_events:
        n = df.groupby(F.USER_ID)[F.ITEM_ID].transform("size")
        df = df[n <= cfg.max_user_events]
    n = df.groupby(F.ITEM_ID)[F.USER_ID].transform("size")
    df = df[n >= cfg.min_item_count]
    return df.sort_values([F.USER_ID, F.TIMESTAMP, F.ROW], kind="stable"), test_day


def user_windows(ts: list[int], cfg: PrepareConfig, test_day: int | None) -> tuple[int, int]:
    """(a_val, a_test) of one user's sorted timestamps."""
    p = cfg.protocol
    n = len(ts)
    if p.split == "loo":
        a_test = max(0, n - 1)
        a_val = max(0, n - 2) if p.val else a_test
        return a_val, a_test
    days = [(t + p.tz_offset_s) // DAY for t in ts]
    last = test_day if p.split == "dataset-day" else days[-1]
    a_test = next((i for i, d in enumerate(days) if d >= last), n)
    if not p.val:
        return a_test, a_test
    if p.split == "dataset-day":
        val_day = last - 1
    else:
        earlier = [d for d in days if d < last]
        if not earlier:
            return a_test, a_test
        val_day = max(earlier)
    a_val = next((i for i, d in enumerate(days) if d >= val_day), n)
    return min(a_val, a_test), a_test


def sessions_of(ev: list[dict], cfg: PrepareConfig, has_session_id: bool) -> list[list[int]]:
    """Index lists of the sessions of one user's sorted events."""
    p = cfg.protocol
    out: list[list[int]] = []
    for i, e in enumerate(ev):
        new = not out
        if not new:
            prev = ev[i - 1]
            if e[F.TIMESTAMP] - prev[F.TIMESTAMP] >= p.session_gap_s:
                new = True
            if has_session_id and e.get(F.SESSION_ID) != prev.get(F.SESSION_ID):
                new = True
            if len(out[-1]) == p.max_session_len:
                new = True
        if new:
            out.append([])
        out[-1].append(i)
    return out


def long_term_of(ev: list[dict], start: int, feature: str, cfg: PrepareConfig, code) -> list[int]:
    p = cfg.protocol
    t0 = ev[start][F.TIMESTAMP]
    values: list[int] = []
    for i in range(start - 1, -1, -1):
        t = ev[i][F.TIMESTAMP]
        if t >= t0:
            continue
        if t < t0 - p.long_term_s or len(values) == p.long_term_max:
            break
        v = code(feature, ev[i][feature])
        if v not in values:
            values.append(v)
    return values


def last_n_input(ev: list[dict], target: int, session_of_event: dict, cfg: PrepareConfig) -> tuple[list[int], list[int]]:
    """Last-n input of the event at index ``target``: (the rest, the short-term part), event indices oldest first.

    The input is the last N events before the target; its short-term part is those of them in the
    session of the last input event (event ``target - 1``), the rest is the long-term part.
    """
    window = list(range(max(0, target - cfg.protocol.input_events), target))
    current = session_of_event[target - 1]
    short = [i for i in window if session_of_event[i] == current]
    return [i for i in window if i not in short], short


def distinct_recent(ev: list[dict], idx: list[int], feature: str, cfg: PrepareConfig, code) -> list[int]:
    """The distinct codes of events ``idx`` (oldest first), most recent first, at most long_term_max."""
    values: list[int] = []
    for i in reversed(idx):
        v = code(feature, ev[i][feature])
        if v not in values and len(values) < cfg.protocol.long_term_max:
            values.append(v)
    return values


def build_vocab(df: pd.DataFrame, names: list[str], cfg: PrepareConfig, test_day: int | None) -> dict[str, dict]:
    train_parts = []
    for _, g in df.groupby(F.USER_ID, sort=False):
        a_val, _ = user_windows(g[F.TIMESTAMP].tolist(), cfg, test_day)
        train_parts.append(g.iloc[:a_val])
    train = pd.concat(train_parts) if train_parts else df.iloc[:0]
    vocab = {}
    for name in names:
        counts: dict = {}
        for v in train[name].tolist():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            counts[v] = counts.get(v, 0) + 1
        order = sorted(counts, key=lambda v: (-counts[v], v))
        vocab[name] = {v: k + F.FIRST_CODE for k, v in enumerate(order)}
    return vocab


def reference_prepare(
    df: pd.DataFrame,
    cfg: PrepareConfig,
    item_side: tuple[str, ...] = (),
    user_profile: tuple[str, ...] = (),
    has_session_id: bool = False,
) -> dict[str, list[dict]]:
    """Rows of every split (dicts in the session-row schema), users in raw-id order."""
    if F.ROW not in df.columns:
        df = df.assign(**{F.ROW: range(len(df))})
    df, test_day = _filters(df, cfg)
    item_names = [F.ITEM_ID, *item_side]
    user_names = [F.USER_ID, *user_profile]
    vocab = build_vocab(df, item_names + user_names + [F.BEHAVIOR], cfg, test_day)

    def code(name, v):
        return vocab[name].get(v, F.UNKNOWN)

    def per_user(g: pd.DataFrame) -> list[tuple[str, dict]]:
        return user_rows(g, cfg, test_day, item_names, user_names, has_session_id, code)

    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    results = df.groupby(F.USER_ID, sort=True)[df.columns.tolist()].apply(per_user)
    for user_out in results:
        for split, row in user_out:
            rows[split].append(row)
    return rows


def user_rows(g: pd.DataFrame, cfg, test_day, item_names, user_names, has_session_id, code) -> list[tuple[str, dict]]:
    p = cfg.protocol
    ev = g.to_dict("records")
    a_val, a_test = user_windows([e[F.TIMESTAMP] for e in ev], cfg, test_day)
    sess = sessions_of(ev, cfg, has_session_id)
    session_of_event = {}
    for s in sess:
        for i in s:
            session_of_event[i] = s[0]

    last_n = p.input == "last-n"

    def row(start: int, end: int, truth: list[int], rest: list[int] | None = None) -> dict:
        """The row of input events [start, end); ``rest``: the last-n long-term events (else session input)."""
        last = ev[end - 1]
        r = {F.USER_RAW: ev[0][F.USER_ID]}
        for name in user_names:
            r[name] = code(name, last[name])
        r[F.SESSION_START] = ev[start][F.TIMESTAMP]
        r[F.SEQ_LEN] = end - start
        for name in item_names:
            r[F.seq_col(name)] = [code(name, ev[i][name]) for i in range(start, end)]
        r[F.seq_col(F.TIMESTAMP)] = [ev[i][F.TIMESTAMP] for i in range(start, end)]
        r[F.seq_col(F.BEHAVIOR)] = [code(F.BEHAVIOR, ev[i][F.BEHAVIOR]) for i in range(start, end)]
        for name in item_names:
            r[F.long_term_col(name)] = (distinct_recent(ev, rest, name, cfg, code) if last_n
                                        else long_term_of(ev, start, name, cfg, code))
        h = rest if last_n else list(range(max(0, start - p.hist_len), start))
        r[F.hist_col(F.ITEM_ID)] = [code(F.ITEM_ID, ev[i][F.ITEM_ID]) for i in h]
        r[F.hist_col(F.TIMESTAMP)] = [ev[i][F.TIMESTAMP] for i in h]
        r[F.hist_col(F.BEHAVIOR)] = [code(F.BEHAVIOR, ev[i][F.BEHAVIOR]) for i in h]
        seen, targets = set(), []
        for i in truth:
            raw = ev[i][F.ITEM_ID]
            if raw not in seen:
                seen.add(raw)
                targets.append(code(F.ITEM_ID, raw))
        r[F.TARGETS] = targets
        return r

    out = []
    for s in sess:
        train_part = [i for i in s if i < a_val]
        if len(train_part) >= p.min_train_len:
            rest = None
            if last_n:  # the window of the row's first target (its second event); the row is the whole session
                rest, short = last_n_input(ev, train_part[1], session_of_event, cfg)
                assert short == [train_part[0]], short
            end = train_part[-1] + 1
            horizon = [i for i in range(end, a_val) if ev[i][F.TIMESTAMP] < ev[end - 1][F.TIMESTAMP] + p.train_horizon_s]
            out.append(("train", row(train_part[0], end, horizon, rest)))
    for split, lo, hi in (("val", a_val, a_test), ("test", a_test, len(ev))):
        m = hi - lo
        if p.split == "loo":
            if m != 1 or lo == 0:
                continue
            j = lo - 1
        else:
            if m < 2:
                continue
            j = lo + max(1, math.floor(p.test_fraction * m)) - 1
        if last_n:  # the target is the event after the input
            rest, short = last_n_input(ev, j + 1, session_of_event, cfg)
            out.append((split, row(short[0], j + 1, list(range(j + 1, hi)), rest)))
        else:
            out.append((split, row(session_of_event[j], j + 1, list(range(j + 1, hi)))))
    return out
