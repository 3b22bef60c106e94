"""Loaders: typed schema, values, input order, bad rows (error / quarantine), chunking, format detection."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqrec import features as F
from seqrec.data import csvread
from seqrec.data.csvread import ColumnSpec, read_delimited, split_text_file
from seqrec.data.events import BadRows, Chunk, MalformedRowError, check_events
from seqrec.data.loaders import (
    ColumnMapping,
    DelimitedSource,
    MovieLensGroupLens,
    MovieLensRecBole,
    ParquetSource,
    SynthSource,
    TaobaoCSV,
    ml_age_bucket,
    open_source,
)

FIX = Path(__file__).parent / "fixtures"
TAOBAO = FIX / "taobao.csv"
TAOBAO_BAD = FIX / "taobao_bad.csv"
GROUPLENS = FIX / "grouplens"
RECBOLE = FIX / "recbole" / "ml-mini"
Q = BadRows.QUARANTINE

# (line, reason) of every bad row in taobao_bad.csv
TAOBAO_BAD_REJECTS = [
    (4, "wrong column count: expected 5, got 4"),
    (5, "non-integer user_id 'abc'"),
    (6, "unparsable timestamp 'x'"),
    (7, "negative timestamp -5"),
    (8, "unknown behaviour 'click' (allowed: buy, cart, fav, pv)"),
    (18, "non-integer category_id ''"),
    (22, "wrong column count: expected 5, got 6"),
]


def read_chunked(source, chunk_bytes, bad_rows=Q):
    chunks = source.chunks(chunk_bytes)
    parts = [source.read_chunk(c, bad_rows) for c in chunks]
    return (
        chunks,
        pa.concat_tables([p.events for p in parts]),
        pa.concat_tables([p.rejects for p in parts]),
        sum(p.rows_read for p in parts),
    )


def rejects_of(result):
    return list(zip(result.rejects.column("line").to_pylist(), result.rejects.column("reason").to_pylist()))


# --- Taobao ------------------------------------------------------------------------


def test_taobao_schema_values_and_order():
    src = TaobaoCSV(TAOBAO)
    res = src.read_all()
    check_events(res.events, src)
    ev = res.events
    assert ev.column_names == [F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR, F.CATEGORY]
    assert ev.schema.field(F.USER_ID).type == pa.int64() and ev.schema.field(F.CATEGORY).type == pa.int64()
    assert ev.num_rows == res.rows_read == 25 and res.rejects.num_rows == 0
    assert ev.slice(0, 1).to_pylist()[0] == {
        F.USER_ID: 1, F.ITEM_ID: 2268318, F.TIMESTAMP: 1511544070, F.BEHAVIOR: "pv", F.CATEGORY: 2520377,
    }  # fmt: skip
    lines = TAOBAO.read_text().splitlines()
    assert ev.column(F.ITEM_ID).to_pylist() == [int(line.split(",")[1]) for line in lines]  # input order
    assert set(ev.column(F.BEHAVIOR).to_pylist()) == {"pv", "fav", "cart", "buy"}
    assert src.item_side == (F.CATEGORY,)
    assert src.protocol_defaults() == {"tz_offset_hours": 8, "time_range": [1511539200, 1512316800]}
    d = src.describe()
    assert d["name"] == "taobao" and d["paths"] == [str(TAOBAO.resolve())] and os.path.isabs(d["paths"][0])


def test_taobao_error_mode_names_file_line_value():
    with pytest.raises(MalformedRowError) as ei:
        TaobaoCSV(TAOBAO_BAD).read_all()
    e = ei.value
    assert (e.line, e.reason) == (4, "wrong column count: expected 5, got 4")
    assert "taobao_bad.csv:4:" in str(e) and "1,3830808,4181361,pv" in str(e) and "--bad-rows=quarantine" in str(e)


@pytest.mark.parametrize(
    "row, reason, value",
    [
        ("1,2,3,pv", "wrong column count: expected 5, got 4", "1,2,3,pv"),
        ("1,abc,3,pv,1511544070", "non-integer item_id 'abc'", "abc"),
        ("1,2,3,pv,x", "unparsable timestamp 'x'", "'x'"),
        ("1,2,3,pv,-5", "negative timestamp -5", "-5"),
        ("1,2,3,click,1511544070", "unknown behaviour 'click' (allowed: buy, cart, fav, pv)", "click"),
        ("-1,2,3,pv,1511544070", "negative user_id -1", "-1"),
    ],
)
def test_taobao_each_bad_row_kind(tmp_path, row, reason, value):
    p = tmp_path / "one_bad.csv"
    p.write_text("1,2,3,pv,1511544070\n5,6,7,buy,1511544071\n" + row + "\n8,9,10,fav,1511544072\n")
    with pytest.raises(MalformedRowError) as ei:
        TaobaoCSV(p).read_all()
    assert ei.value.line == 3 and ei.value.reason == reason
    assert "one_bad.csv:3:" in str(ei.value) and value in str(ei.value)
    res = TaobaoCSV(p).read_all(Q)
    assert rejects_of(res) == [(3, reason)]
    assert res.rejects.column("text").to_pylist() == [row]
    assert res.events.column(F.USER_ID).to_pylist() == [1, 5, 8] and res.rows_read == 4


def test_taobao_quarantine_returns_good_rows_and_rejects():
    res = TaobaoCSV(TAOBAO_BAD).read_all(Q)
    assert rejects_of(res) == TAOBAO_BAD_REJECTS
    assert res.rejects.column("file").to_pylist() == [str(TAOBAO_BAD.resolve())] * len(TAOBAO_BAD_REJECTS)
    assert res.rejects.column("text").to_pylist()[3] == "1,230380,411153,pv,-5"
    # 25 lines, one empty: 24 data rows = 17 good + 7 rejected
    assert res.rows_read == 24 and res.events.num_rows == 17
    ev = res.events
    assert ev.column(F.TIMESTAMP).to_pylist()[:3] == [1511544070, 1511561733, 1511572885]  # "1511572885.0" truncated
    assert ev.column(F.ITEM_ID).to_pylist()[3] == 3745169  # input order kept across the bad rows
    check_events(ev, TaobaoCSV(TAOBAO_BAD))


@pytest.mark.parametrize("chunk_bytes", [1, 13, 64, 200, 1 << 20])
def test_chunked_read_equals_single_read(chunk_bytes):
    src = TaobaoCSV(TAOBAO_BAD)
    whole = src.read_all(Q)
    chunks, ev, rj, n = read_chunked(src, chunk_bytes)
    if chunk_bytes < 200:
        assert len(chunks) > 3
        # bad rows of later chunks keep their file line numbers
        later = [c for c in chunks if c.start > 0 and src.read_chunk(c, Q).rejects.num_rows]
        assert later
    assert ev.equals(whole.events) and rj.equals(whole.rejects) and n == whole.rows_read
    # chunks tile the file and start on line starts
    data = TAOBAO_BAD.read_bytes()
    assert chunks[0].start == 0 and chunks[-1].stop == len(data)
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    assert all(data[c.start - 1 : c.start] == b"\n" for c in chunks[1:])


def test_error_mode_in_a_later_chunk_reports_the_file_line():
    src = TaobaoCSV(TAOBAO_BAD)
    chunks = src.chunks(40)
    last = [c for c in chunks if c.start > 0 and b"extra" in TAOBAO_BAD.read_bytes()[c.start : c.stop]][0]
    with pytest.raises(MalformedRowError) as ei:
        src.read_chunk(last)
    assert ei.value.line == 22 and "expected 5, got 6" in str(ei.value)


def test_python_path_agrees_with_vectorised_path(monkeypatch):
    """The pure-Python row parser (quoted chunks, odd line ends) finds the same rows and reasons."""
    src = TaobaoCSV(TAOBAO_BAD)
    fast = [read_chunked(src, cb) for cb in (17, 1 << 20)]
    monkeypatch.setattr(csvread, "_locate", lambda *a, **k: None)
    slow = [read_chunked(src, cb) for cb in (17, 1 << 20)]
    for (_, e1, r1, n1), (_, e2, r2, n2) in zip(fast, slow):
        assert e1.equals(e2) and r1.equals(r2) and n1 == n2


def test_crlf_and_empty_lines(tmp_path):
    lf = TAOBAO_BAD.read_text()
    p = tmp_path / "crlf.csv"
    p.write_bytes(lf.replace("\n", "\r\n").encode())
    a, b = TaobaoCSV(TAOBAO_BAD).read_all(Q), TaobaoCSV(p).read_all(Q)
    assert a.events.equals(b.events) and rejects_of(a) == rejects_of(b)
    assert not any("\r" in t for t in b.rejects.column("text").to_pylist())
    _, ev, rj, _ = read_chunked(TaobaoCSV(p), 30)
    assert ev.equals(b.events) and rj.equals(b.rejects)


def test_split_text_file_header_and_empty_file(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("a,b\n1,2\n3,4\n5,6\n")
    chunks = split_text_file(p, 4, has_header=True)
    assert chunks[0].start == 4 and chunks[-1].stop == p.stat().st_size
    assert [p.read_bytes()[c.start : c.stop] for c in chunks] == [b"1,2\n", b"3,4\n", b"5,6\n"]
    assert len(split_text_file(p, 1 << 26, has_header=True)) == 1
    (tmp_path / "header_only.csv").write_text("a,b\n")
    assert split_text_file(tmp_path / "header_only.csv", 10, has_header=True) == []
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.csv: the file is empty"):
        split_text_file(empty, 10, has_header=False)
    with pytest.raises(ValueError, match="empty.csv"):
        TaobaoCSV(empty).read_all()


def test_read_delimited_kinds_and_line_numbers(tmp_path):
    p = tmp_path / "k.tsv"
    p.write_text("id\tts\tms\tiso\tx\n7\t881250949.0\t1500\t1970-01-02T00:00:00Z\t2.5\n\n8\t5\t999\t1970-01-01 00:00:09\tnan\n")
    cols = [
        ColumnSpec("id", "int_id"),
        ColumnSpec("ts", "timestamp"),
        ColumnSpec("ms", "timestamp_ms"),
        ColumnSpec("iso", "timestamp_iso"),
        ColumnSpec(None, "float"),
    ]
    size = p.stat().st_size
    r = read_delimited(p, Chunk(str(p), 0, size), cols, delimiter="\t", has_header=True, bad_rows=BadRows.ERROR, line_numbers=True)
    assert r.events.to_pylist() == [
        {"id": 7, "ts": 881250949, "ms": 1, "iso": 86400, csvread.LINE_COL: 2},
        {"id": 8, "ts": 5, "ms": 0, "iso": 9, csvread.LINE_COL: 4},
    ]
    assert r.rows_read == 2
    with pytest.raises(ValueError, match="kind='date' is not one of"):
        ColumnSpec("d", "date")


# --- MovieLens -----------------------------------------------------------------------


def test_movielens_layouts_agree():
    gl, rb = MovieLensGroupLens(GROUPLENS), MovieLensRecBole(RECBOLE)
    a, b = gl.read_all(), rb.read_all()
    check_events(a.events, gl)
    check_events(b.events, rb)
    assert a.events.equals(b.events)
    assert a.events.num_rows == a.rows_read == 42 and a.rejects.num_rows == 0
    assert gl.item_side == (F.CATEGORY, F.CATE1, F.YEAR) and gl.user_profile == (F.AGE, F.GENDER, F.OCCUPATION)
    assert a.events.schema.field(F.USER_ID).type == pa.int64()


def test_movielens_mapping_values():
    ev = MovieLensGroupLens(GROUPLENS).read_all().events
    rows = ev.to_pylist()
    # input order: u.data order
    assert [(r[F.USER_ID], r[F.ITEM_ID]) for r in rows] == [
        tuple(int(x) for x in line.split("\t")[:2]) for line in (GROUPLENS / "u.data").read_text().splitlines()
    ]
    assert set(ev.column(F.BEHAVIOR).to_pylist()) == {"rating"}
    by_item = {r[F.ITEM_ID]: r for r in rows}
    assert (by_item[258][F.CATEGORY], by_item[258][F.CATE1], by_item[258][F.YEAR]) == ("Drama|Sci-Fi", "Drama", "1990s")
    assert (by_item[267][F.CATEGORY], by_item[267][F.CATE1], by_item[267][F.YEAR]) == ("unknown", "unknown", "unknown")
    u130 = next(r for r in rows if r[F.USER_ID] == 130)
    assert (u130[F.AGE], u130[F.GENDER], u130[F.OCCUPATION]) == ("18-24", "M", "none")
    u166 = next(r for r in rows if r[F.USER_ID] == 166)
    assert u166[F.AGE] == "45-49"
    assert [ml_age_bucket(a) for a in (7, 18, 24, 25, 44, 45, 50, 55, 56, 73)] == [
        "<18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55", "50-55", "56+", "56+",
    ]  # fmt: skip
    assert MovieLensRecBole(RECBOLE).protocol_defaults() == {"split": "user-day"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_movielens_unknown_item_is_a_bad_row(tmp_path):
    gl = _copy(GROUPLENS, tmp_path / "gl")
    with open(gl / "u.data", "a") as f:
        f.write("143\t1999\t4\t888407000\n")
    with pytest.raises(MalformedRowError) as ei:
        MovieLensGroupLens(gl).read_all()
    assert ei.value.line == 43 and ei.value.reason == "unknown item_id 1999 (not in u.item)"
    assert "u.data:43:" in str(ei.value) and "1999" in str(ei.value)
    res = MovieLensGroupLens(gl).read_all(Q)
    assert rejects_of(res) == [(43, "unknown item_id 1999 (not in u.item)")]
    assert res.rejects.column("text").to_pylist() == ["143\t1999\t4\t888407000"]
    assert res.events.num_rows == 42 and res.rows_read == 43

    rb = _copy(RECBOLE, tmp_path / "rb")
    with open(rb / "ml-mini.inter", "a") as f:
        f.write("999\t258\t4\t888407000\n")
    with pytest.raises(MalformedRowError, match=r"ml-mini.inter:44: unknown user_id 999 \(not in ml-mini.user\)"):
        MovieLensRecBole(rb).read_all()


def test_movielens_bad_side_rows(tmp_path):
    gl = _copy(GROUPLENS, tmp_path / "gl")
    lines = (gl / "u.user").read_text().splitlines()
    lines[1] = lines[1].replace("|20|", "|twenty|")  # user 130
    (gl / "u.user").write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRowError, match=r"u.user:2: non-integer age 'twenty'"):
        MovieLensGroupLens(gl).read_all()
    res = MovieLensGroupLens(gl).read_all(Q)
    rj = res.rejects.to_pylist()
    assert rj[0]["file"].endswith("u.user") and rj[0]["line"] == 2
    n130 = sum(1 for line in (gl / "u.data").read_text().splitlines() if line.startswith("130\t"))
    assert sum("user_id 130 has a malformed row in u.user (line 2)" == r["reason"] for r in rj) == n130
    assert res.events.num_rows + res.rejects.num_rows == res.rows_read == 42 + 1


def test_recbole_columns_found_by_name(tmp_path):
    rb = _copy(RECBOLE, tmp_path / "rb")
    rows = [line.split("\t") for line in (rb / "ml-mini.inter").read_text().splitlines()]
    (rb / "ml-mini.inter").write_text("".join("\t".join([r[3], r[2], r[0], r[1]]) + "\n" for r in rows))
    assert MovieLensRecBole(rb).read_all().events.equals(MovieLensRecBole(RECBOLE).read_all().events)
    (rb / "ml-mini.item").write_text("item_id:token\tmovie_title:token_seq\n1\tToy Story\n")
    with pytest.raises(ValueError, match=r"ml-mini.item has no 'release_year' column; its header has \['item_id', 'movie_title'\]"):
        MovieLensRecBole(rb)


def test_movielens_chunked(tmp_path):
    for src in (MovieLensGroupLens(GROUPLENS), MovieLensRecBole(RECBOLE)):
        whole = src.read_all()
        chunks, ev, rj, n = read_chunked(src, 100, BadRows.ERROR)
        assert len(chunks) > 3 and ev.equals(whole.events) and n == whole.rows_read


def _real_recbole() -> Path | None:
    for d in (
        Path(os.environ.get("SEQREC_CACHE", "/nonexistent")) / "ml-100k",
        Path.home() / ".cache" / "seqrec" / "ml-100k",
        Path("/tmp/rb/recbole/dataset_example/ml-100k"),
    ):
        if (d / "ml-100k.inter").is_file():
            return d
    return None


@pytest.mark.skipif(_real_recbole() is None, reason="no local copy of RecBole's ml-100k (run `seqrec data fetch ml-100k`)")
def test_real_recbole_ml100k():
    src = MovieLensRecBole(_real_recbole())
    assert src.name == "ml-100k-recbole"
    res = src.read_all()
    check_events(res.events, src)
    ev = res.events
    assert ev.num_rows == 100_000 and res.rejects.num_rows == 0
    assert len(set(ev.column(F.USER_ID).to_pylist())) == 943
    assert len(set(ev.column(F.ITEM_ID).to_pylist())) == 1682
    _, ev2, _, _ = read_chunked(src, 256 << 10, BadRows.ERROR)
    assert ev2.equals(ev)


# --- generic CSV + mapping --------------------------------------------------------------


def test_generic_csv_with_yaml_mapping():
    m = ColumnMapping.from_yaml(FIX / "generic.yaml")
    src = DelimitedSource(FIX / "generic.csv", m)
    res = src.read_all(Q)
    check_events(res.events, src)
    ev = res.events
    assert ev.column_names == [F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR, F.CATEGORY, F.BRAND, F.AGE]
    assert ev.schema.field(F.USER_ID).type == pa.string()
    assert ev.column(F.TIMESTAMP).to_pylist() == [1614592800, 1614593130, 1614596400, 1614571200, 1614675600, 1614729600]
    assert ev.column(F.BRAND).to_pylist()[4] == ""
    assert rejects_of(res) == [
        (7, "unparsable timestamp 'not-a-date' (expected ISO-8601, e.g. 2017-11-25T08:30:00)"),
        (8, "empty item_id"),
        (9, "unknown behaviour 'like' (allowed: buy, cart, click)"),
    ]
    assert res.rows_read == 9
    with pytest.raises(MalformedRowError, match=r"generic.csv:7: unparsable timestamp 'not-a-date'"):
        src.read_all()
    d = src.describe()
    assert d["name"] == "csv" and d["mapping"]["timestamp_format"] == "iso8601" and os.path.isabs(d["paths"][0])
    _, ev2, rj2, _ = read_chunked(src, 50)
    assert ev2.equals(ev) and rj2.equals(res.rejects)


def test_generic_csv_from_cli_pairs_headerless_tsv(tmp_path):
    p = tmp_path / "log.tsv"
    p.write_text("10\t1500000000123\tA\n11\t1500000001999\tB\n")
    m = ColumnMapping.from_pairs(["user_id=0", "timestamp=1", "item_id=2", "id_type=str", "header=false", "delimiter=tab",
                                  "timestamp_format=milliseconds"])
    src = DelimitedSource(p, m)
    ev = src.read_all().events
    assert ev.to_pylist() == [
        {F.USER_ID: "10", F.ITEM_ID: "A", F.TIMESTAMP: 1500000000, F.BEHAVIOR: "interaction"},
        {F.USER_ID: "11", F.ITEM_ID: "B", F.TIMESTAMP: 1500000001, F.BEHAVIOR: "interaction"},
    ]
    m2 = ColumnMapping.from_pairs(["user_id=u", "item_id=i", "timestamp=t", "header=false", "columns=u,t,i", "delimiter=tab"])
    assert DelimitedSource(p, m2).read_all(Q).rejects.column("reason").to_pylist() == [
        "non-integer item_id 'A'",
        "non-integer item_id 'B'",
    ]  # ids are integers unless id_type=str
    m3 = ColumnMapping.from_cli(FIX / "generic.yaml", ["item_features.category_id=note", "behaviors=click,buy"])
    assert m3.item_features == {F.CATEGORY: "note", F.BRAND: "brand"} and m3.behaviors == ("click", "buy")
    assert m3.timestamp_format == "iso8601"


@pytest.mark.parametrize(
    "d, match",
    [
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "colour": "c"}, r"unknown key 'colour'; allowed keys: user_id, item_id"),
        ({"user_id": "u", "item_id": "i"}, r"'timestamp' is required"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "id_type": "uuid"}, r"id_type='uuid' is not one of int, str"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "timestamp_format": "days"},
         r"timestamp_format='days' is not one of seconds, milliseconds, iso8601"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "behaviors": ["pv"]}, r"no `behavior` column is mapped"),
        ({"user_id": "u", "item_id": "u", "timestamp": "t"}, r"source column\(s\) \['u'\] are mapped to more than one field"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "item_features": {"timestamp": "x"}}, r"feature name 'timestamp'"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "item_features": ["cat"]}, r"item_features must be a mapping"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "delimiter": "::"}, r"delimiter='::' must be one character"),
        ({"user_id": "u", "item_id": "i", "timestamp": "t", "header": "maybe"}, r"header='maybe' must be true or false"),
    ],
)
def test_mapping_errors(d, match):
    with pytest.raises(ValueError, match=match):
        ColumnMapping.from_dict(d)


def test_mapping_column_errors(tmp_path):
    m = ColumnMapping(user_id="uid", item_id="sku", timestamp="time")
    with pytest.raises(ValueError,
                       match=r"mapping timestamp='time', but .*generic.csv has no column 'time'; available columns: \['uid', 'when'"):
        DelimitedSource(FIX / "generic.csv", m)
    with pytest.raises(ValueError, match=r"'user_id=uid' |is not key=value"):
        ColumnMapping.from_pairs(["user_id uid"])
    t = pa.table({"u": [1], "i": [2], "ts": [3]})
    pq.write_table(t, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"x.parquet has no column 'time'; available columns: \['u', 'i', 'ts'\]"):
        ParquetSource(tmp_path / "x.parquet", ColumnMapping(user_id="u", item_id="i", timestamp="time"))


# --- Parquet -------------------------------------------------------------------------------


def _parquet(tmp_path: Path) -> Path:
    t = pa.table(
        {
            "uid": pa.array([1, 2, None, 4, 5, 6, 7, 8], pa.int32()),
            "iid": pa.array([10, 20, 30, 40, 50, 60, -70, 80], pa.int64()),
            "ts": pa.array([100.0, 200.0, 300.0, -5.0, 500.0, 600.0, 700.0, float("nan")]),
            "act": pa.array(["pv", "buy", "pv", "pv", "click", "fav", "pv", "pv"]).dictionary_encode(),
            "cat": pa.array(["a", "b", "c", "d", "e", "f", "g", "h"]),
            "age": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.int16()),
        }
    )
    p = tmp_path / "events.parquet"
    pq.write_table(t, p, row_group_size=3)
    return p


PQ_MAP = dict(
    user_id="uid", item_id="iid", timestamp="ts", behavior="act",
    item_features={F.CATEGORY: "cat"}, user_features={F.AGE: "age"}, behaviors=("pv", "fav", "cart", "buy"),
)  # fmt: skip


def test_parquet_source(tmp_path):
    p = _parquet(tmp_path)
    src = ParquetSource(p, ColumnMapping(**PQ_MAP))
    res = src.read_all(Q)
    check_events(res.events, src)
    assert res.events.to_pylist()[:2] == [
        {F.USER_ID: 1, F.ITEM_ID: 10, F.TIMESTAMP: 100, F.BEHAVIOR: "pv", F.CATEGORY: "a", F.AGE: 1},
        {F.USER_ID: 2, F.ITEM_ID: 20, F.TIMESTAMP: 200, F.BEHAVIOR: "buy", F.CATEGORY: "b", F.AGE: 2},
    ]
    assert res.events.column(F.USER_ID).to_pylist() == [1, 2, 6]
    assert res.events.schema.field(F.AGE).type == pa.int64()
    assert rejects_of(res) == [
        (3, "missing user_id"),
        (4, "negative timestamp -5.0"),
        (5, "unknown behaviour 'click' (allowed: buy, cart, fav, pv)"),
        (7, "negative item_id -70"),
        (8, "unparsable timestamp nan"),
    ]
    assert json.loads(res.rejects.column("text")[0].as_py())["uid"] is None
    assert res.rows_read == 8
    with pytest.raises(MalformedRowError, match=r"events.parquet:3: missing user_id"):
        src.read_all()
    chunks = src.chunks(1)
    assert [(c.start, c.stop) for c in chunks] == [(0, 1), (1, 2), (2, 3)]
    assert [(c.start, c.stop) for c in src.chunks(1 << 30)] == [(0, 3)]
    _, ev, rj, n = read_chunked(src, 1)
    assert ev.equals(res.events) and rj.equals(res.rejects) and n == 8


def test_parquet_string_ids_and_timestamp_types(tmp_path):
    t = pa.table(
        {
            "u": ["a", "b", ""],
            "i": [1, 2, 3],
            "t": pa.array([1_000_000, 2_500_000, 3_000_000], pa.timestamp("ms")),
            "s": ["s1", "s1", "s2"],
        }
    )
    pq.write_table(t, tmp_path / "s.parquet")
    m = ColumnMapping(user_id="u", item_id="i", timestamp="t", session_id="s", id_type="str")
    src = ParquetSource(tmp_path / "s.parquet", m)
    res = src.read_all(Q)
    check_events(res.events, src)
    assert res.events.to_pylist() == [
        {F.USER_ID: "a", F.ITEM_ID: "1", F.TIMESTAMP: 1000, F.BEHAVIOR: "interaction", F.SESSION_ID: "s1"},
        {F.USER_ID: "b", F.ITEM_ID: "2", F.TIMESTAMP: 2500, F.BEHAVIOR: "interaction", F.SESSION_ID: "s1"},
    ]
    assert rejects_of(res) == [(3, "empty user_id")]
    iso = pa.table({"u": [1, 2], "i": [3, 4], "t": ["2021-03-01T10:00:00Z", "oops"]})
    pq.write_table(iso, tmp_path / "iso.parquet")
    src = ParquetSource(tmp_path / "iso.parquet", ColumnMapping(user_id="u", item_id="i", timestamp="t", timestamp_format="iso8601"))
    res = src.read_all(Q)
    assert res.events.column(F.TIMESTAMP).to_pylist() == [1614592800]
    assert res.rejects.column("reason").to_pylist()[0].startswith("unparsable timestamp 'oops'")
    with pytest.raises(ValueError, match=r"column 'u' \(timestamp\) has type int64"):
        ParquetSource(tmp_path / "iso.parquet", ColumnMapping(user_id="i", item_id="t", timestamp="u", timestamp_format="iso8601"))


# --- synth -------------------------------------------------------------------------------------


def _synth_dir(tmp_path: Path, layout: str) -> Path:
    d = tmp_path / f"synth-{layout}"
    d.mkdir()
    if layout == "parquet":
        (d / "events").mkdir()
        t = pa.table(
            {
                F.USER_ID: pa.array([1, 1, 2], pa.int64()),
                F.ITEM_ID: pa.array([5, 6, 5], pa.int64()),
                F.CATEGORY: pa.array([9, 9, 9], pa.int64()),
                F.BEHAVIOR: ["pv", "buy", "pv"],
                F.TIMESTAMP: pa.array([1511539200, 1511539260, 1511539300], pa.int64()),
                F.BRAND: pa.array([3, 3, 3], pa.int64()),
                F.AGE: pa.array([2, 2, 4], pa.int64()),
            }
        )
        pq.write_table(t, d / "events" / "part-00000.parquet")
        files, item_side, profile = ["events/part-00000.parquet"], [F.CATEGORY, F.BRAND], [F.AGE]
    else:
        shutil.copy(TAOBAO, d / "UserBehavior.csv")
        files, item_side, profile = ["UserBehavior.csv"], [F.CATEGORY], []
    meta = {"format": "seqrec-synth", "version": 1, "layout": layout, "files": files, "item_side": item_side,
            "user_profile": profile, "params": {"seed": 0, "start_ts": 1511539200, "days": 9}}  # fmt: skip
    (d / "synth.json").write_text(json.dumps(meta))
    return d


def test_synth_source(tmp_path):
    d = _synth_dir(tmp_path, "parquet")
    src = open_source(d)
    assert isinstance(src, SynthSource)
    res = src.read_all()
    check_events(res.events, src)
    assert src.item_side == (F.CATEGORY, F.BRAND) and src.user_profile == (F.AGE,)
    assert res.events.column(F.ITEM_ID).to_pylist() == [5, 6, 5]
    assert src.describe()["synth"]["params"]["seed"] == 0
    assert src.protocol_defaults() == {"tz_offset_hours": 8}  # days start at start_ts = 2017-11-25 00:00 UTC+8
    csv_src = open_source(_synth_dir(tmp_path, "taobao-csv"))
    assert csv_src.read_all().events.equals(TaobaoCSV(TAOBAO).read_all().events)
    (d / "synth.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="expected 'seqrec-synth'"):
        SynthSource(d)


# --- open_source --------------------------------------------------------------------------------


def test_open_source_detection(tmp_path, monkeypatch):
    assert isinstance(open_source(TAOBAO), TaobaoCSV)
    assert isinstance(open_source(GROUPLENS), MovieLensGroupLens)
    assert isinstance(open_source(GROUPLENS / "u.data"), MovieLensGroupLens)
    assert isinstance(open_source(RECBOLE), MovieLensRecBole)
    assert isinstance(open_source(RECBOLE / "ml-mini.inter"), MovieLensRecBole)
    m = ColumnMapping.from_yaml(FIX / "generic.yaml")
    assert isinstance(open_source(FIX / "generic.csv", mapping=m), DelimitedSource)
    assert isinstance(open_source(FIX / "generic.csv", "csv", m), DelimitedSource)
    assert isinstance(open_source(TAOBAO, "taobao"), TaobaoCSV)
    with pytest.raises(ValueError, match=r"cannot tell the format of .*generic.csv; formats: taobao .* --format"):
        open_source(FIX / "generic.csv")
    with pytest.raises(ValueError, match=r"--format csv needs a column mapping"):
        open_source(FIX / "generic.csv", "csv")
    with pytest.raises(ValueError, match=r"unknown format 'json'"):
        open_source(TAOBAO, "json")
    p = _parquet(tmp_path)
    assert isinstance(open_source(p, mapping=ColumnMapping(**PQ_MAP)), ParquetSource)


def test_open_source_ml100k_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"run `seqrec data fetch ml-100k` first"):
        open_source("ml-100k")
    d = tmp_path / "cache" / "ml-100k"
    d.mkdir(parents=True)
    for ext in ("inter", "item", "user"):
        shutil.copy(RECBOLE / f"ml-mini.{ext}", d / f"ml-100k.{ext}")
    src = open_source("ml-100k")
    assert isinstance(src, MovieLensRecBole) and src.name == "ml-100k-recbole"
    assert src.describe()["paths"][0] == str((d / "ml-100k.inter").resolve())
    assert src.read_all().events.equals(MovieLensRecBole(RECBOLE).read_all().events)


def test_sources_pickle(tmp_path):
    sources = [
        TaobaoCSV(TAOBAO),
        MovieLensGroupLens(GROUPLENS),
        MovieLensRecBole(RECBOLE),
        DelimitedSource(FIX / "generic.csv", ColumnMapping.from_yaml(FIX / "generic.yaml")),
        ParquetSource(_parquet(tmp_path), ColumnMapping(**PQ_MAP)),
        SynthSource(_synth_dir(tmp_path, "parquet")),
    ]
    for src in sources:
        before = src.read_all(Q)
        clone = pickle.loads(pickle.dumps(src))
        after = clone.read_all(Q)
        assert after.events.equals(before.events) and after.rejects.equals(before.rejects)
        assert clone.describe() == src.describe()


def test_many_chunks_big_file_matches_single_read(tmp_path):
    """A few thousand generated rows with scattered bad rows: every chunk size gives the same table."""
    rng = np.random.default_rng(0)
    n = 3000
    lines = [f"{u},{i},{c},{b},{t}" for u, i, c, b, t in zip(
        rng.integers(0, 100, n), rng.integers(0, 1000, n), rng.integers(0, 50, n),
        rng.choice(["pv", "fav", "cart", "buy"], n), rng.integers(1511539200, 1512316800, n))]  # fmt: skip
    bad_at = sorted(rng.choice(n, 25, replace=False))
    for k in bad_at:
        lines[k] = lines[k].replace("pv", "click").replace("buy", "x,y")
    p = tmp_path / "big.csv"
    p.write_text("\n".join(lines) + "\n")
    src = TaobaoCSV(p)
    whole = src.read_all(Q)
    assert whole.rows_read == n
    for cb in (997, 4096, 20000):
        _, ev, rj, rows = read_chunked(src, cb)
        assert ev.equals(whole.events) and rj.equals(whole.rejects) and rows == n
    changed = [k + 1 for k in bad_at if "click" in lines[k] or "x,y" in lines[k]]
    assert whole.rejects.column("line").to_pylist() == changed


def test_all_parse_paths_agree_on_random_bad_files(tmp_path, monkeypatch):
    """Seeded fuzz: vectorised and pure-Python paths, any chunk size, give the same events, rejects and first error."""
    rng = np.random.default_rng(7)
    good = ["1,2268318,2520377,pv,1511544070", "100,3230483,3650709,buy,1511582025", "7,8,9,cart,1511582025.7"]
    bad = ["1,2,3,pv", "a,2,3,pv,5", "1,2,3,pv,x", "1,2,3,pv,-5", "1,2,3,click,5", "", "1,2,,pv,5", "1,2,3,pv,5,6",
           "1,-2,3,pv,5", "1,2,3,pv,nan", "1,2,3,pv,+7", "1,2,3,pv,99999999999999999999", "1,2,3,pv,-1.5"]  # fmt: skip
    real_locate = csvread._locate

    def outcomes(src):
        out = []
        for locate in (real_locate, lambda *a, **k: None):
            monkeypatch.setattr(csvread, "_locate", locate)
            for cb in (1, 23, 1 << 20):
                _, ev, rj, n = read_chunked(src, cb)
                try:
                    src.read_all()
                    first = None
                except MalformedRowError as e:
                    first = (e.line, e.reason, e.text)
                out.append((ev.to_pylist(), rj.to_pylist(), n, first))
        return out

    for trial in range(20):
        rows = [good[rng.integers(len(good))] if rng.random() < 0.7 else bad[rng.integers(len(bad))] for _ in range(rng.integers(2, 25))]
        eol = "\r\n" if trial % 3 == 0 else "\n"
        p = tmp_path / f"f{trial}.csv"
        p.write_bytes((eol.join(["5,6,7,fav,12"] + rows) + eol).encode())
        res = outcomes(TaobaoCSV(p))
        assert all(r == res[0] for r in res[1:]), p.read_text()
