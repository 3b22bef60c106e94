"""Pieces every ranking model (BST, WDL, WDL(+Seq), DIN) shares: samples, "other features", the MLP, the interface.

Notation: B session rows, R contexts (one user at one moment), C candidates per context, S behaviour
window (BST: the last 20 behaviours), E token size (item id + sequence side features), N items.

A ranker scores (context, candidate) pairs: the context is a user's last S behaviours before a
moment, the profile and the moment itself; the candidate is an item. Both training and
inference go through :class:`RankInput`, built from the one batch schema (:class:`seqrec.batch.Batch`):

* training (``model(batch)``): every position t of every session row is a context; its positive
  candidate is the item at t (label 1), its negatives are items drawn from the training
  popularity (label 0); the window is the last S behaviours before t (the row's BST history,
  then the session up to t-1), the moment is the time of the last behaviour of the window
  (``moment="last"``, the default) or the positive's own timestamp (``moment="target"``, BST
  §2.1's t(v_t)). The default matches inference, which knows only the events so far: a model
  trained on the clicks' own times saw gaps that never occur at inference (synthetic data: val AUC
  0.827 with ``target`` vs 0.837 with ``last``, BST 6 epochs).
  Samples are generated on the fly from session rows: no per-sample table is stored or re-read.
* inference (``model.score(batch, candidates)``): each row is one context (its whole input:
  history then session) scoring C given candidates at the time of its last event (serving: the
  request). The context part (profile, window, context features) is encoded once per row and
  shared by all its candidates.

The item side features of any item code (its category, brand, ...) come from an item table held
by the model (buffer ``item_side``, filled from the prepared dataset's ``items.parquet`` by
:meth:`Ranker.set_item_table`), so a window of bare item ids — a BST history, a serving request —
gets its categories the same way everywhere.

"Other features" (BST Table 1): user profile, candidate item features, context (hour of day,
weekday, behaviour of the last event) and hashed cross features (profile × candidate category,
first profile feature × candidate item id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.features import FeatureSpec
from seqrec.models.common import LossOutput, ModelConfig
from seqrec.models.itemcf import ItemCF, ItemCFConfig

TIME_BUCKETS = 40  # 0 = padding, 1 = same second, k = 2 + floor(log2(gap in s)) up to ~8,700 years
HOURS, WEEKDAYS = 24, 7
MOMENTS = ("target", "last")
LOSSES = ("bce", "listwise")
POSITIVES = ("next", "window")
MATCH_BUCKETS = 17  # matcher rank r → 1 + floor(log2(r + 1)), capped; 0 = no matcher score (a popularity negative)
COVISIT = ItemCFConfig()  # the item-CF table behind ``covisit``: the SDM paper's baseline settings (seqrec.models.itemcf)


def widths(value, name: str) -> tuple[int, ...]:
    """Layer widths from a sequence or a string such as ``"1024-512-256"`` (how model entries on the CLI spell it)."""
    if isinstance(value, int):
        value = (value,)
    if isinstance(value, str):
        value = [v for v in value.replace("x", "-").replace("/", "-").strip("[]()").replace(",", "-").split("-") if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected layer widths such as 1024-512-256") from None


@dataclass
class RankConfig(ModelConfig):
    """Options every ranker has. ``features`` is the dataset's feature spec (manifest)."""

    features: FeatureSpec
    window: int = 20  # S: behaviours before the candidate (BST Table 3: sequence length 20)
    id_dim: int = 32  # item-id embedding size in the sequence tokens
    side_dim: int = 16  # size of each sequence side feature embedding (BST: category_id)
    seq_side: int = 1  # item side features in a sequence token: the first ``seq_side`` of the spec (BST: 1 = category)
    other_dim: int = 16  # embedding size of each "other feature"
    mlp: tuple = (1024, 512, 256)  # BST Table 3
    dropout: float = 0.2
    negatives: int = 1  # popularity-sampled negatives per positive in training
    hard_negatives: int = 0  # extra negatives per positive from a matcher's top items (needs set_negative_source)
    cross_buckets: int = 1 << 14  # hash buckets of each cross feature
    tz_offset_s: int = 0  # local time offset for the hour/weekday context features (from the manifest)
    moment: str = "last"  # training samples' recommendation time: last = the last behaviour's | target = the positive's own (BST §2.1)
    loss: str = "bce"  # bce: pointwise binary cross-entropy (BST eq. 9) | listwise: softmax over each position's candidates
    match_features: bool = False  # the matcher's rank and score gap of each candidate as features, and the gap in the logit
    cascade_negatives: int = 10  # on cascade rows: negatives per positive drawn from the matcher's candidates
    covisit: bool = False  # the candidate's item-CF co-visitation score with the latest behaviours (a cross feature), and in the logit
    # on cascade rows: next = the item at t is the position's one positive | window = also every stored candidate the
    # user interacts with later in the label window (the rest of the session; stored by CascadeConfig(positives="window"))
    positives: str = "next"
    window_positives: int = 10  # positives="window": at most this many label-window candidates per position (a uniform draw)
    # whether the candidate is among the context's behaviours before the moment (its whole stream: BST history, then
    # the session): an embedded 0/1 feature and a learned weight in the logit (0 at the start), as for covisit
    seen: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            self.features = FeatureSpec.from_dict(self.features)
        self.mlp = widths(self.mlp, "mlp")
        if self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1 behaviours")
        if min(self.id_dim, self.side_dim, self.other_dim) < 1:
            raise ValueError(f"embedding sizes must be >= 1, got id_dim={self.id_dim}, side_dim={self.side_dim}, "
                             f"other_dim={self.other_dim}")
        if not 0 <= self.seq_side <= len(self.features.item_side):
            raise ValueError(
                f"seq_side={self.seq_side}: the dataset has {len(self.features.item_side)} item side features "
                f"{[f.name for f in self.features.item_side]}; use 0..{len(self.features.item_side)}"
            )
        if not self.mlp or min(self.mlp) < 1:
            raise ValueError(f"mlp={self.mlp} must list >= 1 positive layer widths, e.g. (1024, 512, 256)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.negatives < 0 or self.cascade_negatives < 0:
            raise ValueError(f"negatives={self.negatives} and cascade_negatives={self.cascade_negatives} must be >= 0")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; choose one of {LOSSES}")
        if self.hard_negatives < 0:
            raise ValueError(f"hard_negatives={self.hard_negatives} must be >= 0")
        if self.cross_buckets < 2:
            raise ValueError(f"cross_buckets={self.cross_buckets} must be >= 2")
        if self.features.n_items <= F.FIRST_CODE:
            raise ValueError(f"the feature spec has no items (item_id vocab_size={self.features.n_items})")
        if self.moment not in MOMENTS:
            raise ValueError(f"moment={self.moment!r}; choose one of {MOMENTS}")
        if self.positives not in POSITIVES:
            raise ValueError(f"positives={self.positives!r}; choose one of {POSITIVES}")
        if self.window_positives < 1:
            raise ValueError(f"window_positives={self.window_positives} must be >= 1")


@dataclass
class RankInput:
    """R contexts × C candidates, the input of every ranker.

    user:          {user feature: (R,)} codes (user_id first, then profile)
    window:        (R, S) item codes of the last S behaviours, oldest first, LEFT-padded with 0
    window_time:   (R, S) int64 timestamps of ``window``
    last_behavior: (R,) behaviour code of the most recent behaviour (0 if the window is empty)
    time:          (R,) int64 the moment of the recommendation
    candidates:    (R, C) item codes; 0 = padding (scored, but ignored by the loss)
    labels:        (R, C) float 0/1 (training and evaluation), or None
    match_rank:    (R, C) int64 the matcher's rank of each candidate (-1: none), or None (:func:`match_inputs`)
    match_gap:     (R, C) float32 its matcher score minus the matcher's first item's score (<= 0), or None
    covisit:       (R, C) float32 its co-visitation score with the latest behaviours (:func:`covisit_scores`), or None
    seen:          (R, C) float32 1 where it is among the context's behaviours (:func:`seen_before`), or None
    """

    user: dict[str, torch.Tensor]
    window: torch.Tensor
    window_time: torch.Tensor
    last_behavior: torch.Tensor
    time: torch.Tensor
    candidates: torch.Tensor
    labels: torch.Tensor | None = None
    match_rank: torch.Tensor | None = None
    match_gap: torch.Tensor | None = None
    covisit: torch.Tensor | None = None
    seen: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.window.shape[0])


