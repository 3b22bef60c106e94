"""Pieces every matching model shares: embeddings with side information, the softmax loss, the interface.

Notation: B batch rows, T session length, L_f long-term length of feature f, D user/item vector
size, E input item embedding size (sum of per-feature sizes), N items (incl. 0 = padding,
1 = unknown), P (position, target) pairs in a batch, S sampled negatives.

A matching model maps a batch to one user vector per session position, ``user_states(batch)
-> (B, T, D)``, where position t sees only events 0..t (causal). Training scores every position
against the next item(s) in one pass, which equals the paper's one-sample-per-prefix layout
(``tests/test_sdm.py`` checks it). Retrieval uses the last position: ``encode_users(batch) ->
(B, D)`` and ``item_embeddings() -> (N, D)``; score = inner product (SDM eq. 1).

``seen_penalty`` (an option of every matcher, off by default: not in the paper): one learned scalar
``p = softplus(θ) >= 0`` subtracted from the score of every item already in the position's input (the
session so far and the long-term items), in training (the softmax) as in retrieval. It is the simplest
form of RepeatNet's repeat/explore split (Ren et al., AAAI 2019): a data set whose users do not come back
to what they just saw (ml-100k has no repeated ratings) learns a large p, one with repeat purchases a p
near 0. It is never a bonus, so FAISS retrieval stays exact by over-fetching the input's items
(:mod:`seqrec.retrieval`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as nnf
from torch import nn

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.features import FeatureSpec

LOSSES = ("auto", "sampled", "full")
SAMPLERS = ("log_uniform", "unigram")
FULL_SOFTMAX_MAX_ITEMS = 5_000  # "auto" uses the exact softmax up to this catalogue size (CPU cost grows with N)


class ModelConfig:
    """Dict round trip of a model-config dataclass with a ``features`` field (what checkpoints store)."""

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["features"] = self.features.to_dict()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} options {unknown}; valid options: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes):
        d = self.to_dict()
        d.update(changes)
        return type(self).from_dict(d)


@dataclass
class MatchConfig(ModelConfig):
    """Options every matching model has. ``features`` is the dataset's feature spec (manifest)."""

    features: FeatureSpec
    hidden: int = 64  # D: user and item vector size
    id_dim: int = 32  # item-id input embedding size
    side_dim: int = 16  # input embedding size of each item side feature
    profile_dim: int = 16  # embedding size of each user profile feature
    side_info: bool = False  # item side features in the input (SDM eq. 3); ids only when False
    dropout: float = 0.1
    next_n: int = 1  # targets of position t: the next ``next_n`` items of the session (PSDMMAL-N: 5)
    loss: str = "auto"  # auto | sampled | full; auto = full softmax up to FULL_SOFTMAX_MAX_ITEMS items
    num_sampled: int = 1000  # S negatives per batch for the sampled softmax (shared by all positions)
    sampler: str = "log_uniform"  # log_uniform over frequency rank | unigram (item counts)
    seen_penalty: bool = False  # learn a score penalty on the items of the input (module doc)
    history_input: bool = False  # one-sequence models read hist ⊕ session (SequenceModel), as RecBole's peers
    # > 0: also train each session's last state on the row's horizon targets (the items after the session,
    # ``prepare --train-horizon-hours``), the loss (next + w · horizon) / (pairs weighted alike); 0: next items only
    horizon_weight: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            self.features = FeatureSpec.from_dict(self.features)
        if self.hidden < 1 or self.id_dim < 1 or self.side_dim < 1 or self.profile_dim < 1:
            raise ValueError(
                f"embedding sizes must be >= 1, got hidden={self.hidden}, id_dim={self.id_dim}, "
                f"side_dim={self.side_dim}, profile_dim={self.profile_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.next_n < 1:
            raise ValueError(f"next_n={self.next_n} must be >= 1 (1 = next item only, 5 = PSDMMAL-N)")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; choose one of {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}; choose one of {SAMPLERS}")
        if self.num_sampled < 1:
            raise ValueError(f"num_sampled={self.num_sampled} must be >= 1")
        if self.features.n_items <= F.FIRST_CODE:
            raise ValueError(f"the feature spec has no items (item_id vocab_size={self.features.n_items})")
        if not self.horizon_weight >= 0.0:
            raise ValueError(f"horizon_weight={self.horizon_weight} must be >= 0 (0: next-item targets only)")
        if self.history_input and self.side_info:
            raise ValueError("history_input=true reads the history's item ids only (hist_* holds no side features); "
                             "set side_info=false")
        if self.loss == "auto":  # resolved once, so a checkpoint records what was trained
            self.loss = "full" if self.features.n_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"



class ItemEmbedding(nn.Module):
    """e_i = concat of per-feature embeddings (SDM eq. 3); ids only unless ``side_info``."""

    def __init__(self, spec: FeatureSpec, id_dim: int, side_dim: int, side_info: bool):
        super().__init__()
        feats = spec.item_features if side_info else spec.item_features[:1]
        self.names = [f.name for f in feats]
        self.tables = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, id_dim if f.name == F.ITEM_ID else side_dim, padding_idx=F.PAD) for f in feats}
        )
        self.dims = {f.name: self.tables[f.name].embedding_dim for f in feats}
        self.dim = sum(self.dims.values())
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=t.embedding_dim**-0.5)
            with torch.no_grad():
                t.weight[F.PAD].zero_()

    def forward(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.tables[n](codes[n]) for n in self.names], dim=-1)  # (B, T, E)


