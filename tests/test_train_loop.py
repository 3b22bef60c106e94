"""The shared training loop's batching: every row once per pass, batches of similar session length."""

from __future__ import annotations

import numpy as np

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
