"""Neural matching baselines of SDM Table 2, on SDM's data, causal layout and softmax loss.

Notation: B batch, T session length, E input item embedding size, D hidden size, N items.

* YouTube DNN (Covington et al. 2016): mean of the item embeddings seen so far, concatenated with
  the user profile, through a ReLU tower → D.
* GRU4Rec (Hidasi et al. 2016): a GRU over the session; o_t = h_t.
* NARM (Li et al. 2017): GRU; global encoder c_g = h_t; local encoder c_l = Σ_{j<=t} α_tj h_j with
  α_tj = vᵀσ(A₁h_j + A₂h_t); o_t = B [c_g; c_l] (the bilinear decoder's item side is V).

All three use item ids only by default (as in their papers; ``side_info=True`` adds side features)
and train every position at once, like SDM; sampled/full softmax comes from ``MatchingModel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqrec.batch import Batch
from seqrec.models.common import MatchConfig, ProfileEmbedding, SequenceModel, causal_mask


@dataclass
class YouTubeDNNConfig(MatchConfig):
    user_profile: bool = True
    tower_layers: int = 2  # ReLU layers of size D after [mean(e); e_u]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tower_layers < 1:
            raise ValueError(f"tower_layers={self.tower_layers} must be >= 1")


class YouTubeDNN(SequenceModel):
    name = "youtube_dnn"
    config: YouTubeDNNConfig

    def __init__(self, config: YouTubeDNNConfig):
        super().__init__(config)
        c = config
        self.profile = ProfileEmbedding(c.features, c.profile_dim, c.hidden) if c.user_profile else None
        layers, width = [], self.items.dim + (c.hidden if c.user_profile else 0)
        for i in range(c.tower_layers):
            layers += ([nn.Linear(width, c.hidden), nn.ReLU(), nn.Dropout(c.dropout)] if i < c.tower_layers - 1
                       else [nn.Linear(width, c.hidden)])
            width = c.hidden
        self.tower = nn.Sequential(*layers)

    def sequence_states(self, batch: Batch) -> torch.Tensor:
        e = self.items(batch.seq)  # (B, T, E)
        t = e.shape[1]
        mean = e.cumsum(1) / torch.arange(1, t + 1, device=e.device, dtype=e.dtype)[None, :, None]  # (B, T, E) causal mean
        if self.profile is not None:
            mean = torch.cat([mean, self.profile(batch.user)[:, None, :].expand(-1, t, -1)], dim=-1)  # (B, T, E+D)
        return self.tower(mean)  # (B, T, D)


@dataclass
class GRU4RecConfig(MatchConfig):
    layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise ValueError(f"layers={self.layers} must be >= 1")


class GRU4Rec(SequenceModel):
    name = "gru4rec"
    config: GRU4RecConfig

    def __init__(self, config: GRU4RecConfig):
        super().__init__(config)
        c = config
        self.dropout = nn.Dropout(c.dropout)
        self.gru = nn.GRU(self.items.dim, c.hidden, num_layers=c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)

    def sequence_states(self, batch: Batch) -> torch.Tensor:
        h, _ = self.gru(self.dropout(self.items(batch.seq)))  # (B, T, D)
        return h


@dataclass
class NARMConfig(MatchConfig):
    pass


class NARM(SequenceModel):
    name = "narm"
    config: NARMConfig

    def __init__(self, config: NARMConfig):
        super().__init__(config)
        c = config
        self.dropout = nn.Dropout(c.dropout)
        self.gru = nn.GRU(self.items.dim, c.hidden, batch_first=True)
        self.a1 = nn.Linear(c.hidden, c.hidden, bias=False)
        self.a2 = nn.Linear(c.hidden, c.hidden, bias=False)
        self.v = nn.Linear(c.hidden, 1, bias=False)
        self.decoder = nn.Linear(2 * c.hidden, c.hidden, bias=False)  # B of the bilinear decoder

    def sequence_states(self, batch: Batch) -> torch.Tensor:
        h, _ = self.gru(self.dropout(self.items(batch.seq)))  # (B, T, D)
        t = h.shape[1]
        e = torch.sigmoid(self.a1(h)[:, None, :, :] + self.a2(h)[:, :, None, :])  # (B, T_query, T_key, D)
        alpha = self.v(e).squeeze(-1) * causal_mask(t, h.device)  # (B, T, T), zero on future keys
        c_local = alpha @ h  # (B, T, D)
        return self.decoder(self.dropout(torch.cat([h, c_local], dim=-1)))  # (B, T, D)


__all__ = ["GRU4Rec", "GRU4RecConfig", "NARM", "NARMConfig", "YouTubeDNN", "YouTubeDNNConfig"]
