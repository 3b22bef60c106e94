"""The two-stage recommendation pipeline without Ray: what the Serve app's deployments call.

A request is one user's raw events (item id, timestamp, optional behaviour and side info) and
an optional profile. :class:`RowBuilder` turns them into the session row a model reads, with the
dataset's vocabularies and the code that builds training rows (``seqrec.data.sessions``:
``sessionize``, ``serving_cuts``, ``rows_table``), so training and serving cannot drift apart:
the short-term session is the latest session up to the last event, and the long-term
behaviours are the distinct values of the protocol's window before it (SDM §3.1).

Bad input never disappears silently:
- item ids the vocabulary does not know map to the unknown code (1), as at evaluation, and are listed in the report;
- a side value missing from an event comes from the catalogue (``items.parquet``) for a known item, and is unknown (1) otherwise;
- a missing behaviour is the dataset's most frequent one; a profile missing from the request is the stored one for a known user
  (``users.parquet``), unknown otherwise;
- a request with no events is not a row: it gets :func:`cold_start`, the most popular items of the training window.

The stages are functions with typed results, the only implementation of serving:
:func:`encode` (requests → :class:`Encoded`: session rows and user vectors), :func:`retrieve`
(→ :class:`Candidates`: FAISS top N), :func:`rank` (→ :class:`Ranked`: ranker logits) and
:func:`answer` / :func:`cold_start` (→ :class:`Answer`: the response fields, top k and versions).
Every answered item carries ``fields``, what the dataset knows of it for people to read (:class:`ItemFields`:
the catalogue's title, genres, year where ``seqrec data prepare`` wrote ``catalogue.parquet``, and the item's side
features as raw values); an item the dataset knows nothing of has ``{}``.
:class:`Pipeline` calls them in this process; the Serve app's deployments (``serve_apps/recommend.py``)
call them too and add only batching, model swaps (``reconfigure``) and placement.
Running the models over rows is :mod:`seqrec.inference`, as in offline evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import features as F
from seqrec.data.csvread import ColumnSpec, parse_value

if TYPE_CHECKING:
    import torch

    from seqrec.retrieval import ItemIndex

log = logging.getLogger(__name__)


@dataclass
class Event:
    item_id: int | str
    timestamp: int
    behavior: str | int | None = None
    side: dict = field(default_factory=dict)  # item side info by feature name (raw values)


@dataclass
class Request:
    user_id: int | str
    events: list[Event]
    profile: dict = field(default_factory=dict)  # user profile by feature name (raw values)


# ---------------------------------------------------------------------------------------------
# bounds of a request: checked before any row is built (the Serve app's args of the same names set them)

#: How many characters of an offending value an error message quotes (:func:`clip`).
ECHO_CHARS = 80
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Integer timestamps in [0, 2**53) (up to the year 285 million) are exact as floats: prepare's rule takes every one.
_PLAIN_TS = 2**53
_TIMESTAMP = ColumnSpec(F.TIMESTAMP, "timestamp")  # `seqrec data prepare`'s seconds column (every built-in loader's)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold; :func:`check_request` enforces it.

    - ``max_events``: clients send up to a week of behaviours, 1,000 events (issue 17); more is a 422 that
      says to send the most recent ones.
    - ``max_k``: the answer's length (an answer is read by people; the ranker re-orders a few hundred candidates).
    - ``max_id_chars``: every id as text (user, item, behaviour), profile and side-info names and values;
      datasets' ids are integers or short strings (a UUID has 36 characters).
    """

    max_events: int = 1000
    max_k: int = 100
    max_id_chars: int = 256

    def __post_init__(self) -> None:
        for name in ("max_events", "max_k", "max_id_chars"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RequestLimits.{name}={v!r}: it must be an integer >= 1")


def clip(value, n: int = ECHO_CHARS) -> str:
    """``value`` as an error message may quote it (its ``repr``): at most ``n`` characters of it, and saying so
    when it was longer. The work is bounded too (``reprlib``), whatever the size of ``value``."""
    if isinstance(value, str):
        return repr(value) if len(value) <= n else f"{value[:n]!r}... (truncated; {len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * n:
        return f"an integer of {value.bit_length()} bits (truncated)"  # str() of it is slow, refused past 4,300 digits
    text = _REPR.repr(value)  # a container's first items and levels, its long strings elided with "..."
    if len(text) > n:
        return f"{text[:n]}... (truncated)"
    return f"{text} (truncated)" if "..." in text else text


def shorten(text: str, n: int = ECHO_CHARS) -> str:
    """``text`` itself when it has at most ``n`` characters, else its first ``n`` and how long it was."""
    return text if len(text) <= n else f"{text[:n]}... (truncated; {len(text)} characters)"


def _repr():
    import reprlib

    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 2, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = ECHO_CHARS
    return r


_REPR = _repr()


def _id_problem(value, max_chars: int) -> str | None:
    """Why ``value`` (an id, a profile or side-info value, or a name) is refused, or None."""
    if isinstance(value, str):
        if len(value) > max_chars:
            return f"is {len(value)} characters long, more than max_id_chars={max_chars} (it starts {value[:20]!r}...)"
        return None
    if value is None or isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):
        return None if _INT64_MIN <= value <= _INT64_MAX else f"{clip(value)} is out of the int64 range of ids"
    return f"is a {type(value).__name__} ({clip(value)}): send one string or integer"


def timestamp_problem(ts) -> str | None:
    """Why ``seqrec data prepare`` would reject ``ts`` as an event's timestamp (seconds since the epoch), or None:
    its own rule (:func:`seqrec.data.csvread.parse_value` of the seconds column), so serving takes exactly the
    timestamps training could have read."""
    if type(ts) is int and 0 <= ts < _PLAIN_TS:
        return None  # the plain case, without parse_value's ~3 us of text round trip
    try:
        text = str(ts)
    except ValueError:  # an int of more than 4,300 digits (json.loads refuses them before they get here)
        return f"timestamp {clip(ts)} is out of the int64 range"
    _, reason = parse_value(text, _TIMESTAMP, F.TIMESTAMP)
    return None if reason is None else shorten(reason, 2 * ECHO_CHARS)


