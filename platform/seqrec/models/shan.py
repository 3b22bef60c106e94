"""SHAN (Ying et al., IJCAI 2018, "Sequential Recommender System based on Hierarchical Attention Network"),
a matching baseline of SDM Table 2, on SDM's data, causal layout and softmax loss. Pure PyTorch.

Notation: B batch, T session length, L_f long-term subset length of feature f, d_f input embedding
size of feature f, E = Σ_f d_f input item embedding size, D hidden size (user/item vector), N items.

Two attention layers, both queried by the user embedding u (the same profile representation e_u
SDM's P variants use, ``ProfileEmbedding``: the profile features, or the user id where the data
has none):
  g_k    = W^f x_k                                  long-term entry k of feature f       (B, L_f, d_f)
  α_k    = softmax_k(uᵀ ReLU(W₁^f g_k + b₁^f))       layer 1 over L_f (SHAN eq. 2-3)      (B, L_f)
  u_long = concat_f Σ_k α_k g_k                      long-term representation (eq. 4)     (B, E)
  x      = [u_long; e_0; ...; e_{T-1}]               e_j the session's item embeddings    (B, 1+T, E)
  β_tj   = softmax_{j ∈ {long} ∪ {0..t}}(uᵀ ReLU(W₂ x_j + b₂))   layer 2 (eq. 5-6)        (B, T, 1+T)
  o_t    = W_o Σ_j β_tj x_j                          u_hybrid of position t (eq. 7) → D   (B, T, D)
  score  = o_tᵀ v_i, sampled or full softmax over items (``MatchingModel``)

How this maps to the paper, and the choices where it differs:
* The long-term item set L^u_{t-1} is seqrec's long-term input, the user's behaviours in the 7 days
  before the session (SDM §3.1, the subset SDM's eq. 11 reads); the short-term set S^u_t is the
  session up to and including position t. With ``side_info`` (off by default: item ids only, as
  SHAN's paper), layer 1 runs once per feature on its own subset (the subsets are per-feature
  distinct values, not aligned per item, as in SDM eq. 11) and u_long concatenates the results, so
  it has the width E of a session item embedding e_j and the two can share layer 2.
* Layer 2 is causal: position t attends over u_long and items 0..t only, so one pass gives every
  prefix's user vector (``tests/test_shan_binn.py`` checks it against encoding each prefix).
  Its query u is the same at every position; only the set of visible keys grows.
* An empty long-term subset gives u_long = 0 (masked attention, never NaN), and the u_long slot of
  layer 2 is then masked too: the user vector is attention over the session alone.
* SHAN scores u_hybrid against the same item table it reads; here, as in every matcher but SASRec,
  the input tables (E) and the output table V (D) are separate, so u_hybrid is projected to D by
  W_o. SHAN's BPR loss with L2 regularisation is replaced by the shared softmax loss and dropout
  (on the input embeddings), as for every matcher here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.models.common import ItemEmbedding, MatchConfig, MatchingModel, ProfileEmbedding, causal_mask, masked_softmax


@dataclass
class SHANConfig(MatchConfig):
    """SHAN options: the shared ``MatchConfig`` ones (``hidden`` is the attention size and the user vector size D)."""


class LongTermAttention(nn.Module):
    """Layer 1: per-feature attention over the long-term subsets with u as query (SHAN eq. 2-4).

    Returns u_long (B, E), the concatenation over features of Σ_k α_k g_k, and whether each row has
    any long-term entry (B,) bool.
    """

    def __init__(self, items: ItemEmbedding, dim: int):
        super().__init__()
        self.items = items  # the input tables W^f, shared with the session (as SDM §3.6)
        self.keys = nn.ModuleDict({n: nn.Linear(items.dims[n], dim) for n in items.names})  # W₁^f, b₁^f

    def forward(self, long_term: dict[str, torch.Tensor], u: torch.Tensor, dropout: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        zs, present = [], []
        for n in self.items.names:
            codes = long_term[n]  # (B, L_f)
            g = dropout(self.items.tables[n](codes))  # (B, L_f, d_f)
            h = torch.relu(self.keys[n](g))  # (B, L_f, D)
            valid = codes != F.PAD  # (B, L_f)
            alpha = masked_softmax((h @ u[:, :, None]).squeeze(-1), valid)  # (B, L_f); all-padding row → 0
            zs.append((alpha[:, :, None] * g).sum(1))  # (B, d_f)
            present.append(valid.any(1))  # (B,)
        return torch.cat(zs, dim=-1), torch.stack(present, 1).any(1)  # (B, E), (B,)


class SHAN(MatchingModel):
    name = "shan"
    config: SHANConfig

    def __init__(self, config: SHANConfig):
        super().__init__(config)
        c = config
        self.dropout = nn.Dropout(c.dropout)
        self.profile = ProfileEmbedding(c.features, c.profile_dim, c.hidden)  # u
        self.long_term = LongTermAttention(self.items, c.hidden)  # layer 1
        self.keys = nn.Linear(self.items.dim, c.hidden)  # W₂, b₂ of layer 2
        self.out = nn.Linear(self.items.dim, c.hidden)  # W_o: u_hybrid (E) → D

    def user_states(self, batch: Batch) -> torch.Tensor:
        u = self.profile(batch.user)  # (B, D)
        u_long, has_long = self.long_term(batch.long_term, u, self.dropout)  # (B, E), (B,)
        e = self.dropout(self.items(batch.seq))  # (B, T, E)
        b, t, _ = e.shape
        x = torch.cat([u_long[:, None, :], e], dim=1)  # (B, 1+T, E)
        scores = (torch.relu(self.keys(x)) @ u[:, :, None]).squeeze(-1)  # (B, 1+T): one query u per row
        visible = torch.cat([has_long[:, None, None].expand(b, t, 1), causal_mask(t, e.device)[None].expand(b, t, t)], dim=2)  # (B, T, 1+T)
        beta = masked_softmax(scores[:, None, :].expand(b, t, t + 1), visible)  # (B, T, 1+T)
        return self.out(beta @ x)  # (B, T, E) → (B, T, D)


__all__ = ["SHAN", "SHANConfig"]