class ProfileEmbedding(nn.Module):
    """e_u = concat of user-profile embeddings (SDM eq. 4), projected to D so it can query D-sized states.

    The profile features are the spec's user features after user_id. A dataset without profile
    columns (Taobao UserBehavior) uses the user-id embedding as its profile instead.
    """

    def __init__(self, spec: FeatureSpec, dim: int, out: int):
        super().__init__()
        feats = spec.user_profile or spec.user_features[:1]
        self.names = [f.name for f in feats]
        self.tables = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, dim, padding_idx=F.PAD) for f in feats})
        self.proj = nn.Linear(dim * len(feats), out)

    def forward(self, user: dict[str, torch.Tensor]) -> torch.Tensor:
        z = torch.cat([self.tables[n](user[n]) for n in self.names], dim=-1)  # (B, P·dim)
        return self.proj(z)  # (B, D)


def causal_mask(t: int, device) -> torch.Tensor:
    """(T, T) bool, True where query position i may see key position j (j <= i)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask``; rows with no valid entry give all zeros (never NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(w, nan=0.0) * mask


def lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B,) lengths → (B, T) bool, True on real positions."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def next_item_targets(items: torch.Tensor, lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of every position: the next ``n`` items of the session.

    items (B, T), lengths (B,) → (rows, pos, targets) as index tensors of the P valid pairs:
    position t of row b is paired with items[b, t+1 .. t+n] that exist and are known (code >= 2).
    Returns (pair_index (P, 2) [row, position], target (P,)).
    """
    b, t = items.shape
    rows, pos, tgt = [], [], []
    for j in range(1, n + 1):
        if j >= t:
            break
        cand = items[:, j:]  # (B, T-j) item at t+j for position t
        valid = (torch.arange(j, t, device=items.device)[None, :] < lengths[:, None]) & (cand >= F.FIRST_CODE)
        r, p = valid.nonzero(as_tuple=True)  # (P_j,)
        rows.append(r)
        pos.append(p)
        tgt.append(cand[r, p])
    if not rows:
        empty = items.new_zeros(0)
        return torch.stack([empty, empty], 1), empty
    return torch.stack([torch.cat(rows), torch.cat(pos)], 1), torch.cat(tgt)