def check_request(request: Request, k: int, limits: RequestLimits = RequestLimits()) -> None:
    """Raise ``ValueError`` naming the first field out of ``limits`` (and the limit), or the first event whose
    timestamp ``seqrec data prepare`` rejects (its index and the reason). Messages quote values clipped
    (:func:`clip`), so an error never echoes a large input."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={clip(k)}: ask for at least 1 item")
    if k > limits.max_k:
        raise ValueError(f"k={k} is more than max_k={limits.max_k}")
    if len(request.events) > limits.max_events:
        raise ValueError(f"{len(request.events)} events are more than max_events={limits.max_events}; send the most recent ones")
    m = limits.max_id_chars
    fields = [("user_id", request.user_id)]
    for name, value in request.profile.items():
        fields += [(f"profile name {clip(name, 20)}", name), (f"profile[{clip(name, 20)}]", value)]
    for where, value in fields:
        if (why := _id_problem(value, m)) is not None:
            raise ValueError(f"{where} {why}")
    events = request.events
    ts = [e.timestamp for e in events]
    values = [e.item_id for e in events] + [e.behavior for e in events]
    values += [x for e in events if e.side for kv in e.side.items() for x in kv]
    if _plain_timestamps(ts) and _plain_ids(values, m):
        return  # the common case, in a few list passes (a per-event loop costs ~1 ms for 1,000 events)
    for i, e in enumerate(events):  # the first offending event, named
        if (why := timestamp_problem(e.timestamp)) is not None:
            raise ValueError(f"events[{i}].timestamp: {why} (`seqrec data prepare` rejects it: timestamps are "
                             "whole seconds since the epoch, >= 0)")
        for where, value in (("item_id", e.item_id), ("behavior", e.behavior)):
            if (why := _id_problem(value, m)) is not None:
                raise ValueError(f"events[{i}].{where} {why}")
        for name, value in e.side.items():
            if (why := _id_problem(name, m)) is not None:
                raise ValueError(f"events[{i}]: a side-info name {why}")
            if (why := _id_problem(value, m)) is not None:
                raise ValueError(f"events[{i}].{shorten(str(name), 20)} {why}")


def _plain_timestamps(ts: list) -> bool:
    """Whether every timestamp is :func:`timestamp_problem`'s plain case (an int in [0, 2**53))."""
    return all(type(t) is int for t in ts) and (not ts or (min(ts) >= 0 and max(ts) < _PLAIN_TS))


def _plain_ids(values: list, max_chars: int) -> bool:
    """Whether every value passes :func:`_id_problem` as a None, a short string or an int64 (no float, no bool)."""
    strs = [v for v in values if type(v) is str]
    ints = [v for v in values if type(v) is int]
    nones = sum(v is None for v in values)
    return (len(strs) + len(ints) + nones == len(values) and (not strs or max(map(len, strs)) <= max_chars)
            and (not ints or (min(ints) >= _INT64_MIN and max(ints) <= _INT64_MAX)))


@dataclass
class RowReport:
    unknown_items: list = field(default_factory=list)  # raw item ids mapped to the unknown code
    unknown_user: bool = False
    unknown_values: dict = field(default_factory=dict)  # feature name -> raw values not in its vocabulary
    events_used: int = 0  # events in the row: the short-term session (the long-term window reads earlier ones)


