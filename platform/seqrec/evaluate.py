"""Offline evaluation of matching models (SDM §4.2) on a prepared dataset.

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
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import pad_lists, collate
from seqrec.features import FeatureSpec
from seqrec.metrics import loo_metrics, matching_metrics

WINDOW_KS = (20, 50, 100)
LOO_KS = (10, 20, 50)
INDEXES = ("exact", "flat", "hnsw", "ivf")


def protocol_of(manifest: dict) -> str:
    """``loo`` or ``window``: which metric family a prepared dataset is evaluated with."""
    return "loo" if manifest["config"]["protocol"]["split"] == "loo" else "window"


def default_ks(protocol: str) -> tuple[int, ...]:
    return LOO_KS if protocol == "loo" else WINDOW_KS


def selection_metric(protocol: str) -> str:
    """The validation metric that picks the best epoch."""
    return "NDCG@20" if protocol == "loo" else "Recall@50"


def seen_items(table: pa.Table) -> np.ndarray:
    """(U, E) the item codes each row has already seen (session, long-term, history), 0-padded."""
    parts = [pad_lists(table[c]) for c in (F.seq_col(F.ITEM_ID), F.long_term_col(F.ITEM_ID), F.hist_col(F.ITEM_ID))]
    return np.concatenate(parts, axis=1)


def truth_of(table: pa.Table) -> np.ndarray:
    """(U, M) ground truth item codes, 0-padded."""
    return pad_lists(table[F.TARGETS])


@torch.no_grad()
def encode_table(model, table: pa.Table, spec: FeatureSpec, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """(U, D) user vectors (last position) for every row of ``table``, in row order."""
    model.eval()
    out = []
    for start in range(0, table.num_rows, batch_size):
        batch = collate(table.slice(start, batch_size), spec).to(device)
        out.append(model.encode_users(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden), np.float32)


def retrieve(user_vecs: np.ndarray, item_vecs: np.ndarray, k: int, index: str = "exact", exclude: np.ndarray | None = None) -> np.ndarray:
    """(U, k) item codes by descending inner product (codes 0/1 and ``exclude`` never returned)."""
    from seqrec import retrieval

    if index not in INDEXES:
        raise ValueError(f"index={index!r}; choose one of {INDEXES}")
    if index == "exact":
        return retrieval.exact_topk(user_vecs, item_vecs, k, exclude=exclude)[1]
    idx = retrieval.ItemIndex.build(item_vecs, kind=index)
    return idx.search(user_vecs, k, exclude=exclude)[1]


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
