"""SDM: Sequential Deep Matching (Lv et al., CIKM 2019, §3), pure PyTorch.

Notation: B batch, T short-term session length, L_f long-term subset length of feature f,
E input item embedding size (concat of per-feature sizes d_f), D hidden size, H heads,
d_k = D / H, N items (0 = padding, 1 = unknown).

User prediction network, every position t of the session at once (causal):
  e_i   = concat_f W^f x_i^f                                    eq. 3   (B, T, E)
  e_u   = W_u concat_p W^p x_u^p                                eq. 4   (B, D)
  h_t   = stacked LSTM(e), dropout + residual between layers    eq. 5   (B, T, D)
  X̂     = LayerNorm(X + W^O concat_i head_i), causal heads      eq. 6-9 (B, T, D)
  s_t   = Σ_{k<=t} softmax_k(ĥ_kᵀ e_u) ĥ_k                      eq. 10  (B, T, D)
  z_f   = Σ_k softmax_k(g_kᵀ q_f) g_k over L_f                  eq. 11  (B, d_f)
  p     = tanh(W^p concat_f z_f + b)                            eq. 12  (B, D)
  G_t   = σ(W¹e_u + W²s_t + W³p + b);  o_t = (1-G_t)⊙p + G_t⊙s_t eq. 13-14 (B, T, D)
  score = o_tᵀ v_i, sampled softmax over items                  eq. 1-2

Choices where the paper is silent (and why):
* Attention logits are scaled by 1/sqrt(d_k) (Vaswani et al.; the paper's eq. 8 omits it).
  ``attn_scale=False`` gives eq. 8 literally.
* e_u must be D-sized to query ĥ_k (eq. 10), so the concatenated profile embedding is projected
  to D. The long-term entries g_k use the same tables W^f as the input (§3.6), which are d_f-sized,
  so each feature's query is q_f = W_q^f e_u (d_f).
* An empty long-term subset (common on ml-100k) gives z_f = 0, never NaN.
* Variants without a user profile (SDMMA) use s_t = ĥ_t (no user attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.models.common import (
    ItemEmbedding,
    MatchConfig,
    MatchingModel,
    ProfileEmbedding,
    causal_mask,
    masked_softmax,
)

FUSIONS = ("gated", "add", "concat", "multiply")

# The paper's variants (Table 2) as option sets; anything else is a custom configuration.
VARIANTS: dict[str, dict] = {
    "SDMMA": dict(user_profile=False, long_term=False, side_info=True, next_n=1),
    "PSDMMA": dict(user_profile=True, long_term=False, side_info=True, next_n=1),
    "PSDMMAL": dict(user_profile=True, long_term=True, side_info=True, next_n=1, fusion="gated"),
    "PSDMMAL-N": dict(user_profile=True, long_term=True, side_info=True, next_n=5, fusion="gated"),
    "PSDMMAL-NoS": dict(user_profile=True, long_term=True, side_info=False, next_n=1, fusion="gated"),
}


@dataclass
class SDMConfig(MatchConfig):
    """SDM options; ``SDMConfig.variant("PSDMMAL-N", features)`` gives a paper variant."""

    side_info: bool = True
    heads: int = 4  # H (paper Table 3: 4 best)
    lstm_layers: int = 1
    user_profile: bool = True  # P: user attention with e_u and e_u in the gate
    long_term: bool = True  # L: long-term behaviours fused with the short-term representation
    fusion: str = "gated"  # gated | add | concat | multiply (paper Table 4)
    attn_scale: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads < 1 or self.hidden % self.heads:
            raise ValueError(
                f"hidden={self.hidden} must be divisible by heads={self.heads} (d_k = hidden / heads); "
                f"pick hidden as a multiple of {self.heads}"
            )
        if self.lstm_layers < 1:
            raise ValueError(f"lstm_layers={self.lstm_layers} must be >= 1")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}; choose one of {FUSIONS}")
        if self.long_term and not self.user_profile:
            raise ValueError("long_term=True needs user_profile=True: e_u is the query of the long-term attention (eq. 11)")

    @classmethod
    def variant(cls, name: str, features, **overrides) -> "SDMConfig":
        if name not in VARIANTS:
            raise ValueError(f"unknown SDM variant {name!r}; choose one of {sorted(VARIANTS)}")
        return cls(features=features, **{**VARIANTS[name], **overrides})


class StackedLSTM(nn.Module):
    """LSTM layers with dropout between them and a residual connection from layer 2 on (§4.4)."""

    def __init__(self, input_dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.LSTM(input_dim if i == 0 else hidden, hidden, batch_first=True) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # right padding: position t's output depends only on inputs 0..t, so padding never leaks back
        h, _ = self.layers[0](x)  # (B, T, D)
        for lstm in self.layers[1:]:
            out, _ = lstm(self.dropout(h))  # (B, T, D)
            h = h + out
        return h


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention (eq. 6-9), causal, with output projection, residual and layer norm."""

    def __init__(self, dim: int, heads: int, dropout: float, scale: bool):
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)  # W^O
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(self.d_k) if scale else 1.0

    def forward(self, x: torch.Tensor, weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) → (LayerNorm(x + MultiHead(x)), per-head weights (B, H, T, T) if ``weights``)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # 3 × (B, T, D)
        q, k, v = (z.view(b, t, self.heads, self.d_k).transpose(1, 2) for z in (q, k, v))  # (B, H, T, d_k)
        att = None
        if weights:
            scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, T, T)
            att = masked_softmax(scores, causal_mask(t, x.device))  # (B, H, T, T)
            heads = self.dropout(att) @ v  # (B, H, T, d_k)
        else:  # the same product, fused (no (B, H, T, T) tensor kept for backward)
            p = self.dropout.p if self.training else 0.0
            heads = nnf.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, scale=self.scale)  # (B, H, T, d_k)
        heads = heads.transpose(1, 2).reshape(b, t, d)  # (B, T, H·d_k)
        return self.norm(x + self.dropout(self.out(heads))), att


