"""The typed event schema every loader returns, and the loader interface.

An *events table* (``pyarrow.Table``) has, in input order:

=================  ==========================  ====================================
column             type                        notes
=================  ==========================  ====================================
``user_id``        int64 or string             raw id
``item_id``        int64 or string             raw id
``timestamp``      int64                       seconds since the epoch, >= 0
``behavior``       string                      pv | fav | cart | buy | rating | ...
``session_id``     int64 or string, optional   only when the source has one
item side info     int64 or string             names in ``EventSource.item_side``
user profile       int64 or string             names in ``EventSource.user_profile``
=================  ==========================  ====================================

Loaders split their input into :class:`Chunk` s (byte ranges of a CSV, row
groups of a Parquet file) so that a Ray Data pipeline can read a 100M-row log in
parallel with bounded memory; the in-memory path reads every chunk in turn.

Malformed rows never vanish: with ``BadRows.ERROR`` the first one stops the run
with a :class:`MalformedRowError` naming file, line and value; with
``BadRows.QUARANTINE`` each one is returned in ``ChunkResult.rejects``
(``REJECT_SCHEMA``), written to the prepared dataset's ``rejects/`` folder and
counted in the manifest.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

import pyarrow as pa

from seqrec import features as F

CORE_COLUMNS = (F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR)

REJECT_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),  # 1-based physical line number in the file (0 when not line-based)
        ("reason", pa.string()),
        ("text", pa.string()),  # the offending row as read (truncated to 1000 characters)
    ]
)


class BadRows(str, enum.Enum):
    """What to do with a malformed input row."""

    ERROR = "error"  # stop with file, line and value
    QUARANTINE = "quarantine"  # write it to rejects/, count it, go on


class MalformedRowError(ValueError):
    """A raw input row that cannot be turned into an event."""

    def __init__(self, file: str, line: int, reason: str, text: str):
        self.file, self.line, self.reason, self.text = file, line, reason, text
        super().__init__(
            f"{file}:{line}: {reason} in row {text[:200]!r}. Fix the input, or pass "
            "--bad-rows=quarantine to write malformed rows to <out>/rejects/ and go on."
        )

    def __reduce__(self):  # picklable across Ray tasks
        return (type(self), (self.file, self.line, self.reason, self.text))


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def make_rejects(file: str, lines: list[int], reasons: list[str], texts: list[str]) -> pa.Table:
    return pa.table(
        {
            "file": pa.array([file] * len(lines), pa.string()),
            "line": pa.array(lines, pa.int64()),
            "reason": pa.array(reasons, pa.string()),
            "text": pa.array([t[:1000] for t in texts], pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


@dataclass(frozen=True)
class Chunk:
    """A piece of a source that one task reads: a byte range of a text file, or a row-group range."""

    path: str
    start: int
    stop: int


@dataclass
class ChunkResult:
    events: pa.Table  # the event schema above, in input order
    rejects: pa.Table  # REJECT_SCHEMA
    rows_read: int  # data rows seen (good + rejected), header excluded


class EventSource(ABC):
    """A raw behaviour log. Subclasses are plain picklable objects (they travel to Ray tasks)."""

    #: short name recorded in the manifest (``taobao``, ``ml-100k-recbole``, ``csv``, ...)
    name: str = "source"
    #: item side-feature columns this source provides (canonical names, see seqrec.features)
    item_side: tuple[str, ...] = ()
    #: user profile columns this source provides
    user_profile: tuple[str, ...] = ()
    #: whether events carry a backend session id
    has_session_id: bool = False

    @abstractmethod
    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        """Split the source into chunks of about ``chunk_bytes``; their order is the input order."""

    @abstractmethod
    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        """Parse and validate one chunk."""

    def describe(self) -> dict:
        """What the manifest records about the source (name, paths, options)."""
        return {"name": self.name}

    def estimate_rows(self, chunk: Chunk) -> int:
        """About how many events ``chunk`` holds (sizes the group-by-user buckets). Default: a byte
        range of text at ~30 bytes per row, UserBehavior.csv's line length."""
        return max(0, chunk.stop - chunk.start) // 30

    def protocol_defaults(self) -> dict:
        """Protocol settings this source suggests (e.g. Taobao's UTC+8 days); the CLI lets users override them."""
        return {}

    def read_all(self, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        """Read every chunk in order into one table (the in-memory path; small data only)."""
        parts = [self.read_chunk(c, bad_rows) for c in self.chunks()]
        if not parts:
            raise ValueError(f"{self.name}: the source has no data")
        return ChunkResult(
            events=pa.concat_tables([p.events for p in parts], promote_options="permissive"),
            rejects=pa.concat_tables([p.rejects for p in parts]),
            rows_read=sum(p.rows_read for p in parts),
        )


def check_events(table: pa.Table, source: EventSource) -> None:
    """Raise if ``table`` does not follow the event schema promised by ``source`` (an internal contract)."""
    expected = list(CORE_COLUMNS) + ([F.SESSION_ID] if source.has_session_id else [])
    expected += list(source.item_side) + list(source.user_profile)
    missing = [c for c in expected if c not in table.column_names]
    if missing:
        raise ValueError(f"{source.name}: events lack columns {missing}; have {table.column_names}")
    for name in expected:
        t = table.schema.field(name).type
        if name == F.TIMESTAMP:
            ok = t == pa.int64()
        elif name == F.BEHAVIOR:
            ok = pa.types.is_string(t) or pa.types.is_large_string(t)
        else:
            ok = t == pa.int64() or pa.types.is_string(t) or pa.types.is_large_string(t)
        if not ok:
            raise TypeError(f"{source.name}: column {name!r} has type {t}; expected int64 or string")
