"""Event sources: every raw log format seqrec reads, each returning the event schema.

=====================  ==================================  ==========================================
format (``--format``)  class                               input
=====================  ==================================  ==========================================
``taobao``             :class:`TaobaoCSV`                  Tianchi UserBehavior CSV (no header)
``movielens``          :class:`MovieLensGroupLens`         ``u.data`` + ``u.item`` + ``u.user``
``recbole``            :class:`MovieLensRecBole`           ``<name>.inter/.item/.user`` atomic files
``csv``                :class:`DelimitedSource`            any CSV/TSV + a :class:`ColumnMapping`
``parquet``            :class:`ParquetSource`              any Parquet + a :class:`ColumnMapping`
``synth``              :class:`SynthSource`                a folder written by ``seqrec.data.synth``
=====================  ==================================  ==========================================

:func:`open_source` picks one from a path (detecting the format when none is
given); the name ``ml-100k`` resolves to the copy fetched by
``seqrec data fetch ml-100k`` (see :mod:`seqrec.data.fetch`).

Every source splits its input into chunks (byte ranges of text files, row
groups of Parquet files) and reads them independently, so a Ray Data pipeline
reads a 100M-row log in parallel; all parsing of text goes through
:mod:`seqrec.data.csvread`. Malformed rows follow ``BadRows`` (see
:mod:`seqrec.data.events`).

MovieLens mapping (the same for the GroupLens and the RecBole layout, so both
give identical events tables):

* ``behavior`` is ``"rating"`` for every row: ratings are used as implicit
  feedback, so the rating value is parsed (it must be a number) and dropped;
* item side info: ``category_id`` = the item's full genre combination as one
  string, genres in GroupLens order joined by ``|`` (e.g. ``"Action|Adventure"``;
  ``"unknown"`` when no genre is set); ``cate1_id`` = the first genre of that
  combination; ``year_bucket`` = the release decade (``"1990s"``; ``"unknown"``
  when the release date / year is missing or unparsable). The video release
  date and the IMDb URL are dropped; the title, the genres and the release year
  are not features: they are the source's *catalogue* (:meth:`_MovieLens.catalogue`,
  written as ``catalogue.parquet`` by ``seqrec data prepare`` for answers people
  can read);
* user profile: ``age`` = the MovieLens-1M age bucket (``"<18"``, ``"18-24"``,
  ``"25-34"``, ``"35-44"``, ``"45-49"``, ``"50-55"``, ``"56+"``), ``gender``,
  ``occupation`` as given; the zip code is dropped;
* ids are int64; a rating whose item or user is missing from the item / user
  file is a bad row (``unknown item_id 1999 (not in u.item)``), never silently
  dropped. A malformed row of the item or user file is a bad row of that file
  (reported once, with the first chunk of ratings) and the ratings that refer
  to it are bad rows too; ``rows_read`` counts both, so it always equals
  events + rejects.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqrec import features as F
from seqrec.data.csvread import (
    LINE_COL,
    ColumnSpec,
    parse_float,
    parse_value,
    read_delimited,
    read_header,
    read_lines,
    split_text_file,
)
from seqrec.data.events import (
    BadRows,
    Chunk,
    ChunkResult,
    EventSource,
    MalformedRowError,
    empty_rejects,
    make_rejects,
)

FORMATS = ("taobao", "movielens", "recbole", "csv", "parquet", "synth")
TAOBAO_BEHAVIORS = ("pv", "fav", "cart", "buy")
MOVIELENS_BEHAVIOR = "rating"
DEFAULT_BEHAVIOR = "interaction"  # generic sources without a behaviour column
#: The 19 MovieLens-100k genres, in the order of the flags in ``u.item``.
ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML_AGE_BUCKETS = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))
ML_AGE_TOP = "56+"
UNKNOWN_VALUE = "unknown"
_FORMAT_HELP = (
    "formats: taobao (Tianchi UserBehavior CSV), movielens (GroupLens u.data/u.item/u.user), "
    "recbole (RecBole .inter/.item/.user), csv and parquet (any table, with a column mapping: "
    "--map mapping.yaml or key=value pairs), synth (a folder with synth.json); "
    "pass one with --format, e.g. `--format csv --map mapping.yaml`"
)


# --- helpers -----------------------------------------------------------------------


def _as_paths(paths, exts: tuple[str, ...], what: str) -> list[str]:
    """Absolute file paths from a path, a folder (its files ending in ``exts``, sorted) or a list."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(exts))
            if not found:
                raise ValueError(f"{what}: folder {p} holds no {'/'.join(exts)} files")
            out += [str(q.resolve()) for q in found]
        elif p.is_file():
            out.append(str(p.resolve()))
        else:
            raise ValueError(f"{what}: {p} does not exist")
    if not out:
        raise ValueError(f"{what}: no input files given")
    return out


def _canonical(table: pa.Table, source: EventSource) -> pa.Table:
    """The event columns in canonical order: core, session id, item side info, user profile."""
    cols = [F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR]
    cols += [F.SESSION_ID] if source.has_session_id else []
    cols += list(source.item_side) + list(source.user_profile)
    return table.select(cols)


def _constant(value: str, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _concat_rejects(parts: list[pa.Table], by_line: bool = False) -> pa.Table:
    """Concatenate rejects tables in order (``by_line``: those of one file, sorted by line)."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return empty_rejects()
    t = pa.concat_tables(parts)
    return t.sort_by([("line", "ascending")]) if by_line and len(parts) > 1 else t


class _Picklable:
    """Drop per-process caches (attributes starting with ``_cache``) when pickled for a Ray task."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}


# --- Taobao ------------------------------------------------------------------------


class TaobaoCSV(_Picklable, EventSource):
    """Tianchi UserBehavior CSV (dataset 649): no header, ``user_id,item_id,category_id,behavior_type,timestamp``.

    Ids are non-negative integers, behaviours exactly ``pv|fav|cart|buy``,
    timestamps integer seconds. ``paths`` is a file, a list of files or a folder
    of ``*.csv`` files (read in name order).
    """

    name = "taobao"
    item_side = (F.CATEGORY,)
    COLUMNS = (
        ColumnSpec(F.USER_ID, "int_id"),
        ColumnSpec(F.ITEM_ID, "int_id"),
        ColumnSpec(F.CATEGORY, "int_id"),
        ColumnSpec(F.BEHAVIOR, "behavior", frozenset(TAOBAO_BEHAVIORS)),
        ColumnSpec(F.TIMESTAMP, "timestamp"),
    )
    #: the official window: 2017-11-25 00:00 to 2017-12-04 00:00 China time (UTC+8); the file has rows outside it
    TIME_RANGE = (1511539200, 1512316800)

    def __init__(self, paths):
        self.paths = _as_paths(paths, (".csv",), "taobao")

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        return [c for p in self.paths for c in split_text_file(p, chunk_bytes, has_header=False)]

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        r = read_delimited(chunk.path, chunk, list(self.COLUMNS), delimiter=",", has_header=False, bad_rows=bad_rows)
        return ChunkResult(_canonical(r.events, self), r.rejects, r.rows_read)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "paths": list(self.paths),
            "mapping": None,
            "layout": "user_id,item_id,category_id,behavior_type,timestamp (no header)",
        }

    def protocol_defaults(self) -> dict:
        return {"tz_offset_hours": 8, "time_range": list(self.TIME_RANGE)}


# --- MovieLens ---------------------------------------------------------------------


def ml_age_bucket(age: int) -> str:
    """MovieLens-1M age bucket of an age in years."""
    for upper, label in ML_AGE_BUCKETS:
        if age < upper:
            return label
    return ML_AGE_TOP


def ml_decade(year: int | None) -> str:
    return UNKNOWN_VALUE if year is None else f"{year // 10 * 10}s"


