"""One delimited-text engine shared by every text loader (CSV, TSV, pipe-separated).

A text file is cut by :func:`split_text_file` into byte ranges that start on a
line start (:class:`~seqrec.data.events.Chunk`); :func:`read_delimited` parses
one range into typed columns described by :class:`ColumnSpec` s.

Fast path: ``pyarrow.csv.read_csv`` on the chunk's bytes (memory-mapped, no
copy) with explicit column types, then vectorised checks (negative ids and
timestamps, empty string ids, behaviours outside the allowed set). Nothing is
done per row in Python; integer timestamps are read as int64, and a chunk with
float timestamps (``881250949.0``) is re-read with them as float64.

Only a chunk where the fast path fails or a check finds a problem goes on:

* locate path (vectorised): the physical line of every row comes from the
  newline positions (the newlines before the chunk are counted only here);
  rows with a wrong field count are found by counting delimiters (unquoted
  chunks), the other columns are checked with array masks, and only the bad
  rows are looked at in Python, to word their reason;
* pure-Python path (quoted chunks that do not parse, bare ``\\r`` line ends,
  bytes that are not valid in ``encoding``): the chunk is parsed line by line.

Both give each bad row its 1-based physical line number in the file, a reason
such as ``wrong column count: expected 5, got 4``, ``non-integer item_id
'abc'``, ``unparsable timestamp 'x'``, ``negative timestamp -5`` or ``unknown
behaviour 'click' (allowed: buy, cart, fav, pv)``, and the raw text (tests
check that they agree). ``BadRows.ERROR`` raises
:class:`~seqrec.data.events.MalformedRowError` for the first one;
``BadRows.QUARANTINE`` returns the good rows (in input order) and the rejects.

Format rules: rows end with ``\\n`` or ``\\r\\n``; empty lines are skipped (they
are neither data nor rejects); a UTF-8 byte-order mark at the start of the file
is ignored; the encoding must be ASCII-compatible (UTF-8, latin-1, ...). Values
may be quoted (``quotechar``) but a quoted value must NOT contain a newline:
chunks are cut on newlines, so a newline always ends a row. Known quirk: the
fast path takes what Arrow's integer parser takes, which includes hex such as
``0x1F``; the other paths reject it.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from seqrec.data.events import BadRows, Chunk, ChunkResult, MalformedRowError, empty_rejects, make_rejects

#: Column kinds understood by :class:`ColumnSpec`.
KINDS = ("int_id", "str_id", "timestamp", "timestamp_ms", "timestamp_iso", "behavior", "int", "float", "str")
#: Extra output column (physical line number) added by ``read_delimited(..., line_numbers=True)``.
LINE_COL = "_line"

_OUT_TYPES = {
    "int_id": pa.int64(),
    "str_id": pa.string(),
    "timestamp": pa.int64(),
    "timestamp_ms": pa.int64(),
    "timestamp_iso": pa.int64(),
    "behavior": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
}
_BOM = b"\xef\xbb\xbf"
_INT64_MAX = 2**63 - 1
_INT_RE = re.compile(r"[ \t]*-?[0-9]+[ \t]*\Z")
_FLOAT_RE = re.compile(r"[ \t]*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?[ \t]*\Z")
_NONFINITE = {"nan", "-nan", "+nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"}
_ISO_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a delimited file, in file order.

    ``name`` is the canonical output column (``None``: parse, validate and drop);
    ``kind`` is one of :data:`KINDS`:

    * ``int_id`` — non-negative integer, int64;
    * ``str_id`` — non-empty string;
    * ``timestamp`` — integer or float seconds >= 0 (floats are truncated), int64;
    * ``timestamp_ms`` — integer or float milliseconds >= 0, output in seconds (floor);
    * ``timestamp_iso`` — ISO-8601 date/time (naive = UTC), output in seconds (floor);
    * ``behavior`` — string; when ``allowed`` is set, anything else is an unknown behaviour;
    * ``int`` / ``float`` / ``str`` — plain values, no further check.
    """

    name: str | None
    kind: str
    allowed: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ColumnSpec({self.name!r}): kind={self.kind!r} is not one of {KINDS}")
        if self.allowed is not None and self.kind != "behavior":
            raise ValueError(f"ColumnSpec({self.name!r}): 'allowed' only applies to kind='behavior'")
        if self.allowed is not None and not isinstance(self.allowed, frozenset):
            object.__setattr__(self, "allowed", frozenset(self.allowed))


