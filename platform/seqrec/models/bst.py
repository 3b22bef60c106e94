"""BST: Behavior Sequence Transformer (Chen et al., 2019), the ranking stage. Pure PyTorch.

Notation: R contexts, C candidates per context, S behaviour window (20), E token features
(item id + category), P position feature size, d = E + P model width, h heads.

* **Embedding layer (§2.1).** Each behaviour of the window and the candidate, appended as the last
  token, is ``concat(item-id emb, category emb, position emb)``. The position feature is the
  bucketised time difference ``t(candidate) − t(v_i)`` (log-scale buckets,
  :func:`seqrec.models.ranking.time_buckets`); the candidate's own difference is 0. Option
  ``positions="sinusoid"``: fixed sin/cos encodings of the distance to the candidate in the
  sequence instead (the comparison the paper reports as worse).
* **Transformer layer (§2.2).** ``b`` blocks, each multi-head self-attention (eq. 1–3, ``W^H``
  output projection) and a point-wise FFN with LeakyReLU, post-LN as eq. 5–6:
  ``S' = LN(S + Dropout(MH(S)))``, ``F = LN(S' + Dropout(LeakyReLU(S'W1 + b1)W2 + b2))``. Every
  token attends to every real token (no causal mask: the candidate is the last token and sees the
  whole window); padding is masked out as a key.
* **MLP (§2.3).** concat(transformer output, other features) → 1024-512-256 with LeakyReLU →
  sigmoid, binary cross-entropy (eq. 9). ``output="target"`` uses the candidate token's output;
  ``output="all"`` flattens all S+1 outputs.

Scoring many candidates of one user: with one block and the target output (the paper's deployed
configuration) only the candidate's row of the block is needed, and its keys/values split into
the window's (computed once per context) and the candidate's own; :meth:`BST.encode` takes that
path, and otherwise runs the full sequence once per candidate (with the target output, the
last block still computes only the candidate's row). All paths give the same numbers
(``tests/test_bst.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from seqrec import features as F
from seqrec.models.ranking import TIME_BUCKETS, MLPHead, RankConfig, Ranker, RankInput, sinusoid_table, time_buckets

POSITIONS = ("time", "sinusoid")
OUTPUTS = ("target", "all")


@dataclass
class BSTConfig(RankConfig):
    blocks: int = 1  # b (Table 4: 1 is best)
    heads: int = 8  # Table 3
    pos_dim: int = 16  # position feature embedding size
    ffn_mult: int = 4  # FFN inner width = ffn_mult × d
    positions: str = "time"  # time | sinusoid
    output: str = "target"  # target | all

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise ValueError(f"blocks={self.blocks} must be >= 1 transformer block")
        if self.heads < 1 or self.pos_dim < 2 or self.ffn_mult < 1:
            raise ValueError(f"heads={self.heads}, pos_dim={self.pos_dim}, ffn_mult={self.ffn_mult} must be >= 1, >= 2, >= 1")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}; choose one of {POSITIONS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r}; choose one of {OUTPUTS}")
        if self.positions == "sinusoid" and self.pos_dim % 2:
            raise ValueError(f"pos_dim={self.pos_dim} must be even for sinusoidal positions")
        if self.d_model % self.heads:
            raise ValueError(
                f"model width d = id_dim + seq_side·side_dim + pos_dim = {self.d_model} is not divisible by "
                f"heads={self.heads}; change heads or the embedding sizes"
            )

    @property
    def d_model(self) -> int:
        return self.id_dim + self.seq_side * self.side_dim + self.pos_dim


class MultiHeadAttention(nn.Module):
    """Eq. 2–3: h heads of scaled dot-product attention, W^Q, W^K, W^V ∈ R^{d×d}, output W^H."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)  # W^H

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., L, d) → q, k, v each (..., h, L, dh)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = x.shape[:-1] + (self.h, self.dh)
        return tuple(t.reshape(shape).transpose(-2, -3) for t in (q, k, v))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (N, L, d), key_mask (N, L) True on real tokens → (N, L, d)."""
        q, k, v = self.split(x)
        o = nnf.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])  # (N, h, L, dh)
        return self.out(o.transpose(1, 2).reshape(x.shape))


class TransformerBlock(nn.Module):
    """Eq. 5–6, post-LN, LeakyReLU FFN, dropout on both sub-layer outputs."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attn = MultiHeadAttention(d, heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.LeakyReLU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def post_attention(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        s = self.norm1(x + self.drop(attended))  # eq. 5
        return self.norm2(s + self.drop(self.ffn(s)))  # eq. 6

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.post_attention(x, self.attn(x, key_mask))

    def candidate_only(self, window: torch.Tensor, window_mask: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """The block's output at the candidate token only, for C candidates sharing one window.

        window (R, S, d), window_mask (R, S), cand (R, C, d) → (R, C, d); equals running the block
        on each ``[window; candidate]`` sequence and taking the last row.
        """
        a = self.attn
        _, kw, vw = a.split(window)  # (R, h, S, dh)
        qc, kc, vc = a.split(cand)  # (R, h, C, dh)
        scale = 1.0 / math.sqrt(a.dh)
        padding = torch.zeros(window_mask.shape, dtype=qc.dtype, device=qc.device).masked_fill(~window_mask, float("-inf"))
        s_w = (qc @ kw.transpose(-1, -2)) * scale + padding[:, None, None, :]  # (R, h, C, S); padding keys get -inf
        s_c = (qc * kc).sum(-1, keepdim=True) * scale  # (R, h, C, 1): the candidate attends to itself
        w = torch.softmax(torch.cat([s_w, s_c], dim=-1), dim=-1)
        o = w[..., :-1] @ vw + w[..., -1:] * vc  # (R, h, C, dh)
        o = a.out(o.transpose(1, 2).reshape(cand.shape))
        return self.post_attention(cand, o)


class BST(Ranker):
    name = "bst"

    def __init__(self, config: BSTConfig):
        super().__init__(config)
        c = config
        d = c.d_model
        if c.positions == "time":
            self.position = nn.Embedding(TIME_BUCKETS, c.pos_dim, padding_idx=F.PAD)
        else:
            self.register_buffer("sinusoid", sinusoid_table(c.window + 1, c.pos_dim), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(d, c.heads, c.ffn_mult * d, c.dropout) for _ in range(c.blocks))
        seq_dim = d if c.output == "target" else d * (c.window + 1)
        self.head = MLPHead(self.other.context_dim, self.other.candidate_dim + seq_dim, c.mlp, c.dropout)

    def positions(self, inp: RankInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Position features of the window (R, S, P) and of the candidate token (P,)."""
        s = self.config.window
        if self.config.positions == "time":
            gap = inp.time[:, None] - inp.window_time  # (R, S) seconds, t(candidate) − t(v_i)
            b = time_buckets(gap).masked_fill(inp.window == F.PAD, F.PAD)
            cand = self.position.weight[1]  # gap 0
            return self.position(b), cand
        dist = torch.arange(s, 0, -1, device=inp.window.device)  # slot j is s - j steps before the candidate
        return self.sinusoid[dist][None].expand(inp.window.shape[0], -1, -1), self.sinusoid[0]

    def encode(self, inp: RankInput, cand_tokens: torch.Tensor, fast: bool | None = None):
        """Transformer output for each candidate: (None, (R, C, d) or (R, C, (S+1)·d))."""
        r, c = inp.candidates.shape
        w_pos, c_pos = self.positions(inp)
        window = torch.cat([self.tokens(inp.window, self.window_side(inp)), w_pos], dim=-1)  # (R, S, d)
        cand = torch.cat([cand_tokens, c_pos.expand(r, c, -1)], dim=-1)  # (R, C, d)
        mask = inp.window != F.PAD  # (R, S)
        if fast is None:
            fast = self.config.blocks == 1 and self.config.output == "target"
        if fast:
            return None, self.blocks[0].candidate_only(window, mask, cand)
        s, d = window.shape[1], window.shape[2]
        x = torch.cat([window[:, None].expand(r, c, s, d), cand[:, :, None]], dim=2).reshape(r * c, s + 1, d)
        key_mask = torch.cat([mask[:, None].expand(r, c, s), mask.new_ones(r, c, 1)], dim=2).reshape(r * c, s + 1)
        if self.config.output == "target":
            # blocks 1..b-1 on every token; the last block only at the candidate's row (all that is read)
            for block in self.blocks[:-1]:
                x = block(x, key_mask)
            out = self.blocks[-1].candidate_only(x[:, :s], key_mask[:, :s], x[:, s:])  # (R·C, 1, d)
            return None, out.reshape(r, c, d)
        for block in self.blocks:
            x = block(x, key_mask)
        return None, (x * key_mask[..., None]).reshape(r, c, (s + 1) * d)


__all__ = ["BST", "BSTConfig", "MultiHeadAttention", "OUTPUTS", "POSITIONS", "TransformerBlock"]
