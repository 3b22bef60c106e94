"""The synthetic Taobao-schema generator: schema, determinism, and the structure models must learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from seqrec import features as F
from seqrec.data import synth

GAP = 600  # the SPEC's session cut: a gap of >= 10 minutes
DAY = 86400


def _read(out, meta) -> pa.Table:
    return pa.concat_tables([pq.read_table(out / f) for f in meta["files"]])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One 200k-row dataset shared by the behaviour tests (about 0.5 s to make)."""
    out = tmp_path_factory.mktemp("synth")
    meta = synth.generate(out, 200_000, seed=7, items=20_000, progress=False)
    df = _read(out, meta).to_pandas()
    return out, meta, df


def _sessions(df: pd.DataFrame) -> pd.DataFrame:
    """Per session (10-minute gap cut): user, start time, length, dominant category and its share."""
    user = df[F.USER_ID].to_numpy()
    ts = df[F.TIMESTAMP].to_numpy()
    new = np.ones(len(df), bool)
    new[1:] = (user[1:] != user[:-1]) | (ts[1:] - ts[:-1] >= GAP)
    sid = np.cumsum(new) - 1
    d = pd.DataFrame({"sid": sid, "cat": df[F.CATEGORY].to_numpy()})
    counts = d.groupby(["sid", "cat"]).size().rename("n").reset_index()
    top = counts.sort_values(["sid", "n"], ascending=[True, False]).drop_duplicates("sid").set_index("sid")
    starts = np.flatnonzero(new)
    s = pd.DataFrame(
        {
            "user": user[starts],
            "start": ts[starts],
            "len": np.diff(np.append(starts, len(df))),
        }
    )
    s["dom"] = top["cat"].to_numpy()
    s["dom_share"] = top["n"].to_numpy() / s["len"].to_numpy()
    return s


# --- schema, counts, meta -------------------------------------------------------------


def test_schema_rows_and_meta(tmp_path):
    meta = synth.generate(tmp_path, 30_001, seed=3, progress=False)
    assert json.loads((tmp_path / "synth.json").read_text()) == meta
    assert meta["format"] == "seqrec-synth" and meta["version"] == 1 and meta["layout"] == "parquet"
    assert meta["files"] == ["events/part-00000.parquet"]
    assert meta["rows"] == 30_001
    assert meta["users"] == 300 and meta["items"] == 1_200
    assert meta["item_side"] == [F.CATEGORY, F.CATE1, F.BRAND, F.SHOP]
    assert meta["user_profile"] == [F.AGE, F.GENDER, F.POWER]
    p = meta["params"]
    for key in ("seed", "rows", "users", "items", "days", "start_ts", "noise", "explore", "item_zipf"):
        assert key in p
    assert (p["seed"], p["rows"], p["days"], p["start_ts"]) == (3, 30_001, 9, 1511539200)

    t = _read(tmp_path, meta)
    assert t.num_rows == 30_001
    expected = {
        F.USER_ID: pa.int64(),
        F.ITEM_ID: pa.int64(),
        F.CATEGORY: pa.int64(),
        F.BEHAVIOR: pa.string(),
        F.TIMESTAMP: pa.int64(),
        F.CATE1: pa.int64(),
        F.BRAND: pa.int64(),
        F.SHOP: pa.int64(),
        F.AGE: pa.int64(),
        F.GENDER: pa.int64(),
        F.POWER: pa.int64(),
    }
    assert {f.name: f.type for f in t.schema} == expected
    df = t.to_pandas()
    assert df[F.USER_ID].nunique() == 300
    assert df[F.ITEM_ID].nunique() <= 1_200
    for c in (F.USER_ID, F.ITEM_ID, F.CATEGORY, F.CATE1, F.BRAND, F.SHOP):
        assert df[c].min() >= 1
    assert set(df[F.BEHAVIOR].unique()) <= {"pv", "fav", "cart", "buy"}
    assert df[F.AGE].between(1, 7).all() and df[F.GENDER].between(1, 2).all() and df[F.POWER].between(1, 3).all()
    # grouped by user, by time inside a user; profile constant per user
    user = df[F.USER_ID].to_numpy()
    ts = df[F.TIMESTAMP].to_numpy()
    change = np.flatnonzero(user[1:] != user[:-1])
    assert len(change) == 299  # each user appears as one contiguous block
    same = user[1:] == user[:-1]
    assert (ts[1:][same] >= ts[:-1][same]).all()
    assert (df.groupby(F.USER_ID)[[F.AGE, F.GENDER, F.POWER]].nunique() == 1).all().all()
    # an item has one category, brand, shop; a leaf category one first-level category
    assert (df.groupby(F.ITEM_ID)[[F.CATEGORY, F.BRAND, F.SHOP]].nunique() == 1).all().all()
    assert (df.groupby(F.CATEGORY)[F.CATE1].nunique() == 1).all()
    assert ts.min() >= 1511539200 and ts.max() < 1511539200 + 9 * DAY


