"""Running a trained model over session rows: what offline evaluation and serving both call.

Rows are the prepared (or served, ``seqrec.serving.RowBuilder``) session rows, an Arrow table;
models are the pure PyTorch matchers (``encode_users``) and rankers (``score``). Layer: above
data and models, below evaluation and serving (it imports neither, nor Ray).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path

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

    ``int8`` (rankers on a CPU): the copy's ``score`` computes its logits in ONNX Runtime, with the MLP's hidden
    layers in int8 and their activations quantized per call, the first layer in fp32 (:class:`OnnxLogits`,
    ``first_layer=False``). The copy shares the
    model's parameters (a 1M-item embedding table is not held twice by PyTorch) and runs the input side
    (``inference_input``, :class:`seqrec.models.ranking.RankInput`) in PyTorch as before.
    ``benchmarks/bench_rank.py --quality`` checks AUC and two-stage HitRate@20 against fp32.

    Why ONNX Runtime: on this project's 2-core CPU, one 300-candidate BST call (paper MLP) took 8.8 ms in
    PyTorch with fbgemm's dynamic int8 on the widest layer, 7.3 ms with every MLP layer in int8 and the
    transformer written out by hand (PyTorch's per-operator overhead and small-tensor kernels: the transformer
    alone was 1.2 ms for 15 M multiply-adds), and 4.1–4.5 ms as one ONNX Runtime graph with int8 MatMuls.
    It is CPU-only, so a model on a GPU refuses ``int8`` (use fp32 and AMP there).

    Why the first layer stays fp32: with it in int8 too (smoothed, ``OnnxLogits(first_layer=True)``) a call is
    faster (3.38 against 4.12 ms on this project's current 2-core Xeon, interleaved), but README command 1's
    BST then moved two-stage HitRate@20 by +0.70 points on validation (2 of 285 users' top 20 changed hits) and
    −0.34 on test, outside issue #17's 0.2-point tolerance (8-bit weights on this VNNI CPU: +0.70 / −0.23), where
    the hidden layers alone left validation's HitRate@20 unchanged (``bench_rank.py --quality`` reports both).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
    if precision == "fp32":
        return model
    head = getattr(model, "head", None)
    if head is None or not hasattr(model, "inference_input"):
        raise ValueError(f"precision=int8 applies to rankers (an MLP head); {type(model).__name__} has none: use fp32")
    if not _on_cpu(model, device):
        raise ValueError("precision=int8 is CPU-only (ONNX Runtime on the CPU); on a GPU use fp32 (with AMP)")
    out = copy.copy(model)  # shares the parameters; only ``runtime`` differs
    out.runtime = OnnxLogits(model, first_layer=False)
    return out


def _on_cpu(model, device) -> bool:
    """Whether ``device`` and every parameter of ``model`` are the CPU: where the ONNX Runtime graphs run."""
    return str(device) == "cpu" and all(p.device.type == "cpu" for p in model.parameters())


class _OnnxGraph:
    """An exported graph (``self.graph``: ONNX bytes) and its ONNX Runtime sessions, one per
    ``torch.get_num_threads()`` value seen at call time (created on first use), so that the graph follows the same
    thread setting as PyTorch. Picklable: the graph travels as bytes and its sessions are rebuilt where it lands."""

    graph: bytes
    disabled_optimizers: tuple[str, ...] = ()

    def session(self):
        """(the ONNX Runtime session for the current thread count, the graph's input names)."""
        import onnxruntime as ort

        threads = torch.get_num_threads()
        if threads not in self._sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(self.graph, opts, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(self.disabled_optimizers))
            self._sessions[threads] = sess, [i.name for i in sess.get_inputs()]  # inputs the graph never reads are pruned
        return self._sessions[threads]

    def __getstate__(self):
        return {**self.__dict__, "_sessions": {}}


class OnnxLogits(_OnnxGraph):
    """A ranker's ``logits(inp)`` as one ONNX Runtime graph with an int8 MLP; ``precision="int8"`` runs it with
    ``first_layer=False``, the MLP's first layer in fp32, unsmoothed (:func:`with_precision` says why);
    ``first_layer=True`` quantizes that layer too, smoothed (the served form before, which ``bench_rank.py`` times
    and checks beside it); ``int8=False`` keeps the graph in fp32: how the tests check the export against PyTorch).

    * **Export**: ``torch.onnx.export`` traces ``logits`` in eval mode for one row (R = 1: the graph runs one
      context per call, below; static, its shape arithmetic folds away) and dynamic candidates (C); its inputs are
      the :class:`RankInput` tensors. The TorchScript exporter is used: on this CPU the
      graph of the ``torch.export`` exporter ran 1.5× slower in ONNX Runtime (6.9 vs 4.5 ms). It exports the
      cross features' hash with :func:`_export_xor`.
    * **Quantization**: ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``) of
      the MLP's layers but the logit layer (:func:`_int8_layers`, ``quantized``): weights int8 per output channel
      on a 7-bit grid (``reduce_range``), activations uint8 quantized per call from their range; everything else
      stays fp32. With ``first_layer=True`` the first layer's candidate half is exported smoothed (SmoothQuant: its input divided by
      :func:`smoothing_scales` column by column, its weight rows multiplied by them, the same product in exact
      arithmetic), so that its input's columns share one 8-bit grid without the widest setting the step for all.
    * **Why 7-bit weights**: without VNNI, ONNX Runtime's u8 × s8 kernel sums pairs of products in int16 (AVX2's
      ``vpmaddubsw``), which saturates once weights and activations both span their full 8-bit range, as smoothing
      makes them: the smoothed first layer's mean logit error was 0.031 with 8-bit weights, 0.010 with 7.
    * **The context half as the first layer's bias** (:func:`_context_as_bias`): the user's half of the first layer
      enters the int8 candidate half's kernel as its bias instead of a separate add over C × 1024 (exact; 3% of a call).
    * **One call per context**: a per-call activation range would make a user's scores depend on the other
      users scored with it (the Serve Ranker's batches); one ONNX Runtime call per row makes them depend on the
      user's own candidates only, the same in a batch of one, a Serve batch and offline evaluation.
    * **Threads** (:class:`_OnnxGraph`): a session per ``torch.get_num_threads()`` value seen at call time, so int8
      follows the same thread setting as fp32.

    Picklable: the quantized graph travels as bytes and its sessions are rebuilt where it lands.
    """

    # ONNX Runtime's fused residual + LayerNorm ran slower on BST's (300, 64) rows than the two ops unfused
    # (124 µs against ~45 µs here; 5.09 against 5.17 ms a call)
    disabled_optimizers = ("SkipLayerNormFusion",)

    def __init__(self, model, int8: bool = True, first_layer: bool = True):
        c = model.config
        self.users = [f.name for f in c.features.user_features]
        self.fields = ["window", "window_time", "last_behavior", "time", "candidates"]
        self.fields += ["match_rank", "match_gap"] if c.match_features else []
        self.fields += ["covisit"] if c.covisit else []
        self.fields += ["seen"] if c.seen else []
        key = _graph_key(model, "logits", int8=int8, first_layer=first_layer, alpha=SMOOTHING_ALPHA)
        self.graph, meta = _cached_graph(key, lambda: self._export(model, int8, first_layer))
        self.quantized = meta["quantized"]
        self.smoothing = None if meta["smoothing"] is None else torch.tensor(meta["smoothing"], dtype=torch.float32)
        self._sessions = {}

    def _export(self, model, int8: bool, first_layer: bool) -> tuple[bytes, dict]:
        """(the graph's bytes, {"quantized": its int8 MatMul nodes, "smoothing": the first layer's scales or None})."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from seqrec.models.ranking import RankInput

        example = self._example(model, r=1, c=3)  # one row: the graph runs one context per call
        users, fields = self.users, self.fields
        smoothing = smoothing_scales(model) if int8 and first_layer else None
        exported = model if smoothing is None else _smoothed(model, smoothing)

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = exported

            def forward(self, *tensors):
                user = dict(zip(users, tensors[: len(users)]))
                return self.model.logits(RankInput(user=user, **dict(zip(fields, tensors[len(users):]))))

        names = [f"user_{u}" for u in users] + fields
        dynamic = {n: {1: "candidates"} for n in ("candidates", "match_rank", "match_gap", "covisit", "seen") if n in names}
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            fp32, quantized = f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx"
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    _export_xor()
                    torch.onnx.export(Graph(), tuple(example[n] for n in names), fp32, input_names=names, opset_version=18,
                                      output_names=["logits"], dynamic_axes=dynamic, dynamo=False)
            finally:
                model.train(was_training)
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.ERROR))  # quantize_dynamic logs advice to pre-process on the root logger
            nodes = _int8_layers(fp32, first_layer) if int8 else []
            try:
                if nodes:  # (an empty nodes_to_quantize would mean every node to quantize_dynamic)
                    quantize_dynamic(fp32, quantized, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                                     op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes)
            finally:
                root.setLevel(level)
            graph = _context_as_bias(onnx.load(quantized if nodes else fp32)).SerializeToString()
        return graph, {"quantized": nodes, "smoothing": None if smoothing is None else smoothing.tolist()}

    @staticmethod
    def _example(model, r: int, c: int) -> dict[str, torch.Tensor]:
        """Input tensors of the right dtypes and ranks to trace ``logits`` with (values do not matter)."""
        cfg = model.config
        item = min(F.FIRST_CODE, cfg.features.n_items - 1)
        ex = {f"user_{f.name}": torch.ones(r, dtype=torch.long) for f in cfg.features.user_features}
        ex |= {"window": torch.full((r, cfg.window), item), "window_time": torch.arange(cfg.window).repeat(r, 1) * 60,
               "last_behavior": torch.ones(r, dtype=torch.long), "time": torch.full((r,), cfg.window * 60),
               "candidates": torch.full((r, c), item),
               "match_rank": torch.arange(c).repeat(r, 1), "match_gap": -torch.rand(r, c),
               "covisit": torch.rand(r, c), "seen": (torch.arange(c) % 2).float().repeat(r, 1)}
        return ex

    def __call__(self, inp) -> torch.Tensor:
        """(R, C) logits of a :class:`RankInput` built by ``inference_input`` of the model exported."""
        sess, names = self.session()
        arrays = {n: (inp.user[n[5:]] if n.startswith("user_") else getattr(inp, n)).cpu().numpy() for n in names}
        if inp.size == 1:
            return torch.from_numpy(sess.run(None, arrays)[0])
        rows = [sess.run(None, {n: a[i: i + 1] for n, a in arrays.items()})[0] for i in range(inp.size)]
        return torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(inp.candidates.shape)


MATCHER_RUNTIMES = ("auto", "torch", "onnx")  # serving's choice for the matcher: auto = onnx for SDM on a CPU


def with_runtime(model, runtime: str = "auto", device: str = "cpu"):
    """The matcher to serve: the model itself (``torch``), or a copy whose ``encode_users`` runs as one ONNX Runtime
    graph in fp32 (``onnx``: :class:`OnnxUserVectors`, SDM on a CPU only); ``auto``: ``onnx`` where it applies.

    Why: a served request encodes one short row, whose time in PyTorch is per-operator overhead (a few µs for each
    of ~150 operators) more than arithmetic. On this project's 2-core CPU, the SDM (PSDMMAL) of ``bench_serve.py``
    (1M items) took 1.56 ms a row in PyTorch against 0.60 in ONNX Runtime (50 test rows, timed call by call in
    turn), with the same vectors to 1e-6 (``tests/test_encode_fast.py``)."""
    if runtime not in MATCHER_RUNTIMES:
        raise ValueError(f"runtime={runtime!r}; choose one of {MATCHER_RUNTIMES}")
    on_cpu = _on_cpu(model, device)
    if runtime == "auto":
        runtime = "onnx" if on_cpu and getattr(model, "name", None) == "sdm" else "torch"
    if runtime == "torch":
        return model
    if getattr(model, "name", None) != "sdm":
        raise ValueError(f"runtime=onnx is SDM's (its encode_users exported); {type(model).__name__} runs in torch")
    if not on_cpu:
        raise ValueError("runtime=onnx is CPU-only (ONNX Runtime on the CPU); on a GPU use torch")
    out = copy.copy(model)  # shares the parameters; only ``runtime`` differs
    out.runtime = OnnxUserVectors(model)
    return out


class OnnxUserVectors(_OnnxGraph):
    """SDM's ``encode_users`` (eval mode) as one ONNX Runtime graph in fp32: what ``with_runtime(model, "onnx")``
    runs, the same vectors as PyTorch up to float rounding.

    * **Export**: ``torch.onnx.export`` (TorchScript) traces ``encode_users`` itself for one row whose session fills
      it (no padding), with the session length T and every long-term subset's length L_f dynamic; the row's
      ``seq_len`` is computed in the graph from its item codes (codes are >= 1), so no shape is baked in. Inputs:
      ``seq_<item feature>`` (1, T), ``long_<item feature>`` (1, L_f) (padding allowed: it is masked as in PyTorch)
      and ``user_<user feature>`` (1,); those the variant never reads are pruned by the exporter.
    * **One call per row** (:meth:`__call__`): a batch's rows are cut to their own session length; the
      empty-session check stays in PyTorch (``SDM.encode_users``) before the graph is called.

    Picklable (:class:`_OnnxGraph`)."""

    def __init__(self, model):
        from types import SimpleNamespace

        spec = model.config.features
        items, users = model.items.names, [f.name for f in spec.user_features]
        self.items, self.users = items, users
        self.dim = model.config.hidden

        class Graph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *t):
                k = len(items)
                seq = dict(zip(items, t[:k]))
                row = SimpleNamespace(seq=seq, seq_len=(seq[items[0]] != F.PAD).sum(1), long_term=dict(zip(items, t[k: 2 * k])),
                                      user=dict(zip(users, t[2 * k:])))
                return self.model.encode_users(row)

        ex_seq = {n: torch.full((1, 3), F.UNKNOWN) for n in items}  # (values do not matter; T > 1, L_f > 1)
        ex_long = {n: torch.full((1, 2), F.UNKNOWN) for n in items}
        names = [f"seq_{n}" for n in items] + [f"long_{n}" for n in items] + [f"user_{n}" for n in users]
        example = tuple(ex_seq.values()) + tuple(ex_long.values()) + tuple(torch.ones(1, dtype=torch.long) for _ in users)
        dynamic = {f"seq_{n}": {1: "T"} for n in items} | {f"long_{n}": {1: f"L_{n}"} for n in items}

        def export() -> tuple[bytes, dict]:
            was_training = model.training
            graph = Graph()
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
                path = f"{tmp}/sdm.onnx"
                try:
                    graph.eval()  # (the exporter restores the wrapper's mode afterwards, recursively: eval, as the model)
                    with torch.no_grad():
                        torch.onnx.export(graph, example, path, input_names=names, output_names=["user_vector"],
                                          dynamic_axes=dynamic, opset_version=18, dynamo=False)
                finally:
                    model.train(was_training)
                return Path(path).read_bytes(), {}

        self.graph, _ = _cached_graph(_graph_key(model, "user_vectors"), export)
        self._sessions = {}

    def __call__(self, batch) -> torch.Tensor:
        """(B, D) user vectors of a :class:`seqrec.batch.Batch` on the CPU (each row's session >= 1 event)."""
        sess, names = self.session()
        seq_len = batch.seq_len.tolist()
        out = np.empty((len(seq_len), self.dim), np.float32)
        for i, t in enumerate(seq_len):
            arrays = {}
            for name in names:
                kind, feature = name.split("_", 1)
                if kind == "seq":
                    arrays[name] = batch.seq[feature][i: i + 1, :t].numpy()
                elif kind == "long":
                    arrays[name] = batch.long_term[feature][i: i + 1].numpy()
                else:
                    arrays[name] = batch.user[feature][i: i + 1].numpy()
            out[i] = sess.run(None, arrays)[0][0]
        return torch.from_numpy(out)


GRAPH_CACHE_ENV = "SEQREC_ONNX_CACHE"  # a directory, or "off"
GRAPH_CACHE_KEEP = 8  # graphs kept (the most recently used); each is about the size of the model's parameters


def graph_cache_dir() -> Path | None:
    """Where exported ONNX Runtime graphs are kept between loads (:func:`_cached_graph`): ``$SEQREC_ONNX_CACHE``,
    else ``$XDG_CACHE_HOME/seqrec/onnx`` (``~/.cache/seqrec/onnx``); ``SEQREC_ONNX_CACHE=off``: none (every load
    exports)."""
    env = os.environ.get(GRAPH_CACHE_ENV)
    if env is not None and env.strip().lower() in ("off", "0", "none", ""):
        return None
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqrec" / "onnx"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """A digest of seqrec's own source files: a graph exported by other code is never reused."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _graph_key(model, kind: str, **options) -> str:
    """What an exported graph depends on: the kind of graph and its options, the model's class and config, every
    parameter and buffer (names, shapes, dtypes, values), seqrec's source and the exporting libraries' versions."""
    import onnx
    import onnxruntime

    h = hashlib.blake2b(digest_size=20)
    head = {"kind": kind, "options": options, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": repr(model.config), "code": _code_digest(),
            "versions": [torch.__version__, onnx.__version__, onnxruntime.__version__]}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _cached_graph(key: str, build) -> tuple[bytes, dict]:
    """``build()``'s (graph bytes, metadata), kept under :func:`graph_cache_dir` by ``key``: a replica that loads a
    model another process on the machine exported already (a replacement after a crash, a second replica, the next
    ``seqrec serve``) reads the graph instead of exporting it again (~5 s for a 1M-item SDM, ~7 s for a 1M-item BST
    in int8 here). A file whose digest does not match its record is rebuilt; a cache that cannot be written is
    skipped with a warning (the graph is still built). Files are written under temporary names and renamed, so
    concurrent replicas never read half a file; beyond :data:`GRAPH_CACHE_KEEP` graphs the least recently used go.
    Written by hand: no library here keeps content-addressed ONNX exports."""
    directory = graph_cache_dir()
    if directory is None:
        return build()
    graph_path, record_path = directory / f"{key}.onnx", directory / f"{key}.json"
    try:
        record = json.loads(record_path.read_text())
        data = graph_path.read_bytes()
        if hashlib.blake2b(data, digest_size=20).hexdigest() == record["digest"]:
            os.utime(graph_path)  # recently used
            return data, record["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not there, or unreadable: build it
    data, meta = build()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, content in ((graph_path, data), (record_path, json.dumps(
                {"digest": hashlib.blake2b(data, digest_size=20).hexdigest(), "meta": meta}).encode())):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        graphs = sorted(directory.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in graphs[GRAPH_CACHE_KEEP:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    except OSError as e:
        logging.getLogger(__name__).warning("could not keep the exported graph in %s (%s); the next load exports "
                                            "it again", directory, e)
    return data, meta


SMOOTHING_ALPHA = 0.75  # SmoothQuant's migration strength for the first layer (chosen in _int8_layers' doc)


def calibration_input(model, rows: int = 16, candidates: int = 300, seed: int = 0):
    """A synthetic :class:`RankInput` of ``rows`` users × ``candidates`` drawn from the model's own catalogue: what
    :func:`smoothing_scales` reads the first layer's input ranges from, so that an exported model needs no data.

    Items (histories of 20 behaviours, candidates) are drawn in proportion to the model's item counts (uniformly
    without them), times a few minutes to days apart, user codes uniformly; the matcher's scores are 300 sorted
    standard normals (gaps of 0 to about -6, the range SDM's scores span on MovieLens' validation rows).
    ``inference_input`` builds the rest (co-visitation, seen) as in serving."""
    from seqrec.batch import Batch

    cfg, spec = model.config, model.config.features
    g = torch.Generator().manual_seed(seed)
    w = model.item_counts[F.FIRST_CODE:].float().clamp_min(0)
    w = w if float(w.sum()) > 0 else torch.ones_like(w)

    def draw(*shape):
        return torch.multinomial(w, math.prod(shape), replacement=True, generator=g).view(*shape) + F.FIRST_CODE

    h, t, now = 20, 1, 1_700_000_000
    hist = draw(rows, h)
    gaps = torch.randint(60, 3 * 86400, (rows, h), generator=g)
    hist_time = now - torch.flip(torch.cumsum(gaps, 1), [1])
    seq_items = draw(rows, t)
    side = model.item_side[seq_items].long()
    seq = {f.name: (seq_items if f.name == F.ITEM_ID else side[..., i - 1]) for i, f in enumerate(spec.item_features)}
    ones = torch.ones(rows, t, dtype=torch.long)
    behaviour = min(F.FIRST_CODE, spec.behavior.vocab_size - 1)  # the first real behaviour's code
    batch = Batch(
        user={f.name: torch.randint(F.FIRST_CODE, max(f.vocab_size, F.FIRST_CODE + 1), (rows,), generator=g)
              for f in spec.user_features},
        seq=seq, seq_len=torch.full((rows,), t), seq_time=torch.full((rows, t), now), seq_behavior=ones * behaviour,
        long_term={f.name: torch.zeros(rows, 0, dtype=torch.long) for f in spec.item_features},
        hist_item=hist, hist_time=hist_time, hist_behavior=torch.full((rows, h), behaviour),
        targets=torch.zeros(rows, 0, dtype=torch.long), session_start=torch.full((rows,), now))
    scores = torch.sort(torch.randn(rows, candidates, generator=g), dim=1, descending=True).values
    return model.inference_input(batch, draw(rows, candidates), match=scores if cfg.match_features else None)


@torch.no_grad()
def smoothing_scales(model, alpha: float = SMOOTHING_ALPHA) -> torch.Tensor:
    """(K,) SmoothQuant scales (Xiao et al., 2023) for the first layer's candidate half, K its input width:
    ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)``, normalised to mean 1, with ``max|x_j|`` the input column's range
    on :func:`calibration_input` and ``max|W_j|`` its weight row's. The export divides column j by ``s_j`` and
    multiplies the weight row by it (:func:`_smoothed`): columns of small range get a finer share of the 8-bit
    activation grid, at the cost of a coarser weight grid for their rows. A column the calibration misjudges still
    computes the same product, only on a coarser grid."""
    layer = model.head.first_candidate
    seen = []
    hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().abs().flatten(0, -2).amax(0)))
    was_training = model.training
    model.eval()
    try:
        model.logits(calibration_input(model))
    finally:
        hook.remove()
        model.train(was_training)
    x_max = seen[0].clamp_min(1e-4)
    w_max = layer.weight.detach().abs().amax(0).clamp_min(1e-4)  # weight (out, K): max over outputs per input
    s = x_max ** alpha / w_max ** (1 - alpha)
    return s / s.mean()


class _SmoothedLinear(torch.nn.Module):
    """``layer(x)`` computed as ``(x / s) @ (W · diag(s))ᵀ + b``: the form :func:`smoothing_scales` quantizes."""

    def __init__(self, layer: torch.nn.Linear, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("inverse", 1.0 / scales)
        self.register_buffer("weight", layer.weight.detach() * scales[None, :])
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x * self.inverse, self.weight, self.bias)


def _smoothed(model, scales: torch.Tensor):
    """A shallow copy of ``model`` whose head's first candidate layer is :class:`_SmoothedLinear` (what the int8
    graph is exported from); ``model`` and its parameters are untouched."""
    out, head = copy.copy(model), copy.copy(model.head)
    out._modules, head._modules = dict(model._modules), dict(model.head._modules)  # copies share module dicts
    head.first_candidate = _SmoothedLinear(model.head.first_candidate, scales)
    out.head = head
    return out


def _int8_layers(path: str, first_layer: bool = True) -> list[str]:
    """The MatMul nodes to quantize: the MLP head's layers but the logit layer (one output): the first layer's
    candidate half (``head.first_candidate``, smoothed) and the hidden layers (``head.rest``). In README command 1's
    BST (the paper's MLP) these are 240 → 1024, 1024 → 512 and 512 → 256 per candidate: all of the MLP's per-candidate
    multiply-adds but the logit layer's 256. The context half runs once per user, in fp32.

    Chosen on README command 1's validation rows (BST with the matcher's scores, 285 users, 300 candidates each;
    mean |int8 − fp32| logit, fp32 logits' std 1.25, and the share of users whose top 20 changed at all): the hidden
    layers alone 0.006 (14%); with the first layer unsmoothed 0.027 (43%: its input, embeddings and the
    transformer's output side by side, shares one per-call 8-bit grid); with it smoothed (scales from
    :func:`calibration_input`), alpha 0.5 / 0.6 / 0.75 / 0.9 / 1.0: 0.013 / 0.011 / 0.010 (21%) / 0.016 / 0.012,
    HitRate@20 unchanged at 0.75; the transformer's projections 0.011. The logit layer and one-row layers cost more
    to quantize per call than they save (47 µs against 5 µs for 256 → 1). ``first_layer=False``: the hidden layers only."""
    import onnx

    graph = onnx.load(path).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and ("/head/rest/" in node.name or first_layer and "/head/first_candidate/" in node.name)
            and node.input[1] in weights and weights[node.input[1]][-1] > 1]


def _context_as_bias(model):
    """The quantized graph with the first layer's context half added as the bias of its int8 candidate half.

    ``quantize_dynamic`` writes the candidate half as DynamicQuantizeLinear → MatMulInteger → Cast → Mul (its
    scales), and the model adds the context half (one row: (1, 1, N)) after it. ONNX Runtime fuses the chain into
    one ``DynamicQuantizeMatMul`` but leaves the add out, since its bias is not a constant; the kernel takes any
    (N,) bias, so this writes that node with the context half reshaped to (N,) as its bias, and one pass over the
    C × N output is saved (0.2 ms of 6.5 on 300 candidates, the same logits). A graph without the chain (fp32, or an
    MLP without a context half) is returned as it is."""
    from onnx import helper, numpy_helper

    graph = model.graph
    made = {o: n for n in graph.node for o in n.output}
    used = {}
    for n in graph.node:
        for i in n.input:
            used.setdefault(i, []).append(n)

    def only_user(node, op):
        users = used.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    matmul = next((n for n in graph.node if n.op_type == "MatMulInteger" and "/head/first_candidate/" in n.name), None)
    quantize = made.get(matmul.input[0]) if matmul is not None else None
    cast = only_user(matmul, "Cast") if matmul is not None else None
    scale = only_user(cast, "Mul") if cast is not None else None
    add = only_user(scale, "Add") if scale is not None else None
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or add is None or add.name != "/head/Add":
        return model
    scales = made.get(next(i for i in scale.input if i != cast.output[0]))
    if scales is None or scales.op_type != "Mul" or quantize.output[1] not in scales.input:
        return model
    if any(u is not matmul and u is not scales for o in quantize.output for u in used.get(o, [])) \
            or len(used.get(scales.output[0], [])) != 1:
        return model  # something else reads the chain's intermediate values: leave it
    chain = (quantize, matmul, cast, scale, add, scales)
    if len({n.name for n in chain} | {""}) != len(chain) + 1:
        return model  # the chain's nodes are told apart by their (unique, non-empty) names below
    weight_scale = next(i for i in scales.input if i != quantize.output[1])
    context = next(i for i in add.input if i != scale.output[0])
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "context_bias_shape"))
    fused = [helper.make_node("Reshape", [context, "context_bias_shape"], ["context_bias"], name="/head/context_bias"),
             helper.make_node("DynamicQuantizeMatMul", [quantize.input[0], matmul.input[1], weight_scale, matmul.input[3],
                                                        "context_bias"], [add.output[0]], name="/head/first_candidate/MatMul_quant",
                              domain="com.microsoft")]
    gone = {n.name for n in chain}  # by name: protobuf's element wrappers are not guaranteed to stay the same objects
    nodes = []
    for n in graph.node:
        if n.name == add.name:
            nodes += fused
        elif n.name not in gone:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _export_xor() -> None:
    """Lets the TorchScript ONNX exporter write integer XOR (``seqrec.models.ranking.hash_cross``) as ONNX's
    ``BitwiseXor`` (opset 18): its own symbolic refuses non-boolean XOR. Registered once per process; it only adds
    what the exporter refused."""
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("aten::__xor_", lambda g, a, b: g.op("BitwiseXor", a, b), 18)


__all__ = ["MATCHER_RUNTIMES", "OnnxLogits", "OnnxUserVectors", "PRECISIONS", "RANKER_PRECISIONS", "calibration_input",
           "chunk_candidates", "encode_table", "graph_cache_dir", "resolve_precision", "score_table", "seen_items",
           "session_items", "smoothing_scales", "with_precision", "with_runtime"]
