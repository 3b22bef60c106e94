"""``seqrec data stats``: the statistics of a prepared dataset.

:func:`format_stats` prints the figures ``seqrec data prepare`` stored in
``manifest.json`` (instant even for 100M-event datasets). :func:`behaviour_stats`
reads the prepared rows once more (the category columns of the training split,
shard by shard, and the test split) for the figures that say whether long-term
behaviour can matter on a dataset:

* **session length** (mean, median) of every session in the training window, as
  ``prepare`` cut them (a gap >= 10 minutes, a session-id change, at most 50
  events); sessions too short to be training rows count too (their number is in
  the manifest), and a session cut at the window boundary counts with its
  training part;
* **where next items come from**: for every within-session next-item target (the
  item at position t >= 1 of a training row), whether its category (the
  ``category_id`` feature; the item id when a dataset has no category) is in the
  session prefix (positions < t), only in the row's long-term subset L (the most
  recent distinct values of the 7 days before the session, at most 20), or in
  neither. The same for the test ground truth against the test input. SDM's gate
  learns to use L only from the targets in the second class.

:data:`TAOBAO` holds these figures for Taobao UserBehavior, which the synthetic
generator (:mod:`seqrec.data.synth`) is calibrated to.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from seqrec import features as F

#: Taobao UserBehavior (issue #16): 10-minute sessions, and where within-session next-item categories come from.
TAOBAO = {"session_len_mean": 4.8, "session_len_median": 2.0, "in_prefix": 0.66, "long_term_only": 0.15, "neither": 0.19}
SOURCES = ("in_prefix", "long_term_only", "neither")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def _day(ts: int | None, tz_s: int) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts + tz_s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def format_stats(m: dict) -> str:
    c = m["counts"]
    cfg = m["config"]
    p = cfg["protocol"]
    spec = F.FeatureSpec.from_dict(m["feature_spec"])
    tz = int(p["tz_offset_s"])
    out = []
    src = m["source"]
    out.append(f"# {src.get('name')} — prepared by seqrec {m['seqrec_version']} ({m['engine']} engine)")
    paths = src.get("paths") or src.get("path") or src.get("dir")
    if paths:
        out.append(f"source: {paths}")
    split_desc = {
        "dataset-day": f"the dataset's last day ({_day((m.get('test_day') or 0) * 86400 - tz, tz)[:10]}, UTC{tz / 3600:+g}) is test",
        "user-day": "each user's last active day is test",
        "loo": "leave-one-out (last event test, the one before validation)",
    }[p["split"]]
    out.append(
        f"protocol: {split_desc}; validation {'on' if p['val'] else 'off'}; sessions split at gaps >= "
        f"{p['session_gap_s'] / 60:g} min, session-id changes, and {p['max_session_len']} events; long-term = "
        f"{p['long_term_s'] / 86400:g} days before the session, <= {p['long_term_max']} distinct values per feature; "
        f"test input = first {p['test_fraction']:.0%} of the window's events"
    )
    out.append(f"events from {_day(c.get('min_ts'), tz)} to {_day(c.get('max_ts'), tz)} (UTC{tz / 3600:+g})")
    out.append("")
    out.append("## Filters (events in → out)")
    funnel = [["rows read", c.get("rows_read", 0), ""]]
    funnel.append(["malformed rows", -c.get("rows_rejected", 0), f"--bad-rows={cfg['bad_rows']}"])
    for k, v in sorted(c.items()):
        if k.startswith("rejected["):
            funnel.append([f"  {k[9:-1]}", -v, ""])
    if cfg.get("time_range"):
        tr = cfg["time_range"]
        funnel.append(["outside time range", -c.get("removed_time_range", 0), f"[{_day(tr[0], tz)}, {_day(tr[1], tz)})"])
    if cfg.get("behaviors"):
        funnel.append(["other behaviours", -c.get("removed_behavior", 0), ",".join(cfg["behaviors"])])
    funnel.append([
        "users with too many events", -c.get("events_removed_max_user_events", 0),
        f"> {cfg['max_user_events']} events: {c.get('users_removed_max_user_events', 0):,} users" if cfg["max_user_events"] else "off",
    ])
    funnel.append([
        "rare items", -c.get("events_removed_min_item_count", 0),
        f"< {cfg['min_item_count']} events: {c.get('items_removed_min_item_count', 0):,} items" if cfg["min_item_count"] > 1 else "off",
    ])
    funnel.append(["events kept", c.get("events_after_filters", 0), f"{c.get('users_after_filters', 0):,} users"])
    out.append(_table(["step", "events", "detail"], funnel))
    out.append("")
    out.append("## Splits (SDM Table 1 style)")
    n_items = spec.n_items - F.FIRST_CODE
    rows = []
    for split in ("train", "val", "test"):
        r = c.get(f"{split}_rows", 0)
        ev = c.get(f"{split}_events", 0)
        lt = c.get(f"{split}_long_term_{F.ITEM_ID}", 0)
        tgt = c.get(f"{split}_targets", 0)
        rows.append([
            split, c.get(f"{split}_users", 0), r, c.get(f"events_{split}_window", 0), ev,
            ev / r if r else 0.0, lt / r if r else 0.0, c.get(f"{split}_rows_empty_long_term", 0),
            tgt / r if (r and split != "train") else "-",
            c.get(f"{split}_targets_unknown", 0) if split != "train" else "-",
        ])
    out.append(_table(
        ["split", "users", "rows", "window events", "input events", "S.len", "L.size(item)", "rows w/o long-term", "truth/row",
         "unseen truth"],
        rows,
    ))
    out.append(
        f"training rows are sessions of >= {p['min_train_len']} training events: {c.get('sessions_in_train_window', 0):,} sessions "
        f"in the training window, {c.get('train_sessions_too_short', 0):,} too short, "
        f"{c.get('train_sessions_cut_at_window', 0):,} cut at the window boundary; "
        f"users without ground truth: val {c.get('val_users_without_ground_truth', 0):,}, "
        f"test {c.get('test_users_without_ground_truth', 0):,}"
    )
    out.append("")
    out.append("## Features (vocabulary sizes include 0 = padding and 1 = unknown)")
    feats = []
    for f in spec.item_features:
        avg_lt = {s: c.get(f"{s}_long_term_{f.name}", 0) / max(1, c.get(f"{s}_rows", 0)) for s in ("train", "test")}
        var = c.get(f"items_with_varying_{f.name}")
        feats.append(["item", f.name, f.vocab_size, avg_lt["train"], avg_lt["test"], "-" if var is None else var])
    for f in spec.user_features:
        feats.append(["user", f.name, f.vocab_size, "-", "-", "-"])
    feats.append(["event", spec.behavior.name, spec.behavior.vocab_size, "-", "-", "-"])
    out.append(_table(["kind", "feature", "vocab", "avg L_f train", "avg L_f test", "items w/ varying value"], feats))
    out.append("")
    out.append(f"items: {n_items:,}   content hash: {m['content_hash'][:16]}   vocab hash: {m['vocab_hash'][:16]}")
    t = m.get("timings_s", {})
    if t:
        out.append("prepare took " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    return "\n".join(out)


# --- sessions and where next items come from (behaviour_stats) ----------------------------


def _flat(lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, row, position in row) of a list array, each (n,) int64."""
    import pyarrow.compute as pc

    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    start = np.cumsum(lengths) - lengths
    return values, row, np.arange(len(values), dtype=np.int64) - start[row]