def test_explicit_sizes_and_part_files(tmp_path):
    meta = synth.generate(tmp_path, 25_000, seed=1, users=40, items=3_000, days=3, rows_per_file=10_000, progress=False)
    assert meta["files"] == [f"events/part-{i:05d}.parquet" for i in range(3)]
    sizes = [pq.ParquetFile(tmp_path / f).metadata.num_rows for f in meta["files"]]
    assert sizes == [10_000, 10_000, 5_000]
    df = _read(tmp_path, meta).to_pandas()
    assert df[F.USER_ID].nunique() == 40 and df[F.ITEM_ID].nunique() <= 3_000
    assert df[F.TIMESTAMP].max() < 1511539200 + 3 * DAY
    # a rerun with fewer rows replaces stale part files
    meta2 = synth.generate(tmp_path, 5_000, seed=1, rows_per_file=10_000, progress=False)
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["part-00000.parquet"]
    assert meta2["rows"] == 5_000


# --- determinism --------------------------------------------------------------------


def test_deterministic(tmp_path):
    kw = dict(seed=11, progress=False)
    m1 = synth.generate(tmp_path / "a", 40_000, rows_per_file=1_000_000, **kw)
    m2 = synth.generate(tmp_path / "b", 40_000, rows_per_file=1_000_000, **kw)
    m3 = synth.generate(tmp_path / "c", 40_000, rows_per_file=7_000, **kw)
    m4 = synth.generate(tmp_path / "d", 40_000, seed=12, progress=False)
    a = _read(tmp_path / "a", m1)
    assert a.equals(_read(tmp_path / "b", m2))
    assert len(m3["files"]) == 6
    assert a.equals(_read(tmp_path / "c", m3))
    assert not a.equals(_read(tmp_path / "d", m4))


def test_deterministic_across_chunks(tmp_path, monkeypatch):
    """Several user chunks (small chunk_rows) still give the same events on a rerun and exact counts."""
    monkeypatch.setitem(synth.KNOBS, "chunk_rows", 5_000)
    m1 = synth.generate(tmp_path / "a", 30_000, seed=5, rows_per_file=4_000, progress=False)
    m2 = synth.generate(tmp_path / "b", 30_000, seed=5, rows_per_file=30_000, progress=False)
    a, b = _read(tmp_path / "a", m1), _read(tmp_path / "b", m2)
    assert a.num_rows == 30_000 and a.equals(b)
    assert a.column(F.USER_ID).to_pandas().nunique() == 300


# --- the structure a model can learn --------------------------------------------------


def test_behavior_mix(data):
    _, _, df = data
    share = df[F.BEHAVIOR].value_counts(normalize=True)
    assert share["pv"] == pytest.approx(0.89, abs=0.01)
    assert share["cart"] == pytest.approx(0.055, abs=0.005)
    assert share["fav"] == pytest.approx(0.03, abs=0.005)
    assert share["buy"] == pytest.approx(0.025, abs=0.005)


