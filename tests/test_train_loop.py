"""The shared training loop's batching: every row once per pass, batches of similar session length."""

from __future__ import annotations

import numpy as np
import torch

from seqrec import features as F
from seqrec.data.prepare import load_manifest, read_split
from seqrec.features import FeatureSpec
from seqrec.train import grouped_batches, length_grouped_batches


def test_length_grouped_batches_cover_every_row_once_with_similar_lengths(tiny_prepared):
    spec = FeatureSpec.from_dict(load_manifest(tiny_prepared)["feature_spec"])
    table = read_split(tiny_prepared, "train")
    n = table.num_rows
    keys = sorted(zip(table[F.USER_RAW].to_pylist(), table[F.SESSION_START].to_pylist()))
    seen, widths = [], []
    for b in length_grouped_batches(table, spec, 16, np.random.default_rng(0), pool=4):
        assert b.size <= 16
        seen += list(zip(b.user[F.USER_ID].tolist(), b.session_start.tolist()))
        widths.append(int(b.seq_len.max() - b.seq_len.min()))
    assert len(seen) == n and len(set(seen)) == len(set(keys))
    # a pool holding every row: each batch is a contiguous run of the sorted lengths
    lengths = np.sort(table[F.SEQ_LEN].to_numpy())
    runs = sorted((b.seq_len.min().item(), b.seq_len.max().item(), b.size)
                  for b in grouped_batches(table, spec, 16, np.random.default_rng(1)))
    starts = np.arange(0, n, 16)
    assert sorted((int(lengths[s]), int(lengths[min(s + 16, n) - 1]), min(16, n - s)) for s in starts) == runs


def test_ray_data_pools_collate_to_the_single_process_batches(tiny_prepared, ray_cluster):
    """The Ray Train ingest path (iter_torch_batches + PoolCollate) streams every row once, in length-grouped,
    self-padded batches, and one pool gives exactly grouped_batches' batches."""
    import ray.data

    from seqrec.train.distributed import PoolCollate

    spec = FeatureSpec.from_dict(load_manifest(tiny_prepared)["feature_spec"])
    table = read_split(tiny_prepared, "train")
    ds = ray.data.read_parquet(str(tiny_prepared / "train"))
    seen = []
    pools = list(ds.iterator().iter_torch_batches(batch_size=64, collate_fn=PoolCollate(spec, 16),
                                                   local_shuffle_buffer_size=128, local_shuffle_seed=3))
    for batches in pools:
        assert sum(b.size for b in batches) <= 64 and all(b.size <= 16 for b in batches)
        lengths = [b.seq_len.tolist() for b in batches]
        assert [ln for run in lengths for ln in run] == sorted(ln for run in lengths for ln in run)  # sorted runs
        for b in batches:
            assert b.items.shape[1] == int(b.seq_len.max())  # padded to the batch's own longest session
            seen += list(zip(b.user[F.USER_ID].tolist(), b.session_start.tolist()))
    assert len(seen) == table.num_rows == len(set(seen))
    pool = table.slice(0, 64)
    order = np.random.default_rng(7).permutation(4)
    mine = PoolCollate(spec, 16)(pool)
    ref = list(grouped_batches(pool, spec, 16, np.random.default_rng(7)))
    for j, b in zip(order, ref):
        assert torch.equal(mine[j].items, b.items) and torch.equal(mine[j].seq_len, b.seq_len)