class RowBuilder:
    """Raw events → session rows with a prepared dataset's vocabularies and protocol."""

    def __init__(self, data_dir: str | Path):
        from seqrec.data.prepare import load_manifest
        from seqrec.data.sessions import Protocol
        from seqrec.features import FeatureSpec

        self.data_dir = Path(data_dir)
        manifest = load_manifest(self.data_dir)
        self.manifest = manifest
        self.protocol = Protocol(**manifest["config"]["protocol"])
        self.spec = FeatureSpec.from_dict(manifest["feature_spec"])
        self.item_names = [f.name for f in self.spec.item_features]
        self.user_names = [f.name for f in self.spec.user_features]
        # raw values in code order (code = position + FIRST_CODE), as prepare's _encode takes them
        self.vocab = {name: self._vocab(name) for name in [*self.item_names, *self.user_names, F.BEHAVIOR]}
        items = pq.read_table(self.data_dir / "items.parquet")
        side = [items[f].to_numpy().astype(np.int32) for f in self.item_names[1:]]
        self.item_side_codes = np.stack(side) if side else np.zeros((0, items.num_rows), np.int32)  # (Fs, N) by item code
        self.item_side = {f: self.item_side_codes[k] for k, f in enumerate(self.item_names[1:])}  # its rows, by name
        self.item_counts = items["count"].to_numpy().astype(np.int64)
        users = pq.read_table(self.data_dir / "users.parquet")
        self.user_codes = {str(u): i for i, u in enumerate(users[F.USER_RAW].to_pylist())}
        self.user_profile = {f: users[f].to_numpy().astype(np.int32) for f in self.user_names}
        counts = pq.read_table(self.data_dir / "vocab" / f"{F.BEHAVIOR}.parquet")
        self.default_behavior = counts["raw"][int(np.argmax(counts["count"].to_numpy()))].as_py()

    def _vocab(self, name: str) -> pa.Array:
        t = pq.read_table(self.data_dir / "vocab" / f"{name}.parquet", columns=["raw", "code"])
        return t["raw"].take(np.argsort(t["code"].to_numpy())).combine_chunks()

    def encode(self, name: str, values: list) -> np.ndarray:
        """Raw values → codes with the dataset's vocabulary (unknown and null → 1), as prepare's ``_encode``.

        prepare's encoder hashes the whole vocabulary on every call (``pc.index_in``), a cost that
        grows with the catalogue, not with the request; a request has a few dozen values, so the
        vocabulary is sorted once here and looked up with ``np.searchsorted`` (integer ids) or a
        dict (strings). ``tests/test_serving.py`` checks the rows against prepare's.
        Values that need no parsing skip Arrow (:meth:`_encode_plain`; ``tests/test_encode_fast.py``).
        """
        table = self._lookup(name)
        plain = self._encode_plain(name, table, values)
        if plain is not None:
            return plain
        vocab = self.vocab[name]
        arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())  # ids may come as 5 or "5"
        if arr.type != vocab.type:
            arr = _cast(arr, vocab.type)
        out = np.full(len(arr), F.UNKNOWN, np.int32)
        if isinstance(table, dict):
            for i, v in enumerate(arr.to_pylist()):
                out[i] = table.get(v, F.UNKNOWN)
            return out
        keys, codes = table
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        return _search(keys, codes, arr.fill_null(0).to_numpy(zero_copy_only=False), valid)

    def _encode_plain(self, name: str, table, values: list) -> np.ndarray | None:
        """:meth:`encode` without Arrow (~10x faster on a request's few dozen values), or None when a value needs
        Arrow's cast: for an integer vocabulary every value is None, an int or a string of at most 18 ASCII digits
        (what the cast reads as that int; it also takes signs, hex, ...), and an int outside the vocabulary's keys is
        unknown either way (out of the type's range the cast gives null); for a string vocabulary every
        ``str(value)`` is ASCII (the cast refuses some other text: lone surrogates)."""
        if isinstance(table, dict):
            vtype = self.vocab[name].type
            if not (pa.types.is_string(vtype) or pa.types.is_large_string(vtype)):
                return None
            keys = [None if v is None else str(v) for v in values]
            if not all(k is None or k.isascii() for k in keys):
                return None
            get = table.get
            return np.array([get(k, F.UNKNOWN) for k in keys], np.int32)
        keys, codes = table
        if keys.dtype.kind != "i":
            return None
        if not len(keys) or all(v is None for v in values):
            return np.full(len(values), F.UNKNOWN, np.int32)
        if keys.dtype == np.int64 and all(type(v) is int for v in values):  # the usual request: JSON integers
            try:
                return _search(keys, codes, np.array(values, np.int64), np.ones(len(values), bool))
            except OverflowError:  # beyond int64: the loop below reads it as unknown (the cast's null)
                pass
        lo, hi = int(keys[0]), int(keys[-1])
        x, valid = [], []
        for v in values:
            if type(v) is str and 0 < len(v) <= 18 and v.isascii() and v.isdigit():
                v = int(v)
            elif not (v is None or type(v) is int):
                return None
            ok = v is not None and lo <= v <= hi  # outside: not in the vocabulary (nor maybe in its type: a null)
            x.append(v if ok else 0)
            valid.append(ok)
        return _search(keys, codes, np.array(x, keys.dtype), np.array(valid, bool))

    def _lookup(self, name: str):
        """The vocabulary of ``name`` as (sorted keys, their codes) for numbers, or a dict for other values."""
        cache = self.__dict__.setdefault("_lookups", {})
        if name not in cache:
            vocab = self.vocab[name]
            if pa.types.is_integer(vocab.type) or pa.types.is_floating(vocab.type):
                values = vocab.to_numpy(zero_copy_only=False)
                order = np.argsort(values, kind="stable")
                cache[name] = (values[order], (order + F.FIRST_CODE).astype(np.int32))
            else:
                cache[name] = {v: i + F.FIRST_CODE for i, v in enumerate(vocab.to_pylist())}
        return cache[name]

    def rows(self, requests: list[Request]) -> tuple[pa.Table, list[RowReport]]:
        """One session row per request (in order; every request needs at least one event).

        The events become a :class:`~seqrec.data.sessions.Block`, cut by training's ``sessionize`` and
        ``serving_cuts``; ``rows_table`` builds the rows, or for one request :meth:`_one_row` builds the same row with
        fewer Arrow calls (``tests/test_encode_fast.py`` checks the two agree)."""
        from seqrec.data.sessions import rows_table, serving_cuts, sessionize

        block, reports, item_raw = self._block(requests)
        if len(requests) == 1:
            table = self._one_row(block, str(requests[0].user_id))
        else:
            block.item_key = _identity(item_raw)
            starts = sessionize(block, self.protocol)
            cuts = serving_cuts(block, starts)
            sizes = np.array([f.vocab_size for f in self.spec.item_features], np.int64)
            table = rows_table(block, cuts, self.protocol, self.item_names, self.user_names, sizes,
                               pa.array([str(r.user_id) for r in requests]))
        for rep, n in zip(reports, table[F.SEQ_LEN].to_numpy()):
            rep.events_used = int(n)
        return table, reports

    def _one_row(self, block, user_raw: str) -> pa.Table:
        """``rows_table``'s row of a block of one user's events, from Python lists in one Arrow conversion (a struct
        array of the row schema), not a few Arrow calls per column.

        The cuts are training's (``sessionize``, ``serving_cuts``, ``input_ranges``), and so are the long-term
        subsets (``long_term``), over large codes (item ids) relabelled 0..V-1 first: the subsets keep the most
        recent distinct values, so only equality counts, and its per-value table then has V entries, not the
        catalogue's."""
        from dataclasses import replace

        from seqrec.data.sessions import input_ranges, long_term, row_schema, serving_cuts, sessionize

        cuts = serving_cuts(block, sessionize(block, self.protocol))
        (start,), (h_lo,) = input_ranges(block, cuts, self.protocol)
        start, h_lo, end = int(start), int(h_lo), int(cuts.end[0])
        feats, ts, beh = block.item_feats, block.ts, block.behavior
        local, values = feats, {}  # values[f][label] is feature f's code of a label
        for f in np.flatnonzero(feats.max(axis=1) >= _RELABEL_FROM).tolist():  # item ids, in a large catalogue
            labels: dict = {}  # code -> label, in first-seen order
            local = local.copy() if local is feats else local
            local[f] = [labels.setdefault(v, len(labels)) for v in feats[f].tolist()]
            values[f] = np.array(list(labels), np.int32)
        subsets = long_term(replace(block, item_feats=local), cuts, np.zeros(len(self.item_names), np.int64), self.protocol)
        row = {F.USER_RAW: user_raw}
        row.update((name, int(block.user_feats[k, end - 1])) for k, name in enumerate(self.user_names))
        row[F.SESSION_START] = int(ts[start])
        row[F.SEQ_LEN] = end - start
        row.update((F.seq_col(name), feats[k, start:end].tolist()) for k, name in enumerate(self.item_names))
        row[F.seq_col(F.TIMESTAMP)] = ts[start:end].tolist()
        row[F.seq_col(F.BEHAVIOR)] = beh[start:end].tolist()
        row.update((F.long_term_col(name), (values[f][v] if f in values else v).tolist())
                   for f, (name, (v, _)) in enumerate(zip(self.item_names, subsets)))
        row[F.hist_col(F.ITEM_ID)] = feats[0, h_lo:start].tolist()
        row[F.hist_col(F.TIMESTAMP)] = ts[h_lo:start].tolist()
        row[F.hist_col(F.BEHAVIOR)] = beh[h_lo:start].tolist()
        row[F.TARGETS] = []  # a serving cut has no ground truth
        if "_row_type" not in self.__dict__:
            self._row_type = pa.struct(list(row_schema(self.item_names, self.user_names, pa.string())))
        return pa.Table.from_struct_array(pa.array([row], type=self._row_type))

    def _block(self, requests: list[Request]) -> tuple:
        """(:class:`~seqrec.data.sessions.Block` of the requests' encoded events, one :class:`RowReport` each,
        the raw item ids in block order)."""
        from seqrec.data.sessions import Block

        reports = [RowReport() for _ in requests]
        lengths = np.array([len(r.events) for r in requests], np.int64)
        if (lengths == 0).any():
            raise ValueError(f"requests {np.flatnonzero(lengths == 0).tolist()} have no events: they have no session row")
        # events sorted by timestamp within each request; ties keep the request's order (stable sort)
        order = [sorted(range(len(r.events)), key=lambda i, r=r: int(r.events[i].timestamp)) for r in requests]
        events = [r.events[i] for r, o in zip(requests, order) for i in o]
        ts = np.array([int(e.timestamp) for e in events], np.int64)
        uend = np.cumsum(lengths)
        ustart = uend - lengths
        owner = np.repeat(np.arange(len(requests)), lengths)
        item_raw = [e.item_id for e in events]
        items = self.encode(F.ITEM_ID, item_raw)
        # (Fs, n) side values: the catalogue's (unknown for an unknown item), or the event's where it gives one
        side = np.where(items >= F.FIRST_CODE, self.item_side_codes[:, items], F.UNKNOWN).astype(np.int32)
        if any(v is not None for e in events for v in e.side.values()):
            for k, name in enumerate(self.item_names[1:]):
                given = [e.side.get(name) for e in events]
                side[k] = np.where(np.array([g is None for g in given]), side[k], self.encode(name, given))
                self._note_unknown(reports, owner, name, given, side[k])
        behavior_raw = [self.default_behavior if e.behavior is None else e.behavior for e in events]
        behavior = self.encode(F.BEHAVIOR, behavior_raw)
        self._note_unknown(reports, owner, F.BEHAVIOR, behavior_raw, behavior)
        for k in np.flatnonzero(items == F.UNKNOWN):
            reports[owner[k]].unknown_items.append(item_raw[k])
        user_feats = np.zeros((len(self.user_names), len(ts)), np.int32)
        for u, req in enumerate(requests):
            codes = self._profile(req, reports[u])
            user_feats[:, ustart[u]:uend[u]] = codes[:, None]
        block = Block(ts=ts, item_feats=np.concatenate([items[None, :], side]).astype(np.int32),
                      behavior=behavior.astype(np.int32), user_feats=user_feats, ustart=ustart, uend=uend)
        return block, reports, item_raw

    def _profile(self, req: Request, report: RowReport) -> np.ndarray:
        """(Fu,) user codes: the user id, then the profile (the request's, else the stored one)."""
        known = self.user_codes.get(str(req.user_id))
        out = np.full(len(self.user_names), F.UNKNOWN, np.int32)
        out[0] = self.encode(F.USER_ID, [req.user_id])[0]
        report.unknown_user = bool(out[0] == F.UNKNOWN)
        for k, name in enumerate(self.user_names[1:], start=1):
            if name in req.profile:
                out[k] = self.encode(name, [req.profile[name]])[0]
                if out[k] == F.UNKNOWN and req.profile[name] is not None:
                    report.unknown_values.setdefault(name, []).append(req.profile[name])
            elif known is not None:
                out[k] = self.user_profile[name][known]
        return out

    @staticmethod
    def _note_unknown(reports, owner, name, given, codes) -> None:
        for k in np.flatnonzero(codes == F.UNKNOWN):
            if given[k] is not None:
                reports[owner[k]].unknown_values.setdefault(name, []).append(given[k])

    def request_from_row(self, row: dict) -> Request:
        """A request carrying a prepared row's recent events (the BST history, then the session) with raw ids.

        For demos and load tests: the events older than the history are not in a row, so the
        long-term behaviours of the served row can be fewer than the prepared row's.
        """
        def raw(name, codes):
            vocab = self.vocab[name]
            return [vocab[c - F.FIRST_CODE].as_py() if c >= F.FIRST_CODE else None for c in codes]

        items = raw(F.ITEM_ID, row[F.hist_col(F.ITEM_ID)] + row[F.seq_col(F.ITEM_ID)])
        ts = row[F.hist_col(F.TIMESTAMP)] + row[F.seq_col(F.TIMESTAMP)]
        beh = raw(F.BEHAVIOR, row[F.hist_col(F.BEHAVIOR)] + row[F.seq_col(F.BEHAVIOR)])
        return Request(row[F.USER_RAW], [Event(i, t, b) for i, t, b in zip(items, ts, beh) if i is not None])

    def popular(self, k: int) -> np.ndarray:
        """The cold-start list: the ``k`` most frequent item codes of the training window."""
        counts = self.item_counts.copy()
        counts[: F.FIRST_CODE] = -1
        return np.argsort(-counts, kind="stable")[:k]

    def popular_ids(self, k: int) -> list:
        """The raw item ids of :meth:`popular` (what a cold-start answer lists)."""
        return self.vocab[F.ITEM_ID].take(self.popular(k) - F.FIRST_CODE).to_pylist()


