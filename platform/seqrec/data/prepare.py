"""``seqrec data prepare``: raw behaviour logs → sessionized Parquet shards + manifest.

The pipeline (SDM §3.1, §4.1):

1. **read** — every chunk of the source (64 MB of CSV, a Parquet row group, ...)
   is parsed and validated (malformed rows stop the run or go to ``rejects/``),
   stamped with its input order, filtered by time range and behaviour, and
   hash-partitioned by user into buckets of about ``rows_per_bucket`` events;
2. **count** — per bucket (which holds complete users): the user filter
   (> ``max_user_events`` events is spam) and item counts;
3. **vocabulary** — per bucket, after the item filter (< ``min_item_count``
   events): time windows per user and the training-window value counts from
   which every vocabulary is built, most frequent first (0 = padding,
   1 = unknown);
4. **build** — per bucket: encode, sort by (user, timestamp, input order),
   sessionize, long-term behaviours, train / val / test rows
   (:mod:`seqrec.data.sessions`), written as Parquet shards. The protocol's
   ``input`` chooses what a row's input holds: the paper's session + 7 days
   (``session``, the default) or RecBole's last N events (``last-n``).

With ``engine="ray"`` every stage is a Ray Data ``map`` over chunks or buckets,
so a 100M-row log is processed in parallel with memory bounded by one chunk or
bucket per worker (the explicit bucket files are our group-by-user shuffle:
unlike ``Dataset.groupby(...).map_groups``, it keeps memory bounded on one small
machine and its intermediate files can be inspected). ``engine="local"`` runs
the same stage functions in this process on one bucket: the in-memory path,
used for small data and as the reference the Ray path is tested against.

Output layout::

    out/manifest.json        feature spec, protocol, counts in/out of every filter, hashes
    out/vocab/<feature>.parquet   raw value, code, training count
    out/items.parquet        dense item table: code → raw id, count, side-feature codes
    out/users.parquet        raw user id → code, profile codes (latest)
    out/catalogue.parquet    what people read of each item (title, genres, year), by item code; only
                             from a source with a catalogue (MovieLens): see :func:`write_catalogue`
    out/{train,val,test}/part-NNNNN.parquet   session rows (sessions.row_schema)
    out/rejects/             malformed rows (only with --bad-rows=quarantine)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec import __version__, storage
from seqrec import features as F
from seqrec.data import sessions as S
from seqrec.data.events import BadRows, EventSource, MalformedRowError, check_events

SPLIT_NAMES = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides the prepared rows; recorded in the manifest."""

    protocol: S.Protocol = field(default_factory=S.Protocol)
    min_item_count: int = 5  # SDM §4.1: items seen < 5 times are removed (1 disables)
    max_user_events: int = 1000  # SDM §4.1: users with > 1000 events are spam (0 disables)
    behaviors: tuple[str, ...] | None = None  # keep only these behaviours (None: all)
    time_range: tuple[int, int] | None = None  # keep start <= timestamp < end
    bad_rows: BadRows = BadRows.ERROR
    rows_per_bucket: int = 2_000_000
    chunk_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.min_item_count < 1:
            raise ValueError(f"min_item_count={self.min_item_count} must be >= 1 (1 keeps every item)")
        if self.max_user_events < 0:
            raise ValueError(f"max_user_events={self.max_user_events} must be >= 0 (0 keeps every user)")
        if self.time_range is not None and not self.time_range[0] < self.time_range[1]:
            raise ValueError(f"time_range={self.time_range} must be (start, end) with start < end")
        if self.rows_per_bucket < 1000:
            raise ValueError(f"rows_per_bucket={self.rows_per_bucket} is too small; use >= 1000")
        if self.chunk_bytes < 1 << 10:
            raise ValueError(f"chunk_bytes={self.chunk_bytes} is too small; use >= 1024")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["protocol"] = self.protocol.to_dict()
        d["bad_rows"] = self.bad_rows.value
        d["behaviors"] = list(self.behaviors) if self.behaviors is not None else None
        d["time_range"] = list(self.time_range) if self.time_range is not None else None
        return d