def input_items(batch: Batch, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(P, T + L) item codes the state at position ``pos`` of row ``rows`` has seen, 0-padded: the session's items
    0..pos and the row's long-term items (what ``seen_penalty`` lowers; :func:`seqrec.inference.matcher_inputs`
    is the same for a table's last positions)."""
    sess = batch.items[rows]  # (P, T)
    sess = sess.masked_fill(torch.arange(sess.shape[1], device=sess.device)[None, :] > pos[:, None], F.PAD)
    long_term = batch.long_term.get(F.ITEM_ID)
    return sess if long_term is None else torch.cat([sess, long_term[rows]], dim=1)


def penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``scores`` (P, N) minus ``penalty`` (>= 0) at each row's ``seen`` (P, E) codes (each item once); differentiable."""
    hit = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
    return torch.where(hit, scores - penalty, scores)


def is_in(values: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """(P, S) bool: ``values`` (P, S) or (S,) found in the same row of ``sets`` (P, E)."""
    srt = sets.sort(dim=1).values
    v = values.expand(sets.shape[0], -1).contiguous() if values.dim() == 1 else values.contiguous()
    at = torch.searchsorted(srt, v).clamp_max(srt.shape[1] - 1)
    return srt.gather(1, at) == v


class SoftmaxLoss(nn.Module):
    """Item embeddings V (N, D) and the (sampled) softmax cross-entropy over them (SDM eq. 2).

    * ``full``: exact softmax over all real items (codes >= 2).
    * ``sampled``: S negatives shared by the batch, drawn with replacement from a log-uniform
      distribution over frequency rank (codes are frequency-ordered, so rank = code - 2) or from
      the unigram item counts; logits are corrected by -log(S·Q(item)) (log-Q correction, as
      TensorFlow's ``sampled_softmax_loss``) and negatives equal to the true item are removed
      (``remove_accidental_hits``).
    """

    def __init__(self, n_items: int, dim: int, loss: str, num_sampled: int, sampler: str):
        super().__init__()
        self.n_items, self.loss_kind, self.num_sampled, self.sampler = n_items, loss, num_sampled, sampler
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        # unigram sampler counts; saved with the model, filled by set_item_counts() before training
        self.register_buffer("item_counts", torch.zeros(n_items), persistent=True)

    def set_item_counts(self, counts: torch.Tensor) -> None:
        counts = torch.as_tensor(counts, dtype=torch.float32).flatten()
        if counts.shape[0] != self.n_items:
            raise ValueError(f"item counts have {counts.shape[0]} entries, the item table has {self.n_items}")
        self.item_counts.copy_(counts)

    def _sample(self, s: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """S negative codes and log Q(code) for each."""
        r = self.n_items - F.FIRST_CODE  # number of real items
        if self.sampler == "unigram":
            w = self.item_counts[F.FIRST_CODE :].clamp_min(0)
            if float(w.sum()) <= 0:
                raise ValueError("sampler='unigram' needs item counts: call set_item_counts(items.parquet counts) before training")
            q = w / w.sum()
            neg = torch.multinomial(q, s, replacement=True)
            return neg + F.FIRST_CODE, torch.log(q[neg].clamp_min(1e-12))
        u = torch.rand(s, device=device)
        rank = (torch.exp(u * math.log(r + 1.0)) - 1.0).long().clamp_(0, r - 1)
        return rank + F.FIRST_CODE, self.log_q_log_uniform(rank + F.FIRST_CODE)

    def log_q_log_uniform(self, codes: torch.Tensor) -> torch.Tensor:
        r = self.n_items - F.FIRST_CODE
        k = (codes - F.FIRST_CODE).double()
        return (torch.log((k + 2.0) / (k + 1.0)) / math.log(r + 1.0)).log().float()

    def _log_q(self, codes: torch.Tensor) -> torch.Tensor:
        if self.sampler == "unigram":
            w = self.item_counts[F.FIRST_CODE :]
            return torch.log((self.item_counts[codes] / w.sum()).clamp_min(1e-12))
        return self.log_q_log_uniform(codes)

    def forward(self, users: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None,
                penalty: torch.Tensor | None = None) -> torch.Tensor:
        """users (P, D), targets (P,) codes >= 2 → mean cross-entropy; ``seen`` (P, E) codes scored lower by
        ``penalty`` (>= 0), as retrieval scores them (``MatchConfig.seen_penalty``)."""
        if self.loss_kind == "full":
            logits = users @ self.items.weight.T  # (P, N)
            if penalty is not None:
                logits = penalize(logits, seen, penalty)
            logits[:, : F.FIRST_CODE] = float("-inf")
            return nnf.cross_entropy(logits, targets)
        s = self.num_sampled
        neg, log_q_neg = self._sample(s, users.device)  # (S,), (S,)
        log_s = math.log(s)
        pos_logit = (users * self.items(targets)).sum(-1) - (log_s + self._log_q(targets))  # (P,)
        neg_logit = users @ self.items(neg).T - (log_s + log_q_neg)[None, :]  # (P, S)
        if penalty is not None:
            pos_logit = pos_logit - penalty * is_in(targets[:, None], seen)[:, 0]
            neg_logit = neg_logit - penalty * is_in(neg, seen)
        neg_logit = neg_logit.masked_fill(neg[None, :] == targets[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)  # (P, 1+S)
        return nnf.cross_entropy(logits, torch.zeros_like(targets))


@dataclass
class LossOutput:
    """loss: scalar mean cross-entropy over the batch's (position, target) pairs; n_targets: P."""

    loss: torch.Tensor
    n_targets: int


class MatchingModel(nn.Module):
    """Base of every neural matcher: subclasses implement ``user_states(batch) -> (B, T, D)``.

    ``forward(batch)`` is the training loss, so DDP wrappers see a forward call.
    """

    config: MatchConfig
    name: str = "matcher"

    def __init__(self, config: MatchConfig):
        super().__init__()
        self.config = config
        c = config
        self.softmax = SoftmaxLoss(c.features.n_items, c.hidden, c.loss, c.num_sampled, c.sampler)
        self.items = ItemEmbedding(c.features, c.id_dim, c.side_dim, c.side_info)  # input e_i of every matcher
        if c.history_input and not isinstance(self, SequenceModel):
            raise ValueError(f"history_input=true is for the models that read one sequence (GRU4Rec, NARM, SASRec, "
                             f"YouTube-DNN); {type(self).__name__} reads the history through its own long-term input")
        if c.seen_penalty:  # the penalty is softplus(θ); θ = 0 starts it at log 2
            self.seen_logit = nn.Parameter(torch.zeros(()))

    def user_states(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> LossOutput:
        states = self.user_states(batch)  # (B, T, D)
        pairs, tgt = next_item_targets(batch.items, batch.seq_len, self.config.next_n)  # (P, 2), (P,)
        if tgt.numel() == 0:
            raise ValueError(
                "the batch has no training targets: every session needs >= 2 known items "
                "(training rows come from `seqrec data prepare` train/ split)"
            )
        users = states[pairs[:, 0], pairs[:, 1]]  # (P, D)
        penalty = self.seen_penalty()
        seen = None if penalty is None else input_items(batch, pairs[:, 0], pairs[:, 1])
        loss = self.softmax(users, tgt, seen, penalty)
        w = self.config.horizon_weight
        if w > 0 and batch.targets.shape[1] > 0:
            rows, cols = (batch.targets >= F.FIRST_CODE).nonzero(as_tuple=True)  # (H,) pairs: row, target slot
            if rows.numel():
                pos = batch.seq_len[rows] - 1  # the session's last state: everything before the horizon
                h_seen = None if penalty is None else input_items(batch, rows, pos)
                h_loss = self.softmax(states[rows, pos], batch.targets[rows, cols], h_seen, penalty)
                p, h = tgt.numel(), rows.numel()
                loss = (p * loss + w * h * h_loss) / (p + w * h)
                return LossOutput(loss, p + h)
        return LossOutput(loss, int(tgt.numel()))

    def seen_penalty(self) -> torch.Tensor | None:
        """The learned penalty (>= 0) on the scores of the input's items; None without ``seen_penalty``."""
        return nnf.softplus(self.seen_logit) if self.config.seen_penalty else None

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """(B, D) user vector after the last event of each session."""
        self.check_sessions(batch)
        states = self.user_states(batch)  # (B, T, D)
        last = (batch.seq_len - 1).clamp_max(states.shape[1] - 1)
        return states[torch.arange(states.shape[0], device=states.device), last]  # (B, D)

    @staticmethod
    def check_sessions(batch: Batch) -> None:
        """ValueError naming the first row with an empty session: a user vector needs >= 1 event."""
        if bool((batch.seq_len < 1).any()):
            bad = int((batch.seq_len < 1).nonzero()[0, 0])
            raise ValueError(
                f"row {bad} has an empty session (seq_len=0): a user vector needs >= 1 event; "
                "serve such users from the cold-start list instead"
            )

    def item_embeddings(self) -> torch.Tensor:
        """(N, D) item vectors; rows 0 (padding) and 1 (unknown) are never recommended."""
        return self.softmax.items.weight

    def describe(self) -> dict:
        return {"model": self.name, "config": self.config.to_dict(), "parameters": sum(p.numel() for p in self.parameters())}


def join_history(batch: Batch) -> tuple[Batch, torch.Tensor]:
    """Each row's history (``hist_*``, oldest first) put before its session as one sequence: (the joined batch, each
    row's history length (B,), the position of its session's first event in the joined sequence).

    Only the item ids, times and behaviours are joined (the history holds no side features); the joined length is
    H + T, right-padded."""
    hist, items = batch.hist_item, batch.items
    b, h = hist.shape
    t = items.shape[1]
    n = h + t
    dev = items.device
    h_len = (hist != F.PAD).sum(1)  # (B,) the history is right-padded
    pos_h = torch.arange(h, device=dev)[None, :].expand(b, h)
    pos_s = h_len[:, None] + torch.arange(t, device=dev)[None, :]
    at_h = torch.where(pos_h < h_len[:, None], pos_h, n)  # padding goes to a spare column n, then dropped
    at_s = torch.where(torch.arange(t, device=dev)[None, :] < batch.seq_len[:, None], pos_s, n)

    def join(hv: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
        out = sv.new_zeros(b, n + 1)
        out.scatter_(1, at_h, hv.to(sv.dtype))
        out.scatter_(1, at_s, sv)
        return out[:, :n]

    joined = dataclasses.replace(batch, seq={F.ITEM_ID: join(hist, items)}, seq_len=h_len + batch.seq_len,
                                 seq_time=join(batch.hist_time, batch.seq_time),
                                 seq_behavior=join(batch.hist_behavior, batch.seq_behavior))
    return joined, h_len


class SequenceModel(MatchingModel):
    """A matcher that reads one sequence of items (subclasses implement ``sequence_states``): the session, or with
    ``history_input`` the history before it and the session as one sequence (:func:`join_history`; under
    ``prepare --input last-n`` the last N events, the input RecBole's sequential models read). Either way the
    states are the session's positions', so training targets and retrieval are the same as without it."""

    def sequence_states(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def user_states(self, batch: Batch) -> torch.Tensor:
        if not self.config.history_input:
            return self.sequence_states(batch)
        joined, offset = join_history(batch)
        states = self.sequence_states(joined)  # (B, H + T, D)
        t = batch.items.shape[1]
        at = (offset[:, None] + torch.arange(t, device=offset.device)[None, :]).clamp_max(states.shape[1] - 1)
        out = states.gather(1, at[..., None].expand(-1, -1, states.shape[2]))  # (B, T, D)
        return out * lengths_mask(batch.seq_len, t)[..., None]  # padding positions are zero


__all__ = [
    "Batch",
    "ItemEmbedding",
    "LossOutput",
    "MatchConfig",
    "MatchingModel",
    "ModelConfig",
    "ProfileEmbedding",
    "SequenceModel",
    "SoftmaxLoss",
    "causal_mask",
    "input_items",
    "is_in",
    "join_history",
    "penalize",
    "lengths_mask",
    "masked_softmax",
    "next_item_targets",
]
