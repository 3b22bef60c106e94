"""BINN (Li et al., KDD 2018, "Learning from History and Present: Next-item Recommendation via Discriminatively
Exploiting User Behaviors"), a matching baseline of SDM Table 2, on SDM's data, causal layout and softmax loss.
Pure PyTorch.

Notation: B batch, T session length, L_f long-term subset length of feature f, d_f input embedding
size of feature f, E = Σ_f d_f input item embedding size, C context embedding size (2·side_dim),
F_used features read (1 = item id unless ``side_info``), D hidden size, N items.

  e_t  = concat_f W^f x_t^f                         item embedding                        (B, T, E)
  c_t  = [W^b behaviour_t; W^Δ bucket(t_t − t_{t−1})]  behaviour context of event t         (B, T, C)
  h_t  = LSTM([e_t; c_t])                           Session Behaviours Learning (SBL):
                                                    present consumption motivation        (B, T, D)
  p_f  = [→h_{L_f}; ←h_1] of BiLSTM_f(g_1..g_{L_f})  Preference Behaviours Learning (PBL):
                                                    historical stable preference          (B, 2D)
  o_t  = W_o [h_t; p_1; ...; p_{F_used}] + b_o       unified representation → D            (B, T, D)
  score = o_tᵀ v_i, sampled or full softmax over items (``MatchingModel``)

How this maps to the paper, and the choices where it differs:
* SBL reads the current session; PBL reads seqrec's long-term input, the user's behaviours in the 7
  days before the session (SDM §3.1, the subset SDM's eq. 11 reads), with a bidirectional LSTM,
  and the unified representation is their concatenation (SDM §4.3: "It generates the unified
  representation by concatenation operation"), projected to D for the inner-product retrieval.
* BINN's contextual LSTM feeds the behaviour type and the time interval to the LSTM gates. Here the
  context c_t (behaviour embedding and a log2 bucket of the gap to the previous event of the
  session; the first event has its own bucket) is concatenated to the LSTM input, so it reaches
  every gate (and the cell candidate) through the input weights. ``context=False`` drops it (a
  plain LSTM). The long-term subsets carry no behaviour or time (they are distinct values, most
  recent first), so PBL is a plain BiLSTM; its order does not matter to it beyond which direction
  reads which end.
* BINN's item embedding is w-item2vec, pre-trained; here, as SDM §4.4 does for every model, all
  embeddings are learned from scratch. SBL and PBL share the input tables W^f (as SDM §3.6).
  ``side_info`` (off by default: item ids only) adds the item side features to the session input,
  and one BiLSTM per side feature over that feature's long-term subset (the subsets are
  per-feature distinct values, not aligned per item, as in SDM eq. 11).
* The session LSTM is causal, so one pass gives every prefix's user vector (``tests/test_shan_binn.py``
  checks it against encoding each prefix); the long-term part is the same for every position.
* An empty long-term subset gives p_f = 0 (never NaN). Padding never reaches the BiLSTM (packed
  sequences), so padding widths change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from seqrec import features as F
from seqrec.batch import Batch
from seqrec.models.common import ItemEmbedding, MatchConfig, MatchingModel

GAP_BUCKETS = 32  # bucket 0: first event of the session; bucket k >= 1: gap of 2^(k-1)-1 .. 2^k-2 seconds (capped)


@dataclass
class BINNConfig(MatchConfig):
    """BINN options: ``context`` feeds behaviour type and time gap (embeddings of ``side_dim``) to the session LSTM."""

    context: bool = True


def gap_buckets(times: torch.Tensor) -> torch.Tensor:
    """(B, T) int64 timestamps → (B, T) bucket codes: 0 for position 0, else 1 + floor(log2(1 + gap seconds))."""
    gap = (times[:, 1:] - times[:, :-1]).clamp_min(0).double()  # (B, T-1); padding positions may go negative
    b = (1 + torch.floor(torch.log2(1.0 + gap))).long().clamp_max(GAP_BUCKETS - 1)  # (B, T-1)
    return torch.cat([torch.zeros_like(times[:, :1]), b], dim=1)  # (B, T)


class PreferenceEncoder(nn.Module):
    """PBL: a bidirectional LSTM per feature over its long-term subset; p = concat_f [→h_last; ←h_first]."""

    def __init__(self, items: ItemEmbedding, dim: int):
        super().__init__()
        self.items = items  # shared input tables W^f
        self.lstm = nn.ModuleDict({n: nn.LSTM(items.dims[n], dim, batch_first=True, bidirectional=True) for n in items.names})
        self.dim = 2 * dim * len(items.names)

    def forward(self, long_term: dict[str, torch.Tensor], dropout: nn.Module) -> torch.Tensor:
        ps = []
        for n in self.items.names:
            codes = long_term[n]  # (B, L_f)
            b, width = codes.shape
            length = (codes != F.PAD).sum(1)  # (B,) subsets are left-aligned, padded on the right
            if width == 0:  # a batch in which no row has a long-term subset (collate gives width 0)
                codes, width = codes.new_zeros(b, 1), 1
            g = dropout(self.items.tables[n](codes))  # (B, L_f, d_f)
            packed = pack_padded_sequence(g, length.clamp(1, width).cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm[n](packed)  # h_n (2, B, D): last forward state, first backward state
            p = torch.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2D)
            ps.append(p * (length > 0)[:, None])  # empty subset → 0 (the clamped length-1 run is discarded)
        return torch.cat(ps, dim=-1)  # (B, 2D·F_used)


class BINN(MatchingModel):
    name = "binn"
    config: BINNConfig

    def __init__(self, config: BINNConfig):
        super().__init__(config)
        c = config
        spec = c.features
        self.dropout = nn.Dropout(c.dropout)
        if c.context:
            self.behavior = nn.Embedding(spec.behavior.vocab_size, c.side_dim, padding_idx=F.PAD)  # W^b
            self.gap = nn.Embedding(GAP_BUCKETS, c.side_dim)  # W^Δ
        else:
            self.behavior = self.gap = None
        context_dim = 2 * c.side_dim if c.context else 0
        self.session = nn.LSTM(self.items.dim + context_dim, c.hidden, batch_first=True)  # SBL
        self.preference = PreferenceEncoder(self.items, c.hidden)  # PBL
        self.out = nn.Linear(c.hidden + self.preference.dim, c.hidden)  # W_o, b_o

    def user_states(self, batch: Batch) -> torch.Tensor:
        x = self.items(batch.seq)  # (B, T, E)
        if self.behavior is not None:
            ctx = torch.cat([self.behavior(batch.seq_behavior), self.gap(gap_buckets(batch.seq_time))], dim=-1)  # (B, T, C)
            x = torch.cat([x, ctx], dim=-1)  # (B, T, E+C)
        h, _ = self.session(self.dropout(x))  # (B, T, D); right padding: position t sees inputs 0..t only
        p = self.preference(batch.long_term, self.dropout)  # (B, 2D·F_used)
        t = h.shape[1]
        unified = torch.cat([h, p[:, None, :].expand(-1, t, -1)], dim=-1)  # (B, T, D + 2D·F_used)
        return self.out(self.dropout(unified))  # (B, T, D)


__all__ = ["BINN", "BINNConfig", "GAP_BUCKETS", "gap_buckets"]