class ItemFields:
    """What an answer says of each item beside its id and scores (an item's ``fields``), for people to read.

    - the dataset's catalogue (``catalogue.parquet``, written by ``seqrec data prepare`` for a source that has one,
      e.g. a MovieLens ``title``, ``genres`` and ``year``), when the data dir holds one;
    - always, the item's side features as raw values (``items.parquet``'s codes decoded with the vocabularies,
      e.g. ``category_id``, ``cate1_id``, ``year_bucket``).

    A value the dataset does not know (null in the catalogue, a side value outside the vocabulary) is left out; an
    unknown item gets ``{}``. Looking fields up never fails an answer: on an error, the items get ``{}`` (logged).
    Lookups are by item code over Arrow columns, so a million-item catalogue costs no Python object per item.
    """

    def __init__(self, builder: RowBuilder, catalogue: pa.Table | None = None):
        self.builder = builder
        self.side = [(name, builder.item_side[name], builder.vocab[name]) for name in builder.item_names[1:]]
        self.catalogue, self.rows = None, None  # the catalogue's columns, and each item code's row in it (-1: none)
        if catalogue is not None and catalogue.num_rows:
            n = len(builder.item_counts)
            if "code" in catalogue.column_names:
                codes = catalogue["code"].to_numpy().astype(np.int64)
            else:  # a catalogue keyed by raw id alone
                codes = builder.encode(F.ITEM_ID, catalogue[F.ITEM_ID].to_pylist()).astype(np.int64)
            ok = (codes >= F.FIRST_CODE) & (codes < n)
            self.rows = np.full(n, -1, np.int64)
            self.rows[codes[ok]] = np.flatnonzero(ok)
            self.catalogue = catalogue.drop_columns([c for c in ("code", F.ITEM_ID) if c in catalogue.column_names])

    @classmethod
    def load(cls, data_dir: str | Path, builder: RowBuilder | None = None) -> ItemFields:
        """The fields of a prepared dataset's items (``builder``: its :class:`RowBuilder`, when already loaded)."""
        from seqrec.data.prepare import CATALOGUE

        builder = builder if builder is not None else RowBuilder(data_dir)
        path = Path(data_dir) / CATALOGUE
        return cls(builder, pq.read_table(path) if path.exists() else None)

    def of(self, item_ids: list) -> list[dict]:
        """One dict of fields per raw item id (in order): the catalogue's first, then the side features."""
        if not len(item_ids):
            return []
        try:
            return self._of([_plain(i) for i in item_ids])
        except Exception as e:  # noqa: BLE001 - fields are for people to read: never fail an answer for them
            log.warning("item fields: lookup failed (%r); answering without them", e)
            return [{} for _ in item_ids]

    def _of(self, item_ids: list) -> list[dict]:
        codes = self.builder.encode(F.ITEM_ID, item_ids).astype(np.int64)
        known = codes >= F.FIRST_CODE
        out: list[dict] = [{} for _ in item_ids]
        if self.catalogue is not None:
            rows = np.where(known, self.rows[codes], -1)
            hit = np.flatnonzero(rows >= 0)
            if len(hit):
                for j, rec in zip(hit.tolist(), self.catalogue.take(pa.array(rows[hit])).to_pylist()):
                    out[j].update((k, v) for k, v in rec.items() if v is not None)
        for name, side, vocab in self.side:
            c = np.where(known, side[codes], F.UNKNOWN)
            hit = np.flatnonzero(c >= F.FIRST_CODE)
            if len(hit):
                for j, v in zip(hit.tolist(), vocab.take(pa.array(c[hit] - F.FIRST_CODE)).to_pylist()):
                    out[j].setdefault(name, v)
        return out