def behaviour_stream(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's behaviours as one left-aligned stream: BST history, then the session.

    Returns (items, times, behaviours) (B, H+T) zero-padded on the right, the history lengths (B,)
    and the total lengths (B,).
    """
    hist_len = (batch.hist_item != F.PAD).sum(1)  # (B,)
    seq_len = batch.seq_len
    b, h = batch.hist_item.shape
    t = batch.items.shape[1]
    idx = torch.arange(h + t, device=seq_len.device)[None, :].expand(b, -1)  # (B, H+T)
    from_hist = idx < hist_len[:, None]
    seq_idx = (idx - hist_len[:, None]).clamp(0, max(t - 1, 0))
    valid = idx < (hist_len + seq_len)[:, None]

    def merge(hist: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        s = seq.gather(1, seq_idx) if t else torch.zeros_like(idx)
        if h:
            s = torch.where(from_hist, hist.gather(1, idx.clamp(max=h - 1)), s)
        return s * valid

    return (
        merge(batch.hist_item, batch.items),
        merge(batch.hist_time, batch.seq_time),
        merge(batch.hist_behavior, batch.seq_behavior),
        hist_len,
        hist_len + seq_len,
    )


def windows(stream: tuple[torch.Tensor, ...], rows: torch.Tensor, ends: torch.Tensor, size: int):
    """The ``size`` behaviours before stream position ``ends`` (exclusive) of ``rows``, left-padded.

    Returns (items, times) (P, S) and the last behaviour's code (P,).
    """
    items, times, behav = stream[:3]
    offs = ends[:, None] - size + torch.arange(size, device=ends.device)[None, :]  # (P, S)
    ok = offs >= 0
    offs = offs.clamp_min(0)
    w_items = items[rows[:, None], offs] * ok
    w_times = times[rows[:, None], offs] * ok
    last = torch.where(ends > 0, behav[rows, (ends - 1).clamp_min(0)], torch.zeros_like(ends))
    return w_items, w_times, last


def seen_before(stream: tuple[torch.Tensor, ...], rows: torch.Tensor, ends: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(P, C) 1.0 where a candidate is among the behaviours of stream row ``rows`` before position ``ends``
    (exclusive: the whole stream so far, not only the window), else 0; padding candidates (< 2) are 0."""
    items = stream[0][rows]  # (P, L)
    before = torch.arange(items.shape[1], device=items.device)[None, :] < ends[:, None]
    hit = ((candidates[:, :, None] == items[:, None, :]) & before[:, None, :]).any(-1)
    return (hit & (candidates >= F.FIRST_CODE)).float()


def match_inputs(scores: torch.Tensor, ranks: torch.Tensor | None = None,
                 top: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The matcher's view of each candidate: the one definition training, offline evaluation and serving share.

    ``scores`` (R, C) are the candidates' matcher scores; without ``ranks`` the candidates are the matcher's
    list in its order (rank = column), and ``top`` (R,), the matcher's first score, is column 0's. Returns
    (rank (R, C) int64, gap (R, C) float32 = score - top, 0 where the score is not finite)."""
    if ranks is None:
        ranks = torch.arange(scores.shape[1], device=scores.device)[None, :].expand(scores.shape)
    if top is None:
        top = scores[:, 0]
    gap = scores.float() - top.float()[:, None]
    return ranks.long(), torch.where(torch.isfinite(gap), gap, torch.zeros_like(gap))


DENSE_COVISIT = 1 << 25  # a catalogue of N items with N² <= this keeps its item-CF table dense (N <= 5792: <= 128 MB)


def covisit_table(neighbors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The item-CF table in the form :func:`covisit_scores` reads fastest: dense (N, N) similarities when
    N² <= ``DENSE_COVISIT`` (a score is then 1 gather per trigger and candidate), else the sparse top-K
    ``(neighbors, weights)`` (N, K) as :class:`seqrec.models.itemcf.ItemCF` keeps them."""
    n = neighbors.shape[0]
    if n * n > DENSE_COVISIT:
        return neighbors, weights
    dense = torch.zeros(n, n, dtype=torch.float32, device=weights.device)
    dense.scatter_add_(1, neighbors.long(), weights.float())  # padding slots add 0 to column 0
    dense[:, : F.FIRST_CODE] = 0.0
    return dense


def covisit_scores(table, triggers: torch.Tensor, candidates: torch.Tensor, decay: float) -> torch.Tensor:
    """(R, C) item-CF scores of ``candidates`` (R, C) given ``triggers`` (R, n) item codes, most recent LAST
    (left-padded with 0): ``sum_age decay**age * sim(trigger of that age, candidate)``, ``table`` from
    :func:`covisit_table` — the same number ``ItemCF.scores`` gives (``tests/test_covisit.py``). Padding and
    unknown triggers and candidates score 0.

    Written here rather than calling ``ItemCF.scores``: that one is numpy over the whole catalogue per row; this
    one is torch, on the model's device, and scores only the given candidates. With the sparse table, rows are
    scattered into dense (rows, N) buffers in chunks of <= 2^24 cells, so memory stays bounded."""
    r, n = triggers.shape
    age = torch.arange(n - 1, -1, -1, device=triggers.device, dtype=torch.float32)  # most recent (last) has age 0
    decay_w = (float(decay) ** age)[None, :] * (triggers >= F.FIRST_CODE)  # (R, n)
    candidates = candidates.long()
    if isinstance(table, torch.Tensor):  # dense (N, N)
        sims = table[triggers.long()[:, :, None], candidates[:, None, :]]  # (R, n, C)
        out = (sims * decay_w[..., None]).sum(1)
        return out.masked_fill(candidates < F.FIRST_CODE, 0.0)
    neighbors, weights = table
    nb = neighbors[triggers].long()  # (R, n, K)
    w = weights[triggers].float() * decay_w[..., None]
    n_items = neighbors.shape[0]
    out = torch.zeros(candidates.shape, dtype=torch.float32, device=candidates.device)
    step = max(1, (1 << 24) // max(n_items, 1))
    for a in range(0, r, step):
        buf = torch.zeros(min(step, r - a), n_items, dtype=torch.float32, device=candidates.device)
        buf.scatter_add_(1, nb[a:a + step].flatten(1), w[a:a + step].flatten(1))
        buf[:, : F.FIRST_CODE] = 0.0
        out[a:a + step] = buf.gather(1, candidates[a:a + step])
    return out


def floor_log2(x: torch.Tensor, top: int) -> torch.Tensor:
    """min(floor(log2(x)), top) for integers x >= 1 (0 for x < 2), exactly: the count of powers 2, 4, ..., 2^top
    that x reaches. Integer comparisons, not a float log: ONNX Runtime's log2 (ln x / ln 2) puts exact powers of two
    one bucket low."""
    powers = torch.pow(2, torch.arange(1, top + 1, device=x.device, dtype=torch.int64))
    return (x.long()[..., None] >= powers).sum(-1)


def match_buckets(rank: torch.Tensor) -> torch.Tensor:
    """Matcher rank → log-scale bucket: 1 + floor(log2(rank + 1)) up to ``MATCH_BUCKETS - 1``; rank < 0 → 0 (none)."""
    b = 1 + floor_log2(rank.clamp_min(0) + 1, MATCH_BUCKETS - 2)
    return torch.where(rank < 0, torch.zeros_like(b), b)


def time_buckets(gap: torch.Tensor, n: int = TIME_BUCKETS) -> torch.Tensor:
    """Seconds between a behaviour and the candidate → log-scale bucket (BST §2.1 positional feature).

    1 = same second (or a negative gap from clock skew), k = 2 + floor(log2(gap)) for gap >= 1 s,
    capped at n - 1; 0 is left for padding.
    """
    g = gap.long()
    return torch.where(g >= 1, 2 + floor_log2(g.clamp_min(1), n - 3), torch.ones_like(g))


def hash_cross(a: torch.Tensor, b: torch.Tensor, salt: int | torch.Tensor, buckets: int) -> torch.Tensor:
    """Deterministic hash of a pair of codes into [0, buckets) (no int64 overflow for codes < 2^31)."""
    x = (a * 1_000_003 + b) * 31 + salt  # < 2^63 for codes < 2^31
    x = (x ^ (x >> 17)) % 2_147_483_629  # fold to < 2^31, then mix once more
    x = (x * 40_503) ^ (x >> 13)
    return x % buckets


class OtherFeatures(nn.Module):
    """BST's "Other Features": embeddings of profile, context, candidate item and cross features.

    ``context(inp) -> (R, Pc)`` holds what is shared by a context's candidates (profile, hour,
    weekday, last behaviour); ``candidate(inp, side) -> (R, C, Pk)`` what depends on the
    candidate (its item features and the crosses). ``wide`` gives each of those sparse features a
    scalar weight as well (the wide part of WDL).
    """

    def __init__(self, config: RankConfig, wide: bool = False):
        super().__init__()
        c, spec = config, config.features
        d = c.other_dim
        self.profile = [f.name for f in (spec.user_profile or spec.user_features[:1])]
        self.side = [f.name for f in spec.item_side]
        self.buckets, self.tz = c.cross_buckets, c.tz_offset_s
        vocab = {f.name: f.vocab_size for f in spec.user_features + spec.item_features}
        # cross features: every profile feature × the candidate's first side feature (BST: gender ×
        # category_id), and the first profile feature × the candidate item id (BST: age × item_id)
        self.crosses = [(p, self.side[0]) for p in self.profile] if self.side else []
        self.crosses.append((self.profile[0], F.ITEM_ID))
        sizes = {
            **{f"user:{p}": vocab[p] for p in self.profile},
            "ctx:hour": HOURS + 1,
            "ctx:weekday": WEEKDAYS + 1,
            "ctx:behavior": spec.behavior.vocab_size,
            **{f"item:{s}": vocab[s] for s in self.side},
            **{f"cross:{p}*{q}": c.cross_buckets for p, q in self.crosses},
        }
        self.deep = nn.ModuleDict({k.replace(":", "_").replace("*", "_x_"): nn.Embedding(n, d) for k, n in sizes.items()})
        self.wide = nn.ModuleDict({k.replace(":", "_").replace("*", "_x_"): nn.Embedding(n, 1) for k, n in sizes.items()}) if wide else None
        if wide:
            self.wide_item = nn.Embedding(spec.n_items, 1)  # the candidate id itself, a wide-only feature
            for t in list(self.wide.values()) + [self.wide_item]:
                nn.init.zeros_(t.weight)
        self.context_keys = [k for k in sizes if k.startswith(("user:", "ctx:"))]
        self.candidate_keys = [k for k in sizes if k.startswith(("item:", "cross:"))]
        self.context_dim = d * len(self.context_keys)
        self.candidate_dim = d * len(self.candidate_keys)
        self.match = c.match_features
        if self.match:  # the matcher's rank (bucketed) and score gap of each candidate
            self.match_rank = nn.Embedding(MATCH_BUCKETS, d)
            self.match_gap = nn.Linear(1, d)
            self.candidate_dim += 2 * d
            if wide:
                self.wide_match = nn.Embedding(MATCH_BUCKETS, 1)
                nn.init.zeros_(self.wide_match.weight)
        self.covisit = c.covisit
        if self.covisit:  # log(1 + score) and whether the candidate has any co-visitation with the behaviours
            self.covisit_feature = nn.Linear(2, d)
            self.candidate_dim += d
        self.seen = c.seen
        if self.seen:  # whether the candidate is among the behaviours so far
            self.seen_feature = nn.Embedding(2, d)
            self.candidate_dim += d

    @staticmethod
    def _key(k: str) -> str:
        return k.replace(":", "_").replace("*", "_x_")

    def _context_codes(self, inp: RankInput) -> dict[str, torch.Tensor]:
        local = inp.time + self.tz
        codes = {f"user:{p}": inp.user[p] for p in self.profile}
        codes["ctx:hour"] = torch.div(local, 3600, rounding_mode="floor") % HOURS + 1
        codes["ctx:weekday"] = (torch.div(local, 86400, rounding_mode="floor") + 3) % WEEKDAYS + 1  # 1 = Monday
        codes["ctx:behavior"] = inp.last_behavior
        return codes  # each (R,)

    def cross_codes(self, inp: RankInput, side: torch.Tensor) -> torch.Tensor:
        """(R, C, X) the hashed code of each cross feature of each candidate; side: (R, C, n_side) its side codes."""
        users = torch.stack([inp.user[p] for p, _ in self.crosses], -1)[:, None, :]  # (R, 1, X)
        others = torch.stack([inp.candidates if q == F.ITEM_ID else side[..., self.side.index(q)] for _, q in self.crosses], -1)
        salts = torch.arange(len(self.crosses), device=others.device)  # cross j's salt is j
        return hash_cross(users, others, salts, self.buckets)  # one elementwise pass over all crosses

    def _candidate_codes(self, inp: RankInput, side: torch.Tensor) -> dict[str, torch.Tensor]:
        """side: (R, C, n_side) side codes of the candidates."""
        codes = {f"item:{s}": side[..., i] for i, s in enumerate(self.side)}
        crosses = self.cross_codes(inp, side)
        for j, (p, q) in enumerate(self.crosses):
            codes[f"cross:{p}*{q}"] = crosses[..., j]
        return codes  # each (R, C)

    def context(self, inp: RankInput) -> torch.Tensor:
        codes = self._context_codes(inp)
        return torch.cat([self.deep[self._key(k)](codes[k]) for k in self.context_keys], dim=-1)  # (R, Pc)

    def _match(self, inp: RankInput) -> tuple[torch.Tensor, torch.Tensor]:
        if inp.match_rank is None or inp.match_gap is None:
            raise ValueError("this ranker reads the matcher's rank and score of each candidate (match_features=True): "
                             "score the matcher's candidates with their scores (score(batch, candidates, match=scores)) "
                             "and train it on cascade rows (seqrec data candidates)")
        return match_buckets(inp.match_rank), inp.match_gap

    def candidate(self, inp: RankInput, side: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.candidate_keys:
            codes = self._candidate_codes(inp, side)
            parts += [self.deep[self._key(k)](codes[k]) for k in self.candidate_keys]
        if self.match:
            bucket, gap = self._match(inp)
            parts += [self.match_rank(bucket), self.match_gap(gap[..., None])]
        if self.covisit:
            if inp.covisit is None:
                raise ValueError("this ranker reads each candidate's co-visitation score (covisit=True): build its input "
                                 "with training_input / inference_input")
            parts.append(self.covisit_feature(torch.stack([torch.log1p(inp.covisit), (inp.covisit > 0).float()], -1)))
        if self.seen:
            if inp.seen is None:
                raise ValueError("this ranker reads whether each candidate is among the behaviours (seen=True): build its "
                                 "input with training_input / inference_input")
            parts.append(self.seen_feature(inp.seen.long()))
        if not parts:
            return side.new_zeros(*inp.candidates.shape, 0, dtype=torch.float32)
        return torch.cat(parts, dim=-1)  # (R, C, Pk)

    def wide_logit(self, inp: RankInput, side: torch.Tensor) -> torch.Tensor:
        """(R, C) the wide part: a weight per sparse feature value and per candidate id, summed."""
        ctx = self._context_codes(inp)
        cand = self._candidate_codes(inp, side)
        out = self.wide_item(inp.candidates)[..., 0]
        out = out + sum(self.wide[self._key(k)](v)[..., 0] for k, v in ctx.items())[:, None]
        if self.match:
            out = out + self.wide_match(self._match(inp)[0])[..., 0]
        return out + sum(self.wide[self._key(k)](v)[..., 0] for k, v in cand.items())


class MLPHead(nn.Module):
    """MLP over concat(context part, candidate part) → logit, LeakyReLU between layers (BST §2.3).

    The first layer is split into a context half, computed once per context, and a candidate
    half, computed per candidate; their sum equals one Linear over the concatenation, and scoring
    300 candidates of one user does not redo the user's half 300 times.
    """

    def __init__(self, context_dim: int, candidate_dim: int, widths: tuple, dropout: float):
        super().__init__()
        h = widths[0]
        self.first_context = nn.Linear(context_dim, h) if context_dim else None
        self.first_candidate = nn.Linear(candidate_dim, h, bias=context_dim == 0)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.LeakyReLU(), nn.Dropout(dropout), nn.Linear(a, b)]
        layers += [nn.LeakyReLU(), nn.Dropout(dropout), nn.Linear(widths[-1], 1)]
        self.rest = nn.Sequential(*layers)

    def forward(self, context: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """context (R, Pc), candidate (R, C, Pk) → (R, C) logits."""
        z = self.first_candidate(candidate)
        if self.first_context is not None:
            z = z + self.first_context(context)[:, None, :]
        return self.rest(z)[..., 0]


class TokenEmbedding(nn.Module):
    """A behaviour token: concat(item-id embedding, embeddings of the first ``seq_side`` side features)."""

    def __init__(self, config: RankConfig):
        super().__init__()
        spec = config.features
        self.side_names = [f.name for f in spec.item_side[: config.seq_side]]
        self.item = nn.Embedding(spec.n_items, config.id_dim, padding_idx=F.PAD)
        self.side = nn.ModuleList(nn.Embedding(f.vocab_size, config.side_dim, padding_idx=F.PAD) for f in spec.item_side[: config.seq_side])
        self.dim = config.id_dim + config.side_dim * config.seq_side
        for t in [self.item, *self.side]:
            nn.init.normal_(t.weight, std=t.embedding_dim**-0.5)
            with torch.no_grad():
                t.weight[F.PAD].zero_()

    def forward(self, items: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """items (...,), side (..., n_side) → (..., E)."""
        parts = [self.item(items)] + [emb(side[..., i]) for i, emb in enumerate(self.side)]
        return torch.cat(parts, dim=-1)


class Ranker(nn.Module):
    """Base of every ranker: subclasses implement :meth:`encode` (the sequence part).

    ``forward(batch)`` is the training loss (binary cross-entropy, BST eq. 9) on samples generated
    from session rows, so DDP wrappers see a forward call and the shared training loop
    (``seqrec.train``) trains rankers and matchers alike. ``score(batch, candidates) -> (B, C)``
    gives logits for inference; ``logits(inp) -> (R, C)`` works on a prepared :class:`RankInput`.
    """

    config: RankConfig
    name: str = "ranker"
    wide: bool = False  # WDL's wide part
    # what computes score()'s logits instead of logits() (None: PyTorch): seqrec.inference.with_precision's int8 runtime
    runtime = None

    def __init__(self, config: RankConfig):
        super().__init__()
        self.config = config
        spec = config.features
        self.n_side = len(spec.item_side)
        # item code → side codes (N, n_side) and training popularity (N,): saved with the model,
        # filled from items.parquet by set_item_table() before training
        self.register_buffer("item_side", torch.zeros(spec.n_items, self.n_side, dtype=torch.int32), persistent=True)
        self.register_buffer("item_counts", torch.zeros(spec.n_items), persistent=True)
        self.tokens = TokenEmbedding(config)
        self.other = OtherFeatures(config, wide=self.wide)
        if config.match_features:
            # the matcher's score gap enters the logit directly, weighted (1 at the start): the ranker starts from the
            # matcher's order (its scores are a softmax model's logits) and learns what to change about it
            self.match_weight = nn.Parameter(torch.ones(()))
        if config.covisit:
            # the item-CF table (N, K) of the training split (set_covisitation; saved with the model), and the weight
            # of log(1 + co-visitation score) in the logit (0 at the start: the ranker starts from the matcher's order)
            k = COVISIT.top_neighbors
            self.register_buffer("covisit_neighbors", torch.zeros(spec.n_items, k, dtype=torch.int32), persistent=True)
            self.register_buffer("covisit_weights", torch.zeros(spec.n_items, k), persistent=True)
            self.covisit_weight = nn.Parameter(torch.zeros(()))
        if config.seen:  # the weight of "already among the behaviours" in the logit (0 at the start)
            self.seen_weight = nn.Parameter(torch.zeros(()))

    # --- item table -----------------------------------------------------------------------------
    def set_item_table(self, side: torch.Tensor, counts: torch.Tensor) -> None:
        """side (N, n_side) codes of every item's side features; counts (N,) training-window counts."""
        side = torch.as_tensor(side).to(torch.int32)
        counts = torch.as_tensor(counts, dtype=torch.float32).flatten()
        n = self.config.features.n_items
        if tuple(side.shape) != (n, self.n_side) or counts.shape[0] != n:
            raise ValueError(
                f"item table shapes side={tuple(side.shape)} counts={tuple(counts.shape)} do not match the "
                f"model's {n} items × {self.n_side} side features; pass the same dataset's items.parquet"
            )
        self.item_side.copy_(side)
        self.item_counts.copy_(counts)

    def set_covisitation(self, cf: ItemCF) -> None:
        """The item-CF similarity table behind the ``covisit`` feature: an :class:`ItemCF` fitted on the training
        split with the settings ``COVISIT`` (what ``seqrec.train.factory.build`` does)."""
        if not self.config.covisit:
            raise ValueError("set_covisitation on a ranker without covisit=True")
        if cf.neighbors is None or cf.config != COVISIT:
            raise ValueError(f"the co-visitation table must be an ItemCF fitted with {COVISIT}, got {cf.config}")
        if cf.n_items != self.config.features.n_items:
            raise ValueError(f"the item-CF table has {cf.n_items} items, the model {self.config.features.n_items}: "
                             "fit it on the same dataset")
        self.covisit_neighbors.copy_(torch.from_numpy(cf.neighbors.astype(np.int32)))
        self.covisit_weights.copy_(torch.from_numpy(cf.weights))

    def covisit_of(self, stream: tuple, rows: torch.Tensor, ends: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(P, C) co-visitation scores of ``candidates`` with the ``COVISIT.n_triggers`` behaviours before ``ends``."""
        triggers = windows(stream, rows, ends, COVISIT.n_triggers)[0]
        return covisit_scores(self._covisit_table(), triggers, candidates, COVISIT.recency_decay)

    def _covisit_table(self):
        """:func:`covisit_table` of the model's buffers, kept until they change (set, loaded or moved)."""
        key = (self.covisit_weights.data_ptr(), self.covisit_weights._version, self.covisit_neighbors._version)
        if getattr(self, "_covisit_cache", (None,))[0] != key:
            if float(self.covisit_weights.abs().sum()) == 0:  # checked once per table, not per batch
                raise ValueError("covisit=True but the model has no item-CF table: call set_covisitation "
                                 "(seqrec.train.factory.build does)")
            self._covisit_cache = (key, covisit_table(self.covisit_neighbors, self.covisit_weights))
        return self._covisit_cache[1]

    def side_of(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) item codes → (..., n_side) side codes."""
        return self.item_side[items].long()

    # --- samples --------------------------------------------------------------------------------
    negative_source = None  # callable(batch, rows, positions, positives) -> (P, hard_negatives) codes; not saved

    def set_negative_source(self, source) -> None:
        """Where ``hard_negatives`` come from, e.g. :class:`MatcherNegatives` over a trained SDM."""
        self.negative_source = source

    def sample_negatives(self, n: int, device) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=torch.long, device=device)
        w = self.item_counts[F.FIRST_CODE :]
        if float(w.sum()) <= 0:
            raise ValueError("ranker has no item popularity: call set_item_table(items.parquet) before training")
        return torch.multinomial(w, n, replacement=True).to(device) + F.FIRST_CODE

    def training_input(self, batch: Batch) -> RankInput:
        """Every known position of every session with >= 1 behaviour before it: 1 positive + negatives.

        On cascade rows (``batch.cand_item``, :mod:`seqrec.train.cascade`) a position needs the matcher's
        candidates (t >= 1); ``cascade_negatives`` of them are drawn uniformly as negatives, never the
        positive nor an item the user goes on to interact with later in the session (the label window);
        ``negatives`` popularity negatives come on top (a mix; 0 for none), and on cascade rows a popularity or
        hard negative that is in the label window is padding too (never a false negative).

        ``positives="window"`` (cascade rows): the stored candidates that are in the label window (up to
        ``window_positives``, a uniform draw) are positives too, after the next item: columns
        ``1 .. W`` (label 1, padding where fewer), then the negatives. BCE labels them 1; the listwise loss
        gives each positive its own softmax against the position's negatives (see :meth:`forward`)."""
        stream = behaviour_stream(batch)
        hist_len = stream[3]
        t = batch.items.shape[1]
        pos = torch.arange(t, device=batch.seq_len.device)[None, :]
        ok = (pos < batch.seq_len[:, None]) & (batch.items >= F.FIRST_CODE) & ((hist_len[:, None] + pos) >= 1)
        cascade = batch.cand_item is not None
        if cascade:
            ok &= (pos >= 1) & (batch.cand_item[:, :t, 0] >= F.FIRST_CODE)
        elif self.config.match_features or self.config.covisit:
            raise ValueError("match_features=True and covisit=True train on cascade rows (the matcher's candidates and "
                             "scores, cross-fitted co-visitation scores): make them with `seqrec data candidates` and "
                             "train with --candidates")
        if cascade and self.config.covisit and batch.cand_covisit is None:
            raise ValueError("covisit=True needs cascade rows with co-visitation scores: make them again with `seqrec data candidates`")
        rows, p = ok.nonzero(as_tuple=True)  # (P,)
        if rows.numel() == 0:
            raise ValueError("the batch has no ranking samples: every position needs >= 1 earlier behaviour and a known item")
        ends = hist_len[rows] + p
        w_items, w_times, last = windows(stream, rows, ends, self.config.window)
        positive = batch.items[rows, p]
        k = self.config.negatives
        if k == 0 and not cascade:
            raise ValueError("negatives=0 leaves no negatives outside cascade rows: use negatives >= 1")
        neg = self.sample_negatives(positive.numel() * k, positive.device).view(positive.numel(), k)
        match_rank = match_gap = fitted = future = None
        extra = positive.new_zeros(positive.numel(), 0)  # label-window positives (positives="window")
        if cascade:
            future = self.label_window(batch, rows, p)
            c_neg, c_rank, c_gap, c_cov, w = self._cascade_negatives(batch, rows, p, positive, future)
            top = batch.top_score[rows, p]
            p_rank, p_gap = match_inputs(batch.target_score[rows, p][:, None], batch.target_rank[rows, p][:, None], top)
            p_cov = None if batch.target_covisit is None else batch.target_covisit[rows, p][:, None]
            if w is not None:  # the label window's stored candidates: positives after the next item
                extra, w_rank, w_gap, w_cov = w
                p_rank, p_gap = torch.cat([p_rank, w_rank], 1), torch.cat([p_gap, w_gap], 1)
                p_cov = None if p_cov is None else torch.cat([p_cov, w_cov], 1)
            if self.config.covisit:  # cross-fitted: from an item-CF table that never saw these positions
                fitted = torch.cat([p_cov, c_cov], dim=1)
            none = torch.full_like(neg, -1)
            worst = c_gap.min(1, keepdim=True).values.expand(neg.shape)  # popularity negatives: no matcher score
            match_rank = torch.cat([p_rank, c_rank, none], dim=1)
            match_gap = torch.cat([p_gap, c_gap, worst], dim=1)
            neg = torch.cat([c_neg, neg], dim=1)
        if self.config.hard_negatives:
            if self.negative_source is None:
                raise ValueError(
                    f"hard_negatives={self.config.hard_negatives} needs a source: call set_negative_source(MatcherNegatives(matcher)) "
                    "(seqrec evaluate does it with the first matcher of --models)"
                )
            hard = self.negative_source(batch, rows, p, positive).to(neg)  # (P, h), 0 where none
            neg = torch.cat([neg, hard], dim=1)
        n_pos = 1 + extra.shape[1]
        cands = torch.cat([positive[:, None], extra, neg], dim=1)  # (P, 1[+W]+k[+h])
        labels = torch.zeros(cands.shape, device=cands.device)
        labels[:, :n_pos] = (cands[:, :n_pos] != F.PAD).float()
        # a negative that equals the positive is an accidental hit: padding, ignored by the loss; so is one (drawn
        # from the popularity or a matcher's top items) that the user interacts with later in the label window
        hit = neg == positive[:, None]
        if future is not None:
            hit |= (neg[:, :, None] == future[:, None, :]).any(-1) & (neg >= F.FIRST_CODE)
        cands[:, n_pos:] = cands[:, n_pos:].masked_fill(hit, F.PAD)
        covisit = None
        if self.config.covisit:
            # the model's own table for the other negatives (it trained on these positions, but a negative's pairs
            # with the window are not the position's own); the positive and the matcher's candidates: cross-fitted
            covisit = self.covisit_of(stream, rows, ends, cands)
            covisit[:, : fitted.shape[1]] = fitted
        return RankInput(
            user={u: v[rows] for u, v in batch.user.items()},
            window=w_items,
            window_time=w_times,
            last_behavior=last,
            time=batch.seq_time[rows, p] if self.config.moment == "target" else stream[1][rows, ends - 1],
            candidates=cands,
            labels=labels,
            match_rank=match_rank,
            match_gap=match_gap,
            covisit=covisit,
            seen=seen_before(stream, rows, ends, cands) if self.config.seen else None,
        )

    @staticmethod
    def label_window(batch: Batch, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(P, T) the label window of session position ``p`` of ``rows``: the items of the session's later events
        (positions p+1 .. seq_len-1), 0 elsewhere."""
        t = batch.items.shape[1]
        later = torch.arange(t, device=p.device)[None, :]
        later = (later > p[:, None]) & (later < batch.seq_len[rows][:, None])
        return torch.where(later, batch.items[rows], torch.zeros_like(batch.items[rows]))

    def _cascade_negatives(self, batch: Batch, rows: torch.Tensor, p: torch.Tensor, positive: torch.Tensor,
                           future: torch.Tensor):
        """(negatives (P, m), their matcher ranks (P, m), score gaps (P, m), co-visitation scores (P, m) or None,
        window positives or None): ``m = cascade_negatives`` drawn
        uniformly from each position's stored candidates (themselves a uniform draw from the matcher's list),
        none equal to the positive or to an item of the label window ``future`` (P, T); padding (0, rank -1) where
        fewer remain. With ``positives="window"``, the window positives are (items, ranks, gaps, co-visitation
        scores or None), each (P, W): up to ``window_positives`` stored candidates in the label window, drawn
        uniformly, padding where fewer."""
        cands, scores, ranks = batch.cand_item[rows, p], batch.cand_score[rows, p], batch.cand_rank[rows, p]  # (P, K)
        later = (cands[:, :, None] == future[:, None, :]).any(-1) & (cands >= F.FIRST_CODE) & (cands != positive[:, None])
        bad = (cands < F.FIRST_CODE) | (cands == positive[:, None]) | later
        covs = batch.cand_covisit[rows, p] if batch.cand_covisit is not None else None

        def draw(valid: torch.Tensor, m: int):
            pick_val, pick = torch.rand(cands.shape, device=cands.device).masked_fill(~valid, -1.0).topk(m, dim=1)
            ok = pick_val >= 0  # (P, m) random valid candidates first
            items = torch.where(ok, cands.gather(1, pick), torch.zeros_like(pick))
            rank, gap = match_inputs(scores.gather(1, pick), ranks.gather(1, pick), batch.top_score[rows, p])
            cov = None if covs is None else torch.where(ok, covs.gather(1, pick), 0.0)
            return items, torch.where(ok, rank, torch.full_like(rank, -1)), torch.where(ok, gap, torch.zeros_like(gap)), cov

        neg = draw(~bad, min(self.config.cascade_negatives, cands.shape[1]))
        window = None
        if self.config.positives == "window":
            k = cands.shape[1]
            repeat = ((cands[:, :, None] == cands[:, None, :]) & torch.ones(k, k, dtype=torch.bool, device=cands.device).tril(-1)).any(-1)
            later &= ~repeat  # an item listed twice is one positive
            w = min(self.config.window_positives, cands.shape[1], max(int(later.sum(1).max()), 0))
            window = draw(later, w)
        return (*neg, window)

    def inference_input(self, batch: Batch, candidates: torch.Tensor, labels: torch.Tensor | None = None,
                        match: torch.Tensor | None = None) -> RankInput:
        """Each row's whole input (history, then session) as one context, at its last event's time.

        ``match`` (B, C): the candidates' matcher scores, the candidates being the matcher's list in its order
        (what a ranker with ``match_features`` reads, :func:`match_inputs`)."""
        if candidates.dim() != 2 or candidates.shape[0] != batch.size:
            raise ValueError(f"candidates must be (B={batch.size}, C) item codes, got shape {tuple(candidates.shape)}")
        stream = behaviour_stream(batch)
        ends = stream[4]
        if bool((ends < 1).any()):
            bad = int((ends < 1).nonzero()[0, 0])
            raise ValueError(f"row {bad} has no behaviours: ranking needs >= 1 event (serve such users from the cold-start list)")
        rows = torch.arange(batch.size, device=ends.device)
        w_items, w_times, last = windows(stream, rows, ends, self.config.window)
        return RankInput(
            user=dict(batch.user),
            window=w_items,
            window_time=w_times,
            last_behavior=last,
            time=stream[1][rows, ends - 1],
            candidates=candidates,
            labels=labels,
            **(dict(zip(("match_rank", "match_gap"), match_inputs(match))) if match is not None else {}),
            covisit=self.covisit_of(stream, rows, ends, candidates) if self.config.covisit else None,
            seen=seen_before(stream, rows, ends, candidates) if self.config.seen else None,
        )

    # --- model ----------------------------------------------------------------------------------
    def encode(self, inp: RankInput, cand_tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # pragma: no cover
        """The sequence part: (context-level (R, X) or None, candidate-level (R, C, Y) or None)."""
        raise NotImplementedError

    def logits(self, inp: RankInput) -> torch.Tensor:
        """(R, C) click logits."""
        cand_side = self.side_of(inp.candidates)  # (R, C, n_side)
        cand_tokens = self.tokens(inp.candidates, cand_side[..., : self.config.seq_side])  # (R, C, E)
        seq_ctx, seq_cand = self.encode(inp, cand_tokens)
        ctx = [self.other.context(inp)] + ([seq_ctx] if seq_ctx is not None else [])
        cand = [self.other.candidate(inp, cand_side)] + ([seq_cand] if seq_cand is not None else [])
        out = self.head(torch.cat(ctx, -1), torch.cat(cand, -1))
        if self.wide:
            out = out + self.other.wide_logit(inp, cand_side)
        if self.config.match_features:
            out = out + self.match_weight * inp.match_gap  # + w · (score - the matcher's first score); checked in candidate()
        if self.config.covisit:
            out = out + self.covisit_weight * torch.log1p(inp.covisit)
        if self.config.seen:
            out = out + self.seen_weight * inp.seen  # checked in candidate()
        return out

    def forward(self, batch: Batch) -> LossOutput:
        inp = self.training_input(batch)
        logits = self.logits(inp)
        mask = (inp.candidates != F.PAD).float()
        if self.config.loss == "listwise":  # softmax over each position's list; the positive is column 0
            z = logits.float().masked_fill(mask == 0, float("-inf"))
            positive = (inp.labels > 0) & (mask > 0)
            if positive.shape[1] == 1 or not bool(positive[:, 1:].any()):
                loss = -nnf.log_softmax(z, dim=1)[:, 0].mean()
                return LossOutput(loss, int(z.shape[0]))
            # several positives (positives="window"): each one's own softmax against the position's negatives
            # (not against its other positives), -log p averaged over the position's positives, then over positions
            rest = torch.logsumexp(z.masked_fill(positive, float("-inf")), dim=1, keepdim=True)  # (R, 1)
            nll = torch.where(positive, torch.logaddexp(z, rest) - z, torch.zeros_like(z))
            loss = (nll.sum(1) / positive.sum(1).clamp_min(1)).mean()
            return LossOutput(loss, int(z.shape[0]))
        loss = nnf.binary_cross_entropy_with_logits(logits, inp.labels, weight=mask, reduction="sum") / mask.sum()
        return LossOutput(loss, int(mask.sum()))

    @torch.no_grad()
    def score(self, batch: Batch, candidates: torch.Tensor, match: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) logits of ``candidates`` (B, C) for each row's user at its last event; ``match`` (B, C): their
        matcher scores, the candidates in the matcher's order (needed with ``match_features``)."""
        inp = self.inference_input(batch, candidates, match=match)
        return self.logits(inp) if self.runtime is None else self.runtime(inp)

    def window_side(self, inp: RankInput) -> torch.Tensor:
        return self.side_of(inp.window)[..., : self.config.seq_side]  # (R, S, seq_side)

    def describe(self) -> dict:
        return {"model": self.name, "config": self.config.to_dict(), "parameters": sum(p.numel() for p in self.parameters())}


class MatcherNegatives:
    """Hard negatives from a trained matcher (SDM): for the sample at session position t, the
    matcher's user vector after event t-1 retrieves its top ``top`` items (exact inner product),
    and ``n`` of them, other than the positive, are drawn uniformly. Positions without a matcher
    state (t = 0: the window is history only) get padding, i.e. no hard negative.

    Exact scoring costs P × N per batch: fine for catalogues up to ~10^5 items; beyond that, mine
    the negatives offline with the FAISS index instead. Not an ``nn.Module``: the matcher is not
    trained, moved or saved with the ranker.
    """

    def __init__(self, matcher: nn.Module, n: int, top: int = 50):
        if n < 1 or top < n + 1:
            raise ValueError(f"MatcherNegatives needs n >= 1 and top >= n + 1, got n={n}, top={top}")
        self.matcher, self.n, self.top = matcher, n, top

    @torch.no_grad()
    def __call__(self, batch: Batch, rows: torch.Tensor, positions: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        was_training = self.matcher.training
        self.matcher.eval()
        states = self.matcher.user_states(batch)  # (B, T, D)
        self.matcher.train(was_training)
        items = self.matcher.item_embeddings()  # (N, D)
        out = torch.zeros(rows.numel(), self.n, dtype=torch.long, device=rows.device)
        has = positions >= 1
        if not bool(has.any()):
            return out
        u = states[rows[has], positions[has] - 1]  # (P', D)
        scores = u @ items.T  # (P', N)
        scores[:, : F.FIRST_CODE] = float("-inf")
        scores[torch.arange(u.shape[0], device=u.device), positives[has]] = float("-inf")
        top = scores.topk(min(self.top, scores.shape[1] - F.FIRST_CODE - 1), dim=1).indices  # (P', top)
        pick = torch.rand(top.shape, device=top.device).argsort(dim=1)[:, : self.n]
        out[has] = top.gather(1, pick)
        return out


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal position encodings (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, i / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table


__all__ = [
    "MLPHead",
    "MatcherNegatives",
    "OtherFeatures",
    "RankConfig",
    "RankInput",
    "Ranker",
    "TIME_BUCKETS",
    "TokenEmbedding",
    "behaviour_stream",
    "covisit_scores",
    "covisit_table",
    "hash_cross",
    "sinusoid_table",
    "time_buckets",
    "windows",
]