def ml_genres(genres: list[str]) -> tuple[str, str]:
    """(category_id, cate1_id) of a set of genres: the combination in GroupLens order, and its first genre."""
    ordered = [g for g in ML_GENRES if g in set(genres)]
    if not ordered:
        return UNKNOWN_VALUE, UNKNOWN_VALUE
    return "|".join(ordered), ordered[0]


@dataclass
class _Side:
    """An item or user table: ids, derived feature columns and the rows that were rejected."""

    file: str
    ids: pa.Array
    features: dict[str, pa.Array]
    rejects: pa.Table
    rejected_ids: dict[int, int]  # id -> line of a rejected row carrying it
    rows_read: int
    rows: list[dict] = field(default_factory=list)  # the accepted parsed rows, parallel to ids (the catalogue reads them)


#: The columns of a source's catalogue (:meth:`_MovieLens.catalogue`, ``catalogue.parquet`` of a prepared dataset).
CATALOGUE_SCHEMA = pa.schema([
    pa.field(F.ITEM_ID, pa.int64()), pa.field("title", pa.string()), pa.field("genres", pa.list_(pa.string())),
    pa.field("year", pa.int64()),
])  # fmt: skip


def _first_int(text: str, delimiter: str) -> int | None:
    head = text.split(delimiter, 1)[0].strip()
    return int(head) if re.fullmatch(r"-?[0-9]+", head) else None


class _MovieLens(_Picklable, EventSource):
    """What both MovieLens layouts share: read ratings, join item and user tables (see the module docstring)."""

    item_side = (F.CATEGORY, F.CATE1, F.YEAR)
    user_profile = (F.AGE, F.GENDER, F.OCCUPATION)
    delimiter = "\t"
    has_header = False
    ratings_path: str
    item_path: str
    user_path: str

    # subclasses: the ratings columns, and how to parse the item and user files
    def _ratings_columns(self) -> list[ColumnSpec]:
        raise NotImplementedError

    def _read_items(self, bad_rows: BadRows) -> _Side:
        raise NotImplementedError

    def _read_users(self, bad_rows: BadRows) -> _Side:
        raise NotImplementedError

    def _catalogue_row(self, row: dict) -> tuple[str | None, list[str], int | None]:
        """(title, genres, year) of an accepted row of the item file."""
        raise NotImplementedError

    def catalogue(self) -> pa.Table:
        """What people read of the items (:data:`CATALOGUE_SCHEMA`): one row per item of the item file, in its order:
        ``item_id`` (the raw id the events use), ``title`` as the file gives it (GroupLens titles carry the year,
        ``"Star Wars (1977)"``; RecBole's do not, ``"Star Wars"``), ``genres`` (in GroupLens order; ``["unknown"]``
        where the file says so) and ``year`` (the release year, null when missing or unparsable).

        The rows are those the item side reader accepted: a malformed row of the item file (a bad row of it, see the
        module docstring) has no catalogue row, nor has a duplicate id's later row."""
        cached = self.__dict__.get("_cache_sides") or {}
        items = next(iter(cached.values()))[0] if cached else self._read_items(BadRows.QUARANTINE)
        entries = [self._catalogue_row(r) for r in items.rows]
        return pa.table({
            F.ITEM_ID: items.ids,
            "title": pa.array([e[0] for e in entries], pa.string()),
            "genres": pa.array([e[1] for e in entries], pa.list_(pa.string())),
            "year": pa.array([e[2] for e in entries], pa.int64()),
        }, schema=CATALOGUE_SCHEMA)  # fmt: skip

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        return split_text_file(self.ratings_path, chunk_bytes, has_header=self.has_header)

    def _sides(self, bad_rows: BadRows) -> tuple[_Side, _Side]:
        cache = self.__dict__.setdefault("_cache_sides", {})
        key = BadRows(bad_rows)
        if key not in cache:
            cache[key] = (self._read_items(key), self._read_users(key))
        return cache[key]

    def _is_first_chunk(self, chunk: Chunk) -> bool:
        first = split_text_file(self.ratings_path, 1 << 62, has_header=self.has_header)
        return bool(first) and chunk.start <= first[0].start

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        bad_rows = BadRows(bad_rows)
        items, users = self._sides(bad_rows)
        r = read_delimited(
            chunk.path,
            chunk,
            self._ratings_columns(),
            delimiter=self.delimiter,
            has_header=self.has_header,
            bad_rows=bad_rows,
            line_numbers=True,
        )
        ev = r.events
        ii = pc.index_in(ev.column(F.ITEM_ID), value_set=items.ids)
        ui = pc.index_in(ev.column(F.USER_ID), value_set=users.ids)
        miss = pc.or_(pc.is_null(ii), pc.is_null(ui))
        join_rejects = empty_rejects()
        if pc.any(miss).as_py():
            idx = np.flatnonzero(miss.to_numpy(zero_copy_only=False))
            lines = ev.column(LINE_COL).take(idx).to_pylist()
            item_miss = pc.is_null(ii).take(idx).to_pylist()
            item_v = ev.column(F.ITEM_ID).take(idx).to_pylist()
            user_v = ev.column(F.USER_ID).take(idx).to_pylist()
            reasons = []
            for im, iv, uv in zip(item_miss, item_v, user_v):
                side, col, v = (items, F.ITEM_ID, iv) if im else (users, F.USER_ID, uv)
                fname = os.path.basename(side.file)
                if v in side.rejected_ids:
                    reasons.append(f"{col} {v} has a malformed row in {fname} (line {side.rejected_ids[v]})")
                else:
                    reasons.append(f"unknown {col} {v} (not in {fname})")
            if bad_rows == BadRows.ERROR:
                text = read_lines(chunk, lines[:1])[0]
                raise MalformedRowError(chunk.path, lines[0], reasons[0], text)
            join_rejects = make_rejects(chunk.path, lines, reasons, read_lines(chunk, lines))
            keep = pc.invert(miss)
            ev, ii, ui = ev.filter(keep), ii.filter(keep), ui.filter(keep)
        n = ev.num_rows
        cols = {
            F.USER_ID: ev.column(F.USER_ID),
            F.ITEM_ID: ev.column(F.ITEM_ID),
            F.TIMESTAMP: ev.column(F.TIMESTAMP),
            F.BEHAVIOR: _constant(MOVIELENS_BEHAVIOR, n),
        }
        for name in self.item_side:
            cols[name] = items.features[name].take(ii)
        for name in self.user_profile:
            cols[name] = users.features[name].take(ui)
        events = pa.table(cols)
        parts = [_concat_rejects([r.rejects, join_rejects], by_line=True)]
        rows_read = r.rows_read
        if self._is_first_chunk(chunk):  # rejects of the item and user files come once, first
            parts = [items.rejects, users.rejects] + parts
            rows_read += items.rejects.num_rows + users.rejects.num_rows
        return ChunkResult(_canonical(events, self), _concat_rejects(parts), rows_read)

    # -- building item / user tables from parsed rows, shared by both layouts --

    @staticmethod
    def _side_from_rows(
        file: str,
        parsed: ChunkResult,
        id_col: str,
        derive,
        feature_names: tuple[str, ...],
        bad_rows: BadRows,
        encoding: str,
        delimiter: str,
    ) -> _Side:
        """``derive(row: dict) -> (features tuple, None) | (None, reason)`` on each parsed row; duplicates are bad rows."""
        ev = parsed.events
        rows = ev.to_pylist()
        ids: list[int] = []
        feats: list[list[str]] = [[] for _ in feature_names]
        bad_l, bad_r = [], []
        kept: list[dict] = []
        seen: dict[int, int] = {}
        for row in rows:
            line = row[LINE_COL]
            values, reason = derive(row)
            if reason is None and row[id_col] in seen:
                reason = f"duplicate {id_col} {row[id_col]} (first on line {seen[row[id_col]]})"
            if reason is not None:
                if bad_rows == BadRows.ERROR:
                    text = read_lines(Chunk(file, 0, os.path.getsize(file)), [line], encoding=encoding)[0]
                    raise MalformedRowError(file, line, reason, text)
                bad_l.append(line)
                bad_r.append(reason)
                continue
            seen[row[id_col]] = line
            ids.append(row[id_col])
            kept.append(row)
            for out, v in zip(feats, values):
                out.append(v)
        rejects = parsed.rejects
        if bad_l:
            texts = read_lines(Chunk(file, 0, os.path.getsize(file)), bad_l, encoding=encoding)
            rejects = _concat_rejects([rejects, make_rejects(file, bad_l, bad_r, texts)], by_line=True)
        rejected_ids = {}
        for line, text in zip(rejects.column("line").to_pylist(), rejects.column("text").to_pylist()):
            v = _first_int(text, delimiter)
            if v is not None and v not in seen:
                rejected_ids.setdefault(v, line)
        return _Side(
            file=file,
            ids=pa.array(ids, pa.int64()),
            features={n: pa.array(v, pa.string()) for n, v in zip(feature_names, feats)},
            rejects=rejects,
            rejected_ids=rejected_ids,
            rows_read=parsed.rows_read,
            rows=kept,
        )

    def _read_side(self, file, columns, *, has_header, delimiter, encoding, bad_rows, id_col, derive, names):
        chunk = Chunk(file, 0, os.path.getsize(file))
        parsed = read_delimited(
            file, chunk, columns, delimiter=delimiter, has_header=has_header, bad_rows=bad_rows,
            encoding=encoding, line_numbers=True,
        )  # fmt: skip
        return self._side_from_rows(file, parsed, id_col, derive, names, bad_rows, encoding, delimiter)

    @staticmethod
    def _derive_user(row: dict):
        if row["age"] < 0:
            return None, f"negative age {row['age']}"
        return (ml_age_bucket(row["age"]), row["gender"], row["occupation"]), None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "paths": [self.ratings_path, self.item_path, self.user_path],
            "mapping": {
                F.BEHAVIOR: f"{MOVIELENS_BEHAVIOR!r} for every row (rating value dropped)",
                F.CATEGORY: "genre combination in GroupLens order, '|'-joined",
                F.CATE1: "first genre",
                F.YEAR: "release decade",
                F.AGE: "MovieLens-1M age bucket",
                F.GENDER: "gender",
                F.OCCUPATION: "occupation (zip code dropped)",
            },
        }

    def protocol_defaults(self) -> dict:
        # the dataset's last day holds 11 users: split on each user's own last active day
        return {"split": "user-day"}


