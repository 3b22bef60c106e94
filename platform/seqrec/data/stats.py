"""``seqrec data stats``: the statistics of a prepared dataset, read from its manifest.

Every figure is computed by ``seqrec data prepare`` and stored in
``manifest.json``, so this is instant even for 100M-event datasets.
"""

from __future__ import annotations

import datetime as dt

from seqrec import features as F


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
