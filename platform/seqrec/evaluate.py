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

``discovery@K`` (SDM §4.2.2's discovery, offline; :func:`seqrec.metrics.discovery`) is added to a
matcher's metrics when :func:`discovery_inputs` is given (``run_experiment`` gives it on the test split
of the window protocol): the share of the categories a user goes on to click that the user had not
clicked in the 15 days before and that the top K found.

The two-stage pipeline (``two_stage``): the matcher retrieves the top ``candidates`` (300, SDM's
online setting) per row, the ranker re-scores them, and the matching metrics are computed on the
ranker's top K, next to the matcher's own top K.

Running a model over rows (user vectors, ranker logits, seen items) is :mod:`seqrec.inference`,
which serving calls too; its functions stay importable from here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqrec import features as F
from seqrec.batch import pad_lists
from seqrec.config import INDEXES
from seqrec.features import FeatureSpec
from seqrec.inference import chunk_candidates, encode_table, exclusions, score_table, seen_items  # noqa: F401 - re-exported
from seqrec.metrics import discovery, loo_metrics, matching_metrics

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


def retrieve(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, index: str = "exact", exclude: np.ndarray | None = None,
             penalty=math.inf) -> np.ndarray:
    """(U, k) item codes by descending inner product (codes 0/1 never returned, ``exclude`` neither or, with a finite
    ``penalty``, scored lower by it: :mod:`seqrec.retrieval`)."""
    return retrieve_scored(user_vecs, item_vecs, k, index, exclude, penalty)[1]


