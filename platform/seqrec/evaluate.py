"""Offline evaluation of matching models (SDM §4.2), ranking models (BST §3) and the two-stage pipeline.

Two protocols, decided by how the dataset was prepared (``manifest.config.split``):

* **window** (``dataset-day`` / ``user-day``): each evaluation row is the first 25% of a user's
  test window as input and the rest, deduplicated, as ground truth. Metrics: HitRate@K,
  Precision@K, Recall@K, F1@K, K ∈ {20, 50, 100}, averaged over users (``seqrec.metrics``).
* **loo** (leave-one-out): one held-out item per user, full ranking over all items; Hit@K and
  NDCG@K, K ∈ {10, 20, 50}, comparable with RecBole's numbers on the same data.

Retrieval ranks every real item (codes >= 2) by inner product with the user vector. With
``exclude_seen`` the items of the input session, its long-term subset and the BST history are
removed from the ranking (the paper keeps them; so does the default). ``index`` is ``exact``
(torch matmul), ``flat`` (FAISS IndexFlatIP, identical to exact up to ties) or an approximate
FAISS index (``hnsw``, ``ivf``).

Rankers are measured by AUC, per-user GAUC and log loss (``seqrec.metrics.ranking_metrics``) on
the evaluation rows: each row's context is its whole input (history, then the first 25% of its
test window), its positives are its ground-truth items and its negatives ``negatives`` items per
positive drawn from the training popularity (never a ground-truth item of the row), with a fixed
seed so every model sees the same samples. The recommendation moment is the row's last input event.

The two-stage pipeline (``two_stage``): the matcher retrieves the top ``candidates`` (300, SDM's
online setting) per row, the ranker re-scores them, and the matching metrics are computed on the
ranker's top K, next to the matcher's own top K.

Running a model over rows (user vectors, ranker logits, seen items) is :mod:`seqrec.inference`,
which serving calls too; its functions stay importable from here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seqrec import features as F
from seqrec.batch import pad_lists
from seqrec.config import INDEXES
from seqrec.features import FeatureSpec
from seqrec.inference import chunk_candidates, encode_table, score_table, seen_items  # noqa: F401 - re-exported
from seqrec.metrics import loo_metrics, matching_metrics

WINDOW_KS = (20, 50, 100)
LOO_KS = (10, 20, 50)


def protocol_of(manifest: dict) -> str:
    """``loo`` or ``window``: which metric family a prepared dataset is evaluated with."""
    return "loo" if manifest["config"]["protocol"]["split"] == "loo" else "window"


def default_ks(protocol: str) -> tuple[int, ...]:
    return LOO_KS if protocol == "loo" else WINDOW_KS


def selection_metric(protocol: str) -> str:
    """The validation metric that picks the best epoch."""
    return "NDCG@20" if protocol == "loo" else "Recall@50"


def truth_of(table: pa.Table) -> np.ndarray:
    """(U, M) ground truth item codes, 0-padded."""
    return pad_lists(table[F.TARGETS])


def retrieve(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, index: str = "exact", exclude: np.ndarray | None = None) -> np.ndarray:
    """(U, k) item codes by descending inner product (codes 0/1 and ``exclude`` never returned)."""
    return retrieve_scored(user_vecs, item_vecs, k, index, exclude)[1]


def retrieve_scored(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, index: str = "exact",
                    exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (U, k), item codes (U, k)) by descending inner product (codes 0/1 and ``exclude`` never returned)."""
    from seqrec import retrieval

    if index not in INDEXES:
        raise ValueError(f"index={index!r}; choose one of {INDEXES}")
    if index == "exact":
        return retrieval.exact_topk(user_vecs, item_vecs, k, exclude=exclude)
    idx = retrieval.ItemIndex.build(item_vecs, kind=index)
    return idx.search(user_vecs, k, exclude=exclude)


def metrics_from_topk(topk: np.ndarray, table: pa.Table, protocol: str, ks=None) -> dict:
    ks = tuple(ks or default_ks(protocol))
    truth = truth_of(table)
    if protocol == "loo":
        return loo_metrics(topk, truth[:, 0], ks=ks)
    return matching_metrics(topk, truth, ks=ks)