# ---------------------------------------------------------------------------------------------
# artifacts: training runs' exports, their versions and the matcher's item index


def _export_info(export: Path, kind: str) -> dict:
    f = export / "export.json"
    if not f.exists():
        raise FileNotFoundError(f"{export} is not a seqrec export (no export.json): point at <run>/export of `seqrec train`")
    info = json.loads(f.read_text())
    if info["kind"] != kind:
        raise ValueError(f"{export} holds a {info['kind']} ({info['model']}); a {kind} is needed here")
    return info


def export_dir(run: str | Path) -> Path:
    """A training run directory or its export directory → the export directory."""
    run = Path(run)
    return run if (run / "export.json").exists() else run / "export"


def find_runs(run: str | Path) -> tuple[Path, Path | None]:
    """(matcher export, ranker export or None) of a training run or an experiment directory.

    An experiment (``seqrec evaluate --trainer ray --out DIR``) keeps its runs in ``DIR/train/``:
    the first SDM matcher (else any matcher) and the first BST ranker (else any ranker) there.
    """
    run = Path(run)
    exports = sorted({p.parent for p in [*run.glob("export.json"), *run.glob("export/export.json"),
                                           *run.glob("train/*/export/export.json"), *run.glob("*/export/export.json")]})
    if not exports:
        raise FileNotFoundError(f"no training run with an export under {run}: pass a `seqrec train` run directory or the "
                                "--out of `seqrec evaluate --trainer ray`")
    infos = [(e, json.loads((e / "export.json").read_text())) for e in exports]

    def pick(kind: str, family: str):
        of_kind = [e for e, i in infos if i["kind"] == kind]
        preferred = [e for e, i in infos if i["kind"] == kind and i["model"].partition(":")[0] == family]
        return (preferred or of_kind or [None])[0]

    matcher = pick("matcher", "sdm")
    if matcher is None:
        raise FileNotFoundError(f"no matcher run under {run} (found {[str(e) for e in exports]}): serving needs one")
    return matcher, pick("ranker", "bst")


def ranker_verdict(run: str | Path, ranker: Path) -> dict:
    """Whether to serve ``ranker`` (an export), from the two-stage result of the experiment ``run`` that trained it
    (``<run>/results.json`` of ``seqrec evaluate --pipeline``).

    Returns ``{"use": bool, "why": str, "gains": {...}}``: ``use`` is False when the ranker lowered a Hit or
    Recall metric below the matcher's own order on the same candidates (mean over seeds); True, with the
    reason, when it raised or kept every one, or when there is no two-stage result to judge by."""
    results = Path(run) / "results.json"
    if not results.exists():
        return {"use": True, "why": f"no two-stage result in {run} (results.json of `seqrec evaluate --pipeline`) to "
                "judge the ranker by", "gains": None}
    report = json.loads(results.read_text())
    ts = report.get("two_stage")
    here = Path(ranker).resolve().parent  # results.json holds absolute run directories; --run may be relative
    label = next((r["label"] for r in report.get("runs", []) if r.get("run_dir") and Path(r["run_dir"]).resolve() == here),
                 None)
    row = None if not ts or label is None else f"{ts['matcher']} + {label}"  # the two-stage table's row of the ranker
    if row is None or row not in ts.get("gains", {}):
        return {"use": True, "why": f"the two-stage result in {results} does not cover the ranker {ranker}", "gains": None}
    gains = ts["gains"][row]
    lowered = {m: g for m, g in gains.items() if m.split("@")[0] in ("Hit", "HitRate", "Recall") and g["diff"] < 0}
    shown = ", ".join(f"{m} {g['ratio']:.3f}x" for m, g in gains.items())
    if lowered:
        return {"use": False, "gains": gains,
                "why": f"{row} lowered {sorted(lowered)} against {ts['matcher']} alone on the same candidates ({shown})"}
    return {"use": True, "gains": gains, "why": f"{row} over {ts['matcher']} alone: {shown}"}


def ensure_index(export: Path, kind: str = "auto") -> dict:
    """The matcher export's FAISS index: the existing one when it is of ``kind`` (or ``kind`` is ``auto``), else
    built (``auto``: exact flat up to 100k items, HNSW above)."""
    from seqrec.export import build_index

    meta = export / "index" / "index.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if kind in ("auto", info["kind"]):
            return {"path": str(meta.parent), "kind": info["kind"], "items": info["n_items"], **info.get("meta", {})}
    if kind == "auto":
        n = np.load(export / "item_ids.npy", mmap_mode="r").shape[0]
        kind = "flat" if n <= 100_000 else "hnsw"
    return build_index(export, kind=kind)


def load_index(export: Path, use_gpu: bool = False):
    """The matcher export's FAISS index (``seqrec index build``), or an exact flat one over its item vectors."""
    from seqrec.retrieval import ItemIndex

    if (export / "index").exists():
        return ItemIndex.load(export / "index", use_gpu=use_gpu)
    return ItemIndex.build(np.load(export / "item_embeddings.npy"), kind="flat", use_gpu=use_gpu)


def model_version(export: Path) -> dict:
    """What every answer says of a model: its export's model, epoch and checkpoint, with a short id
    (the id is how the Serve app's Retriever finds the index of the matcher that encoded a request)."""
    info = json.loads((export / "export.json").read_text())
    vid = hashlib.sha1(f"{info['checkpoint']}:{info['epoch']}".encode()).hexdigest()[:10]
    return {"id": vid, "model": info["model"], "epoch": info["epoch"], "checkpoint": info["checkpoint"]}