class MovieLensGroupLens(_MovieLens):
    """MovieLens-100k in the GroupLens layout: ``u.data`` (tab: user, item, rating, timestamp),
    ``u.item`` (``|``, latin-1: id|title|release date|video release|url|19 genre flags) and
    ``u.user`` (``|``: id|age|gender|occupation|zip). ``path`` is the folder or its ``u.data``."""

    name = "ml-100k-grouplens"

    def __init__(self, path):
        p = Path(path).expanduser().resolve()
        folder = p.parent if p.is_file() else p
        if not folder.is_dir():
            raise ValueError(f"movielens: {path} is not a folder holding u.data, u.item and u.user")
        missing = [f for f in ("u.data", "u.item", "u.user") if not (folder / f).is_file()]
        if missing:
            raise ValueError(
                f"movielens: {folder} lacks {', '.join(missing)} (the GroupLens ml-100k layout needs u.data, u.item, u.user)"
            )
        self.ratings_path = str(folder / "u.data")
        self.item_path = str(folder / "u.item")
        self.user_path = str(folder / "u.user")

    def _ratings_columns(self) -> list[ColumnSpec]:
        return [
            ColumnSpec(F.USER_ID, "int_id"),
            ColumnSpec(F.ITEM_ID, "int_id"),
            ColumnSpec(None, "float"),  # rating: checked, dropped
            ColumnSpec(F.TIMESTAMP, "timestamp"),
        ]

    def _read_items(self, bad_rows: BadRows) -> _Side:
        cols = [
            ColumnSpec(F.ITEM_ID, "int_id"),
            ColumnSpec("title", "str"),  # the catalogue's, not a feature
            ColumnSpec("release_date", "str"),
            ColumnSpec(None, "str"),  # video release date
            ColumnSpec(None, "str"),  # IMDb URL
        ] + [ColumnSpec(f"genre:{g}", "int") for g in ML_GENRES]

        def derive(row):
            flags = [row[f"genre:{g}"] for g in ML_GENRES]
            for g, v in zip(ML_GENRES, flags):
                if v not in (0, 1):
                    return None, f"genre flag {g} = {v} (must be 0 or 1)"
            cat, cate1 = ml_genres([g for g, v in zip(ML_GENRES, flags) if v])
            return (cat, cate1, ml_decade(self._year(row))), None

        return self._read_side(
            self.item_path, cols, has_header=False, delimiter="|", encoding="latin-1", bad_rows=bad_rows,
            id_col=F.ITEM_ID, derive=derive, names=self.item_side,
        )  # fmt: skip

    @staticmethod
    def _year(row: dict) -> int | None:
        """The release year of a u.item row (its release date, ``01-Jan-1995``), None when missing or unparsable."""
        date = row["release_date"].strip()
        try:
            return datetime.strptime(date, "%d-%b-%Y").year if date else None
        except ValueError:
            return None

    def _catalogue_row(self, row: dict) -> tuple[str | None, list[str], int | None]:
        return row["title"] or None, [g for g in ML_GENRES if row[f"genre:{g}"] == 1], self._year(row)

    def _read_users(self, bad_rows: BadRows) -> _Side:
        cols = [
            ColumnSpec(F.USER_ID, "int_id"),
            ColumnSpec("age", "int"),
            ColumnSpec("gender", "str"),
            ColumnSpec("occupation", "str"),
            ColumnSpec(None, "str"),  # zip code: dropped
        ]
        return self._read_side(
            self.user_path, cols, has_header=False, delimiter="|", encoding="latin-1", bad_rows=bad_rows,
            id_col=F.USER_ID, derive=self._derive_user, names=self.user_profile,
        )  # fmt: skip


def _recbole_fields(path: str) -> list[str]:
    """Field names of a RecBole atomic file header (``user_id:token`` -> ``user_id``)."""
    return [h.split(":", 1)[0].strip() for h in read_header(path, delimiter="\t")]


