"""Per-epoch validation for every trainer: which metric picks the best epoch, and how it is measured.

Matchers are measured with the protocol's retrieval metrics (:func:`seqrec.evaluate.evaluate_matcher`)
and picked by Recall@50 (NDCG@20 on leave-one-out data); rankers by AUC on popularity negatives
(:func:`seqrec.evaluate.evaluate_ranker`), drawn by the popularity the ranker carries. A cascade ranker
(validation rows that carry the matcher's candidates, ``seqrec.train.cascade``) is measured as it will be
used, re-ordering those candidates, and picked by the protocol's retrieval metric of its top K.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import pad_lists
from seqrec.evaluate import cascade_metrics, evaluate_matcher, evaluate_ranker, protocol_of, selection_metric
from seqrec.features import FeatureSpec
from seqrec.models import is_ranker


def select_metric(model: str, manifest: dict, cascade: bool = False) -> str:
    """The validation metric that picks checkpoints: AUC for rankers, the protocol's metric for matchers and for
    cascade rankers."""
    return "AUC" if is_ranker(model) and not cascade else selection_metric(protocol_of(manifest))


def validator(model: str, table: pa.Table, spec: FeatureSpec, manifest: dict,
              rank_negatives: int = 4) -> Callable[[torch.nn.Module], dict]:
    """``validate(model) -> {metric: value}`` on the validation rows ``table``; batches go where the model is."""
    protocol = protocol_of(manifest)

    if is_ranker(model) and F.ROW_CAND_ITEM in table.column_names:  # cascade: the matcher's candidates of each row
        codes = pad_lists(table[F.ROW_CAND_ITEM])
        scores = pad_lists(table[F.ROW_CAND_SCORE], dtype=np.float32)

        def on_candidates(m: torch.nn.Module) -> dict:
            device = str(next(m.parameters()).device)
            return cascade_metrics(m, table, spec, protocol, codes, scores, device=device)

        return on_candidates

    def validate(m: torch.nn.Module) -> dict:
        device = str(next(m.parameters()).device)
        if is_ranker(model):
            counts = m.item_counts.detach().cpu().numpy().astype(np.float64)
            return evaluate_ranker(m, table, spec, counts, rank_negatives, seed=0, device=device)
        return evaluate_matcher(m, table, spec, protocol, device=device)

    return validate


__all__ = ["select_metric", "validator"]