def index_version(index) -> dict:
    """What every answer says of the item index (a ``seqrec.retrieval.ItemIndex``): kind, device, search parameters."""
    return {"kind": index.kind, "on_gpu": index.on_gpu, **index.params}


def model_versions(matcher: dict, index: dict, ranker: dict | None) -> dict:
    """An answer's ``model_versions``: the matcher's and the ranker's :func:`model_version` (None without a
    ranker) and the index's :func:`index_version`."""
    return {"matcher": matcher, "index": index, "ranker": ranker}


@dataclass(frozen=True)
class LoadedModel:
    """A model of a training run's export, in eval mode on ``device``, with its :func:`model_version`."""

    model: torch.nn.Module  # a seqrec matcher (encode_users) or ranker (score)
    version: dict
    device: str = "cpu"


def load_model(run: str | Path, kind: str, device: str = "cpu", vocab_hash: str | None = None,
               precision: str = "fp32", runtime: str = "auto") -> LoadedModel:
    """The ``kind`` (``matcher`` | ``ranker``) model of a training run or its export directory.

    ``vocab_hash`` (the prepared dataset's) refuses a model trained on another vocabulary. ``precision``
    (:data:`seqrec.inference.RANKER_PRECISIONS`; ``auto``: int8 on a CPU) is what the model runs at
    (:func:`seqrec.inference.with_precision`); a matcher's ``runtime`` (:data:`seqrec.inference.MATCHER_RUNTIMES`;
    ``auto``: SDM's ``encode_users`` in ONNX Runtime on a CPU) is what computes its user vectors
    (:func:`seqrec.inference.with_runtime`). The version records both."""
    from seqrec.checkpoint import load_checkpoint
    from seqrec.inference import resolve_precision, with_precision, with_runtime

    export = export_dir(run)
    _export_info(export, kind)
    precision = resolve_precision(precision, device)
    model, _ = load_checkpoint(export / "model", map_location=device, vocab_hash=vocab_hash)
    model = with_precision(model, precision, device)
    version = {**model_version(export), "precision": precision}
    if kind == "matcher":
        model = with_runtime(model, runtime, device)
        version["runtime"] = "torch" if getattr(model, "runtime", None) is None else "onnx"
    return LoadedModel(model, version, device)


@dataclass
class Catalogue:
    """A matcher's item side: the FAISS index over its item vectors and the raw id of every item code."""

    index: ItemIndex  # seqrec.retrieval.ItemIndex over item codes
    item_ids: np.ndarray  # (N,) int64 raw item id of each code; -1 for codes 0 and 1
    matcher: dict  # model_version of the matcher whose item vectors the index holds


def load_catalogue(run: str | Path, use_gpu: bool = False) -> Catalogue:
    """The catalogue of a matcher's training run or export (:func:`load_index`, ``item_ids.npy``)."""
    export = export_dir(run)
    _export_info(export, "matcher")
    index = load_index(export, use_gpu=use_gpu)
    ids = np.load(export / "item_ids.npy")
    if index.n_items != len(ids):
        raise ValueError(f"{export}: the index has {index.n_items} item codes, item_ids.npy {len(ids)}: "
                         f"rebuild the index (seqrec index build --run {export})")
    return Catalogue(index, ids, model_version(export))


def rows_to_bytes(rows: pa.Table) -> bytes:
    """A session row (or rows) as Arrow IPC stream bytes, to pass between processes.

    Ray's own pickling of a sliced Arrow table copies and re-encodes every list column's
    offsets on each side of every hop; the IPC stream of the same rows is cheaper to write and
    read and keeps the schema exact."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def rows_from_bytes(data: bytes) -> pa.Table:
    """The inverse of :func:`rows_to_bytes`."""
    return pa.ipc.open_stream(data).read_all()


# ---------------------------------------------------------------------------------------------
# the stages: the one implementation, called by Pipeline (below) and the Serve app's deployments


@dataclass
class Encoded:
    """The encode stage's result for U requests (in order).

    Pickles its rows as Arrow IPC bytes (:func:`rows_to_bytes`), so it is what the Serve app's
    deployments pass each other."""

    rows: pa.Table  # U session rows (the training rows' schema)
    vecs: np.ndarray  # (U, D) float32 matcher user vectors
    reports: list[RowReport]  # U reports of what the row builder read as unknown
    matcher: dict  # model_version of the matcher that encoded them
    rows_ms: float = 0.0  # time building the rows (for the whole call, when it was a batch)
    encode_ms: float = 0.0  # time in the matcher (likewise)
    penalty: float | None = None  # the matcher's learned penalty on its input's items (MatchConfig.seen_penalty)

    def take(self, i: int) -> Encoded:
        """Request ``i`` alone (U = 1)."""
        return Encoded(self.rows.slice(i, 1), self.vecs[i:i + 1], self.reports[i:i + 1], self.matcher,
                       self.rows_ms, self.encode_ms, self.penalty)

    def seen(self) -> np.ndarray:
        """(U, T) item codes of each request's short-term session, 0-padded: what ``exclude_seen`` leaves out."""
        from seqrec.inference import session_items

        return session_items(self.rows)

    def exclusions(self, exclude_seen: bool = False) -> tuple[np.ndarray | None, float | np.ndarray]:
        """(codes, penalties) for :func:`retrieve`: ``exclude_seen`` leaves the session's items out, and a matcher
        with a learned penalty scores its input's items (session and long-term) lower by it, as offline
        (:func:`seqrec.inference.exclusions`)."""
        from seqrec.inference import matcher_inputs

        if self.penalty is None:
            return (self.seen(), math.inf) if exclude_seen else (None, math.inf)
        codes = matcher_inputs(self.rows)
        pen = np.full(codes.shape, self.penalty, np.float32)
        if exclude_seen:
            pen[:, : self.seen().shape[1]] = math.inf  # the session's columns come first
        return codes, pen

    def __getstate__(self) -> dict:
        return {**self.__dict__, "rows": rows_to_bytes(self.rows)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, rows=rows_from_bytes(state["rows"]))


@dataclass
class Candidates:
    """The retrieve stage's result for U requests: each one's top N items by inner product."""

    codes: np.ndarray  # (U, N) int64 item codes, best first; -1 where fewer than N remain
    scores: np.ndarray  # (U, N) float32 match scores (user · item vector); -inf on the -1 padding
    raw_ids: np.ndarray  # (U, N) raw item id of each code (only the candidates' ids travel, never the catalogue)
    index: dict  # index_version of the index searched
    ms: float = 0.0


