"""Per-epoch validation for every trainer: which metric picks the best epoch, and how it is measured.

Matchers are measured with the protocol's retrieval metrics (:func:`seqrec.evaluate.evaluate_matcher`)
and picked by Recall@50 (NDCG@20 on leave-one-out data); rankers by AUC on popularity negatives
(:func:`seqrec.evaluate.evaluate_ranker`), drawn by the popularity the ranker carries.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from seqrec.evaluate import evaluate_matcher, evaluate_ranker, protocol_of, selection_metric
from seqrec.features import FeatureSpec
from seqrec.models import is_ranker


def select_metric(model: str, manifest: dict) -> str:
    """The validation metric that picks checkpoints: AUC for rankers, the protocol's metric for matchers."""
    return "AUC" if is_ranker(model) else selection_metric(protocol_of(manifest))


def validator(model: str, table: pa.Table, spec: FeatureSpec, manifest: dict,
              rank_negatives: int = 4) -> Callable[[torch.nn.Module], dict]:
    """``validate(model) -> {metric: value}`` on the validation rows ``table``; batches go where the model is."""
    protocol = protocol_of(manifest)

    def validate(m: torch.nn.Module) -> dict:
        device = str(next(m.parameters()).device)
        if is_ranker(model):
            counts = m.item_counts.detach().cpu().numpy().astype(np.float64)
            return evaluate_ranker(m, table, spec, counts, rank_negatives, seed=0, device=device)
        return evaluate_matcher(m, table, spec, protocol, device=device)

    return validate


__all__ = ["select_metric", "validator"]
