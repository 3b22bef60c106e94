"""Ranking baselines of BST Table 4, on the same samples, features and MLP as BST. Pure PyTorch.

* **WDL** (Cheng et al., 2016): wide part = one learned weight per sparse feature value (profile,
  context, candidate id and item features, hashed crosses), summed; deep part = MLP over the
  embeddings of the other features and the candidate's token (item id + category). No sequence.
* **WDL(+Seq)**: WDL plus the average of the window's token embeddings in the deep part (BST §3.1:
  "aggregates the embeddings of the previously clicked items in average").
* **DIN** (Zhou et al., 2018): the window's tokens weighted by an activation unit
  ``a(e_i, e_c) = MLP([e_i, e_c, e_i − e_c, e_i ⊙ e_c])`` and summed (no softmax, as in DIN), next
  to the candidate's token, into the deep MLP.

Notation: R contexts, C candidates, S window, E token size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec import features as F
from seqrec.models.ranking import MLPHead, RankConfig, Ranker, RankInput, widths


@dataclass
class WDLConfig(RankConfig):
    pass


@dataclass
class WDLSeqConfig(RankConfig):
    pass


@dataclass
class DINConfig(RankConfig):
    attention_hidden: tuple = (80, 40)  # DIN's activation unit

    def __post_init__(self) -> None:
        super().__post_init__()
        self.attention_hidden = widths(self.attention_hidden, "attention_hidden")
        if not self.attention_hidden or min(self.attention_hidden) < 1:
            raise ValueError(f"attention_hidden={self.attention_hidden} must list >= 1 positive widths")


class WDL(Ranker):
    name = "wdl"
    wide = True

    def __init__(self, config: WDLConfig):
        super().__init__(config)
        e = self.tokens.dim
        self.head = MLPHead(self.other.context_dim + self.context_seq_dim(e), self.other.candidate_dim + e, config.mlp, config.dropout)

    def context_seq_dim(self, e: int) -> int:
        return 0

    def encode(self, inp: RankInput, cand_tokens: torch.Tensor):
        return None, cand_tokens  # the candidate's own token only


class WDLSeq(WDL):
    name = "wdl_seq"

    def context_seq_dim(self, e: int) -> int:
        return e

    def encode(self, inp: RankInput, cand_tokens: torch.Tensor):
        tok = self.tokens(inp.window, self.window_side(inp))  # (R, S, E); padding rows are zero vectors
        n = (inp.window != F.PAD).sum(1, keepdim=True).clamp_min(1)
        return tok.sum(1) / n, cand_tokens  # mean over real behaviours; zero for an empty window


class DIN(Ranker):
    name = "din"

    def __init__(self, config: DINConfig):
        super().__init__(config)
        e = self.tokens.dim
        layers: list[nn.Module] = []
        width = 4 * e
        for h in config.attention_hidden:
            layers += [nn.Linear(width, h), nn.PReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.activation_unit = nn.Sequential(*layers)
        self.head = MLPHead(self.other.context_dim, self.other.candidate_dim + 2 * e, config.mlp, config.dropout)

    def encode(self, inp: RankInput, cand_tokens: torch.Tensor):
        tok = self.tokens(inp.window, self.window_side(inp))  # (R, S, E)
        w = self.attention(tok, cand_tokens) * (inp.window != F.PAD)[:, None, :]  # (R, C, S)
        pooled = torch.einsum("rcs,rse->rce", w, tok)  # (R, C, E) weighted sum, DIN eq. 3
        return None, torch.cat([pooled, cand_tokens], dim=-1)

    def attention(self, tok: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """(R, C, S) the activation unit's weight of behaviour s for candidate c: the MLP over [b, c, b - c, b * c].

        Its first layer is linear, so W [b, c, b - c, b * c] = (W_1 + W_3) b + (W_2 - W_3) c + W_4 (b * c): the b and
        c terms are computed once per behaviour and per candidate, and only b * c per pair, which never builds the
        (R, C, S, 4E) concatenation (4x the memory and most of DIN's time). Same parameters, same function as
        :meth:`attention_reference`."""
        first, rest = self.activation_unit[0], self.activation_unit[1:]
        e = tok.shape[-1]
        w1, w2, w3, w4 = first.weight.split(e, dim=1)  # (H, E) each
        per_b = tok @ (w1 + w3).T + first.bias  # (R, S, H)
        per_c = cand @ (w2 - w3).T  # (R, C, H)
        pair = (cand[:, :, None, :] * tok[:, None, :, :]) @ w4.T  # (R, C, S, H)
        return rest(pair + per_b[:, None] + per_c[:, :, None])[..., 0]

    def attention_reference(self, tok: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """:meth:`attention` as DIN writes it (the concatenation built); the tests' reference."""
        r, c, e = cand.shape
        s = tok.shape[1]
        ti, tc = tok[:, None].expand(r, c, s, e), cand[:, :, None].expand(r, c, s, e)
        return self.activation_unit(torch.cat([ti, tc, ti - tc, ti * tc], dim=-1))[..., 0]


__all__ = ["DIN", "DINConfig", "WDL", "WDLConfig", "WDLSeq", "WDLSeqConfig"]