# --- splitting -------------------------------------------------------------------


def _first_line_end(f, start: int = 0) -> int:
    """Offset one past the first ``\\n`` at or after ``start`` (the file size if none)."""
    f.seek(start)
    pos = start
    while True:
        block = f.read(1 << 16)
        if not block:
            return pos
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)


def split_text_file(path: str | os.PathLike, chunk_bytes: int, has_header: bool) -> list[Chunk]:
    """Cut ``path`` into byte ranges of about ``chunk_bytes`` that start on line starts.

    The header line (``has_header``) is left out of the first chunk. A header-only
    file gives no chunks; an empty file is a ``ValueError`` naming it.
    """
    path = os.fspath(path)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes={chunk_bytes} must be >= 1")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"{path}: the file is empty (0 bytes); remove it from the input or give a file with data")
    chunks: list[Chunk] = []
    with open(path, "rb") as f:
        pos = _first_line_end(f, 0) if has_header else 0
        while pos < size:
            target = pos + chunk_bytes
            stop = size if target >= size else _first_line_end(f, target - 1)
            chunks.append(Chunk(path, pos, stop))
            pos = stop
    return chunks


def read_header(path: str | os.PathLike, *, delimiter: str, encoding: str = "utf-8", quotechar: str | None = None) -> list[str]:
    """The fields of the first line of ``path`` (a ``ValueError`` naming the file when it is empty)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        end = _first_line_end(f, 0)
        f.seek(0)
        raw = f.read(end)
    if raw.startswith(_BOM):
        raw = raw[3:]
    line = raw.rstrip(b"\n").rstrip(b"\r").decode(encoding)
    if not line:
        raise ValueError(f"{path}: the first line is empty; expected a header line of {delimiter!r}-separated column names")
    return _split_fields(line, delimiter, quotechar)


def count_newlines(path: str | os.PathLike, stop: int) -> int:
    """Number of ``\\n`` bytes in ``path[0:stop]`` (the physical line offset of a chunk)."""
    n = 0
    with open(path, "rb") as f:
        left = stop
        while left > 0:
            block = f.read(min(left, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def read_lines(chunk: Chunk, lines: list[int], *, encoding: str = "utf-8") -> list[str]:
    """The text of the given 1-based physical ``lines`` inside ``chunk`` (error reporting only)."""
    base = count_newlines(chunk.path, chunk.start)
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        parts = f.read(chunk.stop - chunk.start).split(b"\n")
    out = []
    for ln in lines:
        raw = parts[ln - base - 1] if 0 <= ln - base - 1 < len(parts) else b""
        out.append(raw.rstrip(b"\r").decode(encoding, "replace"))
    return out


def _split_fields(line: str, delimiter: str, quotechar: str | None) -> list[str]:
    if quotechar is None or quotechar not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, quotechar=quotechar, doublequote=True, strict=False))


def _read_buffer(chunk: Chunk) -> pa.Buffer:
    """The chunk's bytes, zero-copy from a memory map."""
    mm = pa.memory_map(chunk.path, "r")
    if chunk.stop > mm.size():
        raise ValueError(
            f"{chunk.path}: chunk [{chunk.start}, {chunk.stop}) lies past the end of the file "
            f"({mm.size()} bytes; changed since it was split?)"
        )
    mm.seek(chunk.start)
    return mm.read_buffer(chunk.stop - chunk.start)


# --- fast path -------------------------------------------------------------------


class _NeedSlowPath(Exception):
    """A check found a bad row in a chunk that parsed: carries the typed table so the rows can be located."""

    def __init__(self, table: pa.Table | None = None, ts_float: bool = False):
        super().__init__()
        self.table, self.ts_float = table, ts_float


def _pyarrow_read(
    data: pa.Buffer,
    columns: list[ColumnSpec],
    delimiter: str,
    quotechar: str | None,
    encoding: str,
    types: dict[int, pa.DataType],
) -> pa.Table:
    """``pyarrow.csv.read_csv`` of ``data`` keeping columns ``types`` (index -> type), named ``c<i>``."""
    names = [f"c{i}" for i in range(len(columns))]
    if not types:  # keep one column so the row count is known
        types = {0: pa.string()}
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, encoding=encoding, block_size=8 << 20),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char=quotechar if quotechar is not None else False,
            double_quote=quotechar is not None,
            newlines_in_values=False,
            ignore_empty_lines=True,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={names[i]: t for i, t in types.items()},
            include_columns=[names[i] for i in sorted(types)],
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _checked(c: ColumnSpec) -> bool:
    """Whether a column must be parsed at all (dropped plain strings need no look)."""
    return not (c.name is None and c.kind == "str")