def evaluate_matcher(
    model,
    table: pa.Table,
    spec: FeatureSpec,
    protocol: str,
    ks=None,
    index: str = "exact",
    exclude_seen: bool = False,
    device: str = "cpu",
) -> dict:
    """Metrics of a neural matcher on evaluation rows (``val`` or ``test`` split)."""
    if table.num_rows == 0:
        raise ValueError("no evaluation rows: the split is empty (prepare with validation on, or evaluate on test)")
    ks = tuple(ks or default_ks(protocol))
    users = encode_table(model, table, spec, device=device)
    items = model.item_embeddings().detach().float().cpu().numpy()
    exclude = seen_items(table) if exclude_seen else None
    return metrics_from_topk(retrieve(users, items, max(ks), index, exclude), table, protocol, ks)


def rank_eval_samples(table: pa.Table, counts: np.ndarray, negatives: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(U, C) candidates and (U, C) labels: each row's known ground-truth items (label 1) and
    ``negatives`` popularity-drawn items per positive that are not in its ground truth (label 0).

    Rows without a known ground-truth item get no candidates (all padding). Fixed ``seed``: every
    model is measured on the same samples.
    """
    if negatives < 1:
        raise ValueError(f"negatives={negatives} must be >= 1 per positive")
    truth = truth_of(table)
    w = np.asarray(counts, np.float64).copy()
    w[: F.FIRST_CODE] = 0
    if w.sum() <= 0:
        raise ValueError("item counts are all zero: cannot draw popularity negatives")
    p = w / w.sum()
    rng = np.random.default_rng(seed)
    pos = [np.unique(r[r >= F.FIRST_CODE]) for r in truth]
    width = max((len(x) * (1 + negatives) for x in pos), default=0)
    cands = np.zeros((len(truth), width), np.int64)
    labels = np.zeros((len(truth), width), np.float32)
    for i, x in enumerate(pos):  # per row: a few thousand rows, not a hot path
        need = len(x) * negatives
        neg = np.zeros(0, np.int64)
        while len(neg) < need:
            draw = rng.choice(len(p), size=2 * need + 8, p=p)
            neg = np.concatenate([neg, draw[~np.isin(draw, x)]])
        row = np.concatenate([x, neg[:need]])
        cands[i, : len(row)] = row
        labels[i, : len(x)] = 1.0
    return cands, labels


def evaluate_ranker(model, table: pa.Table, spec: FeatureSpec, counts: np.ndarray, negatives: int = 4, seed: int = 0,
                    device: str = "cpu") -> dict:
    """AUC, GAUC (per row = per user) and log loss of a ranker on evaluation rows."""
    from seqrec.metrics import ranking_metrics

    if table.num_rows == 0:
        raise ValueError("no evaluation rows: the split is empty (prepare with validation on, or evaluate on test)")
    cands, labels = rank_eval_samples(table, counts, negatives, seed)
    row, chunks, flat = chunk_candidates(cands)
    logits = score_table(model, table.take(row), spec, chunks, device=device)
    ok = flat >= 0
    idx = flat[ok]
    groups = idx // max(1, cands.shape[1])
    return ranking_metrics(labels.ravel()[idx], logits[ok].astype(np.float64), groups)


def rerank(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """(U, k) candidates ordered by descending ranker score (stable: ties keep the matcher's order)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(candidates, order, axis=1)
    return np.where(np.take_along_axis(scores, order, axis=1) > -np.inf, out, -1)


def matcher_candidates(matcher, table: pa.Table, spec: FeatureSpec, n: int, index: str = "exact",
                       exclude_seen: bool = False, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(codes (U, n), matcher scores (U, n)): each evaluation row's top ``n`` items by the matcher, best first."""
    users = encode_table(matcher, table, spec, device=device)
    items = matcher.item_embeddings().detach().float().cpu().numpy()
    scores, codes = retrieve_scored(users, items, n, index, seen_items(table) if exclude_seen else None)
    return codes, scores


def rank_candidates(ranker, table: pa.Table, spec: FeatureSpec, codes: np.ndarray, scores: np.ndarray,
                    device: str = "cpu") -> np.ndarray:
    """(U, n) ranker logits of the matcher's candidates (with their matcher scores when the ranker reads them)."""
    match = scores if getattr(ranker.config, "match_features", False) else None
    return score_table(ranker, table, spec, codes, device=device, match=match)


def candidate_ranking(logits: np.ndarray, codes: np.ndarray, table: pa.Table) -> dict:
    """AUC / GAUC / log loss of a ranker over the matcher's candidates: a candidate is positive when it is in
    the row's ground truth (the ranker's own quality on the lists it orders; rows without a positive among
    their candidates count in AUC only)."""
    from seqrec.metrics import ranking_metrics

    truth = truth_of(table)
    ok = codes >= F.FIRST_CODE
    labels = (codes[:, :, None] == truth[:, None, :]).any(-1) & ok
    rows = np.broadcast_to(np.arange(len(codes))[:, None], codes.shape)
    return ranking_metrics(labels[ok].astype(np.float64), logits[ok].astype(np.float64), rows[ok])


def cascade_metrics(ranker, table: pa.Table, spec: FeatureSpec, protocol: str, codes: np.ndarray, scores: np.ndarray,
                    ks=None, device: str = "cpu") -> dict:
    """A ranker on the matcher's candidates (``codes``, ``scores``): the retrieval metrics of its top K and its
    AUC / GAUC / log loss over the candidates (:func:`candidate_ranking`)."""
    ks = tuple(ks or default_ks(protocol))
    logits = rank_candidates(ranker, table, spec, codes, scores, device)
    return {**metrics_from_topk(rerank(logits, codes, max(ks)), table, protocol, ks),
            **candidate_ranking(logits, codes, table)}


def two_stage(
    matcher,
    rankers: dict,
    table: pa.Table,
    spec: FeatureSpec,
    protocol: str,
    candidates: int = 300,
    ks=None,
    index: str = "exact",
    exclude_seen: bool = False,
    device: str = "cpu",
) -> dict:
    """{"matcher": metrics of its own top K, "ceiling": the share of the ground truth among its top ``candidates``,
    name: metrics after ``rankers[name]`` re-ranks those candidates, with the ranker's AUC/GAUC over them}."""
    ks = tuple(ks or default_ks(protocol))
    if candidates < max(ks):
        raise ValueError(f"candidates={candidates} must be >= the largest K={max(ks)}")
    codes, scores = matcher_candidates(matcher, table, spec, candidates, index, exclude_seen, device)
    out = {"matcher": metrics_from_topk(codes[:, : max(ks)], table, protocol, ks),
           "ceiling": metrics_from_topk(codes, table, protocol, (candidates,))}
    for name, ranker in rankers.items():
        logits = rank_candidates(ranker, table, spec, codes, scores, device)
        out[name] = {**metrics_from_topk(rerank(logits, codes, max(ks)), table, protocol, ks),
                     **{f"cand_{k}": v for k, v in candidate_ranking(logits, codes, table).items()
                        if k in ("AUC", "GAUC")}}
    return out


def item_cf_inputs(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Trigger sequences for item-CF: the BST history followed by the session (most recent last)."""
    hist, seq = pad_lists(table[F.hist_col(F.ITEM_ID)]), pad_lists(table[F.seq_col(F.ITEM_ID)])
    h_len, s_len = (hist > 0).sum(1), (seq > 0).sum(1)
    width = hist.shape[1] + seq.shape[1]
    out = np.zeros((len(hist), width), np.int64)  # (U, H+T) left-aligned: hist then session
    rows = np.arange(len(hist))[:, None]
    out[rows, np.arange(hist.shape[1])[None, :]] = hist
    pos = h_len[:, None] + np.arange(seq.shape[1])[None, :]
    valid = np.arange(seq.shape[1])[None, :] < s_len[:, None]
    out[np.broadcast_to(rows, pos.shape)[valid], pos[valid]] = seq[valid]
    return out, h_len + s_len


def fit_item_cf(train: pa.Table, spec: FeatureSpec, **options):
    from seqrec.models.itemcf import ItemCF, ItemCFConfig

    seqs = pad_lists(train[F.seq_col(F.ITEM_ID)])
    return ItemCF(ItemCFConfig(**options)).fit(seqs, train[F.SEQ_LEN].to_numpy().astype(np.int64), spec.n_items)


def evaluate_item_cf(cf, table: pa.Table, protocol: str, ks=None, exclude_seen: bool = False) -> dict:
    ks = tuple(ks or default_ks(protocol))
    trig, lengths = item_cf_inputs(table)
    topk = cf.topk(trig, lengths, max(ks), exclude=seen_items(table) if exclude_seen else None)
    return metrics_from_topk(topk, table, protocol, ks)
