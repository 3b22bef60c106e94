"""The Ray Data pipeline gives the same rows, vocabularies and counts as the in-memory path."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from eventgen import PROFILE, SIDE, random_events

from seqrec import features as F
from seqrec.data.events import BadRows, MalformedRowError
from seqrec.data.prepare import load_manifest, prepare, read_split, resolve_config
from seqrec.data.table_source import TableSource

KEY = [(F.USER_RAW, "ascending"), (F.SESSION_START, "ascending"), (F.SEQ_LEN, "ascending")]


def _sorted(t: pa.Table) -> pa.Table:
    return t.take(pc.sort_indices(t, KEY))


def _same_output(a, b):
    for s in ("train", "val", "test"):
        ta, tb = _sorted(read_split(a, s)), _sorted(read_split(b, s))
        assert ta.num_rows == tb.num_rows, s
        assert ta.equals(tb), s
    for name in ("items.parquet", "users.parquet"):
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name
    ma, mb = load_manifest(a), load_manifest(b)
    assert ma["vocab_hash"] == mb["vocab_hash"]
    ca = {k: v for k, v in ma["counts"].items() if k != "buckets"}
    cb = {k: v for k, v in mb["counts"].items() if k != "buckets"}
    assert ca == cb
    assert ma["feature_spec"] == mb["feature_spec"]


@pytest.mark.parametrize("split,string_ids", [("dataset-day", False), ("user-day", True)])
def test_ray_equals_local(tmp_path, ray_cluster, split, string_ids, monkeypatch):
    import seqrec.data.prepare as prepare_mod

    monkeypatch.setattr(prepare_mod, "FOLD_EVERY", 2)  # the driver folds bucket results as they arrive
    table = random_events(21, n_users=150, string_ids=string_ids, session_ids=True)
    src = TableSource(table, SIDE, PROFILE, has_session_id=True, chunk_rows=1500)  # several read tasks
    cfg = resolve_config(src, split=split, min_item_count=3, max_user_events=110, rows_per_bucket=1000)  # several buckets
    m_local = prepare(src, tmp_path / "local", cfg, engine="local", progress=False)
    m_ray = prepare(src, tmp_path / "ray", cfg, engine="ray", progress=False)
    assert m_ray["counts"]["buckets"] > 1
    assert len(list((tmp_path / "ray" / "train").glob("*.parquet"))) == m_ray["counts"]["buckets"]
    assert not (tmp_path / "ray" / "_tmp").exists()
    assert m_local["counts"]["train_rows"] > 100
    _same_output(tmp_path / "local", tmp_path / "ray")


def test_manifest_accounts_for_every_event(tmp_path, ray_cluster):
    table = random_events(4, n_users=120)
    src = TableSource(table, SIDE, PROFILE, chunk_rows=2000)
    cfg = resolve_config(src, split="dataset-day", min_item_count=4, max_user_events=100, time_range=(0, 1_512_000_000),
                         behaviors=("pv", "cart", "buy"), rows_per_bucket=1000)
    m = prepare(src, tmp_path / "out", cfg, engine="ray", progress=False)
    c = m["counts"]
    assert c["rows_read"] == table.num_rows
    # every event read is either removed by a named filter or kept
    removed = c["removed_time_range"] + c["removed_behavior"] + c["events_removed_max_user_events"] + c["events_removed_min_item_count"]
    assert c["rows_read"] - c["rows_rejected"] - removed == c["events_after_filters"]
    # every kept event is in exactly one window
    assert c["events_train_window"] + c["events_val_window"] + c["events_test_window"] == c["events_after_filters"]
    # the manifest lists every shard with its row count, and hashes are present
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["files"]["train/part-00000.parquet"]["rows"] >= 0
    assert sum(v["rows"] for k, v in on_disk["files"].items() if k.startswith("train/")) == c["train_rows"]
    assert len(m["content_hash"]) == 64
    spec = F.FeatureSpec.from_dict(m["feature_spec"])
    assert [f.name for f in spec.item_features] == [F.ITEM_ID, *SIDE]
    assert [f.name for f in spec.user_features] == [F.USER_ID, *PROFILE]
    items = pq.read_table(tmp_path / "out" / "items.parquet")
    assert items.num_rows == spec.n_items
    assert items["code"].to_pylist() == list(range(spec.n_items))


def test_bad_rows_error_and_quarantine(tmp_path, ray_cluster):
    table = random_events(6, n_users=30)
    ts = table[F.TIMESTAMP].to_numpy().copy()
    ts[[5, 17]] = -1
    bad = table.set_column(table.schema.get_field_index(F.TIMESTAMP), F.TIMESTAMP, pa.array(ts))
    src = TableSource(bad, SIDE, PROFILE, chunk_rows=10)
    with pytest.raises(MalformedRowError, match=r"<memory>:6: .*--bad-rows=quarantine"):
        prepare(src, tmp_path / "err", resolve_config(src, min_item_count=1), engine="ray", progress=False)
    m = prepare(src, tmp_path / "q", resolve_config(src, min_item_count=1, bad_rows=BadRows.QUARANTINE), engine="ray", progress=False)
    assert m["counts"]["rows_rejected"] == 2
    rej = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "q" / "rejects").glob("*.parquet"))])
    assert rej["line"].to_pylist() == [6, 18]


def test_existing_output_needs_overwrite(tmp_path):
    src = TableSource(random_events(7, n_users=10), SIDE, PROFILE)
    prepare(src, tmp_path / "o", engine="local", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(src, tmp_path / "o", engine="local", progress=False)
    prepare(src, tmp_path / "o", engine="local", progress=False, overwrite=True)


def test_ray_equals_local_on_synthetic_data(tmp_path, ray_cluster):
    from seqrec.data.loaders import open_source
    from seqrec.data.synth import generate

    generate(tmp_path / "syn", 40_000, seed=5, rows_per_file=15_000, progress=False)  # 3 files → 3 read tasks
    src = open_source(str(tmp_path / "syn"))
    cfg = resolve_config(src, rows_per_bucket=12_000)  # 4 buckets
    m_local = prepare(src, tmp_path / "local", cfg, engine="local", progress=False)
    m_ray = prepare(src, tmp_path / "ray", cfg, engine="ray", progress=False)
    assert m_ray["counts"]["buckets"] >= 3
    assert m_local["counts"]["test_rows"] > 50 and m_local["counts"]["train_rows"] > 1000
    _same_output(tmp_path / "local", tmp_path / "ray")


def test_everything_filtered_is_a_clear_error(tmp_path):
    src = TableSource(random_events(8, n_users=10), SIDE, PROFILE)
    with pytest.raises(ValueError, match="no events are left after the filters.*--min-item-count"):
        prepare(src, tmp_path / "a", resolve_config(src, min_item_count=10_000), engine="local", progress=False)
    with pytest.raises(ValueError, match="no events left after reading and row filters"):
        prepare(src, tmp_path / "b", resolve_config(src, time_range=(0, 10)), engine="local", progress=False)


def test_empty_training_window_is_not_a_crash(tmp_path):
    # every event on the dataset's last day: no training events, so every vocabulary is empty and
    # the test rows hold only unknown codes; prepare must still write a consistent dataset
    t = pa.table({F.USER_ID: pa.array([1, 1, 1], pa.int64()), F.ITEM_ID: pa.array([5, 6, 7], pa.int64()),
                  F.TIMESTAMP: pa.array([1_511_600_000, 1_511_600_060, 1_511_600_120], pa.int64()),
                  F.BEHAVIOR: pa.array(["pv", "pv", "buy"])})
    m = prepare(TableSource(t), tmp_path / "o", resolve_config(TableSource(t), min_item_count=1), engine="local", progress=False)
    assert m["counts"]["train_rows"] == 0 and m["counts"]["events_test_window"] == 3
    row = read_split(tmp_path / "o", "test").to_pylist()[0]
    assert row[F.seq_col(F.ITEM_ID)] == [F.UNKNOWN] and row[F.TARGETS] == [F.UNKNOWN, F.UNKNOWN]