def next_item_sources(seq, long_term) -> np.ndarray:
    """(3,) int64 counts of within-session next-item targets by where their value was visible.

    ``seq`` and ``long_term`` are list arrays of one feature (codes), one entry per session row. The
    target at position t >= 1 of row r is ``in_prefix`` when its value occurs at a position < t of
    the row, else ``long_term_only`` when it is in the row's long-term subset, else ``neither``
    (the order of :data:`SOURCES`).
    """
    v, row, pos = _flat(seq)
    lv, lrow, _ = _flat(long_term)
    if not len(v):
        return np.zeros(len(SOURCES), np.int64)
    width = int(max(v.max(), lv.max(initial=0))) + 1
    key = row * width + v  # (n,) one key per (row, value)
    order = np.lexsort((pos, key))  # by key, then position: a key's first occurrence comes first
    first = np.ones(len(key), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    is_first = np.empty_like(first)
    is_first[order] = first
    target = pos >= 1
    in_lt = np.isin(key, lrow * width + lv)
    return np.array([(target & ~is_first).sum(), (target & is_first & in_lt).sum(), (target & is_first & ~in_lt).sum()],
                    np.int64)


def truth_sources(seq, long_term, truth, value_of: np.ndarray) -> np.ndarray:
    """(3,) int64 counts of evaluation ground-truth items by where their value was visible: in the row's input
    (``seq``), only in its long-term subset, or neither. ``value_of`` maps an item code to the feature's code;
    unknown items (code 1) are skipped."""
    tv, trow, _ = _flat(truth)
    keep = tv >= F.FIRST_CODE
    tv, trow = value_of[tv[keep]], trow[keep]
    if not len(tv):
        return np.zeros(len(SOURCES), np.int64)
    v, row, _ = _flat(seq)
    lv, lrow, _ = _flat(long_term)
    width = int(max(tv.max(), v.max(initial=0), lv.max(initial=0))) + 1
    key = trow * width + tv
    in_seq = np.isin(key, row * width + v)
    in_lt = np.isin(key, lrow * width + lv)
    return np.array([in_seq.sum(), (~in_seq & in_lt).sum(), (~in_seq & ~in_lt).sum()], np.int64)


def _shares(counts: np.ndarray) -> dict:
    n = int(counts.sum())
    return {k: (round(float(c) / n, 4) if n else None) for k, c in zip(SOURCES, counts)} | {"n": n}


def _shards(data_dir: Path, split: str) -> list[Path]:
    return sorted((data_dir / split).glob("*.parquet"))


def behaviour_stats(data_dir: str | os.PathLike, manifest: dict | None = None) -> dict:
    """Session lengths and where next items come from, for a prepared dataset (see the module docstring).

    Returns ``{"feature", "long_term_days", "input", "sessions": {"count", "mean", "median", "median_exact",
    "single_event_share"},
    "train_targets": {in_prefix, long_term_only, neither (shares), n}, "test_truth": {...}, "test_rows_with_long_term"}``.
    The median is exact when the short sessions (fewer than ``min_train_len`` events, not stored as rows) are
    single events (``min_train_len`` 2, the default) or too few to reach it; else it is None.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from seqrec.data.prepare import load_manifest

    data_dir = Path(data_dir)
    m = manifest if manifest is not None else load_manifest(data_dir)
    spec = F.FeatureSpec.from_dict(m["feature_spec"])
    names = [f.name for f in spec.item_features]
    feature = F.CATEGORY if F.CATEGORY in names else F.ITEM_ID
    seq_c, lt_c = F.seq_col(feature), F.long_term_col(feature)
    c, p = m["counts"], m["config"]["protocol"]

    # training split, shard by shard: session lengths and next-item sources
    lengths = []
    train = np.zeros(len(SOURCES), np.int64)
    for f in _shards(data_dir, "train"):
        for b in pq.ParquetFile(f).iter_batches(columns=[F.SEQ_LEN, seq_c, lt_c], batch_size=65_536):
            lengths.append(b.column(F.SEQ_LEN).to_numpy(zero_copy_only=False).astype(np.int64))
            train += next_item_sources(b.column(seq_c), b.column(lt_c))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    min_len = int(p.get("min_train_len", 2))
    short = int(c.get("train_sessions_too_short", 0))
    n_sessions = int(c.get("sessions_in_train_window", len(lengths) + short))
    # every training-window event is in one of its sessions; older manifests: the short sessions count 1 event
    events = c.get("events_train_window", int(lengths.sum()) + short)
    mean = events / n_sessions if n_sessions else None
    median, exact = None, True
    if n_sessions:
        both = np.sort(np.concatenate([np.full(short, min_len - 1, np.int64), lengths]))  # shorts: < min_len events
        median = float(np.median(both))
        exact = min_len <= 2 or median >= min_len
        median = median if exact else None
    sessions = {
        "count": n_sessions,
        "mean": None if mean is None else round(float(mean), 3),
        "median": median,
        "median_exact": bool(exact),
        "single_event_share": round(short / n_sessions, 4) if (n_sessions and min_len <= 2) else None,
    }

    # test split: ground truth against the test input
    test = np.zeros(len(SOURCES), np.int64)
    with_lt = n_test = 0
    test_files = _shards(data_dir, "test")
    if test_files:
        if feature == F.ITEM_ID:
            value_of = np.arange(spec.n_items, dtype=np.int64)
        else:
            from seqrec.data.items import read_items

            value_of = read_items(data_dir, spec).side[:, names.index(feature) - 1]
        for f in test_files:
            t = pq.read_table(f, columns=[seq_c, lt_c, F.TARGETS])
            test += truth_sources(t[seq_c].combine_chunks(), t[lt_c].combine_chunks(), t[F.TARGETS].combine_chunks(),
                                  value_of)
            with_lt += int(pc.sum(pc.greater(pc.list_value_length(t[lt_c]), 0)).as_py() or 0)
            n_test += t.num_rows
    return {
        "feature": feature,
        # what the long-term subset L holds: the protocol's window before the session (7 days by default)
        "long_term_days": round(p["long_term_s"] / 86400, 3),
        "input": p.get("input", "session"),
        "sessions": sessions,
        "train_targets": _shares(train),
        "test_truth": _shares(test),
        "test_rows_with_long_term": round(with_lt / n_test, 4) if n_test else None,
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def format_behaviour_stats(b: dict) -> str:
    """The text of :func:`behaviour_stats`, with the Taobao figures beside it."""
    s, t = b["sessions"], TAOBAO
    med = "-" if s["median"] is None else f"{s['median']:g}"
    mean = "-" if s["mean"] is None else f"{s['mean']:.2f}"
    out = ["## Sessions and where next items come from"]
    out.append(
        f"sessions in the training window: {s['count']:,}; length mean {mean}, median {med}"
        + ("" if s["single_event_share"] is None else f", single events {_pct(s['single_event_share'])}")
        + f" (Taobao UserBehavior: mean {t['session_len_mean']:g}, median {t['session_len_median']:g})"
    )
    rows = []
    for label, key in (("next item in a training session", "train_targets"), ("test ground truth vs test input", "test_truth")):
        r = b[key]
        rows.append([label, r["n"], *(_pct(r[k]) for k in SOURCES)])
    rows.append(["Taobao UserBehavior, next item in a session", "-", *(_pct(t[k]) for k in SOURCES)])
    window = f"{b['long_term_days']:g} days" if b.get("input", "session") == "session" else "long-term input"
    out.append(_table(["targets", "n", f"{b['feature']} in session prefix", f"only in long-term ({window})", "neither"], rows))
    lt = b["train_targets"]["long_term_only"]
    out.append(
        f"test rows with long-term behaviours: {_pct(b['test_rows_with_long_term'])}. SDM's gate learns to use the long-term "
        "subset from the training targets found only there"
        + ("" if lt is None else f" ({_pct(lt)} here): the more of them, the more long-term behaviour can matter.")
    )
    return "\n".join(out)