def resolve_config(source: EventSource, **overrides: Any) -> PrepareConfig:
    """A config from the source's suggested defaults (e.g. Taobao's UTC+8 days) and explicit overrides.

    Protocol fields (split, session_gap_s, ...) and config fields may be mixed; ``None`` values are ignored.
    ``tz_offset_hours`` is accepted for ``tz_offset_s``. With ``input="last-n"``, ``long_term_max`` and
    ``hist_len`` are raised to at least ``input_events`` (N) unless given, so the long-term input and the
    history can hold N events (given values below N are refused).
    """
    defaults = dict(source.protocol_defaults())
    merged = {**defaults, **{k: v for k, v in overrides.items() if v is not None}}
    if "tz_offset_hours" in merged:
        merged["tz_offset_s"] = int(round(float(merged.pop("tz_offset_hours")) * 3600))
    if overrides.get("input_events") is not None and merged.get("input", "session") != "last-n":
        raise ValueError(f"input_events={overrides['input_events']} (--input-events) needs input='last-n' (--input last-n)")
    if merged.get("input") == "last-n":  # the long-term input and the history hold up to N events
        if overrides.get("long_term_s") is not None:
            raise ValueError("long_term_s (--long-term-days) has no effect with input='last-n': the long-term input is "
                             "the rest of the last N events, however old; drop it or use input='session'")
        n = merged.get("input_events", S.Protocol.input_events)
        for name in ("long_term_max", "hist_len"):
            if overrides.get(name) is None:
                merged[name] = max(merged.get(name, getattr(S.Protocol, name)), n)
    proto_fields = set(S.Protocol.__dataclass_fields__)
    cfg_fields = set(PrepareConfig.__dataclass_fields__) - {"protocol"}
    unknown = set(merged) - proto_fields - cfg_fields
    if unknown:
        raise ValueError(f"unknown prepare options {sorted(unknown)}; allowed: {sorted(proto_fields | cfg_fields)}")
    proto = S.Protocol(**{k: v for k, v in merged.items() if k in proto_fields})
    rest = {k: v for k, v in merged.items() if k in cfg_fields}
    if "bad_rows" in rest:
        rest["bad_rows"] = BadRows(rest["bad_rows"])
    if rest.get("time_range") is not None:
        rest["time_range"] = tuple(int(x) for x in rest["time_range"])
    if rest.get("behaviors") is not None:
        rest["behaviors"] = tuple(rest["behaviors"])
    return PrepareConfig(protocol=proto, **rest)


# --------------------------------------------------------------------------------------------
# small helpers


def _names(source: EventSource) -> tuple[list[str], list[str]]:
    return [F.ITEM_ID, *source.item_side], [F.USER_ID, *source.user_profile]


def _add(a: dict, b: dict) -> dict:
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


def _value_counts(col: pa.ChunkedArray | pa.Array) -> pa.Table:
    vc = pc.value_counts(col)
    return pa.table({"value": vc.field("values"), "count": vc.field("counts").cast(pa.int64())})


def _merge_counts(parts: list[pa.Table]) -> pa.Table:
    nonempty = [p for p in parts if p.num_rows]
    if not nonempty:  # keep the value type (an empty vocabulary must still match its column)
        return parts[0] if parts else pa.table({"value": pa.array([], pa.int64()), "count": pa.array([], pa.int64())})
    t = pa.concat_tables(nonempty, promote_options="permissive")
    return t.group_by("value").aggregate([("count", "sum")]).rename_columns(["value", "count"])


def _hash_bucket(col: pa.ChunkedArray, n_buckets: int) -> np.ndarray:
    """Deterministic bucket of every value (pandas' fixed-key hash; strings and ints alike)."""
    import pandas as pd  # only the Ray engine partitions

    values = col.to_numpy(zero_copy_only=False)
    return (pd.util.hash_array(values) % np.uint64(n_buckets)).astype(np.int32)


def _encode(col: pa.ChunkedArray | pa.Array, vocab: pa.Array) -> np.ndarray:
    """Raw values → codes (vocab index + 2); values not in the vocabulary (and nulls) → 1."""
    if len(col) == 0:
        return np.zeros(0, np.int32)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.type != vocab.type:
        col = col.cast(vocab.type)
    idx = pc.index_in(col, value_set=vocab)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32) + np.int32(F.FIRST_CODE)


def _sort_events(events: pa.Table) -> pa.Table:
    return events.take(pc.sort_indices(events, [(F.USER_ID, "ascending"), (F.TIMESTAMP, "ascending"), (F.ROW, "ascending")]))