class MovieLensRecBole(_MovieLens):
    """MovieLens in RecBole's atomic-file layout: ``<name>.inter`` (user_id, item_id, rating, timestamp),
    ``<name>.item`` (item_id, movie_title, release_year, class = space-separated genres) and
    ``<name>.user`` (user_id, age, gender, occupation, zip_code), all tab-separated with a
    ``field:type`` header; columns are found by name. ``path`` is the folder or its ``.inter`` file."""

    has_header = True

    def __init__(self, path):
        p = Path(path).expanduser().resolve()
        if p.is_file():
            inter = p
        elif p.is_dir():
            found = sorted(p.glob("*.inter"))
            if not found:
                raise ValueError(f"recbole: {p} holds no .inter file")
            preferred = [q for q in found if q.stem == p.name]
            if len(found) > 1 and not preferred:
                raise ValueError(f"recbole: {p} holds several .inter files {[q.name for q in found]}; pass one of them")
            inter = preferred[0] if preferred else found[0]
        else:
            raise ValueError(f"recbole: {path} does not exist")
        if inter.suffix != ".inter":
            raise ValueError(f"recbole: {inter} is not a .inter file")
        self.dataset = inter.stem
        self.name = f"{self.dataset}-recbole"
        self.ratings_path = str(inter)
        self.item_path = str(inter.with_suffix(".item"))
        self.user_path = str(inter.with_suffix(".user"))
        for f in (self.item_path, self.user_path):
            if not os.path.isfile(f):
                raise ValueError(f"recbole: {f} is missing; the MovieLens atomic files come as .inter, .item and .user")
        self._inter_pos = self._positions(self.ratings_path, (F.USER_ID, F.ITEM_ID, F.TIMESTAMP), ("rating",))
        self._item_pos = self._positions(self.item_path, (F.ITEM_ID, "release_year", ("class", "genre")), ("movie_title",))
        self._user_pos = self._positions(self.user_path, (F.USER_ID, "age", "gender", "occupation"), ())

    @staticmethod
    def _positions(path: str, required: tuple, optional: tuple) -> dict[str, int]:
        fields = _recbole_fields(path)
        pos = {"__n__": len(fields)}
        for want in required + optional:
            alts = want if isinstance(want, tuple) else (want,)
            hit = [a for a in alts if a in fields]
            if hit:
                pos[alts[0]] = fields.index(hit[0])
            elif want in required:
                raise ValueError(
                    f"recbole: {path} has no {' or '.join(repr(a) for a in alts)} column; its header has {fields}"
                )
        return pos

    @staticmethod
    def _specs(pos: dict[str, int], named: dict[str, ColumnSpec]) -> list[ColumnSpec]:
        specs = [ColumnSpec(None, "str") for _ in range(pos["__n__"])]
        for key, spec in named.items():
            if key in pos:
                specs[pos[key]] = spec
        return specs

    def _ratings_columns(self) -> list[ColumnSpec]:
        return self._specs(
            self._inter_pos,
            {
                F.USER_ID: ColumnSpec(F.USER_ID, "int_id"),
                F.ITEM_ID: ColumnSpec(F.ITEM_ID, "int_id"),
                F.TIMESTAMP: ColumnSpec(F.TIMESTAMP, "timestamp"),
                "rating": ColumnSpec(None, "float"),
            },
        )

    def _read_items(self, bad_rows: BadRows) -> _Side:
        cols = self._specs(
            self._item_pos,
            {
                F.ITEM_ID: ColumnSpec(F.ITEM_ID, "int_id"),
                "release_year": ColumnSpec("release_year", "str"),
                "class": ColumnSpec("class", "str"),
                "movie_title": ColumnSpec("title", "str"),  # the catalogue's, not a feature
            },
        )

        def derive(row):
            genres = row["class"].split()
            unknown = [g for g in genres if g not in ML_GENRES]
            if unknown:
                return None, f"unknown genre {unknown[0]!r} (known: {', '.join(ML_GENRES)})"
            cat, cate1 = ml_genres(genres)
            return (cat, cate1, ml_decade(self._year(row))), None

        return self._read_side(
            self.item_path, cols, has_header=True, delimiter="\t", encoding="utf-8", bad_rows=bad_rows,
            id_col=F.ITEM_ID, derive=derive, names=self.item_side,
        )  # fmt: skip

    @staticmethod
    def _year(row: dict) -> int | None:
        y = row["release_year"].strip()
        return int(y) if re.fullmatch(r"[0-9]{4}", y) else None

    def _catalogue_row(self, row: dict) -> tuple[str | None, list[str], int | None]:
        genres = set(row["class"].split())
        return row.get("title") or None, [g for g in ML_GENRES if g in genres], self._year(row)

    def _read_users(self, bad_rows: BadRows) -> _Side:
        cols = self._specs(
            self._user_pos,
            {
                F.USER_ID: ColumnSpec(F.USER_ID, "int_id"),
                "age": ColumnSpec("age", "int"),
                "gender": ColumnSpec("gender", "str"),
                "occupation": ColumnSpec("occupation", "str"),
            },
        )
        return self._read_side(
            self.user_path, cols, has_header=True, delimiter="\t", encoding="utf-8", bad_rows=bad_rows,
            id_col=F.USER_ID, derive=self._derive_user, names=self.user_profile,
        )  # fmt: skip


# --- generic sources: column mapping ------------------------------------------------

MAPPING_KEYS = (
    "user_id", "item_id", "timestamp", "behavior", "session_id", "item_features", "user_features",
    "id_type", "feature_type", "timestamp_format", "behaviors", "delimiter", "header", "columns",
)  # fmt: skip
ID_TYPES = ("int", "str")
TIMESTAMP_FORMATS = ("seconds", "milliseconds", "iso8601")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "pipe": "|", "semicolon": ";", "space": " "}
_RESERVED = (F.USER_ID, F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR, F.SESSION_ID, F.ROW)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _bool(key: str, v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"column mapping: {key}={v!r} must be true or false")