def _fast_types(columns: list[ColumnSpec], ts_float: bool) -> dict[int, pa.DataType]:
    types: dict[int, pa.DataType] = {}
    for i, c in enumerate(columns):
        if not _checked(c):
            continue
        if c.kind in ("timestamp", "timestamp_ms"):
            types[i] = pa.float64() if ts_float else pa.int64()
        elif c.kind == "timestamp_iso":
            types[i] = pa.string()
        else:
            types[i] = _OUT_TYPES[c.kind]
    return types


def _fast(
    data: pa.Buffer,
    columns: list[ColumnSpec],
    delimiter: str,
    quotechar: str | None,
    encoding: str,
    ts_float: bool,
) -> tuple[int, dict[int, pa.ChunkedArray]]:
    """Typed read + vectorised checks; raises ``_NeedSlowPath`` or ``ArrowInvalid`` when a row is bad."""
    types = _fast_types(columns, ts_float)
    table = _pyarrow_read(data, columns, delimiter, quotechar, encoding, types)
    out: dict[int, pa.ChunkedArray] = {}
    for i, c in enumerate(columns):
        if i not in types:
            continue
        col = table.column(f"c{i}")
        if len(col) == 0:
            col = pa.chunked_array([], _OUT_TYPES[c.kind])
        elif c.kind == "int_id":
            if pc.min(col).as_py() < 0:
                raise _NeedSlowPath(table, ts_float)
        elif c.kind == "str_id":
            if pc.min(pc.binary_length(col)).as_py() == 0:
                raise _NeedSlowPath(table, ts_float)
        elif c.kind in ("timestamp", "timestamp_ms"):
            if ts_float:
                if not pc.all(pc.is_finite(col)).as_py():
                    raise _NeedSlowPath(table, ts_float)
                mm = pc.min_max(col).as_py()
                if mm["min"] < 0 or mm["max"] >= 2.0**63:
                    raise _NeedSlowPath(table, ts_float)
                col = pc.cast(pc.trunc(col), pa.int64())
            elif pc.min(col).as_py() < 0:
                raise _NeedSlowPath(table, ts_float)
            if c.kind == "timestamp_ms":
                col = pc.divide(col, 1000)
        elif c.kind == "timestamp_iso":
            us = _iso_to_us(col)
            if us is None or pc.min(us).as_py() < 0:
                raise _NeedSlowPath(table, ts_float)
            col = pc.divide(us, 1_000_000)
        elif c.kind == "behavior" and c.allowed is not None:
            if not pc.all(pc.is_in(col, value_set=pa.array(sorted(c.allowed), pa.string()))).as_py():
                raise _NeedSlowPath(table, ts_float)
        out[i] = col
    return table.num_rows, out