def test_power_law_popularity(data):
    _, meta, df = data
    freq = np.sort(df[F.ITEM_ID].value_counts().to_numpy())[::-1]
    n_items = meta["items"]
    top1 = freq[: n_items // 100].sum() / freq.sum()
    assert top1 > 0.15, top1  # uniform popularity would give 1%
    # rank-frequency is close to a line on log-log over the head and body
    k = min(len(freq), 2_000)
    x, y = np.log(np.arange(1, k + 1)), np.log(freq[:k])
    slope, icpt = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + icpt)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert -1.5 < slope < -0.4, slope
    assert r2 > 0.9, r2


def test_sessions_shape(data):
    _, _, df = data
    s = _sessions(df)
    assert 4.5 < s["len"].mean() < 7.5, s["len"].mean()
    assert 0.003 < (s["len"] > 50).mean() < 0.03, (s["len"] > 50).mean()
    # gaps inside sessions well under 10 minutes, between sessions well over
    user, ts = df[F.USER_ID].to_numpy(), df[F.TIMESTAMP].to_numpy()
    same = user[1:] == user[:-1]
    gaps = (ts[1:] - ts[:-1])[same]
    inside = gaps[gaps < GAP]
    between = gaps[gaps >= GAP]
    assert np.median(inside) < 120
    assert np.median(between) > 3600
    # the daily rhythm: evenings are busier than small hours (start_ts is local midnight)
    hour = ((ts - 1511539200) // 3600) % 24
    assert (hour >= 19).mean() / 5 > 2 * ((hour >= 2) & (hour < 6)).mean() / 4


def test_sessions_focus_on_one_interest(data):
    _, _, df = data
    s = _sessions(df)
    s = s[s["len"] >= 3]
    share = s["dom_share"].mean()
    # sessions mix a few categories (Taobao: a third of next items have a category new to the session), but one leads
    assert share > 0.5, share
    # versus the same events shuffled across sessions (no focus)
    rng = np.random.default_rng(0)
    shuffled = df.copy()
    shuffled[F.CATEGORY] = rng.permutation(shuffled[F.CATEGORY].to_numpy())
    s0 = _sessions(shuffled)
    assert share > s0[s0["len"] >= 3]["dom_share"].mean() + 0.25


def _seen_before(df: pd.DataFrame, user, cat, t, window: int) -> np.ndarray:
    """For each query (user, cat, t): did the user touch ``cat`` in [t - window, t)? (vectorised)"""
    uc = pd.factorize(np.concatenate([df[F.USER_ID].to_numpy(), user]))[0]
    cc = pd.factorize(np.concatenate([df[F.CATEGORY].to_numpy(), cat]))[0]
    n = len(df)
    t_all = np.concatenate([df[F.TIMESTAMP].to_numpy(), t]) - (df[F.TIMESTAMP].min() - window)
    assert t_all.min() >= 0 and t_all.max() < 2**30
    key = (uc * (cc.max() + 1) + cc) << 30
    ev = np.sort(key[:n] + t_all[:n])
    q_key, q_t = key[n:], t_all[n:]
    return np.searchsorted(ev, q_key + q_t, "left") > np.searchsorted(ev, q_key + q_t - window, "left")


def test_long_term_predicts_next_session(data):
    _, _, df = data
    s = _sessions(df)
    s = s[(s["start"] >= df[F.TIMESTAMP].min() + 2 * DAY) & (s["len"] >= 2)]
    assert len(s) > 1_000
    # a random category drawn by event popularity, for comparison
    cat_pop = df[F.CATEGORY].value_counts(normalize=True)
    popular = np.random.default_rng(1).choice(cat_pop.index.to_numpy(), size=len(s), p=cat_pop.to_numpy())
    u, t = s["user"].to_numpy(), s["start"].to_numpy()
    hit = _seen_before(df, u, s["dom"].to_numpy(), t, 7 * DAY).mean()
    base = _seen_before(df, u, popular, t, 7 * DAY).mean()
    assert hit > 0.8, (hit, base)
    assert hit > base + 0.25, (hit, base)


def test_brands_and_shops_follow_categories(data):
    _, _, df = data
    items = df.drop_duplicates(F.ITEM_ID)
    # a brand sells in a few leaf categories, a shop mostly one brand
    assert items.groupby(F.BRAND)[F.CATEGORY].nunique().mean() < 3
    top_brand_share = items.groupby(F.SHOP)[F.BRAND].agg(lambda b: b.value_counts(normalize=True).iloc[0])
    assert top_brand_share.mean() > 0.8
    # a leaf category belongs to one first-level category, and those number 20..100
    assert 20 <= df[F.CATE1].nunique() <= 100


def test_profile_shapes_interests(data):
    _, _, df = data
    # the category mix differs between genders (per-category gender affinity)
    mix = pd.crosstab(df[F.CATEGORY], df[F.GENDER], normalize="columns")
    tv = 0.5 * (mix[1] - mix[2]).abs().sum()
    assert tv > 0.15, tv


# --- Taobao CSV ---------------------------------------------------------------------


def test_taobao_csv_layout(tmp_path):
    meta = synth.generate(tmp_path, 20_000, seed=2, fmt="taobao-csv", progress=False)
    assert meta["layout"] == "taobao-csv" and meta["files"] == ["UserBehavior.csv"]
    lines = (tmp_path / "UserBehavior.csv").read_text().splitlines()
    assert len(lines) == 20_000
    first = lines[0].split(",")
    assert len(first) == 5 and all(x.isdigit() for x in first[:3] + first[4:])
    t = pacsv.read_csv(
        tmp_path / "UserBehavior.csv",
        read_options=pacsv.ReadOptions(column_names=["u", "i", "c", "b", "t"]),
    )
    assert t.num_columns == 5 and t.num_rows == 20_000
    assert set(t.column("b").to_pylist()) <= {"pv", "fav", "cart", "buy"}
    assert all(pa.types.is_integer(t.schema.field(c).type) for c in "uict")
    # the same events as the Parquet layout, in the same order
    mp = synth.generate(tmp_path / "pq", 20_000, seed=2, progress=False)
    p = _read(tmp_path / "pq", mp)
    assert t.column("i").to_pylist() == p.column(F.ITEM_ID).to_pylist()
    assert t.column("t").to_pylist() == p.column(F.TIMESTAMP).to_pylist()


# --- bad arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=0), r"rows=0 must be >= 1"),
        (dict(rows=-5), r"rows=-5 must be >= 1"),
        (dict(rows=1.5), r"rows=1.5 must be an integer"),
        (dict(rows=100, users=101), r"users=101 > rows=100.*pass users <= rows"),
        (dict(rows=100, users=0), r"users=0 must be >= 1"),
        (dict(rows=100, items=0), r"items=0 must be >= 1"),
        (dict(rows=100, days=0), r"days=0 must be >= 1.*days=9"),
        (dict(rows=100, fmt="csv"), r"fmt='csv' is not a known layout.*'parquet', 'taobao-csv'"),
        (dict(rows=100, rows_per_file=0), r"rows_per_file=0 must be >= 1"),
        (dict(rows=100, seed=-1), r"seed=-1 must be >= 0"),
        (dict(rows=100, start_ts=-1), r"start_ts=-1 must be >= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.generate(tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "synth.json").exists()


def test_tiny(tmp_path):
    meta = synth.generate(tmp_path, 1, seed=0, progress=False)
    assert meta["rows"] == 1 and meta["users"] == 1
    assert _read(tmp_path, meta).num_rows == 1
    meta = synth.generate(tmp_path, 50, users=50, items=5, days=1, progress=False)
    df = _read(tmp_path, meta).to_pandas()
    assert len(df) == 50 and df[F.USER_ID].nunique() == 50 and df[F.ITEM_ID].nunique() <= 5
