"""Running a trained model over session rows: what offline evaluation and serving both call.

Rows are the prepared (or served, ``seqrec.serving.RowBuilder``) session rows, an Arrow table;
models are the pure PyTorch matchers (``encode_users``) and rankers (``score``). Layer: above
data and models, below evaluation and serving (it imports neither, nor Ray).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import collate, pad_lists
from seqrec.features import FeatureSpec


def seen_items(table: pa.Table) -> np.ndarray:
    """(U, E) the item codes each row has already seen (session, long-term, history), 0-padded."""
    parts = [pad_lists(table[c]) for c in (F.seq_col(F.ITEM_ID), F.long_term_col(F.ITEM_ID), F.hist_col(F.ITEM_ID))]
    return np.concatenate(parts, axis=1)


def matcher_inputs(table: pa.Table) -> np.ndarray:
    """(U, T + L) the item codes a matcher's last position has seen: the session, then the long-term items, 0-padded
    (:func:`seqrec.models.common.input_items` of every row's last position)."""
    return np.concatenate([pad_lists(table[F.seq_col(F.ITEM_ID)]), pad_lists(table[F.long_term_col(F.ITEM_ID)])], axis=1)


def seen_penalty_of(matcher) -> float | None:
    """A matcher's learned penalty on its input's items (``MatchConfig.seen_penalty``); None without one."""
    penalty = matcher.seen_penalty() if hasattr(matcher, "seen_penalty") else None
    return None if penalty is None else float(penalty.detach())


def exclusions(matcher, table: pa.Table, exclude_seen: bool = False) -> tuple[np.ndarray | None, float]:
    """(codes, penalty) for retrieval (:mod:`seqrec.retrieval`): ``exclude_seen`` leaves every seen item out
    (:func:`seen_items`), else a matcher with ``seen_penalty`` scores its input's items lower by its penalty."""
    if exclude_seen:
        return seen_items(table), math.inf
    penalty = seen_penalty_of(matcher)
    return (None, math.inf) if penalty is None else (matcher_inputs(table), penalty)


def session_items(table: pa.Table) -> np.ndarray:
    """(U, T) the item codes of each row's short-term session, 0-padded."""
    return pad_lists(table[F.seq_col(F.ITEM_ID)])


@torch.inference_mode()  # no_grad, and no autograd bookkeeping per operator (~10% of a one-row SDM encode)
def encode_table(model, table: pa.Table, spec: FeatureSpec, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """(U, D) user vectors (last position) for every row of ``table``, in row order."""
    if model.training:  # eval() walks every module (~0.2 ms on SDM): once, not on every served request
        model.eval()
    on_cpu = torch.device(device).type == "cpu"  # collate's tensors are there already
    out = []
    for start in range(0, table.num_rows, batch_size):
        batch = collate(table.slice(start, batch_size), spec)
        batch = batch if on_cpu else batch.to(device)
        out.append(model.encode_users(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden), np.float32)


@torch.no_grad()
def score_table(model, table: pa.Table, spec: FeatureSpec, candidates: np.ndarray, budget: int = 16_384, device: str = "cpu",
                match: np.ndarray | None = None) -> np.ndarray:
    """(U, C) ranker logits of ``candidates`` for every row of ``table`` (codes < 2 get -inf).

    ``match`` (U, C): the candidates' matcher scores, the candidates in the matcher's order (a ranker with
    ``match_features`` reads them). Rows are scored in batches of about ``budget`` (row, candidate) pairs.
    """
    model.eval()
    out = np.full(candidates.shape, -np.inf, np.float32)
    step = max(1, budget // max(1, candidates.shape[1]))
    for start in range(0, table.num_rows, step):
        rows = slice(start, start + step)
        c = torch.from_numpy(np.maximum(candidates[rows], 0)).to(device)
        batch = collate(table.slice(start, step), spec).to(device)
        m = None if match is None else torch.from_numpy(np.ascontiguousarray(match[rows], np.float32)).to(device)
        out[rows] = (model.score(batch, c) if m is None else model.score(batch, c, match=m)).float().cpu().numpy()
    out[candidates < F.FIRST_CODE] = -np.inf
    return out


def chunk_candidates(candidates: np.ndarray, width: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each row's real candidates (codes >= 2, packed at the row's start) into rows of ``width``.

    Returns (source row (K,), chunked candidates (K, width), flat index (K, width) into
    ``candidates.ravel()``, -1 on padding), so rows with few candidates are not padded to the longest.
    """
    n = (candidates >= F.FIRST_CODE).sum(1)
    per_row = -(-n // width)  # chunks per row (ceil)
    row = np.repeat(np.arange(len(candidates)), per_row)
    first = np.repeat(np.cumsum(per_row) - per_row, per_row)
    j = (np.arange(len(row)) - first) * width  # first candidate of each chunk within its row
    col = j[:, None] + np.arange(width)[None, :]
    ok = col < n[row][:, None]
    flat = np.where(ok, row[:, None] * candidates.shape[1] + col, -1)
    chunks = np.where(ok, candidates.ravel()[np.maximum(flat, 0)], 0)
    return row, chunks, flat


PRECISIONS = ("fp32", "int8")
RANKER_PRECISIONS = ("auto", *PRECISIONS)  # serving's choice: auto = int8 on a CPU, fp32 on a GPU


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` → ``int8`` on a CPU, ``fp32`` on a GPU; ``fp32`` / ``int8`` as given."""
    if precision not in RANKER_PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {RANKER_PRECISIONS}")
    if precision == "auto":
        return "int8" if str(device) == "cpu" else "fp32"
    return precision


def with_precision(model, precision: str = "fp32", device: str = "cpu"):
    """The model to run for inference at ``precision``: the model itself for ``fp32``, a copy for ``int8``.

    ``int8`` (rankers on a CPU): dynamic int8 quantization (weights int8, activations quantized per call,
    outputs float) of the MLP's first hidden layer, the widest matrix of scoring a candidate (1024 → 512
    in the paper's MLP: 64% of its multiply-adds). The layers around it stay fp32, chosen on validation
    rows (``benchmarks/bench_rank.py --quality-split val``): on README command 1's ml-100k BST, this
    left validation HitRate@20 unchanged, where quantizing the 512 → 256 layer too moved one user's hit.
    The first layer's candidate half (160 inputs) also ran slower in int8 than in fp32 here.
    ``benchmarks/bench_rank.py --quality`` checks AUC and two-stage HitRate@20 against fp32.

    PyTorch's eager dynamic quantization (``torch.ao.quantization.quantize_dynamic``) is used because it
    runs fbgemm's int8 GEMM with no compile step; its deprecation notice (pointing at torchao) is
    silenced here. It is CPU-only, so a model on a GPU refuses ``int8`` (use fp32 and AMP there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return model
    head = getattr(model, "head", None)
    rest = getattr(head, "rest", None)
    if not isinstance(rest, torch.nn.Sequential):
        raise ValueError(f"precision=int8 applies to rankers (an MLP head); {type(model).__name__} has none: use fp32")
    if str(device) != "cpu" or any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("precision=int8 is CPU-only (dynamic quantization); on a GPU use fp32 (with AMP)")
    out = copy.deepcopy(model).eval()
    rest = out.head.rest
    i = next(j for j, m in enumerate(rest) if isinstance(m, torch.nn.Linear))  # the first hidden layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per call
        rest[i] = PerContext(torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(rest[i]), {torch.nn.Linear},
                                                                    dtype=torch.qint8))
    return out


class PerContext(torch.nn.Module):
    """Runs ``inner`` on each context's (C, H) slice of an (R, C, H) input.

    Dynamic quantization picks one activation scale per call from the input's range, so over a batch
    a user's scores would depend on the other users in it (what the Serve Ranker's batching puts
    together). One call per context makes them depend on the user's own candidates only: the same in
    a batch of one, a Serve batch and offline evaluation."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            return self.inner(x)
        return torch.stack([self.inner(x[i]) for i in range(x.shape[0])])


__all__ = ["PRECISIONS", "RANKER_PRECISIONS", "chunk_candidates", "encode_table", "resolve_precision", "score_table",
           "seen_items", "session_items", "with_precision"]