@dataclass
class Ranked:
    """The rank stage's result for U requests: ranker logits of their candidates."""

    logits: np.ndarray  # (U, C) float32, column j for candidate j; -inf on the -1 padding
    ranker: dict  # model_version of the ranker
    ms: float = 0.0  # time in the ranker (for the whole call, when it was a batch)


#: What a degraded answer lists in place of a stage that failed: the matcher's order without the ranker,
#: the popular items without the encoder or the retriever (docs/serving.md, "Degraded answers").
FALLBACKS = {"encode": "popular", "retrieve": "popular", "rank": "matcher_order"}


@dataclass(frozen=True)
class Degraded:
    """Why an answer comes from the stage before: ``stage`` (``encode`` | ``retrieve`` | ``rank``) failed or
    missed its deadline, ``reason`` says which (the error's type and message, or the deadline), and ``fallback``
    what was answered instead (:data:`FALLBACKS`: ``matcher_order`` or ``popular``)."""

    stage: str
    reason: str
    fallback: str = ""

    def __post_init__(self) -> None:
        if self.stage not in FALLBACKS:
            raise ValueError(f"Degraded.stage={self.stage!r}: one of {sorted(FALLBACKS)}")
        if not self.fallback:
            object.__setattr__(self, "fallback", FALLBACKS[self.stage])


@dataclass
class Answer:
    """One request's answer: the fields of the HTTP response (``serve_apps.recommend.RecommendOut``)."""

    items: list[dict]  # [{"item_id", "score", "match_score", "fields"}], best first (fields: ItemFields.of)
    cold_start: bool
    report: RowReport
    model_versions: dict  # model_versions(), or {"cold_start": ...}
    timings_ms: dict  # stage times, as measured by the caller
    degraded: Degraded | None = None  # a stage failed: the answer is the stage before's (None: every stage answered)

    def response(self, request_id: str | None = None) -> dict:
        """The response body: what ``POST /recommend`` answers and :meth:`Pipeline.recommend` returns."""
        return {"request_id": request_id, "items": self.items, "cold_start": self.cold_start,
                "unknown_items": self.report.unknown_items, "unknown_user": self.report.unknown_user,
                "unknown_values": self.report.unknown_values, "model_versions": self.model_versions,
                "timings_ms": self.timings_ms,
                "degraded": None if self.degraded is None else asdict(self.degraded)}


def encode(builder: RowBuilder, matcher: LoadedModel, requests: list[Request]) -> Encoded:
    """Raw requests → session rows (:meth:`RowBuilder.rows`, the training code) → user vectors.

    Every request needs at least one event (ValueError otherwise: answer it with :func:`cold_start`)."""
    from seqrec.inference import encode_table, seen_penalty_of

    t0 = time.perf_counter()
    rows, reports = builder.rows(requests)
    t1 = time.perf_counter()
    vecs = encode_table(matcher.model, rows, builder.spec, device=matcher.device)
    return Encoded(rows, vecs, reports, matcher.version, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3,
                   seen_penalty_of(matcher.model))


def retrieve(catalogue: Catalogue, vecs: np.ndarray, n: int, exclude: np.ndarray | None = None,
             penalty=math.inf) -> Candidates:
    """The top ``n`` items of each (U, D) user vector by inner product; ``exclude`` (U, E) codes never returned, or
    with a finite ``penalty`` scored lower by it (:meth:`Encoded.exclusions`)."""
    t0 = time.perf_counter()
    scores, codes = catalogue.index.search(vecs, min(n, catalogue.index.ntotal), exclude=exclude, penalty=penalty)
    return Candidates(codes, scores, catalogue.item_ids[np.maximum(codes, 0)], index_version(catalogue.index),
                      (time.perf_counter() - t0) * 1e3)


def rank(ranker: LoadedModel, spec, rows: pa.Table, codes: np.ndarray, scores: np.ndarray) -> Ranked:
    """Ranker logits of (U, C) candidate codes (-1: padding) for the U session ``rows`` (``spec``: the dataset's
    FeatureSpec); ``scores`` (U, C) are the candidates' match scores in the matcher's order, which a ranker with
    ``match_features`` reads (the same call as offline evaluation's, :func:`seqrec.inference.score_table`)."""
    from seqrec.inference import score_table

    t0 = time.perf_counter()
    match = scores if getattr(ranker.model.config, "match_features", False) else None
    logits = score_table(ranker.model, rows, spec, np.maximum(codes, 0), device=ranker.device, match=match)  # padding: -inf
    return Ranked(logits, ranker.version, (time.perf_counter() - t0) * 1e3)


def _with_fields(items: list[dict], fields: ItemFields | None) -> list[dict]:
    """``items`` with each one's ``fields`` (:meth:`ItemFields.of`; ``{}`` without ``fields``)."""
    found = fields.of([i["item_id"] for i in items]) if fields is not None else [{} for _ in items]
    for item, f in zip(items, found):
        item["fields"] = f
    return items


def top_items(codes: np.ndarray, raw_ids: np.ndarray, match: np.ndarray, logits: np.ndarray, k: int,
              fields: ItemFields | None = None) -> list[dict]:
    """The top ``k`` of one request's candidates by ranker logit (stable: ties keep the matcher's order);
    ``raw_ids`` holds each candidate's raw id, and candidates with code -1 (fewer than asked) are dropped.
    Each item carries its ``fields`` (:class:`ItemFields`; ``{}`` without one)."""
    order = np.argsort(-logits, kind="stable")[:k]
    order = order[codes[order] >= 0]
    return _with_fields([{"item_id": _plain(raw_ids[o]), "score": float(logits[o]), "match_score": float(match[o])}
                         for o in order], fields)


def answer(encoded: Encoded, candidates: Candidates, ranked: Ranked | None, k: int, timings_ms: dict,
           degraded: Degraded | None = None, fields: ItemFields | None = None) -> list[Answer]:
    """Each request's top ``k``: its candidates by ranker logit (by match score without a ranker). ``degraded``:
    the ranker failed (``Degraded("rank", why)``), so the matcher's order is the answer, marked so. ``fields``:
    what each item's ``fields`` hold (:class:`ItemFields`)."""
    logits = candidates.scores if ranked is None else ranked.logits
    versions = model_versions(encoded.matcher, candidates.index, None if ranked is None else ranked.ranker)
    return [Answer(top_items(candidates.codes[j], candidates.raw_ids[j], candidates.scores[j], logits[j], k, fields),
                   False, report, versions, timings_ms, degraded) for j, report in enumerate(encoded.reports)]


