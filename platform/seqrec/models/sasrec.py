"""SASRec (Kang & McAuley, ICDM 2018): a causal self-attention matcher, on SDM's data, layout and softmax loss.

Notation: B batch, T session length, n max length (``max_len``), D hidden size, H heads,
Dh = D / H head size, N items.

* **Embedding (§III-A/B).** Token t is ``sqrt(D)·M[i_t] + P[t]``: ``M`` is the output item table
  V of ``MatchingModel`` (one table for input and output, as in the paper; ``share_embeddings``),
  ``P`` a learned positional table of ``max_len`` rows. Positions count from the oldest item the
  state sees (position 0), as RecBole does, so a single causal pass gives every prefix's state.
  The ``sqrt(D)`` scale is the authors' code's. Padding tokens are zeroed.
* **Self-attention blocks (§III-B/C).** ``blocks`` blocks, each causal multi-head self-attention
  and a point-wise two-layer ReLU FFN (D → D → D, W1, W2 ∈ R^{D×D}), wrapped as the paper's
  ``g(x) = x + Dropout(g(LayerNorm(x)))`` (pre-LN), with a final LayerNorm after the last block
  (as the authors' code). Dropout on the embeddings, the attention weights, inside the FFN and on
  both residual branches.
* **User state.** The last block's output at position t, ``F_t`` (§III-D); it sees items 0..t
  only (causal mask), so right padding never reaches a real position. Scores are ``F_t · M[i]``.

Longer sessions than ``max_len``: the paper feeds the last n items. Position t >= n gets the state
of its own window ``t-n+1..t`` with positions 0..n-1; ``user_states`` computes those windows as one
extra batched pass (cost grows by n× on the positions past n), ``encode_users`` runs the last n
items of each row only. Either way the state at t equals the model run on the last n items of the
prefix (``tests/test_sasrec.py``).

The loss (full or sampled softmax over V, next item or next ``next_n`` items of every position) and
training come from ``MatchingModel`` and the one loop in ``seqrec.train``; the paper's binary
cross-entropy with one sampled negative is not offered (the softmax is the stronger choice on full
ranking, and it is what every other matcher here trains with).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.models.common import MatchConfig, SequenceModel, lengths_mask


@dataclass
class SASRecConfig(MatchConfig):
    blocks: int = 2  # b self-attention blocks (paper: 2)
    heads: int = 1  # H (paper: 1)
    max_len: int = 50  # n: positions seen; the paper uses 50 on sparse data, 200 on MovieLens-1M
    share_embeddings: bool = True  # input item table = output table V (the paper); False: id_dim(+side) → D projection

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise ValueError(f"blocks={self.blocks} must be >= 1 self-attention block")
        if self.heads < 1:
            raise ValueError(f"heads={self.heads} must be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}; change one of them")
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} must be >= 1 (the paper uses 50 or 200)")
        if self.share_embeddings and self.side_info:
            raise ValueError("side_info=True needs share_embeddings=False (the shared item table holds item ids only)")


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention where position t attends to positions <= t."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.dh, self.p = heads, d // heads, dropout
        self.qkv = nn.Linear(d, 3 * d)  # W^Q, W^K, W^V
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) → (B, T, D)."""
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.h, self.dh).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, Dh) each
        o = nnf.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0)  # (B, H, T, Dh)
        return self.out(o.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class SASRecBlock(nn.Module):
    """Pre-LN block: x + Dropout(SA(LN(x))), then x + Dropout(FFN(LN(x))); FFN = W2 Dropout(ReLU(W1 x))."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))  # (B, T, D)
        return x + self.drop(self.ffn(self.norm2(x)))  # (B, T, D)


class SASRec(SequenceModel):
    name = "sasrec"
    config: SASRecConfig

    def __init__(self, config: SASRecConfig):
        super().__init__(config)
        c = config
        if c.share_embeddings:
            self.items = None  # the input table is V (self.softmax.items); no unused id table (DDP needs every parameter used)
            self.proj = None
        else:
            self.proj = nn.Linear(self.items.dim, c.hidden)  # E → D
        self.position = nn.Embedding(c.max_len, c.hidden)  # P
        nn.init.normal_(self.position.weight, std=1.0)  # the scale of sqrt(D)·M[i] (M rows have std D^-1/2)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(c.hidden, c.heads, c.dropout) for _ in range(c.blocks))
        self.norm = nn.LayerNorm(c.hidden)

    def embed(self, batch: Batch) -> torch.Tensor:
        """(B, T, D) item tokens without positions; padding tokens are zero."""
        ids = batch.items  # (B, T)
        if self.proj is None:
            e = self.softmax.items(ids) * math.sqrt(self.config.hidden)  # (B, T, D)
        else:
            e = self.proj(self.items(batch.seq))  # (B, T, E) → (B, T, D)
        return e * (ids != F.PAD)[..., None]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Item tokens (B', T', D), T' <= max_len, position 0 first → block outputs F (B', T', D)."""
        t = x.shape[1]
        assert t <= self.config.max_len, (t, self.config.max_len)
        h = self.dropout(x + self.position.weight[:t][None])  # (B', T', D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)  # (B', T', D)

    def sequence_states(self, batch: Batch) -> torch.Tensor:
        x = self.embed(batch)  # (B, T, D)
        b, t, d = x.shape
        n = self.config.max_len
        if t <= n:
            h = self.encode(x)  # (B, T, D)
        else:
            head = self.encode(x[:, :n])  # (B, n, D): positions 0..n-1 see their whole prefix
            win = x.unfold(1, n, 1)[:, 1:]  # (B, T-n, D, n): the window ending at position n..T-1
            w = win.shape[1]
            win = win.permute(0, 1, 3, 2).reshape(b * w, n, d)  # (B·(T-n), n, D)
            tail = self.encode(win)[:, -1].reshape(b, w, d)  # (B, T-n, D): each window's last position
            h = torch.cat([head, tail], dim=1)  # (B, T, D)
        return h * lengths_mask(batch.seq_len, t)[..., None]  # padding positions are zero

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """(B, D) user vectors from the last ``max_len`` events of each row (one pass of at most n positions)."""
        t, n = batch.items.shape[1], self.config.max_len
        if t <= n:
            return super().encode_users(batch)
        start = (batch.seq_len - n).clamp_min(0)  # (B,)
        idx = start[:, None] + torch.arange(n, device=start.device)[None, :]  # (B, n), <= T-1: start > 0 only when seq_len > n
        cut = lambda v: v.gather(1, idx)  # noqa: E731 - (B, T) → (B, n)
        last = dataclasses.replace(batch, seq={k: cut(v) for k, v in batch.seq.items()}, seq_len=batch.seq_len.clamp_max(n),
                                   seq_time=cut(batch.seq_time), seq_behavior=cut(batch.seq_behavior))
        return super().encode_users(last)


__all__ = ["CausalSelfAttention", "SASRec", "SASRecBlock", "SASRecConfig"]
