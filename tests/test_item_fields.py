"""Answers people can read (issue 17): the MovieLens catalogue (title, genres, year), prepare's catalogue.parquet
(no hash changes), answers' item ``fields`` (seqrec.serving.ItemFields) and `seqrec serve --once`'s item lines."""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from seqrec import features as F
from seqrec.data.loaders import ML_GENRES, MovieLensGroupLens, MovieLensRecBole
from seqrec.data.prepare import prepare, resolve_config
from seqrec.serving import Event, ItemFields, Request, RowBuilder, cold_start

FIX = Path(__file__).parent / "fixtures"
GROUPLENS = FIX / "grouplens"
RECBOLE = FIX / "recbole" / "ml-mini"
SIDE = (F.CATEGORY, F.CATE1, F.YEAR)


def naive_grouplens() -> dict:
    """item id -> (title, genres, year), read from u.item by hand."""
    out = {}
    for line in (GROUPLENS / "u.item").read_bytes().decode("latin-1").splitlines():
        f = line.split("|")
        date = f[2].strip()
        year = datetime.strptime(date, "%d-%b-%Y").year if date else None
        out[int(f[0])] = (f[1] or None, [g for g, flag in zip(ML_GENRES, f[5:]) if flag == "1"], year)
    return out


def naive_recbole() -> dict:
    out = {}
    lines = (RECBOLE / "ml-mini.item").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t")[:4] == ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
    for line in lines[1:]:
        iid, title, year, cls = line.split("\t")
        out[int(iid)] = (title, [g for g in ML_GENRES if g in cls.split()], int(year) if re.fullmatch(r"\d{4}", year) else None)
    return out


def by_id(table) -> dict:
    return {r["item_id"]: (r["title"], r["genres"], r["year"]) for r in table.to_pylist()}


def test_both_movielens_layouts_give_the_files_catalogue():
    gl, rb = MovieLensGroupLens(GROUPLENS).catalogue(), MovieLensRecBole(RECBOLE).catalogue()
    assert gl.column_names == rb.column_names == ["item_id", "title", "genres", "year"]
    assert by_id(gl) == naive_grouplens() and by_id(rb) == naive_recbole()
    # each file's title as given (GroupLens' carries the year); the same ids, genres and years in both layouts
    assert by_id(gl)[258] == ("Contact (1997)", ["Drama", "Sci-Fi"], 1997)
    assert by_id(rb)[258] == ("Contact", ["Drama", "Sci-Fi"], 1997)
    assert by_id(gl)[543][0] == "Misérables, Les (1995)"  # latin-1
    assert by_id(gl)[267] == ("unkonwn", ["unknown"], None)
    for col in ("item_id", "genres", "year"):
        assert gl[col].equals(rb[col]), col


