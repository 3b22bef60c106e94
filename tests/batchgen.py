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


def random_batch(spec: FeatureSpec, b: int = 3, t: int = 7, l: int = 5, seed: int = 0, lengths=None, lt_lengths=None) -> Batch:  # noqa: E741 - l is the SDM notation L (long-term length)
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


def with_history(batch: Batch, lengths, seed: int = 1, h: int | None = None) -> Batch:
    """``batch`` with a BST history of the given lengths per row (right-padded to ``h``), before each session."""
    g = torch.Generator().manual_seed(seed)
    b = batch.size
    h = h if h is not None else max(max(lengths), 1)
    n_items = int(batch.items.max()) + 1
    pos = torch.arange(h)[None, :] < torch.tensor(lengths)[:, None]
    items = torch.randint(2, max(n_items, 3), (b, h), generator=g) * pos
    start = batch.seq_time[:, :1] - 10_000
    times = (start + torch.cumsum(torch.randint(0, 5000, (b, h), generator=g), 1) - 5000 * h) * pos
    one = batch.select(slice(None))
    one.hist_item, one.hist_time, one.hist_behavior = items, times, pos.long() * 3
    return one


def item_side_table(spec: FeatureSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random item table for a ranker: (N, n_side) side codes (row 1 = unknown) and (N,) counts."""
    g = torch.Generator().manual_seed(seed)
    side = torch.stack([torch.randint(2, f.vocab_size, (spec.n_items,), generator=g) for f in spec.item_side], 1)
    side[0], side[1] = 0, 1
    counts = torch.rand(spec.n_items, generator=g) + 0.1
    counts[:2] = 0
    return side, counts


def category_sessions(spec: FeatureSpec, side: torch.Tensor, b: int, t: int, seed: int) -> Batch:
    """Toy CTR data: each session's items all share one category (side feature 0), the category a
    function of the user's first profile feature (so a model without the sequence can learn it from
    the profile × category cross); no history."""
    g = torch.Generator().manual_seed(seed)
    cats = side[:, 0]
    by_cat = {int(c): (cats == c).nonzero()[:, 0] for c in cats.unique() if c >= 2}
    keys = sorted(k for k, v in by_cat.items() if len(v) >= 2)
    user = {f.name: torch.randint(2, f.vocab_size, (b,), generator=g) for f in spec.user_features}
    profile = user[spec.user_features[1].name]
    rows = []
    for i in range(b):
        pool = by_cat[keys[int(profile[i]) % len(keys)]]
        rows.append(pool[torch.randint(len(pool), (t,), generator=g)])
    items = torch.stack(rows)
    seq = {spec.item_features[0].name: items}
    for j, f in enumerate(spec.item_side):
        seq[f.name] = side[items, j]
    times = 1_600_000_000 + torch.cumsum(torch.randint(1, 300, (b, t), generator=g), 1)
    z = torch.zeros(b, 0, dtype=torch.long)
    lt = {f.name: z for f in spec.item_features}
    return Batch(user=user, seq=seq, seq_len=torch.full((b,), t), seq_time=times, seq_behavior=torch.full((b, t), 2),
                 long_term=lt, hist_item=z, hist_time=z, hist_behavior=z, targets=z, session_start=times[:, 0])