@dataclass
class ColumnMapping:
    """Which source column holds each event field, for :class:`DelimitedSource` / :class:`ParquetSource`.

    YAML (``ColumnMapping.from_yaml``)::

        user_id: uid                 # required
        item_id: sku                 # required
        timestamp: ts                # required
        behavior: action             # optional; default: the constant "interaction"
        session_id: sid              # optional
        item_features: {category_id: cat, brand_id: brand}
        user_features: {age: age_band}
        id_type: int                 # int | str (user, item and session ids)
        feature_type: str            # str | int (CSV side features; Parquet keeps its types)
        timestamp_format: seconds    # seconds | milliseconds | iso8601
        behaviors: [click, buy]      # optional: the allowed behaviour values
        delimiter: ","               # CSV only; also tab, pipe, semicolon
        header: true                 # CSV only; false: name columns with `columns` or use 0-based positions
        columns: [uid, sku, ts]      # CSV without header only: the names of its columns

    CLI (``ColumnMapping.from_pairs``): ``user_id=uid item_id=sku timestamp=ts
    item_features.category_id=cat behaviors=click,buy delimiter=tab header=false``.
    """

    user_id: str
    item_id: str
    timestamp: str
    behavior: str | None = None
    session_id: str | None = None
    item_features: dict[str, str] = field(default_factory=dict)
    user_features: dict[str, str] = field(default_factory=dict)
    id_type: str = "int"
    feature_type: str = "str"
    timestamp_format: str = "seconds"
    behaviors: tuple[str, ...] | None = None
    delimiter: str = ","
    header: bool = True
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("user_id", "item_id", "timestamp", "behavior", "session_id"):
            v = getattr(self, key)
            if v is None and key in ("behavior", "session_id"):
                continue
            if isinstance(v, int) and not isinstance(v, bool):
                v = str(v)
                setattr(self, key, v)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(
                    f"column mapping: {key} must name a source column, got {v!r} "
                    f"(e.g. `{key}: {key}` in the YAML or `{key}=<column>` on the command line)"
                )
        for key in ("item_features", "user_features"):
            d = getattr(self, key)
            if d is None:
                d = {}
            if not isinstance(d, dict):
                raise ValueError(f"column mapping: {key} must be a mapping {{feature name: source column}}, got {d!r}")
            clean = {}
            for name, col in d.items():
                if not isinstance(name, str) or not _IDENT.match(name) or name in _RESERVED:
                    raise ValueError(
                        f"column mapping: {key} has feature name {name!r}; use an identifier that is not one of "
                        f"{list(_RESERVED)} (canonical names: {F.CATEGORY}, {F.CATE1}, {F.BRAND}, {F.SHOP}, "
                        f"{F.AGE}, {F.GENDER}, {F.OCCUPATION}, {F.POWER}, ...)"
                    )
                if isinstance(col, int) and not isinstance(col, bool):
                    col = str(col)
                if not isinstance(col, str) or not col.strip():
                    raise ValueError(f"column mapping: {key}.{name} must name a source column, got {col!r}")
                clean[name] = col
            setattr(self, key, clean)
        both = set(self.item_features) & set(self.user_features)
        if both:
            raise ValueError(f"column mapping: features {sorted(both)} are both item_features and user_features")
        if self.id_type not in ID_TYPES:
            raise ValueError(f"column mapping: id_type={self.id_type!r} is not one of {', '.join(ID_TYPES)}")
        if self.feature_type not in ID_TYPES:
            raise ValueError(f"column mapping: feature_type={self.feature_type!r} is not one of {', '.join(ID_TYPES)}")
        if self.timestamp_format not in TIMESTAMP_FORMATS:
            raise ValueError(
                f"column mapping: timestamp_format={self.timestamp_format!r} is not one of {', '.join(TIMESTAMP_FORMATS)}"
            )
        if self.behaviors is not None:
            if isinstance(self.behaviors, str):
                self.behaviors = tuple(b.strip() for b in self.behaviors.split(",") if b.strip())
            if not isinstance(self.behaviors, (list, tuple)) or not self.behaviors or not all(
                isinstance(b, str) and b for b in self.behaviors
            ):
                raise ValueError(f"column mapping: behaviors must be a non-empty list of strings, got {self.behaviors!r}")
            if self.behavior is None:
                raise ValueError(
                    "column mapping: behaviors lists allowed values of the behavior column, but no `behavior` "
                    "column is mapped; add `behavior: <column>` or drop `behaviors`"
                )
            self.behaviors = tuple(self.behaviors)
        d = _DELIMITER_NAMES.get(str(self.delimiter).lower(), self.delimiter)
        if not isinstance(d, str) or len(d) != 1 or d in "\n\r\"":
            raise ValueError(
                f"column mapping: delimiter={self.delimiter!r} must be one character (or one of {sorted(_DELIMITER_NAMES)})"
            )
        self.delimiter = d
        self.header = _bool("header", self.header)
        if self.columns is not None:
            if isinstance(self.columns, str):
                self.columns = tuple(c.strip() for c in self.columns.split(","))
            if self.header:
                raise ValueError(
                    "column mapping: columns names the columns of a file without header; set header: false or drop columns"
                )
            self.columns = tuple(str(c) for c in self.columns)
            if len(set(self.columns)) != len(self.columns):
                raise ValueError(f"column mapping: columns has duplicate names {list(self.columns)}")
        srcs = list(self.fields().values())
        dup = sorted({s for s in srcs if srcs.count(s) > 1})
        if dup:
            raise ValueError(f"column mapping: source column(s) {dup} are mapped to more than one field; map each once")

    def fields(self) -> dict[str, str]:
        """Event column -> source column, in canonical order."""
        out = {F.USER_ID: self.user_id, F.ITEM_ID: self.item_id, F.TIMESTAMP: self.timestamp}
        if self.behavior is not None:
            out[F.BEHAVIOR] = self.behavior
        if self.session_id is not None:
            out[F.SESSION_ID] = self.session_id
        out.update(self.item_features)
        out.update(self.user_features)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["behaviors"] = list(self.behaviors) if self.behaviors is not None else None
        d["columns"] = list(self.columns) if self.columns is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ColumnMapping":
        if not isinstance(d, dict):
            raise ValueError(f"column mapping must be a mapping of keys {', '.join(MAPPING_KEYS)}; got {type(d).__name__}")
        unknown = [k for k in d if k not in MAPPING_KEYS]
        if unknown:
            raise ValueError(f"column mapping: unknown key {unknown[0]!r}; allowed keys: {', '.join(MAPPING_KEYS)}")
        missing = [k for k in ("user_id", "item_id", "timestamp") if d.get(k) is None]
        if missing:
            raise ValueError(
                f"column mapping: {missing[0]!r} is required (the source column that holds it); "
                f"required keys: user_id, item_id, timestamp"
            )
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ColumnMapping":
        import yaml

        with open(path) as f:
            d = yaml.safe_load(f)
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pairs(cls, pairs: list[str], base: dict | None = None) -> "ColumnMapping":
        """From CLI ``key=value`` pairs (``item_features.NAME=col``, ``behaviors=a,b``), over ``base``."""
        d: dict = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (base or {}).items()}
        for p in pairs:
            if "=" not in p:
                raise ValueError(f"column mapping: {p!r} is not key=value (e.g. user_id=uid, item_features.category_id=cat)")
            k, v = (s.strip() for s in p.split("=", 1))
            if "." in k:
                group, name = k.split(".", 1)
                if group not in ("item_features", "user_features"):
                    raise ValueError(f"column mapping: {k!r}: only item_features.NAME and user_features.NAME take a dot")
                d.setdefault(group, {})
                d[group] = dict(d[group] or {})
                d[group][name] = v
            elif k == "behaviors":
                d[k] = [b.strip() for b in v.split(",") if b.strip()]
            elif k == "columns":
                d[k] = [c.strip() for c in v.split(",")]
            else:
                d[k] = v
        return cls.from_dict(d)

    @classmethod
    def from_cli(cls, map_file: str | os.PathLike | None = None, pairs: list[str] | None = None) -> "ColumnMapping":
        """A YAML file (if given) with ``key=value`` pairs on top."""
        base: dict = {}
        if map_file is not None:
            import yaml

            with open(map_file) as f:
                base = yaml.safe_load(f) or {}
            if not isinstance(base, dict):
                raise ValueError(f"{map_file}: a column mapping must be a YAML mapping")
        return cls.from_pairs(list(pairs or []), base)


def _missing_column(what: str, key: str, col: str, path: str, available: list[str]) -> ValueError:
    return ValueError(f"{what}: mapping {key}={col!r}, but {path} has no column {col!r}; available columns: {available}")


class DelimitedSource(_Picklable, EventSource):
    """Any CSV/TSV with a :class:`ColumnMapping`. ``paths``: a file, a list, or a folder of ``*.csv``/``*.tsv``/``*.txt``.

    Values may be quoted with ``"`` but must not contain newlines. Side features
    are strings (``feature_type: int`` reads them as integers); unmapped columns
    are ignored.
    """

    name = "csv"

    def __init__(self, paths, mapping: ColumnMapping):
        if not isinstance(mapping, ColumnMapping):
            raise TypeError(f"csv: mapping must be a ColumnMapping, got {type(mapping).__name__}")
        self.mapping = mapping
        self.paths = _as_paths(paths, (".csv", ".tsv", ".txt"), "csv")
        self.item_side = tuple(mapping.item_features)
        self.user_profile = tuple(mapping.user_features)
        self.has_session_id = mapping.session_id is not None
        self.specs = {p: self._resolve(p) for p in self.paths}

    def _kinds(self) -> dict[str, ColumnSpec]:
        m = self.mapping
        idk = "int_id" if m.id_type == "int" else "str_id"
        tsk = {"seconds": "timestamp", "milliseconds": "timestamp_ms", "iso8601": "timestamp_iso"}[m.timestamp_format]
        fk = "int" if m.feature_type == "int" else "str"
        out = {
            F.USER_ID: ColumnSpec(F.USER_ID, idk),
            F.ITEM_ID: ColumnSpec(F.ITEM_ID, idk),
            F.TIMESTAMP: ColumnSpec(F.TIMESTAMP, tsk),
        }
        if m.behavior is not None:
            out[F.BEHAVIOR] = ColumnSpec(F.BEHAVIOR, "behavior", frozenset(m.behaviors) if m.behaviors else None)
        if m.session_id is not None:
            out[F.SESSION_ID] = ColumnSpec(F.SESSION_ID, idk)
        for name in list(m.item_features) + list(m.user_features):
            out[name] = ColumnSpec(name, fk)
        return out

    def _resolve(self, path: str) -> list[ColumnSpec]:
        m = self.mapping
        if m.header:
            names = read_header(path, delimiter=m.delimiter, quotechar='"')
        elif m.columns is not None:
            names = list(m.columns)
        else:
            with open(path, "rb") as f:
                first = next((ln for ln in f if ln.strip()), b"")
            names = [str(i) for i in range(len(first.rstrip(b"\r\n").decode("utf-8", "replace").split(m.delimiter)))]
        specs = [ColumnSpec(None, "str") for _ in names]
        for key, spec in self._kinds().items():
            col = m.fields()[key]
            if col not in names:
                if not m.header and m.columns is None:
                    raise ValueError(
                        f"csv: mapping {key}={col!r}: {path} has no header, so columns are 0-based positions "
                        f"0..{len(names) - 1} (or name them with `columns: [...]`)"
                    )
                raise _missing_column("csv", key, col, path, names)
            specs[names.index(col)] = spec
        return specs

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        return [c for p in self.paths for c in split_text_file(p, chunk_bytes, has_header=self.mapping.header)]

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        specs = self.specs.get(chunk.path) or self._resolve(chunk.path)
        r = read_delimited(
            chunk.path, chunk, specs, delimiter=self.mapping.delimiter, has_header=self.mapping.header,
            bad_rows=bad_rows, quotechar='"',
        )  # fmt: skip
        ev = r.events
        if self.mapping.behavior is None:
            ev = ev.append_column(F.BEHAVIOR, _constant(DEFAULT_BEHAVIOR, ev.num_rows))
        return ChunkResult(_canonical(ev, self), r.rejects, r.rows_read)

    def describe(self) -> dict:
        return {"name": self.name, "paths": list(self.paths), "mapping": self.mapping.to_dict()}