def test_a_malformed_item_row_has_no_catalogue_row(tmp_path):
    gl = shutil.copytree(GROUPLENS, tmp_path / "gl")
    lines = (gl / "u.item").read_bytes().decode("latin-1").splitlines()
    assert lines[1].startswith("258|")
    lines[1] = lines[1][:-1] + "7"  # a genre flag of 7: a bad row of u.item
    (gl / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    cat = by_id(MovieLensGroupLens(gl).catalogue())
    assert 258 not in cat and cat == {k: v for k, v in naive_grouplens().items() if k != 258}


def _prepare(src, out: Path, engine: str = "local") -> dict:
    return prepare(src, out, resolve_config(src, min_item_count=1, split="loo"), engine=engine, progress=False)


@pytest.fixture(scope="module")
def ml_prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "prep"
    _prepare(MovieLensGroupLens(GROUPLENS), out)
    return out


def test_prepare_writes_the_catalogue_of_the_datasets_items_and_no_hash_changes(ml_prepared, tmp_path):
    m = RowBuilder(ml_prepared).manifest
    items = pq.read_table(ml_prepared / "items.parquet")
    cat = pq.read_table(ml_prepared / "catalogue.parquet")
    assert cat.column_names == ["code", "item_id", "title", "genres", "year"]
    raw = items["raw"].to_pylist()[F.FIRST_CODE:]
    assert cat["item_id"].to_pylist() == raw  # every item of the dataset is in u.item: all of them, by code
    assert cat["code"].to_pylist() == list(range(F.FIRST_CODE, items.num_rows))
    naive = naive_grouplens()
    assert by_id(cat.drop_columns(["code"])) == {i: naive[i] for i in raw}
    assert len(raw) < len(naive)  # restricted to the dataset's items
    assert m["catalogue"] == {"file": "catalogue.parquet", "rows": len(raw), "columns": cat.column_names}
    assert "catalogue.parquet" not in m["files"]

    # the same preparation without a catalogue: the same files, bytes and hashes
    src = MovieLensGroupLens(GROUPLENS)
    src.catalogue = lambda: None
    plain = _prepare(src, tmp_path / "plain")
    assert not (tmp_path / "plain" / "catalogue.parquet").exists() and "catalogue" not in plain
    assert (plain["vocab_hash"], plain["content_hash"], plain["files"]) == (m["vocab_hash"], m["content_hash"], m["files"])
    for rel in m["files"]:
        assert (tmp_path / "plain" / rel).read_bytes() == (ml_prepared / rel).read_bytes(), rel

    # the RecBole layout: the same dataset, the same catalogue but for the titles
    rb = _prepare(MovieLensRecBole(RECBOLE), tmp_path / "rb")
    assert rb["content_hash"] == m["content_hash"]
    rcat = pq.read_table(tmp_path / "rb" / "catalogue.parquet")
    assert rcat.drop_columns(["title"]).equals(cat.drop_columns(["title"]))
    assert [t.rsplit(" (", 1)[0] for t in cat["title"].to_pylist()] == rcat["title"].to_pylist()


def test_the_ray_engine_writes_the_same_catalogue(ml_prepared, tmp_path, ray_cluster):
    m = _prepare(MovieLensGroupLens(GROUPLENS), tmp_path / "ray", engine="ray")
    assert m["engine"] == "ray" and m["content_hash"] == RowBuilder(ml_prepared).manifest["content_hash"]
    assert pq.read_table(tmp_path / "ray" / "catalogue.parquet").equals(pq.read_table(ml_prepared / "catalogue.parquet"))


@pytest.fixture(scope="module")
def ml_matcher(ml_prepared, tmp_path_factory) -> Path:
    """A tiny SDM trained for one epoch on the prepared fixture, exported like `seqrec train`."""
    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.config import TrainConfig
    from seqrec.data.prepare import read_split
    from seqrec.export import export_checkpoint
    from seqrec.train.factory import build
    from seqrec.train.loop import fit

    root = tmp_path_factory.mktemp("ml-sdm")
    model, spec, manifest = build("sdm:PSDMMAL", ml_prepared, {"hidden": 8, "heads": 2, "id_dim": 4, "side_dim": 2,
                                                               "profile_dim": 2}, seed=0)
    fit(model, read_split(ml_prepared, "train"), spec, TrainConfig(epochs=1, batch_size=8, seed=0), log=None)
    ck = save_checkpoint(root / "ck", model, epoch=1, step=0, dataset=dataset_identity(manifest, ml_prepared))
    export_checkpoint(ck, root / "export", ml_prepared)
    return root


def test_pipeline_answers_carry_the_catalogue_and_side_fields(ml_prepared, ml_matcher):
    from seqrec.serving import Pipeline

    pipe = Pipeline(ml_prepared, ml_matcher)
    naive = naive_grouplens()
    cold, warm = pipe.recommend([Request(143, []), Request(143, [Event(258, 888407000), Event(286, 888407100)])], k=5)
    assert cold["cold_start"] and not warm["cold_start"] and len(warm["items"]) == 5
    for item in cold["items"] + warm["items"]:
        title, genres, year = naive[item["item_id"]]
        f = item["fields"]
        assert (f["title"], f["genres"], f["year"]) == (title, genres, year)
        assert f[F.CATEGORY] == "|".join(genres) and f[F.CATE1] == genres[0] and f[F.YEAR] == f"{year // 10 * 10}s"
    # lookups: an unknown item has no fields; a null catalogue value is left out
    fields = ItemFields.load(ml_prepared, pipe.rows)
    contact = {"title": "Contact (1997)", "genres": ["Drama", "Sci-Fi"], "year": 1997,
               F.CATEGORY: "Drama|Sci-Fi", F.CATE1: "Drama", F.YEAR: "1990s"}
    assert fields.of([987654, 258, "258"]) == [{}, contact, contact] and fields.of([]) == []
    if 267 in pipe.rows.vocab[F.ITEM_ID].to_pylist():  # no release date: no year
        assert "year" not in fields.of([267])[0] and fields.of([267])[0]["title"] == "unkonwn"


def test_without_a_catalogue_fields_are_the_side_features(tiny_prepared, tiny_artifacts):
    from seqrec.serving import Pipeline

    assert not (tiny_prepared / "catalogue.parquet").exists()
    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], candidates=50)
    known = pipe.rows.vocab[F.ITEM_ID][3].as_py()
    cold, warm = pipe.recommend([Request(7, []), Request(7, [Event(known, 100)])], k=5)
    side = pipe.rows.item_names[1:]
    assert side
    for item in cold["items"] + warm["items"]:
        code = int(pipe.rows.encode(F.ITEM_ID, [item["item_id"]])[0])
        want = {}
        for name in side:
            c = int(pipe.rows.item_side[name][code])
            if c >= F.FIRST_CODE:
                want[name] = pipe.rows.vocab[name][c - F.FIRST_CODE].as_py()
        assert item["fields"] == want
    # no ItemFields at all (a caller of the stage functions that passes none): {} on every item
    assert [i["fields"] for i in cold_start([known, 5], 2, {}).items] == [{}, {}]


def test_serve_once_prints_titles_and_genres_else_the_id():
    from seqrec.cli import item_line

    star = {"item_id": 50, "score": 3.21, "match_score": 2.1,
            "fields": {"title": "Star Wars (1977)", "genres": ["Action", "Adventure", "Romance", "Sci-Fi", "War"]}}
    assert item_line(1, star) == "   1. item 50  Star Wars (1977)  [Action Adventure Romance Sci-Fi War]  score 3.2100 (match 2.1000)"
    assert item_line(2, {"item_id": 7, "score": 0.5, "match_score": 0.25, "fields": {}}) == \
        "   2. item 7  score 0.5000 (match 0.2500)"
    assert item_line(3, {"item_id": 7, "score": None, "match_score": None}) == "   3. item 7"