def _new_user_mask(user: pa.ChunkedArray) -> np.ndarray:
    n = len(user)
    new = np.ones(n, bool)
    if n > 1:
        u = user.combine_chunks() if isinstance(user, pa.ChunkedArray) else user
        new[1:] = pc.not_equal(u.slice(1), u.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return new


# --------------------------------------------------------------------------------------------
# stage 1: read


def read_stage(source: EventSource, chunk, ordinal: int, cfg: PrepareConfig) -> tuple[pa.Table, pa.Table, dict]:
    """Parse one chunk, stamp input order, apply the row-level filters (time range, behaviour)."""
    res = source.read_chunk(chunk, cfg.bad_rows)
    ev = res.events
    check_events(ev, source)
    ev = ev.append_column(F.ROW, pa.array((np.int64(ordinal) << 32) + np.arange(ev.num_rows, dtype=np.int64)))
    stats = {"rows_read": res.rows_read, "rows_rejected": res.rejects.num_rows, "events_valid": ev.num_rows}
    if cfg.time_range is not None:
        ts = ev[F.TIMESTAMP]
        keep = pc.and_(pc.greater_equal(ts, cfg.time_range[0]), pc.less(ts, cfg.time_range[1]))
        before = ev.num_rows
        ev = ev.filter(keep)
        stats["removed_time_range"] = before - ev.num_rows
    if cfg.behaviors is not None:
        before = ev.num_rows
        ev = ev.filter(pc.is_in(ev[F.BEHAVIOR], value_set=pa.array(list(cfg.behaviors), pa.string())))
        stats["removed_behavior"] = before - ev.num_rows
    if ev.num_rows:
        stats["min_ts"] = int(pc.min(ev[F.TIMESTAMP]).as_py())
        stats["max_ts"] = int(pc.max(ev[F.TIMESTAMP]).as_py())
    return ev, res.rejects, stats


def _reject_reason_counts(rejects: pa.Table) -> dict:
    if rejects.num_rows == 0:
        return {}
    # "wrong column count: expected 5, got 4" → "wrong column count"
    kinds = Counter(str(r).split(":")[0].split(" '")[0] for r in rejects["reason"].to_pylist())
    return {f"rejected[{k}]": v for k, v in sorted(kinds.items())}


# --------------------------------------------------------------------------------------------
# stage 2: user filter and item counts


def user_filter(events: pa.Table, cfg: PrepareConfig) -> tuple[pa.Table, dict]:
    """Remove users with more than max_user_events events (complete users only)."""
    vc = _value_counts(events[F.USER_ID])
    stats = {"users_before_user_filter": vc.num_rows}
    if cfg.max_user_events and vc.num_rows:
        spam = vc.filter(pc.greater(vc["count"], cfg.max_user_events))
        stats["users_removed_max_user_events"] = spam.num_rows
        stats["events_removed_max_user_events"] = int(pc.sum(spam["count"]).as_py() or 0)
        if spam.num_rows:
            events = events.filter(pc.invert(pc.is_in(events[F.USER_ID], value_set=spam["value"])))
    return events, stats


def item_keep_set(item_counts: pa.Table, cfg: PrepareConfig) -> tuple[pa.Array, dict]:
    """Items with >= min_item_count events (after the user filter); raises if no event is left."""
    keep = item_counts.filter(pc.greater_equal(item_counts["count"], cfg.min_item_count))
    if keep.num_rows == 0:
        raise ValueError(
            f"no events are left after the filters ({item_counts.num_rows} items, none with >= "
            f"{cfg.min_item_count} events once users with > {cfg.max_user_events or 'any'} events are removed); "
            "loosen --min-item-count, --max-user-events, --time-range or --behaviors"
        )
    removed = item_counts.num_rows - keep.num_rows
    return keep["value"].combine_chunks(), {
        "items_before_item_filter": item_counts.num_rows,
        "items_removed_min_item_count": removed,
        "events_removed_min_item_count": int(pc.sum(item_counts["count"]).as_py() or 0)
        - int(pc.sum(keep["count"]).as_py() or 0),
    }


def filtered_sorted(events: pa.Table, cfg: PrepareConfig, item_keep: pa.Array, users_filtered: bool = False) -> pa.Table:
    """Both filters applied, sorted by (user, timestamp, input order)."""
    if not users_filtered:
        events, _ = user_filter(events, cfg)
    if cfg.min_item_count > 1:
        events = events.filter(pc.is_in(events[F.ITEM_ID], value_set=item_keep))
    return _sort_events(events)


def _time_block(events: pa.Table) -> S.Block:
    ustart, uend = S.user_bounds(_new_user_mask(events[F.USER_ID]))
    ts = events[F.TIMESTAMP].to_numpy()
    none = np.zeros((0, len(ts)), np.int32)  # windows need timestamps and user bounds only
    return S.Block(ts=ts, item_feats=none, behavior=np.zeros(len(ts), np.int32), user_feats=none, ustart=ustart, uend=uend)


# --------------------------------------------------------------------------------------------
# stage 3: windows and vocabulary counts


def vocab_stage(ev: pa.Table, source: EventSource, cfg: PrepareConfig, test_day: int | None) -> dict:
    """Training-window value counts of every feature, latest side info per item, window sizes.

    ``ev``: the events of complete users after :func:`filtered_sorted`.
    """
    item_names, user_names = _names(source)
    block = _time_block(ev)
    a_val, a_test = S.windows(block, cfg.protocol, test_day)
    g = block.group()
    idx = np.arange(block.n)
    train = ev.filter(pa.array(idx < a_val[g])) if block.n else ev
    out: dict[str, Any] = {
        "counts": {name: _value_counts(train[name]) for name in item_names + user_names + [F.BEHAVIOR]},
        "stats": {
            "events_after_filters": block.n,
            "users_after_filters": len(block.ustart),
            "events_train_window": train.num_rows,
            "events_val_window": int((a_test - a_val).sum()),
            "events_test_window": int((block.uend - a_test).sum()),
        },
    }
    # latest side info of every item (for the item table) and items whose side info varies
    side = list(source.item_side)
    if side:
        out["item_latest"] = _last_per_item(train.select([F.ITEM_ID, F.TIMESTAMP, F.ROW, *side]))
        out["item_side_pairs"] = {
            f: train.group_by([F.ITEM_ID, f]).aggregate([]) for f in side
        }
    return out


def _last_per_item(t: pa.Table) -> pa.Table:
    """The row of every item with the latest (timestamp, input order)."""
    t = t.take(pc.sort_indices(t, [(F.ITEM_ID, "ascending"), (F.TIMESTAMP, "ascending"), (F.ROW, "ascending")]))
    last = np.ones(t.num_rows, bool)
    if t.num_rows > 1:
        it = t[F.ITEM_ID].combine_chunks()
        last[:-1] = pc.not_equal(it.slice(0, len(it) - 1), it.slice(1)).to_numpy(zero_copy_only=False)
    return t.filter(pa.array(last))


def merge_vocab_parts(parts: list[dict]) -> dict:
    """Fold the results of several :func:`vocab_stage` calls into one (driver memory stays bounded by
    the number of distinct values, not by the number of buckets)."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {
        "counts": {name: _merge_counts([p["counts"][name] for p in parts]) for name in parts[0]["counts"]},
        "stats": {},
    }
    for p in parts:
        _add(merged["stats"], p["stats"])
    if "item_latest" in parts[0]:
        merged["item_latest"] = _last_per_item(pa.concat_tables([p["item_latest"] for p in parts], promote_options="permissive"))
        merged["item_side_pairs"] = {
            f: pa.concat_tables([p["item_side_pairs"][f] for p in parts],
                                promote_options="permissive").group_by([F.ITEM_ID, f]).aggregate([])
            for f in parts[0]["item_side_pairs"]
        }
    return merged


@dataclass
class Vocabs:
    """Raw values of every feature in code order: code = position + 2."""

    values: dict[str, pa.Array]
    counts: dict[str, np.ndarray]

    def size(self, name: str) -> int:
        return len(self.values[name]) + F.FIRST_CODE


def build_vocabs(part: dict, names: list[str]) -> Vocabs:
    """Vocabularies from training-window counts (a merged :func:`vocab_stage` result), most frequent first."""
    values, counts = {}, {}
    for name in names:
        merged = part["counts"][name]  # already one row per value
        merged = merged.filter(pc.is_valid(merged["value"]))
        merged = merged.take(pc.sort_indices(merged, [("count", "descending"), ("value", "ascending")]))
        values[name] = merged["value"].combine_chunks()
        counts[name] = merged["count"].to_numpy()
    return Vocabs(values, counts)


def item_table(part: dict, source: EventSource, vocabs: Vocabs) -> tuple[pa.Table, dict]:
    """Dense item table indexed by code (rows 0 and 1 are padding and unknown)."""
    items = vocabs.values[F.ITEM_ID]
    n = vocabs.size(F.ITEM_ID)
    cols: dict[str, Any] = {
        "code": pa.array(np.arange(n, dtype=np.int32)),
        "raw": pa.concat_arrays([pa.nulls(F.FIRST_CODE, items.type), items]),
        "count": pa.array(np.concatenate([[0, 0], vocabs.counts[F.ITEM_ID]]).astype(np.int64)),
    }
    stats = {}
    side = list(source.item_side)
    if side:
        latest = part["item_latest"]
        pos = pc.index_in(items, value_set=latest[F.ITEM_ID].combine_chunks()).to_numpy(zero_copy_only=False)
        for f in side:
            raw = latest[f].combine_chunks().take(pa.array(pos))
            codes = np.concatenate([[F.PAD, F.UNKNOWN], _encode(raw, vocabs.values[f])]).astype(np.int32)
            cols[f] = pa.array(codes)
            per_item = _value_counts(part["item_side_pairs"][f][F.ITEM_ID])  # distinct (item, value) pairs
            stats[f"items_with_varying_{f}"] = int(pc.sum(pc.greater(per_item["count"], 1)).as_py() or 0)
    return pa.table(cols), stats


# --------------------------------------------------------------------------------------------
# stage 4: build rows


def encode_block(ev: pa.Table, source: EventSource, vocabs: Vocabs) -> S.Block:
    item_names, user_names = _names(source)
    ustart, uend = S.user_bounds(_new_user_mask(ev[F.USER_ID]))
    n = ev.num_rows
    item_feats = np.stack([_encode(ev[f], vocabs.values[f]) for f in item_names]) if n else np.zeros((len(item_names), 0), np.int32)
    user_feats = np.stack([_encode(ev[f], vocabs.values[f]) for f in user_names]) if n else np.zeros((len(user_names), 0), np.int32)
    session_key = None
    if source.has_session_id and n:
        session_key = (pc.dictionary_encode(ev[F.SESSION_ID].combine_chunks()).indices.fill_null(-1)
                       .to_numpy(zero_copy_only=False).astype(np.int64))
    item_key = (pc.dictionary_encode(ev[F.ITEM_ID].combine_chunks()).indices.to_numpy(zero_copy_only=False).astype(np.int64)
                if n else np.zeros(0, np.int64))
    return S.Block(
        ts=ev[F.TIMESTAMP].to_numpy(),
        item_feats=item_feats,
        behavior=_encode(ev[F.BEHAVIOR], vocabs.values[F.BEHAVIOR]),
        user_feats=user_feats,
        ustart=ustart,
        uend=uend,
        session_key=session_key,
        item_key=item_key,
    )


def build_stage(
    ev: pa.Table, source: EventSource, cfg: PrepareConfig, vocabs: Vocabs, test_day: int | None
) -> tuple[dict[str, pa.Table], pa.Table, dict]:
    """Session rows of every split plus user-table rows; ``ev`` as for :func:`vocab_stage`."""
    item_names, user_names = _names(source)
    block = encode_block(ev, source, vocabs)
    p = cfg.protocol
    starts = S.sessionize(block, p)
    a_val, a_test = S.windows(block, p, test_day)
    user_raw = ev[F.USER_ID].combine_chunks().take(pa.array(block.ustart, pa.int64()))
    sizes = np.array([vocabs.size(f) for f in item_names], np.int64)
    stats = {"sessions": len(starts)}
    tables = {}
    train_cuts, c = S.training_cuts(block, starts, a_val, p)
    _add(stats, c)
    tables["train"] = S.rows_table(block, train_cuts, p, item_names, user_names, sizes, user_raw)
    for split, lo, hi in (("val", a_val, a_test), ("test", a_test, block.uend)):
        cuts, c = S.eval_cuts(block, starts, lo, hi, p)
        _add(stats, {f"{split}_{k}": v for k, v in c.items()})
        tables[split] = S.rows_table(block, cuts, p, item_names, user_names, sizes, user_raw)
        t = tables[split][F.TARGETS]
        stats[f"{split}_targets"] = int(pc.sum(pc.list_value_length(t)).as_py() or 0)
        stats[f"{split}_targets_unknown"] = int(pc.sum(pc.equal(pc.list_flatten(t), F.UNKNOWN)).as_py() or 0) if len(t) else 0
    last = block.uend - 1
    users = {F.USER_RAW: user_raw}
    for k, name in enumerate(user_names):
        users[name] = pa.array(block.user_feats[k, last] if block.n else np.zeros(0, np.int32), pa.int32())
    for split, t in tables.items():
        stats[f"{split}_rows"] = t.num_rows
        stats[f"{split}_users"] = len(pc.unique(t[F.USER_RAW])) if t.num_rows else 0  # buckets hold disjoint users
        stats[f"{split}_events"] = int(pc.sum(t[F.SEQ_LEN]).as_py() or 0)
        for f in item_names:
            stats[f"{split}_long_term_{f}"] = int(pc.sum(pc.list_value_length(t[F.long_term_col(f)])).as_py() or 0)
        stats[f"{split}_rows_empty_long_term"] = int(pc.sum(pc.equal(pc.list_value_length(t[F.long_term_col(F.ITEM_ID)]), 0)).as_py() or 0)
    return tables, pa.table(users), stats


# --------------------------------------------------------------------------------------------
# engines


class _Task:
    """A picklable callable for Ray Data ``map``: unpickles its argument, pickles its result."""

    def __init__(self, fn: Callable, **kwargs: Any):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, row: dict) -> dict:
        import ray

        kwargs = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in self.kwargs.items()}
        try:
            out = self.fn(pickle.loads(row["arg"]), **kwargs)
        except MalformedRowError as e:  # reported by the driver in input order
            out = e
        return {"i": row["i"], "out": pickle.dumps(out, protocol=5)}


def _ray_map(fn: Callable, args: list, desc: str, progress: bool, fold: Callable | None = None, **kwargs: Any) -> list:
    """Run ``fn(arg, **kwargs)`` for every arg as a Ray Data ``map``; results in argument order, or, with
    ``fold(results_so_far) -> shorter list``, folded as they arrive so the driver never holds them all."""
    import ray
    from tqdm.auto import tqdm

    refs = {k: (ray.put(v) if isinstance(v, (pa.Array, pa.Table, Vocabs, dict)) else v) for k, v in kwargs.items()}
    items = [{"i": i, "arg": pickle.dumps(a, protocol=5)} for i, a in enumerate(args)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(_Task(fn, **refs), num_cpus=1)
    out: list = [None] * len(args) if fold is None else []
    with tqdm(total=len(args), desc=desc, disable=not progress, unit="task") as bar:
        for row in ds.iter_rows():
            if fold is None:
                out[row["i"]] = pickle.loads(row["out"])
            else:
                out = fold(out + [pickle.loads(row["out"])])
            bar.update(1)
    return out


FOLD_EVERY = 8  # bucket results held by the driver before they are merged


def merge_count_parts(parts: list[tuple[pa.Table, dict]]) -> tuple[pa.Table, dict]:
    """Fold (item counts, user-filter stats) of several buckets into one."""
    stats: dict = {}
    for _, st in parts:
        _add(stats, st)
    return _merge_counts([c for c, _ in parts]), stats


def _folder(merge: Callable[[list], Any]) -> Callable[[list], list]:
    """A ``_ray_map`` fold that merges the results held so far once there are FOLD_EVERY of them."""
    return lambda parts: parts if len(parts) < FOLD_EVERY else [merge(parts)]


def _read_bucket(files: list[str]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # no dictionary encoding: session rows are lists of codes, where it only costs time
    pq.write_table(table, path, compression="zstd", use_dictionary=False)


def _ray_read_task(arg: tuple, source: EventSource, cfg: PrepareConfig, n_buckets: int, tmp: str, out: str) -> dict:
    ordinal, chunk = arg
    ev, rejects, stats = read_stage(source, chunk, ordinal, cfg)
    if rejects.num_rows:
        _write_table(rejects, Path(out) / "rejects" / f"chunk-{ordinal:06d}.parquet")
    files = {}
    if ev.num_rows:
        bucket = _hash_bucket(ev[F.USER_ID], n_buckets)
        order = np.argsort(bucket, kind="stable")
        sorted_b = bucket[order]
        bounds = np.flatnonzero(np.diff(sorted_b)) + 1
        for part in np.split(order, bounds):
            b = int(bucket[part[0]])
            path = Path(tmp) / f"bucket-{b:05d}" / f"chunk-{ordinal:06d}.parquet"
            _write_table(ev.take(pa.array(part)), path)
            files[b] = str(path)
    return {"stats": stats, "files": files, "rejects": _reject_reason_counts(rejects)}


def _ray_count_task(files: list[str], cfg: PrepareConfig) -> tuple:
    events, stats = user_filter(_read_bucket(files), cfg)
    return _value_counts(events[F.ITEM_ID]), stats


def _ray_vocab_task(files: list[str], source: EventSource, cfg: PrepareConfig, item_keep, test_day) -> dict:
    return vocab_stage(filtered_sorted(_read_bucket(files), cfg, item_keep), source, cfg, test_day)


def _ray_build_task(arg: tuple, source: EventSource, cfg: PrepareConfig, item_keep, vocabs, test_day, out: str) -> tuple:
    b, files = arg
    ev = filtered_sorted(_read_bucket(files), cfg, item_keep)
    tables, users, stats = build_stage(ev, source, cfg, vocabs, test_day)
    for split, t in tables.items():
        _write_table(t, Path(out) / split / f"part-{b:05d}.parquet")
    return users, stats


def prepare(
    source: EventSource,
    out_dir: str | os.PathLike,
    cfg: PrepareConfig | None = None,
    *,
    engine: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    keep_tmp: bool = False,
) -> dict:
    """Run the pipeline; return the manifest (also written to ``out_dir/manifest.json``).

    ``engine``: ``ray`` (the Ray Data pipeline), ``local`` (the same stages in this process), or
    ``auto``: ``local`` when the input fits in one bucket (``rows_per_bucket`` events, estimated from
    its size) — there the Ray pipeline would run every stage as one task and only add its start-up
    cost — and ``ray`` otherwise, or whenever this process is already connected to a Ray cluster.

    ``out_dir`` may be a storage URI (:mod:`seqrec.storage`, ``s3://bucket/data/NAME``): the dataset is written to
    a local temporary directory (the Ray engine's tasks write their shards there: one machine, or ``TMPDIR`` on
    shared storage), then uploaded in place of what was there.
    """
    cfg = cfg or resolve_config(source)
    if engine not in ("auto", "ray", "local"):
        raise ValueError(f"engine={engine!r} must be 'auto', 'ray' or 'local'")
    if storage.is_uri(out_dir):
        if not overwrite and not storage.is_empty(out_dir):
            raise FileExistsError(f"{out_dir} is not empty; choose another --out or pass --overwrite")
        with storage.local_output(out_dir, replace=True) as local:
            return prepare(source, local, cfg, engine=engine, progress=progress, overwrite=True, keep_tmp=keep_tmp)
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    item_names, user_names = _names(source)
    chunks = source.chunks(cfg.chunk_bytes)
    if not chunks:
        raise ValueError(f"{source.name}: the source has no data")
    est = sum(source.estimate_rows(c) for c in chunks)
    n_buckets = max(1, -(-est // cfg.rows_per_bucket))
    if engine == "auto":
        engine = "ray" if n_buckets > 1 or _ray_connected() else "local"
    stats: dict[str, int] = {}
    rejects_by_reason: dict[str, int] = {}
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - start, 3)
        return now

    if engine == "local":
        t = time.perf_counter()
        parts = []
        for i, c in enumerate(chunks):
            ev, rej, st = read_stage(source, c, i, cfg)
            _merge_read_stats(stats, st)
            if rej.num_rows:
                _write_table(rej, out / "rejects" / f"chunk-{i:06d}.parquet")
                _add(rejects_by_reason, _reject_reason_counts(rej))
            parts.append(ev)
        events = pa.concat_tables(parts, promote_options="permissive")
        if events.num_rows == 0:
            raise ValueError(f"{source.name}: no events left after reading and row filters ({stats})")
        t = lap("read", t)
        events, st = user_filter(events, cfg)
        _add(stats, st)
        item_counts = _value_counts(events[F.ITEM_ID])
        item_keep, st = item_keep_set(item_counts, cfg)
        _add(stats, st)
        test_day = _test_day(stats, cfg)
        t = lap("count", t)
        events = filtered_sorted(events, cfg, item_keep, users_filtered=True)
        vpart = vocab_stage(events, source, cfg, test_day)
        vocabs = build_vocabs(vpart, item_names + user_names + [F.BEHAVIOR])
        t = lap("vocab", t)
        tables, users, st = build_stage(events, source, cfg, vocabs, test_day)
        _add(stats, st)
        for split, tb in tables.items():
            _write_table(tb, out / split / "part-00000.parquet")
        user_tables = [users]
        lap("build", t)
    else:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        tmp = out / "_tmp"
        t = time.perf_counter()
        reads = _ray_map(
            _ray_read_task, list(enumerate(chunks)), "read", progress,
            source=source, cfg=cfg, n_buckets=n_buckets, tmp=str(tmp), out=str(out),
        )
        errors = [r for r in reads if isinstance(r, MalformedRowError)]
        if errors:
            shutil.rmtree(out)
            raise errors[0]
        buckets: dict[int, list[str]] = {}
        for r in reads:
            _merge_read_stats(stats, r["stats"])
            _add(rejects_by_reason, r["rejects"])
            for b, f in r["files"].items():
                buckets.setdefault(b, []).append(f)
        bucket_ids = sorted(buckets)
        bucket_files = [sorted(buckets[b]) for b in bucket_ids]
        if not bucket_files:
            raise ValueError(f"{source.name}: no events left after reading and row filters ({stats})")
        t = lap("read", t)
        counted = _ray_map(_ray_count_task, bucket_files, "count", progress, fold=_folder(merge_count_parts), cfg=cfg)
        item_counts, st = merge_count_parts(counted)
        _add(stats, st)
        item_keep, st = item_keep_set(item_counts, cfg)
        _add(stats, st)
        test_day = _test_day(stats, cfg)
        t = lap("count", t)
        vparts = _ray_map(_ray_vocab_task, bucket_files, "vocabulary", progress, fold=_folder(merge_vocab_parts),
                          source=source, cfg=cfg, item_keep=item_keep, test_day=test_day)
        vpart = merge_vocab_parts(vparts)
        vocabs = build_vocabs(vpart, item_names + user_names + [F.BEHAVIOR])
        t = lap("vocab", t)
        built = _ray_map(_ray_build_task, list(zip(bucket_ids, bucket_files)), "build", progress,
                         source=source, cfg=cfg, item_keep=item_keep, vocabs=vocabs, test_day=test_day, out=str(out))
        user_tables = [u for u, _ in built]
        for _, st in built:
            _add(stats, st)
        stats["buckets"] = len(bucket_files)
        lap("build", t)
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    _add(stats, vpart["stats"])
    # vocabularies, item and user tables
    for name, values in vocabs.values.items():
        _write_table(
            pa.table({"raw": values, "code": pa.array(np.arange(len(values), dtype=np.int32) + F.FIRST_CODE),
                      "count": pa.array(vocabs.counts[name])}),
            out / "vocab" / f"{name}.parquet",
        )
    items, st = item_table(vpart, source, vocabs)
    _add(stats, st)
    _write_table(items, out / "items.parquet")
    users = pa.concat_tables(user_tables, promote_options="permissive")
    users = users.take(pc.sort_indices(users, [(F.USER_RAW, "ascending")]))
    _write_table(users, out / "users.parquet")
    spec = F.FeatureSpec(
        item_features=tuple(F.Feature(n, vocabs.size(n)) for n in item_names),
        user_features=tuple(F.Feature(n, vocabs.size(n)) for n in user_names),
        behavior=F.Feature(F.BEHAVIOR, vocabs.size(F.BEHAVIOR)),
        has_session_id=source.has_session_id,
    )
    manifest = {
        "format": "seqrec-prepared",
        "format_version": FORMAT_VERSION,
        "seqrec_version": __version__,
        "source": source.describe(),
        "config": cfg.to_dict(),
        "test_day": test_day,
        "feature_spec": spec.to_dict(),
        "counts": {**{k: v for k, v in stats.items() if not k.startswith("rejected[")}, **rejects_by_reason},
        "engine": engine,
        "timings_s": {**timings, "total": round(time.perf_counter() - t0, 3)},
    }
    manifest["files"] = _file_table(out)
    manifest["vocab_hash"] = _hash_files(out, [f for f in manifest["files"] if f.startswith("vocab/")])
    manifest["content_hash"] = _hash_files(out, list(manifest["files"]))
    # after the hashes and out of `files`: a catalogue changes no row a model reads (see write_catalogue)
    cat = write_catalogue(source, items, out)
    if cat is not None:
        manifest["catalogue"] = cat
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return manifest


CATALOGUE = "catalogue.parquet"


def write_catalogue(source: EventSource, items: pa.Table, out: Path) -> dict | None:
    """Write ``out/catalogue.parquet`` when the source has a catalogue (``source.catalogue()``, e.g. a MovieLens
    title, genres and year); return what the manifest records of it (``{"file", "rows", "columns"}``), or None.

    Its rows are the dataset's items (those of ``items.parquet``, matched by raw id) that the source's catalogue
    lists, sorted by item code, with a ``code`` column first. It is written after the manifest's ``files`` and hashes
    are taken and is in neither: answers read it, models do not, so ``vocab_hash`` and ``content_hash`` are those of
    the same preparation without it (and of datasets prepared before it existed)."""
    get = getattr(source, "catalogue", None)  # optional: only some sources have one
    cat = get() if callable(get) else None
    if cat is None:
        return None
    raw = items["raw"].combine_chunks().slice(F.FIRST_CODE)
    ids = cat[F.ITEM_ID].combine_chunks()
    if ids.type != raw.type:  # e.g. int64 ids against a string vocabulary: compare as text
        ids, raw = ids.cast(pa.string()), raw.cast(pa.string())
    pos = pc.index_in(raw, value_set=ids)  # per item code (from FIRST_CODE): its catalogue row, or null
    valid = pc.is_valid(pos)
    codes = pc.filter(pa.array(np.arange(F.FIRST_CODE, items.num_rows, dtype=np.int32)), valid)
    table = cat.take(pc.filter(pos, valid))
    table = pa.table({"code": codes, **{n: table[n] for n in table.column_names}})
    _write_table(table, out / CATALOGUE)
    return {"file": CATALOGUE, "rows": table.num_rows, "columns": table.column_names}


def _ray_connected() -> bool:
    """True when this process is a Ray driver already (ray.init done, or inside `ray job submit`)."""
    if os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"):
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _merge_read_stats(stats: dict, st: dict) -> None:
    _add(stats, {k: v for k, v in st.items() if k not in ("min_ts", "max_ts")})
    if "max_ts" in st:
        stats["max_ts"] = max(stats.get("max_ts", st["max_ts"]), st["max_ts"])
        stats["min_ts"] = min(stats.get("min_ts", st["min_ts"]), st["min_ts"])


def _test_day(stats: dict, cfg: PrepareConfig) -> int | None:
    if cfg.protocol.split != "dataset-day":
        return None
    if "max_ts" not in stats:
        raise ValueError("no events left after reading and row filters; nothing to prepare")
    return int((stats["max_ts"] + cfg.protocol.tz_offset_s) // S.DAY_S)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _file_table(out: Path) -> dict:
    files = {}
    for p in sorted(out.rglob("*.parquet")):
        rel = p.relative_to(out).as_posix()
        if rel.startswith("_tmp/"):
            continue
        files[rel] = {"rows": pq.ParquetFile(p).metadata.num_rows, "bytes": p.stat().st_size}
    return files


def _hash_files(out: Path, rels: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(rels):
        h.update(rel.encode())
        with open(out / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# reading a prepared dataset


def load_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {data_dir} is not a prepared dataset (run `seqrec data prepare`)")
    m = json.loads(path.read_text())
    if m.get("format") != "seqrec-prepared" or m.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {m.get('format')!r} v{m.get('format_version')} is not seqrec-prepared v{FORMAT_VERSION}; "
                         "re-run `seqrec data prepare`")
    return m


def read_split(data_dir: str | os.PathLike, split: str) -> pa.Table:
    """All rows of one split as one table (small data; training streams shards with Ray Data)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split={split!r} must be one of {SPLIT_NAMES}")
    files = sorted((Path(data_dir) / split).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{data_dir}/{split}/ has no Parquet shards")
    return pa.concat_tables([pq.read_table(f) for f in files])