# --- Parquet -------------------------------------------------------------------------


def _plain(arr) -> pa.Array:
    """One contiguous array, dictionaries decoded, large strings made plain strings."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _type_ok(kind: str, t: pa.DataType, ts_format: str) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    num = pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind in ("int_id", "str_id"):
        return num or is_str
    if kind == "timestamp":
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return True
        return is_str if ts_format == "iso8601" else (num or is_str)
    if kind == "behavior":
        return is_str or pa.types.is_integer(t)
    return True  # features


class _Bad:
    """Row index -> first reason, filled column by column."""

    def __init__(self, n: int):
        self.mask = np.zeros(n, dtype=bool)
        self.reasons: dict[int, str] = {}

    def add(self, mask: np.ndarray, reason) -> None:
        idx = np.flatnonzero(mask & ~self.mask)
        for i in idx:
            self.reasons[int(i)] = reason(int(i))
        self.mask |= mask


def _np_mask(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _pq_int(arr: pa.Array, label: str, bad: _Bad, nonneg: bool) -> pa.Array:
    """int64 values of an integer / float / string column; bad rows are recorded (and hold 0)."""
    nulls = _np_mask(pc.is_null(arr)) if arr.null_count else np.zeros(len(arr), dtype=bool)
    bad.add(nulls, lambda i: f"missing {label}")
    t = arr.type
    if pa.types.is_integer(t):
        if t == pa.uint64():
            big = _np_mask(pc.greater(arr, 2**63 - 1))
            bad.add(big, lambda i: f"{label} {arr[i].as_py()} is out of the int64 range")
            arr = pc.if_else(pa.array(big), pa.scalar(0, t), arr)
        out = pc.cast(arr, pa.int64())
    elif pa.types.is_floating(t):
        fin = _np_mask(pc.is_finite(arr))
        integral = _np_mask(pc.equal(pc.trunc(arr), arr))
        rng = _np_mask(pc.less(pc.abs(arr), 2.0**63))
        ok = fin & integral & rng
        bad.add(~ok & ~nulls, lambda i: f"non-integer {label} {arr[i].as_py()!r}")
        out = pc.cast(pc.if_else(pa.array(ok), arr, 0.0), pa.int64())
    else:  # strings
        try:
            out = pc.cast(pc.utf8_trim_whitespace(arr), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            vals = arr.to_pylist()
            ints, notint = [], np.zeros(len(vals), dtype=bool)
            for i, s in enumerate(vals):
                v = int(s) if s is not None and re.fullmatch(r"\s*-?[0-9]+\s*", s) else None
                if v is not None and not -(2**63) <= v < 2**63:
                    v = None
                notint[i] = s is not None and v is None
                ints.append(v or 0)
            bad.add(notint, lambda i: f"non-integer {label} {vals[i]!r}")
            out = pa.array(ints, pa.int64())
    out = out.fill_null(0) if out.null_count else out
    if nonneg and len(out) and pc.min(out).as_py() < 0:
        bad.add(_np_mask(pc.less(out, 0)), lambda i: f"negative {label} {out[i].as_py()}")
    return out


def _pq_str(arr: pa.Array, label: str, bad: _Bad) -> pa.Array:
    if arr.null_count:
        bad.add(_np_mask(pc.is_null(arr)), lambda i: f"missing {label}")
    out = arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())
    out = out.fill_null("") if out.null_count else out
    if len(out) and pc.min(pc.binary_length(out)).as_py() == 0:
        bad.add(_np_mask(pc.equal(pc.binary_length(out), 0)), lambda i: f"empty {label}")
    return out


def _pq_timestamp(arr: pa.Array, label: str, bad: _Bad, ts_format: str) -> pa.Array:
    """int64 seconds (floor) of a timestamp / date / numeric / ISO-8601 string column."""
    t = arr.type
    if arr.null_count:
        bad.add(_np_mask(pc.is_null(arr)), lambda i: f"missing {label}")
    per_second = 1
    if pa.types.is_timestamp(t):
        per_second = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[t.unit]
        raw = pc.cast(arr, pa.timestamp(t.unit)).cast(pa.int64())
    elif pa.types.is_date(t):
        raw = pc.multiply(pc.cast(pc.cast(arr, pa.date32()), pa.int32()).cast(pa.int64()), 86400)
    elif ts_format == "iso8601":
        per_second = 10**6
        raw = None
        for tt in (pa.timestamp("us"), pa.timestamp("us", "UTC")):
            try:
                raw = pc.cast(pc.cast(arr, tt), pa.int64())
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        if raw is None:  # mixed or malformed values: one by one
            spec = ColumnSpec(label, "timestamp_iso")
            vals = arr.to_pylist()
            res, unparsable, reasons = [], np.zeros(len(vals), dtype=bool), {}
            for i, s in enumerate(vals):
                v, why = (0, None) if s is None else parse_value(s, spec, label)
                if why is not None:
                    unparsable[i], reasons[i], v = True, why, 0
                res.append(v * per_second)
            bad.add(unparsable, lambda i: reasons[i])
            raw = pa.array(res, pa.int64())
    else:
        if ts_format == "milliseconds":
            per_second = 1000
        if pa.types.is_integer(t):
            raw = _pq_int(arr, label, bad, nonneg=False)
        else:
            f = arr
            if not pa.types.is_floating(t):
                try:
                    f = pc.cast(pc.utf8_trim_whitespace(arr), pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    vals = arr.to_pylist()
                    fl, bads = [], np.zeros(len(vals), dtype=bool)
                    for i, s in enumerate(vals):
                        v = None if s is None else parse_float(s)
                        bads[i] = s is not None and v is None
                        fl.append(v)
                    bad.add(bads, lambda i: f"unparsable {label} {vals[i]!r}")
                    f = pa.array(fl, pa.float64())
            fin = _np_mask(pc.is_finite(f))
            bad.add(~fin, lambda i: f"unparsable {label} {arr[i].as_py()!r}")
            big = _np_mask(pc.greater_equal(pc.abs(f), 2.0**63))
            bad.add(big, lambda i: f"{label} {arr[i].as_py()!r} is out of the int64 range")
            raw = pc.cast(pc.trunc(pc.if_else(pa.array(fin & ~big), f, 0.0)), pa.int64())
    raw = raw.fill_null(0) if raw.null_count else raw
    if len(raw) and pc.min(raw).as_py() < 0:
        bad.add(_np_mask(pc.less(raw, 0)), lambda i: f"negative {label} {arr[i].as_py()}")
    if per_second == 1:
        return raw
    return pc.divide(pc.if_else(pc.less(raw, 0), 0, raw), per_second)  # floor (negatives are rejected)


def _pq_behavior(arr: pa.Array, label: str, bad: _Bad, allowed: tuple[str, ...] | None) -> pa.Array:
    if arr.null_count:
        bad.add(_np_mask(pc.is_null(arr)), lambda i: f"missing {label}")
    out = arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())
    out = out.fill_null("") if out.null_count else out
    if allowed:
        isin = pc.is_in(out, value_set=pa.array(list(allowed), pa.string()))
        if not pc.all(isin).as_py():
            a = ", ".join(sorted(allowed))
            bad.add(~_np_mask(isin), lambda i: f"unknown behaviour {out[i].as_py()!r} (allowed: {a})")
    return out


def _pq_feature(arr: pa.Array, label: str, bad: _Bad) -> pa.Array:
    """Integer columns -> int64, strings stay strings, integral floats -> int64, anything else -> string; nulls stay null."""
    t = arr.type
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.int64())
    if pa.types.is_string(t):
        return arr
    if pa.types.is_floating(t):
        valid = ~_np_mask(pc.is_null(arr))
        fin = _np_mask(pc.is_finite(arr))
        integral = _np_mask(pc.equal(pc.trunc(arr), arr))
        nan = valid & ~fin & _np_mask(pc.is_nan(arr))
        badm = valid & ~nan & ~(fin & integral)
        bad.add(badm, lambda i: f"non-integer {label} {arr[i].as_py()!r}")
        keep = pc.if_else(pa.array(valid & ~nan & ~badm), arr, pa.scalar(None, t))
        return pc.cast(keep, pa.int64())
    return pc.cast(arr, pa.string())


class ParquetSource(_Picklable, EventSource):
    """Any Parquet file(s) with a :class:`ColumnMapping`; chunks are row-group ranges ``Chunk(path, first, stop)``.

    Rows get the same value checks as text (missing / negative / non-integer ids,
    unparsable or negative timestamps, unknown behaviours); a reject's ``line``
    is the 1-based row number in the file and its ``text`` the row's mapped
    values as JSON. Side features keep their Parquet type (integers as int64,
    strings as strings, integral floats as int64, nulls as nulls).
    """

    name = "parquet"

    def __init__(self, paths, mapping: ColumnMapping):
        if not isinstance(mapping, ColumnMapping):
            raise TypeError(f"parquet: mapping must be a ColumnMapping, got {type(mapping).__name__}")
        self.mapping = mapping
        self.paths = _as_paths(paths, (".parquet", ".pq"), "parquet")
        self.item_side = tuple(mapping.item_features)
        self.user_profile = tuple(mapping.user_features)
        self.has_session_id = mapping.session_id is not None
        kinds = self._kinds()
        for p in self.paths:
            schema = pq.read_schema(p)
            for key, col in mapping.fields().items():
                if col not in schema.names:
                    raise _missing_column("parquet", key, col, p, schema.names)
                t = schema.field(col).type
                if not _type_ok(kinds[key], t, mapping.timestamp_format):
                    raise ValueError(
                        f"parquet: {p}: column {col!r} ({key}) has type {t}, which cannot hold a {key} "
                        f"(timestamp_format={mapping.timestamp_format})"
                    )

    def _kinds(self) -> dict[str, str]:
        m = self.mapping
        out = {F.USER_ID: "int_id" if m.id_type == "int" else "str_id"}
        out[F.ITEM_ID] = out[F.USER_ID]
        out[F.TIMESTAMP] = "timestamp"
        if m.behavior is not None:
            out[F.BEHAVIOR] = "behavior"
        if m.session_id is not None:
            out[F.SESSION_ID] = out[F.USER_ID]
        for name in list(m.item_features) + list(m.user_features):
            out[name] = "feature"
        return out

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        out = []
        for p in self.paths:
            md = pq.ParquetFile(p).metadata
            start, size = 0, 0
            for g in range(md.num_row_groups):
                size += md.row_group(g).total_byte_size
                if size >= chunk_bytes:
                    out.append(Chunk(p, start, g + 1))
                    start, size = g + 1, 0
            if start < md.num_row_groups:
                out.append(Chunk(p, start, md.num_row_groups))
        return out

    def estimate_rows(self, chunk: Chunk) -> int:
        md = pq.ParquetFile(chunk.path).metadata  # chunks are row-group ranges: exact
        return sum(md.row_group(g).num_rows for g in range(chunk.start, min(chunk.stop, md.num_row_groups)))

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        bad_rows = BadRows(bad_rows)
        m = self.mapping
        fields = m.fields()
        pf = pq.ParquetFile(chunk.path)
        md = pf.metadata
        first_row = sum(md.row_group(g).num_rows for g in range(chunk.start))
        srcs = list(dict.fromkeys(fields.values()))
        raw = pf.read_row_groups(list(range(chunk.start, chunk.stop)), columns=srcs)
        n = raw.num_rows
        bad = _Bad(n)
        kinds = self._kinds()
        cols = {}
        for key, col in fields.items():
            arr = _plain(raw.column(col))
            k = kinds[key]
            if k == "int_id":
                cols[key] = _pq_int(arr, key, bad, nonneg=True)
            elif k == "str_id":
                cols[key] = _pq_str(arr, key, bad)
            elif k == "timestamp":
                cols[key] = _pq_timestamp(arr, key, bad, m.timestamp_format)
            elif k == "behavior":
                cols[key] = _pq_behavior(arr, key, bad, m.behaviors)
            else:
                cols[key] = _pq_feature(arr, key, bad)
        if m.behavior is None:
            cols[F.BEHAVIOR] = _constant(DEFAULT_BEHAVIOR, n)
        events = pa.table(cols)
        rejects = empty_rejects()
        if bad.reasons:
            idx = sorted(bad.reasons)
            rows = [first_row + i + 1 for i in idx]
            texts = [json.dumps(raw.slice(i, 1).to_pylist()[0], default=str) for i in idx]
            reasons = [bad.reasons[i] for i in idx]
            if bad_rows == BadRows.ERROR:
                raise MalformedRowError(chunk.path, rows[0], reasons[0], texts[0])
            rejects = make_rejects(chunk.path, rows, reasons, texts)
            events = events.filter(pa.array(~bad.mask))
        return ChunkResult(_canonical(events, self), rejects, n)

    def describe(self) -> dict:
        return {"name": self.name, "paths": list(self.paths), "mapping": self.mapping.to_dict()}


# --- synthetic -----------------------------------------------------------------------

SYNTH_MANIFEST = "synth.json"
SYNTH_LAYOUTS = ("parquet", "taobao-csv")


class SynthSource(_Picklable, EventSource):
    """The output of ``seqrec.data.synth``: ``dir/synth.json`` names its files and layout.

    ``layout: parquet`` files use the canonical column names (ids int64,
    behaviour strings pv/fav/cart/buy, side features as listed in ``item_side``
    and ``user_profile``); ``layout: taobao-csv`` files are Taobao UserBehavior
    CSVs. ``protocol_defaults`` come from the manifest (see the method).
    """

    name = "synth"

    def __init__(self, path):
        folder = Path(path).expanduser().resolve()
        if folder.is_file() and folder.name == SYNTH_MANIFEST:
            folder = folder.parent
        mf = folder / SYNTH_MANIFEST
        if not mf.is_file():
            raise ValueError(f"synth: {folder} has no {SYNTH_MANIFEST}; generate data with `seqrec data synth` first")
        meta = json.loads(mf.read_text())
        if meta.get("format") != "seqrec-synth":
            raise ValueError(f"synth: {mf} has format={meta.get('format')!r}, expected 'seqrec-synth'")
        layout = meta.get("layout")
        if layout not in SYNTH_LAYOUTS:
            raise ValueError(f"synth: {mf} has layout={layout!r}; known layouts: {', '.join(SYNTH_LAYOUTS)}")
        files = meta.get("files") or []
        if not files:
            raise ValueError(f"synth: {mf} lists no files")
        paths = [str((folder / f).resolve()) for f in files]
        self.dir = str(folder)
        self.meta = meta
        if layout == "taobao-csv":
            self.inner: EventSource = TaobaoCSV(paths)
        else:
            item_side = tuple(meta.get("item_side") or ())
            user_profile = tuple(meta.get("user_profile") or ())
            has_sid = meta.get("has_session_id")
            if has_sid is None:
                has_sid = F.SESSION_ID in pq.read_schema(paths[0]).names
            mapping = ColumnMapping(
                user_id=F.USER_ID,
                item_id=F.ITEM_ID,
                timestamp=F.TIMESTAMP,
                behavior=F.BEHAVIOR,
                session_id=F.SESSION_ID if has_sid else None,
                item_features={n: n for n in item_side},
                user_features={n: n for n in user_profile},
                behaviors=tuple(meta.get("behaviors") or TAOBAO_BEHAVIORS),
            )
            self.inner = ParquetSource(paths, mapping)
        self.item_side = self.inner.item_side
        self.user_profile = self.inner.user_profile
        self.has_session_id = self.inner.has_session_id

    def chunks(self, chunk_bytes: int = 64 << 20) -> list[Chunk]:
        return self.inner.chunks(chunk_bytes)

    def read_chunk(self, chunk: Chunk, bad_rows: BadRows = BadRows.ERROR) -> ChunkResult:
        return self.inner.read_chunk(chunk, bad_rows)

    def estimate_rows(self, chunk: Chunk) -> int:
        return self.inner.estimate_rows(chunk)

    def describe(self) -> dict:
        d = self.inner.describe()
        d["name"] = self.name
        d["layout"] = self.meta["layout"]
        d["synth"] = {k: v for k, v in self.meta.items() if k != "files"}
        return d

    def protocol_defaults(self) -> dict:
        """The manifest's ``protocol_defaults``; else days that start at ``params.start_ts`` (the generator's
        day 0 begins there, 2017-11-25 00:00 UTC+8 by default, so ``tz_offset_hours`` = 8)."""
        if self.meta.get("protocol_defaults"):
            return dict(self.meta["protocol_defaults"])
        start = (self.meta.get("params") or {}).get("start_ts")
        if start is None:
            return {}
        offset_s = (-int(start)) % 86400
        return {"tz_offset_hours": offset_s // 3600 if offset_s % 3600 == 0 else offset_s / 3600}


# --- open_source -----------------------------------------------------------------------


def _looks_taobao(path: Path) -> bool:
    """The first non-empty lines have 5 comma-separated fields: 3 integers, a Taobao behaviour, an integer."""
    seen = 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            p = line.split(",")
            if len(p) != 5 or p[3] not in TAOBAO_BEHAVIORS:
                return False
            if not all(re.fullmatch(r"[0-9]+", x) for x in (p[0], p[1], p[2])):
                return False
            if not re.fullmatch(r"-?[0-9]+(\.[0-9]*)?", p[4]):
                return False
            seen += 1
            if seen >= 20:
                break
    return seen > 0


def _need_mapping(fmt: str, path) -> ValueError:
    return ValueError(
        f"--format {fmt} needs a column mapping for {path}: pass --map mapping.yaml or key=value pairs "
        "(user_id=..., item_id=..., timestamp=... [behavior=..., item_features.NAME=...])"
    )


def open_source(path: str | os.PathLike, fmt: str | None = None, mapping: ColumnMapping | None = None) -> EventSource:
    """The :class:`EventSource` for ``path``, of format ``fmt`` (one of :data:`FORMATS`) or detected.

    Detection: a folder with ``synth.json`` -> synth; a folder with (or the file)
    ``u.data`` -> movielens; a ``*.inter`` file or a folder holding one -> recbole;
    a ``.csv`` whose rows look like Taobao UserBehavior -> taobao; with a mapping,
    ``.parquet`` -> parquet and other files -> csv. ``ml-100k`` (not an existing
    path) is the copy fetched by ``seqrec data fetch ml-100k``.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; {_FORMAT_HELP}")
    p = Path(path).expanduser()
    if not p.exists() and str(path) == "ml-100k":
        from seqrec.data import fetch

        d = fetch.ml100k_dir()
        if not all((d / f).is_file() for f in fetch.ML100K_FILES):
            raise ValueError(
                f"ml-100k is not in the cache ({d}); run `seqrec data fetch ml-100k` first "
                "(or set $SEQREC_CACHE to a folder that holds ml-100k/)"
            )
        if fmt not in (None, "recbole"):
            raise ValueError(f"ml-100k is cached in the RecBole layout; use --format recbole (or none), not {fmt!r}")
        return MovieLensRecBole(d)
    if not p.exists():
        raise ValueError(f"{path} does not exist")
    if fmt == "taobao":
        return TaobaoCSV(p)
    if fmt == "movielens":
        return MovieLensGroupLens(p)
    if fmt == "recbole":
        return MovieLensRecBole(p)
    if fmt == "synth":
        return SynthSource(p)
    if fmt == "csv":
        if mapping is None:
            raise _need_mapping("csv", path)
        return DelimitedSource(p, mapping)
    if fmt == "parquet":
        if mapping is None:
            raise _need_mapping("parquet", path)
        return ParquetSource(p, mapping)
    # detect
    if p.is_dir():
        if (p / SYNTH_MANIFEST).is_file():
            return SynthSource(p)
        if (p / "u.data").is_file():
            return MovieLensGroupLens(p)
        if any(p.glob("*.inter")):
            return MovieLensRecBole(p)
        files = sorted(q for q in p.iterdir() if q.is_file())
        if mapping is not None:
            if any(q.suffix in (".parquet", ".pq") for q in files):
                return ParquetSource(p, mapping)
            return DelimitedSource(p, mapping)
        csvs = [q for q in files if q.suffix.lower() == ".csv"]
        if csvs and _looks_taobao(csvs[0]):
            return TaobaoCSV(p)
    else:
        if p.name == "u.data":
            return MovieLensGroupLens(p)
        if p.suffix == ".inter":
            return MovieLensRecBole(p)
        if p.name == SYNTH_MANIFEST:
            return SynthSource(p)
        if mapping is not None:
            return ParquetSource(p, mapping) if p.suffix.lower() in (".parquet", ".pq") else DelimitedSource(p, mapping)
        if p.suffix.lower() == ".csv" and _looks_taobao(p):
            return TaobaoCSV(p)
    raise ValueError(f"cannot tell the format of {path}; {_FORMAT_HELP}")


__all__ = [
    "FORMATS",
    "ML_GENRES",
    "ColumnMapping",
    "DelimitedSource",
    "MovieLensGroupLens",
    "MovieLensRecBole",
    "ParquetSource",
    "SynthSource",
    "TaobaoCSV",
    "ml_age_bucket",
    "open_source",
]