def retrieve_scored(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, index: str = "exact",
                    exclude: np.ndarray | None = None, penalty=math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(scores (U, k), item codes (U, k)) by descending score, as :func:`retrieve`."""
    from seqrec import retrieval

    if index not in INDEXES:
        raise ValueError(f"index={index!r}; choose one of {INDEXES}")
    if index == "exact":
        return retrieval.exact_topk(user_vecs, item_vecs, k, exclude=exclude, penalty=penalty)
    idx = retrieval.ItemIndex.build(item_vecs, kind=index)
    return idx.search(user_vecs, k, exclude=exclude, penalty=penalty)


DISCOVERY_DAYS = 15  # SDM §4.2.2: a category is new to a user who has not clicked it in the past 15 days


@dataclass
class DiscoveryInputs:
    """What ``discovery@K`` needs beside the top K, for one table of evaluation rows.

    ``item_category`` (N,): the category code of every item code; ``history`` (U, H): per evaluation row, the
    category codes its user clicked in the 15 days before the recommendation moment, 0-padded; ``feature``: the
    category feature used (the item id when the dataset has no ``category_id``: discovery of new items).
    """

    item_category: np.ndarray
    history: np.ndarray
    feature: str


def _flat(col) -> tuple[np.ndarray, np.ndarray]:
    """(values, row) of a list column, each (n,)."""
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return (pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64),
            pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64))


def discovery_inputs(data_dir: str | os.PathLike, table: pa.Table, earlier: Sequence[pa.Table] = (),
                     days: float = DISCOVERY_DAYS) -> DiscoveryInputs:
    """The item categories and each evaluation row's 15-day category history, from the prepared dataset.

    A prepared dataset keeps no raw event log, so the history is rebuilt from its rows. The recommendation
    moment t of a row is its last input event; the history holds the categories of the events with a timestamp
    in [t - ``days``, t] among (1) the row's own input and BST history (``hist_*``: the events before its
    session), (2) the inputs and histories of the same user's rows in ``earlier`` splits (pass the splits whose
    events all precede ``table``'s: train, and val for test; training rows hold every session of >= 2 events,
    their histories the single-event sessions before them), (3) the ground truth of earlier evaluation rows
    (validation) whose last input event lies in the window (their items follow it and precede ``table``'s
    window), and (4) under the session input protocol, the row's own long-term subset L (the 7 days before its
    session, inside the window). An event none of these holds is missed (a single-event session more than
    ``hist_len`` events before the user's next row, events the filters removed), so the history can only be
    smaller than the true one.
    """
    import pyarrow.compute as pc

    from seqrec.data.items import read_items
    from seqrec.data.prepare import load_manifest

    manifest = load_manifest(data_dir)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    p = manifest["config"]["protocol"]
    names = [f.name for f in spec.item_features]
    feature = F.CATEGORY if F.CATEGORY in names else F.ITEM_ID
    item_cat = (np.arange(spec.n_items, dtype=np.int64) if feature == F.ITEM_ID
                else read_items(data_dir, spec).side[:, names.index(feature) - 1])
    U = table.num_rows
    ts, row = _flat(table[F.seq_col(F.TIMESTAMP)])
    t_ref = np.full(U, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(t_ref, row, ts)  # (U,) the last input event of every row
    window = int(round(days * 86400))
    rows, cats = [], []

    def add(r: np.ndarray, c: np.ndarray, t: np.ndarray) -> None:
        """Keep the events (evaluation row ``r``, category ``c``) whose time ``t`` is in the row's window."""
        keep = (r >= 0) & (t >= t_ref[np.maximum(r, 0)] - window) & (t <= t_ref[np.maximum(r, 0)])
        rows.append(r[keep])
        cats.append(c[keep])

    def add_rows(t: pa.Table, to_row: np.ndarray) -> None:
        c, r = _flat(t[F.seq_col(feature)])
        add(to_row[r], c, _flat(t[F.seq_col(F.TIMESTAMP)])[0])
        items, r = _flat(t[F.hist_col(F.ITEM_ID)])
        add(to_row[r], item_cat[items], _flat(t[F.hist_col(F.TIMESTAMP)])[0])

    add_rows(table, np.arange(U, dtype=np.int64))
    if p.get("input", "session") == "session" and p.get("long_term_s", 0) <= window:
        c, r = _flat(table[F.long_term_col(feature)])
        add(r, c, t_ref[r])
    for t in earlier:
        if t is None or t.num_rows == 0:
            continue
        # the evaluation row of each row's user (one per user in every protocol; -1: user not evaluated)
        to_row = pc.index_in(t[F.USER_RAW], value_set=table[F.USER_RAW]).to_numpy(zero_copy_only=False)
        to_row = np.nan_to_num(to_row.astype(np.float64), nan=-1).astype(np.int64)
        add_rows(t, to_row)
        items, r = _flat(t[F.TARGETS])  # training rows have none
        if len(items):
            last = np.full(t.num_rows, np.iinfo(np.int64).min, np.int64)
            its, ir = _flat(t[F.seq_col(F.TIMESTAMP)])
            np.maximum.at(last, ir, its)
            add(to_row[r], item_cat[items], last[r])
    r, c = np.concatenate(rows), np.concatenate(cats)
    keep = c >= F.FIRST_CODE
    width = int(c.max(initial=0)) + 1
    keys = np.unique(r[keep] * width + c[keep])  # distinct (row, category), grouped by row
    r, c = keys // width, keys % width
    n = np.bincount(r, minlength=U)
    history = np.zeros((U, int(n.max(initial=0))), np.int64)
    history[r, np.arange(len(r)) - (np.cumsum(n) - n)[r]] = c
    return DiscoveryInputs(item_cat, history, feature)


def metrics_from_topk(topk: np.ndarray, table: pa.Table, protocol: str, ks=None,
                      discovery_in: DiscoveryInputs | None = None) -> dict:
    """The protocol's retrieval metrics of ``topk`` (U, K) on ``table``'s ground truth, plus ``discovery@K`` when
    ``discovery_in`` (:func:`discovery_inputs` of ``table``) is given."""
    ks = tuple(ks or default_ks(protocol))
    truth = truth_of(table)
    out = loo_metrics(topk, truth[:, 0], ks=ks) if protocol == "loo" else matching_metrics(topk, truth, ks=ks)
    if discovery_in is not None:
        out |= discovery(topk, truth, discovery_in.item_category, discovery_in.history, ks=ks)
    return out


def evaluate_matcher(
    model,
    table: pa.Table,
    spec: FeatureSpec,
    protocol: str,
    ks=None,
    index: str = "exact",
    exclude_seen: bool = False,
    device: str = "cpu",
    discovery_in: DiscoveryInputs | None = None,
) -> dict:
    """Metrics of a neural matcher on evaluation rows (``val`` or ``test`` split); with ``discovery_in``
    (:func:`discovery_inputs` of ``table``) also ``discovery@K``."""
    if table.num_rows == 0:
        raise ValueError("no evaluation rows: the split is empty (prepare with validation on, or evaluate on test)")
    ks = tuple(ks or default_ks(protocol))
    users = encode_table(model, table, spec, device=device)
    items = model.item_embeddings().detach().float().cpu().numpy()
    exclude, penalty = exclusions(model, table, exclude_seen)
    return metrics_from_topk(retrieve(users, items, max(ks), index, exclude, penalty), table, protocol, ks, discovery_in)


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
    scores, codes = retrieve_scored(users, items, n, index, *exclusions(matcher, table, exclude_seen))
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


def evaluate_item_cf(cf, table: pa.Table, protocol: str, ks=None, exclude_seen: bool = False,
                     discovery_in: DiscoveryInputs | None = None) -> dict:
    ks = tuple(ks or default_ks(protocol))
    trig, lengths = item_cf_inputs(table)
    topk = cf.topk(trig, lengths, max(ks), exclude=seen_items(table) if exclude_seen else None)
    return metrics_from_topk(topk, table, protocol, ks, discovery_in)
