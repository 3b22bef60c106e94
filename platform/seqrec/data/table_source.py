"""An :class:`EventSource` over an events table already in memory (tests, notebooks, serving)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec import features as F
from seqrec.data.events import BadRows, Chunk, ChunkResult, EventSource, check_events, empty_rejects, make_rejects


class TableSource(EventSource):
    """Events given as a ``pyarrow.Table`` in the event schema, split into chunks of ``chunk_rows`` rows.

    Rows are validated like a file's: a null id or timestamp or a negative timestamp is a bad row
    (line = 1-based row number).
    """

    name = "table"

    def __init__(
        self,
        table: pa.Table,
        item_side: tuple[str, ...] = (),
        user_profile: tuple[str, ...] = (),
        has_session_id: bool = False,
        chunk_rows: int | None = None,
    ):
        self.table = table
        self.item_side = tuple(item_side)
        self.user_profile = tuple(user_profile)
        self.has_session_id = has_session_id
        self.chunk_rows = chunk_rows
        check_events(table, self)

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        n = self.table.num_rows
        step = self.chunk_rows or max(n, 1)
        return [Chunk("<memory>", s, min(s + step, n)) for s in range(0, n, step)]

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        t = self.table.slice(chunk.start, chunk.stop - chunk.start)
        bad = pc.or_(pc.is_null(t[F.USER_ID]), pc.is_null(t[F.ITEM_ID]))
        bad = pc.or_(bad, pc.fill_null(pc.less(t[F.TIMESTAMP], 0), True))
        bad_idx = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        if len(bad_idx) == 0:
            return ChunkResult(t, empty_rejects(), t.num_rows)
        lines = [int(chunk.start + i + 1) for i in bad_idx]
        texts = [str(r) for r in t.take(pa.array(bad_idx)).to_pylist()]
        reason = "null id or null/negative timestamp"
        if bad_rows == BadRows.ERROR:
            from seqrec.data.events import MalformedRowError

            raise MalformedRowError("<memory>", lines[0], reason, texts[0])
        good = t.filter(pc.invert(bad))
        return ChunkResult(good, make_rejects("<memory>", lines, [reason] * len(lines), texts), t.num_rows)

    def estimate_rows(self, chunk: Chunk) -> int:
        return chunk.stop - chunk.start  # chunks are row ranges

    def describe(self) -> dict:
        return {"name": self.name, "rows": self.table.num_rows}
