"""Tiny random feature specs and batches for model tests (distinct sizes so a swapped axis fails)."""

from __future__ import annotations

import torch

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.features import Feature, FeatureSpec


def tiny_spec(n_items: int = 99, profile: bool = True) -> FeatureSpec:
    items = (Feature(F.ITEM_ID, n_items), Feature(F.CATEGORY, 13), Feature(F.BRAND, 11))
    users = (Feature(F.USER_ID, 23),) + ((Feature(F.AGE, 9), Feature(F.GENDER, 4)) if profile else ())
    return FeatureSpec(items, users, Feature(F.BEHAVIOR, 6))


def random_batch(spec: FeatureSpec, b: int = 3, t: int = 7, l: int = 5, seed: int = 0, lengths=None, lt_lengths=None) -> Batch:
    """B rows, T positions with the given lengths (default: T, T-2, 2 ...), long-term subsets of L."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths if lengths is not None else [max(2, t - 2 * i) for i in range(b)])
    lt_lengths = torch.tensor(lt_lengths if lt_lengths is not None else [max(0, l - 2 * i) for i in range(b)])
    pos = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    lt_pos = torch.arange(l)[None, :] < lt_lengths[:, None]  # (B, L)
    seq = {f.name: torch.randint(2, f.vocab_size, (b, t), generator=g) * pos for f in spec.item_features}
    lt = {f.name: torch.randint(2, f.vocab_size, (b, l), generator=g) * lt_pos for f in spec.item_features}
    user = {f.name: torch.randint(2, f.vocab_size, (b,), generator=g) for f in spec.user_features}
    times = torch.cumsum(torch.randint(1, 100, (b, t), generator=g), 1) * pos
    z = torch.zeros(b, 0, dtype=torch.long)
    return Batch(user=user, seq=seq, seq_len=lengths, seq_time=times, seq_behavior=pos.long() * 2, long_term=lt,
                 hist_item=z, hist_time=z, hist_behavior=z, targets=z, session_start=times[:, 0])


def pad_batch(batch: Batch, extra_t: int, extra_l: int) -> Batch:
    """The same rows with ``extra_t`` more padding positions and ``extra_l`` more long-term padding."""
    pad = lambda x, n: torch.cat([x, x.new_zeros(x.shape[0], n)], 1)  # noqa: E731
    return Batch(user=batch.user, seq={k: pad(v, extra_t) for k, v in batch.seq.items()}, seq_len=batch.seq_len,
                 seq_time=pad(batch.seq_time, extra_t), seq_behavior=pad(batch.seq_behavior, extra_t),
                 long_term={k: pad(v, extra_l) for k, v in batch.long_term.items()}, hist_item=batch.hist_item,
                 hist_time=batch.hist_time, hist_behavior=batch.hist_behavior, targets=batch.targets,
                 session_start=batch.session_start)


def prefix_batch(batch: Batch, row: int, t: int) -> Batch:
    """Row ``row`` cut to its first ``t`` events (the paper's per-prefix sample)."""
    one = batch.select(row)
    cut = lambda x: x[:, :t]  # noqa: E731
    return Batch(user=one.user, seq={k: cut(v) for k, v in one.seq.items()}, seq_len=torch.tensor([t]),
                 seq_time=cut(one.seq_time), seq_behavior=cut(one.seq_behavior), long_term=one.long_term,
                 hist_item=one.hist_item, hist_time=one.hist_time, hist_behavior=one.hist_behavior,
                 targets=one.targets, session_start=one.session_start)