def _iso_to_us(col) -> pa.ChunkedArray | None:
    """Microseconds since the epoch of ISO-8601 strings (naive = UTC), or None when some do not parse."""
    for t in (pa.timestamp("us"), pa.timestamp("us", "UTC")):
        try:
            return pc.cast(pc.cast(col, t), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return None


# --- locate path: vectorised search for the bad rows of a chunk -------------------

_A_INT = r"^[ \t]*-?[0-9]{1,18}[ \t]*$"
_A_FLOAT = r"^[ \t]*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?[ \t]*$"


def _line_index(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(physical index, start, end without the line break, stop after it) of each non-empty line of ``buf``."""
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    stops = np.concatenate([nl + 1, [len(buf)]])
    if starts[-1] >= len(buf):  # the data ends with a newline: no last partial line
        starts, stops = starts[:-1], stops[:-1]
    ends = stops - (buf[np.maximum(stops - 1, 0)] == 10) if len(buf) else stops
    if len(buf):
        ends = ends - ((ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13))
    keep = np.flatnonzero(ends > starts)
    return keep, starts[keep], ends[keep], stops[keep]


def _np(mask) -> np.ndarray:
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks() if mask.num_chunks != 1 else mask.chunk(0)
    return np.asarray(mask.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def _convert_strings(col: pa.ChunkedArray, c: ColumnSpec, label: str) -> tuple[pa.ChunkedArray | pa.Array, np.ndarray]:
    """Typed values and the bad-row mask of a column read as strings (the value of a bad row is arbitrary)."""
    k = c.kind
    zero = pa.scalar("0", pa.string())
    if k in ("int_id", "int"):
        ok = pc.match_substring_regex(col, _A_INT)
        vals = pc.cast(pc.utf8_trim(pc.if_else(ok, col, zero), " \t"), pa.int64())
        bad = ~_np(ok)
        if k == "int_id":
            bad |= _np(pc.less(vals, 0))
        return vals, bad
    if k == "str_id":
        return col, _np(pc.equal(pc.binary_length(col), 0))
    if k in ("timestamp", "timestamp_ms"):
        isf = pc.match_substring_regex(col, _A_FLOAT)
        isi = pc.match_substring_regex(col, _A_INT)
        f = pc.cast(pc.utf8_trim(pc.if_else(isf, col, zero), " \t+"), pa.float64())
        bad = ~_np(isf) | ~_np(pc.is_finite(f)) | _np(pc.less(f, 0)) | _np(pc.greater_equal(f, 2.0**63))
        as_int = pc.cast(pc.utf8_trim(pc.if_else(isi, col, zero), " \t"), pa.int64())
        as_float = pc.cast(pc.trunc(pc.if_else(pa.array(bad), 0.0, f)), pa.int64())
        vals = pc.if_else(isi, as_int, as_float)
        if k == "timestamp_ms":
            vals = pc.divide(pc.if_else(pa.array(bad), 0, vals), 1000)
        return vals, bad
    if k == "timestamp_iso":
        us = _iso_to_us(col)
        if us is None:
            vals, bad = [], []
            for s in col.to_pylist():
                v, why = parse_value(s, c, label)
                vals.append(v or 0)
                bad.append(why is not None)
            return pa.array(vals, pa.int64()), np.array(bad, dtype=bool)
        bad = _np(pc.less(us, 0))
        return pc.divide(pc.if_else(pa.array(bad), 0, us), 1_000_000), bad
    if k == "behavior":
        if c.allowed is None:
            return col, np.zeros(len(col), dtype=bool)
        return col, ~_np(pc.is_in(col, value_set=pa.array(sorted(c.allowed), pa.string())))
    if k == "float":
        nonfinite = pc.is_in(pc.utf8_lower(pc.utf8_trim(col, " \t")), value_set=pa.array(sorted(_NONFINITE)))
        ok = pc.or_(pc.match_substring_regex(col, _A_FLOAT), nonfinite)
        vals = pc.cast(pc.utf8_trim(pc.if_else(ok, col, zero), " \t+"), pa.float64())
        return vals, ~_np(ok)
    return col, np.zeros(len(col), dtype=bool)  # "str"


def _convert_typed(col: pa.ChunkedArray, c: ColumnSpec, ts_float: bool) -> tuple[pa.ChunkedArray, np.ndarray] | None:
    """Like :func:`_convert_strings` for a column the fast path already parsed (None: cannot tell)."""
    k = c.kind
    n = len(col)
    if k == "int_id":
        return col, _np(pc.less(col, 0))
    if k == "str_id":
        return col, _np(pc.equal(pc.binary_length(col), 0))
    if k in ("timestamp", "timestamp_ms"):
        if ts_float:
            bad = ~_np(pc.is_finite(col)) | _np(pc.less(col, 0)) | _np(pc.greater_equal(col, 2.0**63))
            vals = pc.cast(pc.trunc(pc.if_else(pa.array(bad), 0.0, col)), pa.int64())
        else:
            bad = _np(pc.less(col, 0))
            vals = col
        if k == "timestamp_ms":
            vals = pc.divide(pc.if_else(pa.array(bad), 0, vals), 1000)
        return vals, bad
    if k == "timestamp_iso":
        us = _iso_to_us(col)
        if us is None:
            return None
        bad = _np(pc.less(us, 0))
        return pc.divide(pc.if_else(pa.array(bad), 0, us), 1_000_000), bad
    if k == "behavior" and c.allowed is not None:
        return col, ~_np(pc.is_in(col, value_set=pa.array(sorted(c.allowed), pa.string())))
    return col, np.zeros(n, dtype=bool)


def _row_reason(text: str, columns: list[ColumnSpec], labels: list[str], delimiter: str, quotechar: str | None) -> str:
    """The reason a row the vectorised checks flagged is bad, in the words of the Python parser."""
    fields = _split_fields(text, delimiter, quotechar)
    if len(fields) != len(columns):
        return f"wrong column count: expected {len(columns)}, got {len(fields)}"
    for s, c, label in zip(fields, columns, labels):
        _, why = parse_value(s, c, label)
        if why is not None:
            return why
    return "malformed row (rejected by the CSV parser)"


def _locate(
    chunk: Chunk,
    data: pa.Buffer,
    base_fn,
    columns: list[ColumnSpec],
    delimiter: str,
    quotechar: str | None,
    encoding: str,
    bad_rows: BadRows,
    line_numbers: bool,
    typed: _NeedSlowPath | None = None,
) -> ChunkResult | None:
    """Find the bad rows of a chunk without a Python loop over its rows; None when it cannot tell.

    With ``typed`` (the chunk parsed, a value check failed) the typed table is
    reused. Otherwise (the parse failed) rows with a wrong field count are found
    by counting delimiters, the rest is parsed as strings and converted here;
    that needs an unquoted chunk.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    phys, starts, ends, stops = _line_index(buf)
    types = {i: pa.string() for i, c in enumerate(columns) if _checked(c)}
    if typed is not None:
        table = typed.table
        nfields = np.full(len(phys), len(columns))
        wrong = np.zeros(len(phys), dtype=bool)
    else:
        if quotechar is not None and (buf == ord(quotechar)).any():
            return None
        quotechar = None
        dpos = np.flatnonzero(buf == ord(delimiter))
        nfields = np.searchsorted(dpos, ends) - np.searchsorted(dpos, starts) + 1
        wrong = nfields != len(columns)
        clean = data
        if wrong.any():
            delta = np.zeros(len(buf) + 1, dtype=np.int8)
            np.add.at(delta, starts[wrong], 1)
            np.add.at(delta, stops[wrong], -1)
            clean = pa.py_buffer(buf[np.cumsum(delta[:-1], dtype=np.int8) == 0].tobytes())
        table = None
        if wrong.any():  # the field counts may have been the only problem: try the typed parse
            for ts_float in (False, True):
                try:
                    table = _pyarrow_read(clean, columns, delimiter, None, encoding, _fast_types(columns, ts_float))
                    typed = _NeedSlowPath(table, ts_float)
                    break
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
                    continue
        if table is None:
            try:
                table = _pyarrow_read(clean, columns, delimiter, None, encoding, types)
            except (pa.ArrowInvalid, UnicodeDecodeError):
                return None
    good_lines = np.flatnonzero(~wrong)
    if table.num_rows != len(good_lines):
        return None  # e.g. bare '\r' line ends: the pure-Python path decides
    labels = [c.name or f"column {i + 1}" for i, c in enumerate(columns)]
    vals: dict[int, object] = {}
    bad = np.zeros(table.num_rows, dtype=bool)
    for i in types:
        col = table.column(f"c{i}")
        conv = _convert_strings(col, columns[i], labels[i]) if typed is None else _convert_typed(col, columns[i], typed.ts_float)
        if conv is None:
            return None
        vals[i], b = conv
        bad |= b
    base = base_fn()
    lineno = base + phys + 1
    bad_idx = np.sort(np.concatenate([np.flatnonzero(wrong), good_lines[bad]]))

    def text(j: int) -> str:
        return buf[starts[j] : ends[j]].tobytes().decode(encoding, "replace")

    def reason(j: int) -> str:
        if wrong[j]:
            return f"wrong column count: expected {len(columns)}, got {int(nfields[j])}"
        return _row_reason(text(j), columns, labels, delimiter, quotechar)

    if len(bad_idx) and bad_rows == BadRows.ERROR:
        j = int(bad_idx[0])
        raise MalformedRowError(chunk.path, int(lineno[j]), reason(j), text(j))
    keep = pa.array(~bad)
    out = {}
    for i, c in enumerate(columns):
        if c.name is not None:
            v = vals[i]
            out[c.name] = (v.filter(keep) if len(bad_idx) else v).cast(_OUT_TYPES[c.kind])
    if line_numbers:
        out[LINE_COL] = pa.array(lineno[good_lines][~bad], pa.int64())
    events = pa.table(out) if out else pa.table({"x": pa.nulls(int((~bad).sum()))}).drop_columns(["x"])
    rejects = empty_rejects()
    if len(bad_idx):
        js = [int(j) for j in bad_idx]
        rejects = make_rejects(chunk.path, [int(lineno[j]) for j in js], [reason(j) for j in js], [text(j) for j in js])
    return ChunkResult(events=events, rejects=rejects, rows_read=len(phys))


# --- slow path -------------------------------------------------------------------


def parse_int(s: str) -> int | None:
    if not _INT_RE.match(s):
        return None
    return int(s)


def parse_float(s: str) -> float | None:
    if _FLOAT_RE.match(s):
        return float(s)
    if s.strip().lower() in _NONFINITE:
        return float(s)
    return None


def parse_value(s: str, c: ColumnSpec, label: str):
    """(value, None) or (None, reason)."""
    k = c.kind
    if k in ("int_id", "int"):
        v = parse_int(s)
        if v is None:
            return None, f"non-integer {label} {s!r}"
        if not -_INT64_MAX - 1 <= v <= _INT64_MAX:
            return None, f"{label} {s.strip()} is out of the int64 range"
        if k == "int_id" and v < 0:
            return None, f"negative {label} {s.strip()}"
        return v, None
    if k == "str_id":
        return (s, None) if s else (None, f"empty {label}")
    if k in ("timestamp", "timestamp_ms"):
        v = parse_float(s)
        if v is None or not math.isfinite(v):
            return None, f"unparsable {label} {s!r}"
        if v < 0:
            return None, f"negative {label} {s.strip()}"
        if v >= 2.0**63:
            return None, f"{label} {s.strip()} is out of the int64 range"
        v = parse_int(s) if _INT_RE.match(s) else int(v)
        return (v // 1000 if k == "timestamp_ms" else v), None
    if k == "timestamp_iso":
        t = s.strip()
        if not _ISO_RE.match(t):
            return None, f"unparsable {label} {s!r} (expected ISO-8601, e.g. 2017-11-25T08:30:00)"
        try:
            dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
        except ValueError:
            return None, f"unparsable {label} {s!r} (expected ISO-8601, e.g. 2017-11-25T08:30:00)"
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        v = (dt - _EPOCH) // timedelta(seconds=1)
        if v < 0:
            return None, f"negative {label} {s!r} (before 1970)"
        return v, None
    if k == "behavior":
        if c.allowed is not None and s not in c.allowed:
            return None, f"unknown behaviour {s!r} (allowed: {', '.join(sorted(c.allowed))})"
        return s, None
    if k == "float":
        v = parse_float(s)
        return (v, None) if v is not None else (None, f"non-numeric {label} {s!r}")
    return s, None  # "str"


def _slow(
    chunk: Chunk,
    data: bytes,
    base: int,
    columns: list[ColumnSpec],
    delimiter: str,
    quotechar: str | None,
    encoding: str,
    bad_rows: BadRows,
    line_numbers: bool,
) -> ChunkResult:
    labels = [c.name or f"column {i + 1}" for i, c in enumerate(columns)]
    keep = [i for i, c in enumerate(columns) if c.name is not None]
    values: list[list] = [[] for _ in keep]
    good_lines: list[int] = []
    bad_l: list[int] = []
    bad_r: list[str] = []
    bad_t: list[str] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    ncol = len(columns)
    for j, raw in enumerate(lines):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            continue
        lineno = base + j + 1
        reason = None
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError:
            line = raw.decode(encoding, "replace")
            reason = f"bytes that are not valid {encoding}"
        row: list = [None] * ncol
        if reason is None:
            fields = _split_fields(line, delimiter, quotechar)
            if len(fields) != ncol:
                reason = f"wrong column count: expected {ncol}, got {len(fields)}"
            else:
                for i, (s, c) in enumerate(zip(fields, columns)):
                    row[i], reason = parse_value(s, c, labels[i])
                    if reason is not None:
                        break
        if reason is not None:
            if bad_rows == BadRows.ERROR:
                raise MalformedRowError(chunk.path, lineno, reason, line)
            bad_l.append(lineno)
            bad_r.append(reason)
            bad_t.append(line)
            continue
        for out, i in zip(values, keep):
            out.append(row[i])
        good_lines.append(lineno)
    cols = {columns[i].name: pa.array(v, _OUT_TYPES[columns[i].kind]) for i, v in zip(keep, values)}
    if line_numbers:
        cols[LINE_COL] = pa.array(good_lines, pa.int64())
    events = pa.table(cols) if cols else pa.table({LINE_COL: pa.array(good_lines, pa.int64())}).drop_columns([LINE_COL])
    rejects = make_rejects(chunk.path, bad_l, bad_r, bad_t) if bad_l else empty_rejects()
    return ChunkResult(events=events, rejects=rejects, rows_read=len(good_lines) + len(bad_l))


# --- entry point -----------------------------------------------------------------


def read_delimited(
    path: str | os.PathLike,
    chunk: Chunk,
    columns: list[ColumnSpec],
    *,
    delimiter: str,
    has_header: bool,
    bad_rows: BadRows,
    encoding: str = "utf-8",
    quotechar: str | None = None,
    line_numbers: bool = False,
) -> ChunkResult:
    """Parse the byte range ``chunk`` of ``path`` into the columns named in ``columns``.

    ``chunk`` must start on a line start (see :func:`split_text_file`); when it
    starts at byte 0 and ``has_header`` is set, its first line is skipped.
    Returns the kept columns in ``columns`` order (plus ``_line``, the physical
    line number of each good row, when ``line_numbers``). ``rows_read`` counts
    good and rejected data rows; empty lines are not rows. Quoting is off unless
    ``quotechar`` is given, and a quoted value must not contain a newline.
    """
    path = os.fspath(path)
    if chunk.path != path:
        chunk = Chunk(path, chunk.start, chunk.stop)
    bad_rows = BadRows(bad_rows)
    names = [c.name for c in columns if c.name is not None]
    if len(set(names)) != len(names) or LINE_COL in names:
        raise ValueError(f"output column names must be unique and not {LINE_COL!r}, got {names}")
    if not columns:
        raise ValueError("read_delimited needs at least one ColumnSpec")
    if len(delimiter) != 1:
        raise ValueError(f"delimiter={delimiter!r} must be a single character")
    data = _read_buffer(chunk)
    skipped_lines = 0
    if chunk.start == 0:
        if has_header:
            with open(path, "rb") as f:
                end = _first_line_end(f, 0)
            data = data.slice(min(end, data.size))
            skipped_lines = 1
        elif data.size >= 3 and data[:3].to_pybytes() == _BOM:
            data = data.slice(3)
    if encoding.replace("-", "").lower() == "utf8sig":
        encoding = "utf-8"

    def base_fn() -> int:
        return (count_newlines(path, chunk.start) if chunk.start else 0) + skipped_lines

    has_ts = any(c.kind in ("timestamp", "timestamp_ms") for c in columns)
    fast = None
    typed = None
    for ts_float in (False, True) if has_ts else (False,):
        try:
            fast = _fast(data, columns, delimiter, quotechar, encoding, ts_float)
            break
        except _NeedSlowPath as e:
            typed = e
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            continue
    if fast is not None:
        n, cols = fast
        lines = None
        if line_numbers:
            phys = _line_index(np.frombuffer(data, dtype=np.uint8))[0]
            lines = base_fn() + phys + 1
        if lines is None or len(lines) == n:  # else e.g. bare '\r' line ends: let the slow path decide
            out = {c.name: cols[i] for i, c in enumerate(columns) if c.name is not None}
            if line_numbers:
                out[LINE_COL] = pa.array(lines, pa.int64())
            events = pa.table(out) if out else pa.table({"x": pa.nulls(n)}).drop_columns(["x"])
            return ChunkResult(events=events, rejects=empty_rejects(), rows_read=n)
    res = _locate(chunk, data, base_fn, columns, delimiter, quotechar, encoding, bad_rows, line_numbers, typed)
    if res is not None:
        return res
    return _slow(chunk, data.to_pybytes(), base_fn(), columns, delimiter, quotechar, encoding, bad_rows, line_numbers)


__all__ = [
    "KINDS",
    "LINE_COL",
    "ColumnSpec",
    "count_newlines",
    "read_delimited",
    "read_header",
    "read_lines",
    "split_text_file",
]