def cold_start(popular_ids: list, k: int, timings_ms: dict, fields: ItemFields | None = None) -> Answer:
    """The documented answer to a request with no events: the ``k`` most popular items
    (:meth:`RowBuilder.popular_ids`, at least ``k`` of them), no scores; ``fields`` as in :func:`answer`."""
    items = _with_fields([{"item_id": i, "score": None, "match_score": None} for i in popular_ids[:k]], fields)
    return Answer(items, True, RowReport(), {"cold_start": "popular items of the training window"}, timings_ms)


def popular_fallback(popular_ids: list, k: int, timings_ms: dict, degraded: Degraded,
                     report: RowReport | None = None, fields: ItemFields | None = None) -> Answer:
    """The answer when the encode or retrieve stage failed: :func:`cold_start`'s popular items, marked ``degraded``
    (``cold_start`` stays false: the user has events); ``report``: the row builder's, when the encoder answered;
    ``fields`` as in :func:`answer`."""
    if degraded.fallback != "popular":
        raise ValueError(f"popular_fallback answers for a failed encode or retrieve stage, not {degraded.stage!r}")
    items = cold_start(popular_ids, k, timings_ms, fields).items
    return Answer(items, False, report or RowReport(), {"popular": "popular items of the training window"}, timings_ms,
                  degraded)


class Pipeline:
    """SDM user network → FAISS top ``candidates`` → BST scores → top k, in this process.

    ``matcher`` and ranker are training runs (or their ``export/`` directories); the index is
    ``<matcher export>/index`` (``seqrec index build``), or an exact flat index over the exported
    item vectors when there is none. Without a ranker, the matcher's order is the answer. The ranker
    runs at ``ranker_precision`` (``auto``: int8 on a CPU, as the Serve app), the matcher's user vectors in
    ``encoder_runtime`` (``auto``: SDM in ONNX Runtime on a CPU, as the Serve app; :func:`load_model`). The
    Serve app's deployments call the same stage functions (:func:`encode`, :func:`retrieve`,
    :func:`rank`, :func:`answer`, :func:`cold_start`). Answers' items carry the dataset's
    :class:`ItemFields` (``self.fields``).
    """

    def __init__(self, data_dir: str | Path, matcher: str | Path, ranker: str | Path | None = None,
                 candidates: int = 300, device: str = "cpu", use_gpu_index: bool = False, ranker_precision: str = "auto",
                 encoder_runtime: str = "auto"):
        self.rows = RowBuilder(data_dir)
        self.fields = ItemFields.load(data_dir, self.rows)
        vocab_hash = self.rows.manifest.get("vocab_hash")
        self.matcher = load_model(matcher, "matcher", device, vocab_hash, runtime=encoder_runtime)
        self.catalogue = load_catalogue(matcher, use_gpu=use_gpu_index)
        self.ranker = None if ranker is None else load_model(ranker, "ranker", device, vocab_hash, ranker_precision)
        self.candidates = int(candidates)

    @property
    def item_ids(self) -> np.ndarray:
        """(N,) raw item id of every item code."""
        return self.catalogue.item_ids

    def versions(self) -> dict:
        """What answers a request (every answer's ``model_versions``): the matcher, the ranker and the index."""
        return model_versions(self.matcher.version, index_version(self.catalogue.index),
                              None if self.ranker is None else self.ranker.version)

    def recommend(self, requests: list[Request], k: int, exclude_seen: bool = False) -> list[dict]:
        """Every request's answer, as ``POST /recommend`` gives it (:meth:`Answer.response`): the top ``k`` items
        with the ranker's and the matcher's scores, the versions and each stage's time (``timings_ms``:
        ``rows_ms``, ``encode_ms``, ``retrieve_ms``, ``rank_ms``, for the whole call)."""
        warm = [i for i, r in enumerate(requests) if r.events]
        out: list[dict | None] = [None] * len(requests)
        if warm:
            enc = encode(self.rows, self.matcher, [requests[i] for i in warm])
            cands = retrieve(self.catalogue, enc.vecs, max(self.candidates, k), *enc.exclusions(exclude_seen))
            ranked = None if self.ranker is None else rank(self.ranker, self.rows.spec, enc.rows, cands.codes, cands.scores)
            timings = {"rows_ms": enc.rows_ms, "encode_ms": enc.encode_ms, "retrieve_ms": cands.ms,
                       "rank_ms": 0.0 if ranked is None else ranked.ms}
            for i, a in zip(warm, answer(enc, cands, ranked, k, timings, fields=self.fields)):
                out[i] = a.response()
        popular = self.rows.popular_ids(k) if len(warm) < len(requests) else []
        return [o if o is not None else cold_start(popular, k, {}, self.fields).response() for o in out]

def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _cast(arr: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast raw values to the vocabulary's type; values that do not parse become null (→ unknown)."""
    import pyarrow.compute as pc

    try:
        return arr.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = []
        for v in arr.to_pylist():
            try:
                out.append(pa.scalar(v).cast(to).as_py() if v is not None else None)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                out.append(None)
        return pc.cast(pa.array(out, type=to), to)


#: RowBuilder._one_row relabels a feature's codes 0..V-1 for the long-term subsets from this code on: their per-value
#: table (``seqrec.data.sessions.long_term``) is as long as the largest code, 8 MB a request for a 1M-item catalogue.
_RELABEL_FROM = 1 << 12


def _search(keys: np.ndarray, codes: np.ndarray, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(n,) int32 code of each value of ``x`` in a vocabulary's sorted ``keys`` (their ``codes``); 1 (unknown) where
    it is missing or not ``valid``."""
    out = np.full(len(x), F.UNKNOWN, np.int32)
    pos = np.minimum(np.searchsorted(keys, x), max(len(keys) - 1, 0))  # (n,) >= 0 already
    hit = valid & (keys[pos] == x) if len(keys) else np.zeros(len(x), bool)
    out[hit] = codes[pos[hit]]
    return out


def _identity(raw: list) -> np.ndarray:
    """(n,) int64 identity of each raw item id (for deduplication in rows_table)."""
    seen: dict = {}
    return np.array([seen.setdefault(str(v), len(seen)) for v in raw], np.int64)


__all__ = ["Answer", "Candidates", "Catalogue", "Degraded", "Encoded", "FALLBACKS", "popular_fallback",
           "Event", "ItemFields", "LoadedModel", "Pipeline", "Ranked", "Request", "ranker_verdict",
           "RequestLimits", "RowBuilder", "RowReport", "answer", "check_request", "clip", "cold_start", "encode",
           "ensure_index", "export_dir", "find_runs", "index_version", "load_catalogue", "load_index", "load_model",
           "model_version", "model_versions", "rank", "retrieve", "rows_from_bytes", "rows_to_bytes", "shorten",
           "timestamp_problem", "top_items"]
