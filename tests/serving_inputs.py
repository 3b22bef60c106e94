"""Serving requests from a prepared tiny dataset's raw events (tests/test_serving.py, tests/test_serve_app.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from seqrec import features as F
from seqrec.serving import Event, Request, RowBuilder


def raw_events(root) -> pa.Table:
    """The tiny dataset's events after prepare's event filters (user cap, min item count), sorted like prepare."""
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import read_stage, resolve_config

    src = open_source(str(root / "events"), "synth", None)
    cfg = resolve_config(src, min_item_count=2)
    ev = pa.concat_tables([read_stage(src, c, i, cfg)[0] for i, c in enumerate(src.chunks())])
    counts = pc.value_counts(ev[F.ITEM_ID].combine_chunks())
    keep = counts.field("values").filter(pc.greater_equal(counts.field("counts"), cfg.min_item_count))
    ev = ev.filter(pc.is_in(ev[F.ITEM_ID], value_set=keep))
    return ev.take(pc.sort_indices(ev, [(F.USER_ID, "ascending"), (F.TIMESTAMP, "ascending"), (F.ROW, "ascending")]))


def request_for(row: dict, ev: pa.Table, builder: RowBuilder) -> Request:
    """The events of the row's user up to the row's last input event, as a serving request."""
    mine = ev.filter(pc.equal(ev[F.USER_ID], pa.scalar(row[F.USER_RAW], ev[F.USER_ID].type))).to_pylist()
    seq = row[F.seq_col(F.ITEM_ID)]
    items = builder.encode(F.ITEM_ID, [e[F.ITEM_ID] for e in mine])
    end = next(k + len(seq) for k in range(len(mine)) if mine[k][F.TIMESTAMP] == row[F.SESSION_START]
               and list(items[k:k + len(seq)]) == list(seq))
    side = builder.item_names[1:]
    profile = {n: mine[0][n] for n in builder.user_names[1:]}
    return Request(row[F.USER_RAW], [Event(e[F.ITEM_ID], e[F.TIMESTAMP], e[F.BEHAVIOR], {n: e[n] for n in side})
                                     for e in mine[:end]], profile)