class LongTermEncoder(nn.Module):
    """Per-feature attention over the long-term subsets with e_u as query, concat, dense + tanh (eq. 11-12)."""

    def __init__(self, items: ItemEmbedding, dim: int):
        super().__init__()
        self.items = items  # shares W^f with the short-term input (§3.6)
        self.query = nn.ModuleDict({n: nn.Linear(dim, items.dims[n], bias=False) for n in items.names})
        self.dense = nn.Linear(items.dim, dim)

    def forward(self, long_term: dict[str, torch.Tensor], e_u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        zs, weights = [], {}
        for n in self.items.names:
            codes = long_term[n]  # (B, L_f)
            g = self.items.tables[n](codes)  # (B, L_f, d_f)
            q = self.query[n](e_u)  # (B, d_f)
            alpha = masked_softmax((g @ q[:, :, None]).squeeze(-1), codes != F.PAD)  # (B, L_f); all-pad → 0
            zs.append((alpha[:, :, None] * g).sum(1))  # (B, d_f)
            weights[n] = alpha
        return torch.tanh(self.dense(torch.cat(zs, dim=-1))), weights  # (B, D)

    def fused(self, long_term: dict[str, torch.Tensor], e_u: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s p (B, D) with every feature's attention in one: under half the operators (what a
        one-row batch spends its time on), equal up to float rounding; for inference (no weights returned).

        Feature f's entries g (B, L_f, d_f) fill its own column block of one (B, ΣL, E) tensor, zeros elsewhere,
        so one product scores every entry against its feature's query q_f, a softmax over (B, F, ΣL) that masks
        the other features' entries normalises per feature, and one product gives concat_f z_f."""
        names, e = self.items.names, self.items.dim
        blocks, codes, owner = [], [], []
        lo = 0
        for f, n in enumerate(names):
            c = long_term[n]  # (B, L_f)
            g = self.items.tables[n](c)  # (B, L_f, d_f)
            blocks.append(nnf.pad(g, (lo, e - lo - g.shape[-1])))  # (B, L_f, E), g in columns [lo, lo + d_f)
            codes.append(c)
            owner += [f] * c.shape[1]
            lo += g.shape[-1]
        g = torch.cat(blocks, dim=1)  # (B, ΣL, E)
        c = torch.cat(codes, dim=1)  # (B, ΣL)
        q = nnf.linear(e_u, torch.cat([self.query[n].weight for n in names]))  # (B, E) = concat_f q_f
        scores = torch.bmm(g, q.unsqueeze(-1)).squeeze(-1)  # (B, ΣL): g_k · q_f, f the feature of entry k
        feature = torch.arange(len(names), device=c.device).unsqueeze(1)  # (F, 1)
        own = torch.tensor(owner, dtype=torch.long, device=c.device) == feature  # (F, ΣL)
        mask = own & (c != F.PAD).unsqueeze(1)  # (B, F, ΣL)
        # masked_softmax over each feature's own entries: exp(-inf) = 0 elsewhere, a feature without entries → 0
        alpha = torch.softmax(torch.where(mask, scores.unsqueeze(1), float("-inf")), dim=-1).nan_to_num(0.0)  # (B, F, ΣL)
        z = torch.bmm(alpha, g).sum(1)  # (B, E): row f of alpha @ g is z_f in f's columns, zeros elsewhere
        return torch.tanh(self.dense(z))  # (B, D)


class Fusion(nn.Module):
    """Combine s_t (B, T, D) and p (B, D): gated (eq. 13-14) or the Table 4 alternatives."""

    def __init__(self, kind: str, dim: int, use_profile: bool):
        super().__init__()
        self.kind, self.use_profile = kind, use_profile
        if kind == "gated":
            self.w_u = nn.Linear(dim, dim, bias=False) if use_profile else None
            self.w_s = nn.Linear(dim, dim, bias=False)
            self.w_p = nn.Linear(dim, dim)  # carries b of eq. 13
        elif kind == "concat":
            self.proj = nn.Linear(2 * dim, dim)

    def forward(self, s: torch.Tensor, p: torch.Tensor, e_u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """s (B, T, D), or (B, D) at one position (``SDM.encode_users``) → (o shaped as s, the gate or None)."""
        per_position = s.dim() == 3
        p = p[:, None, :].expand_as(s) if per_position else p  # (B, T, D) | (B, D)
        if self.kind == "gated":
            z = self.w_s(s) + self.w_p(p)
            if self.w_u is not None:
                u = self.w_u(e_u)  # (B, D)
                z = z + (u[:, None, :] if per_position else u)
            g = torch.sigmoid(z)  # (B, T, D) | (B, D)
            return (1 - g) * p + g * s, g
        if self.kind == "add":
            return s + p, None
        if self.kind == "multiply":
            return s * p, None
        return self.proj(torch.cat([s, p], dim=-1)), None  # concat


@dataclass
class SDMDetails:
    """What the network attended to, for one batch (paper Fig. 4 and §5.4).

    self_attention: (B, H, T, T) per-head weights (query position, key position)
    user_attention: (B, T, T) user-attention weights α (eq. 10) per position, or None (SDMMA)
    long_term:      {feature: (B, L_f)} long-term attention weights (eq. 11), or {}
    gate:           (B, T, D) gate G_t (eq. 13), or None unless fusion is gated
    """

    self_attention: torch.Tensor
    user_attention: torch.Tensor | None
    long_term: dict[str, torch.Tensor]
    gate: torch.Tensor | None


class SDM(MatchingModel):
    name = "sdm"
    config: SDMConfig

    def __init__(self, config: SDMConfig):
        super().__init__(config)
        c = config
        self.input_dropout = nn.Dropout(c.dropout)
        self.lstm = StackedLSTM(self.items.dim, c.hidden, c.lstm_layers, c.dropout)
        self.attention = CausalSelfAttention(c.hidden, c.heads, c.dropout, c.attn_scale)
        self.profile = ProfileEmbedding(c.features, c.profile_dim, c.hidden) if c.user_profile else None
        self.long_term = LongTermEncoder(self.items, c.hidden) if c.long_term else None
        if c.long_term:
            self.fusion = Fusion(c.fusion, c.hidden, c.user_profile)

    def _forward(self, batch: Batch, details: bool = False):
        x = self.input_dropout(self.items(batch.seq))  # (B, T, E)
        h = self.lstm(x)  # (B, T, D)
        xh, self_att = self.attention(h, weights=details)  # (B, T, D), (B, H, T, T) or None
        e_u = self.profile(batch.user) if self.profile is not None else None  # (B, D)
        user_att = None
        if e_u is not None:
            t = xh.shape[1]
            scores = (xh @ e_u[:, :, None]).squeeze(-1)  # (B, T)
            user_att = masked_softmax(scores[:, None, :].expand(-1, t, -1), causal_mask(t, xh.device)[None])  # (B, T, T)
            s = user_att @ xh  # (B, T, D)
        else:
            s = xh
        lt_w, gate = {}, None
        if self.long_term is not None:
            p, lt_w = self.long_term(batch.long_term, e_u)  # (B, D)
            o, gate = self.fusion(s, p, e_u)  # (B, T, D)
        else:
            o = s
        if details:
            return o, SDMDetails(self_att, user_att, lt_w, gate)
        return o

    # what computes encode_users instead of PyTorch in eval mode (None: PyTorch): seqrec.inference.with_runtime's
    # ONNX Runtime graph of this very method (seqrec.inference.OnnxUserVectors)
    runtime = None

    def user_states(self, batch: Batch) -> torch.Tensor:
        return self._forward(batch)

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """(B, D) user vector after each session's last event: :meth:`user_states` at that position alone.

        The LSTM and self-attention run over every position (the user attention of the last position reads
        every ĥ_k, k <= t), but the user attention (eq. 10), the long-term encoder (eq. 11-12, all features in
        one: :meth:`LongTermEncoder.fused`) and the fusion (eq. 13-14) run once per row, not once per position:
        fewer operators for a served request, a short row whose time is operator overhead. Equal up to float
        rounding (``tests/test_encode_fast.py``); training mode (dropout) takes the generic path. With a ``runtime``
        (:func:`seqrec.inference.with_runtime`) this method's ONNX Runtime export computes it instead; the export
        traces it, with the long-term encoder's per-feature path, whose shapes stay symbolic."""
        if self.training:
            return super().encode_users(batch)
        tracing = torch.jit.is_tracing()
        if not tracing:  # (the export traces one row that has a session: nothing to check, nothing to delegate)
            self.check_sessions(batch)
            if self.runtime is not None:
                return self.runtime(batch)
        xh, _ = self.attention(self.lstm(self.items(batch.seq)))  # (B, T, D); input dropout: identity in eval
        b, t, _ = xh.shape
        last = (batch.seq_len - 1).clamp_max(t - 1)  # (B,)
        if self.profile is None:  # SDMMA: s_t = ĥ_t (and no long-term: it needs e_u)
            return xh[torch.arange(b, device=xh.device), last]  # (B, D)
        e_u = self.profile(batch.user)  # (B, D)
        scores = torch.bmm(xh, e_u.unsqueeze(-1)).squeeze(-1)  # (B, T)
        later = torch.arange(t, device=xh.device) > last.unsqueeze(1)  # (B, T): keys the last position can't see
        alpha = torch.softmax(scores.masked_fill(later, float("-inf")), dim=-1)  # (B, T); key 0 is always seen
        s = torch.bmm(alpha.unsqueeze(1), xh).squeeze(1)  # (B, D): s_t of eq. 10 at t = last
        if self.long_term is None:
            return s
        p = self.long_term(batch.long_term, e_u)[0] if tracing else self.long_term.fused(batch.long_term, e_u)
        o, _ = self.fusion(s, p, e_u)  # (B, D)
        return o

    @torch.no_grad()
    def explain(self, batch: Batch) -> SDMDetails:
        """Per-head self-attention, user attention, long-term attention and gate values (eval mode)."""
        was = self.training
        self.eval()
        try:
            _, det = self._forward(batch, details=True)
        finally:
            self.train(was)
        return det


__all__ = ["FUSIONS", "SDM", "SDMConfig", "SDMDetails", "VARIANTS"]
