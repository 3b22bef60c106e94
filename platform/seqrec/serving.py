"""The two-stage recommendation pipeline without Ray: what the Serve app's deployments call.

A request is one user's raw events (item id, timestamp, optional behaviour and side info) and
an optional profile. :class:`RowBuilder` turns them into the session row a model reads, with the
dataset's vocabularies and the code that builds training rows (``seqrec.data.sessions``:
``sessionize``, ``serving_cuts``, ``rows_table``), so training and serving cannot drift apart:
the short-term session is the latest session up to the last event, and the long-term
behaviours are the distinct values of the protocol's window before it (SDM §3.1).

Bad input never disappears silently:
- item ids the vocabulary does not know map to the unknown code (1), as at evaluation, and are listed in the report;
- a side value missing from an event comes from the catalogue (``items.parquet``) for a known item, and is unknown (1) otherwise;
- a missing behaviour is the dataset's most frequent one; a profile missing from the request is the stored one for a known user (``users.parquet``), unknown otherwise;
- a request with no events is not a row: :class:`Pipeline` answers it from the cold-start list (the most popular items of the training window).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqrec import features as F


@dataclass
class Event:
    item_id: int | str
    timestamp: int
    behavior: str | int | None = None
    side: dict = field(default_factory=dict)  # item side info by feature name (raw values)


@dataclass
class Request:
    user_id: int | str
    events: list[Event]
    profile: dict = field(default_factory=dict)  # user profile by feature name (raw values)


@dataclass
class RowReport:
    unknown_items: list = field(default_factory=list)  # raw item ids mapped to the unknown code
    unknown_user: bool = False
    unknown_values: dict = field(default_factory=dict)  # feature name -> raw values not in its vocabulary
    events_used: int = 0  # events in the row: the short-term session (the long-term window reads earlier ones)


class RowBuilder:
    """Raw events → session rows with a prepared dataset's vocabularies and protocol."""

    def __init__(self, data_dir: str | Path):
        from seqrec.data.prepare import load_manifest
        from seqrec.data.sessions import Protocol
        from seqrec.features import FeatureSpec

        self.data_dir = Path(data_dir)
        manifest = load_manifest(self.data_dir)
        self.manifest = manifest
        self.protocol = Protocol(**manifest["config"]["protocol"])
        self.spec = FeatureSpec.from_dict(manifest["feature_spec"])
        self.item_names = [f.name for f in self.spec.item_features]
        self.user_names = [f.name for f in self.spec.user_features]
        # raw values in code order (code = position + FIRST_CODE), as prepare's _encode takes them
        self.vocab = {name: self._vocab(name) for name in [*self.item_names, *self.user_names, F.BEHAVIOR]}
        items = pq.read_table(self.data_dir / "items.parquet")
        self.item_side = {f: items[f].to_numpy().astype(np.int32) for f in self.item_names[1:]}  # by item code
        self.item_counts = items["count"].to_numpy().astype(np.int64)
        users = pq.read_table(self.data_dir / "users.parquet")
        self.user_codes = {str(u): i for i, u in enumerate(users[F.USER_RAW].to_pylist())}
        self.user_profile = {f: users[f].to_numpy().astype(np.int32) for f in self.user_names}
        counts = pq.read_table(self.data_dir / "vocab" / f"{F.BEHAVIOR}.parquet")
        self.default_behavior = counts["raw"][int(np.argmax(counts["count"].to_numpy()))].as_py()

    def _vocab(self, name: str) -> pa.Array:
        t = pq.read_table(self.data_dir / "vocab" / f"{name}.parquet", columns=["raw", "code"])
        return t["raw"].take(np.argsort(t["code"].to_numpy())).combine_chunks()

    def encode(self, name: str, values: list) -> np.ndarray:
        """Raw values → codes with the dataset's vocabulary (unknown and null → 1), as prepare's ``_encode``.

        prepare's encoder hashes the whole vocabulary on every call (``pc.index_in``), which costs
        about 100 ms per request on a 1M-item catalogue; a request has a few dozen values, so the
        vocabulary is sorted once here and looked up with ``np.searchsorted`` (integer ids) or a
        dict (strings). ``tests/test_serving.py`` checks the rows against prepare's.
        """
        vocab = self.vocab[name]
        arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())  # ids may come as 5 or "5"
        if arr.type != vocab.type:
            arr = _cast(arr, vocab.type)
        table = self._lookup(name)
        out = np.full(len(arr), F.UNKNOWN, np.int32)
        if isinstance(table, dict):
            for i, v in enumerate(arr.to_pylist()):
                out[i] = table.get(v, F.UNKNOWN)
            return out
        keys, codes = table
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        x = arr.fill_null(0).to_numpy(zero_copy_only=False)
        pos = np.clip(np.searchsorted(keys, x), 0, max(len(keys) - 1, 0))
        hit = valid & (keys[pos] == x) if len(keys) else np.zeros(len(x), bool)
        out[hit] = codes[pos[hit]]
        return out

    def _lookup(self, name: str):
        """The vocabulary of ``name`` as (sorted keys, their codes) for numbers, or a dict for other values."""
        cache = self.__dict__.setdefault("_lookups", {})
        if name not in cache:
            vocab = self.vocab[name]
            if pa.types.is_integer(vocab.type) or pa.types.is_floating(vocab.type):
                values = vocab.to_numpy(zero_copy_only=False)
                order = np.argsort(values, kind="stable")
                cache[name] = (values[order], (order + F.FIRST_CODE).astype(np.int32))
            else:
                cache[name] = {v: i + F.FIRST_CODE for i, v in enumerate(vocab.to_pylist())}
        return cache[name]

    def rows(self, requests: list[Request]) -> tuple[pa.Table, list[RowReport]]:
        """One session row per request (in order; every request needs at least one event)."""
        from seqrec.data.sessions import Block, rows_table, serving_cuts, sessionize

        reports = [RowReport() for _ in requests]
        lengths = np.array([len(r.events) for r in requests], np.int64)
        if (lengths == 0).any():
            raise ValueError(f"requests {np.flatnonzero(lengths == 0).tolist()} have no events: they have no session row")
        # events sorted by timestamp within each request; ties keep the request's order (stable sort)
        order = [sorted(range(len(r.events)), key=lambda i, r=r: int(r.events[i].timestamp)) for r in requests]
        events = [r.events[i] for r, o in zip(requests, order) for i in o]
        ts = np.array([int(e.timestamp) for e in events], np.int64)
        uend = np.cumsum(lengths)
        ustart = uend - lengths
        owner = np.repeat(np.arange(len(requests)), lengths)
        item_raw = [e.item_id for e in events]
        items = self.encode(F.ITEM_ID, item_raw)
        feats = [items]
        for name in self.item_names[1:]:
            given = [e.side.get(name) for e in events]
            codes = self.encode(name, given)
            from_catalogue = np.where(items >= F.FIRST_CODE, self.item_side[name][items], F.UNKNOWN)
            codes = np.where(np.array([g is None for g in given]), from_catalogue, codes).astype(np.int32)
            feats.append(codes)
            self._note_unknown(reports, owner, name, given, codes)
        behavior_raw = [self.default_behavior if e.behavior is None else e.behavior for e in events]
        behavior = self.encode(F.BEHAVIOR, behavior_raw)
        self._note_unknown(reports, owner, F.BEHAVIOR, behavior_raw, behavior)
        for k in np.flatnonzero(items == F.UNKNOWN):
            reports[owner[k]].unknown_items.append(item_raw[k])
        user_feats = np.zeros((len(self.user_names), len(ts)), np.int32)
        for u, req in enumerate(requests):
            codes = self._profile(req, reports[u])
            user_feats[:, ustart[u]:uend[u]] = codes[:, None]
        block = Block(ts=ts, item_feats=np.stack(feats).astype(np.int32), behavior=behavior.astype(np.int32),
                      user_feats=user_feats, ustart=ustart, uend=uend, item_key=_identity(item_raw))
        starts = sessionize(block, self.protocol)
        cuts = serving_cuts(block, starts)
        sizes = np.array([f.vocab_size for f in self.spec.item_features], np.int64)
        table = rows_table(block, cuts, self.protocol, self.item_names, self.user_names, sizes,
                           pa.array([str(r.user_id) for r in requests]))
        for rep, n in zip(reports, table[F.SEQ_LEN].to_numpy()):
            rep.events_used = int(n)
        return table, reports

    def _profile(self, req: Request, report: RowReport) -> np.ndarray:
        """(Fu,) user codes: the user id, then the profile (the request's, else the stored one)."""
        known = self.user_codes.get(str(req.user_id))
        out = np.full(len(self.user_names), F.UNKNOWN, np.int32)
        out[0] = self.encode(F.USER_ID, [req.user_id])[0]
        report.unknown_user = bool(out[0] == F.UNKNOWN)
        for k, name in enumerate(self.user_names[1:], start=1):
            if name in req.profile:
                out[k] = self.encode(name, [req.profile[name]])[0]
                if out[k] == F.UNKNOWN and req.profile[name] is not None:
                    report.unknown_values.setdefault(name, []).append(req.profile[name])
            elif known is not None:
                out[k] = self.user_profile[name][known]
        return out

    @staticmethod
    def _note_unknown(reports, owner, name, given, codes) -> None:
        for k in np.flatnonzero(codes == F.UNKNOWN):
            if given[k] is not None:
                reports[owner[k]].unknown_values.setdefault(name, []).append(given[k])

    def request_from_row(self, row: dict) -> Request:
        """A request carrying a prepared row's recent events (the BST history, then the session) with raw ids.

        For demos and load tests: the events older than the history are not in a row, so the
        long-term behaviours of the served row can be fewer than the prepared row's.
        """
        def raw(name, codes):
            vocab = self.vocab[name]
            return [vocab[c - F.FIRST_CODE].as_py() if c >= F.FIRST_CODE else None for c in codes]

        items = raw(F.ITEM_ID, row[F.hist_col(F.ITEM_ID)] + row[F.seq_col(F.ITEM_ID)])
        ts = row[F.hist_col(F.TIMESTAMP)] + row[F.seq_col(F.TIMESTAMP)]
        beh = raw(F.BEHAVIOR, row[F.hist_col(F.BEHAVIOR)] + row[F.seq_col(F.BEHAVIOR)])
        return Request(row[F.USER_RAW], [Event(i, t, b) for i, t, b in zip(items, ts, beh) if i is not None])

    def popular(self, k: int) -> np.ndarray:
        """The cold-start list: the ``k`` most frequent item codes of the training window."""
        counts = self.item_counts.copy()
        counts[: F.FIRST_CODE] = -1
        return np.argsort(-counts, kind="stable")[:k]


def _export_info(export: Path, kind: str) -> dict:
    f = export / "export.json"
    if not f.exists():
        raise FileNotFoundError(f"{export} is not a seqrec export (no export.json): point at <run>/export of `seqrec train`")
    info = json.loads(f.read_text())
    if info["kind"] != kind:
        raise ValueError(f"{export} holds a {info['kind']} ({info['model']}); a {kind} is needed here")
    return info


def export_dir(run: str | Path) -> Path:
    """A training run directory or its export directory → the export directory."""
    run = Path(run)
    return run if (run / "export.json").exists() else run / "export"


def find_runs(run: str | Path) -> tuple[Path, Path | None]:
    """(matcher export, ranker export or None) of a training run or an experiment directory.

    An experiment (``seqrec evaluate --trainer ray --out DIR``) keeps its runs in ``DIR/train/``:
    the first SDM matcher (else any matcher) and the first BST ranker (else any ranker) there.
    """
    run = Path(run)
    exports = sorted({p.parent for p in [*run.glob("export.json"), *run.glob("export/export.json"),
                                           *run.glob("train/*/export/export.json"), *run.glob("*/export/export.json")]})
    if not exports:
        raise FileNotFoundError(f"no training run with an export under {run}: pass a `seqrec train` run directory or the "
                                "--out of `seqrec evaluate --trainer ray`")
    infos = [(e, json.loads((e / "export.json").read_text())) for e in exports]

    def pick(kind: str, family: str):
        of_kind = [e for e, i in infos if i["kind"] == kind]
        preferred = [e for e, i in infos if i["kind"] == kind and i["model"].partition(":")[0] == family]
        return (preferred or of_kind or [None])[0]

    matcher = pick("matcher", "sdm")
    if matcher is None:
        raise FileNotFoundError(f"no matcher run under {run} (found {[str(e) for e in exports]}): serving needs one")
    return matcher, pick("ranker", "bst")


def ensure_index(export: Path, kind: str = "auto") -> dict:
    """The matcher export's FAISS index: the existing one when it is of ``kind`` (or ``kind`` is ``auto``), else
    built (``auto``: exact flat up to 100k items, HNSW above)."""
    from seqrec.export import build_index

    meta = export / "index" / "index.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        if kind in ("auto", info["kind"]):
            return {"path": str(meta.parent), "kind": info["kind"], "items": info["n_items"], **info.get("meta", {})}
    if kind == "auto":
        n = np.load(export / "item_ids.npy", mmap_mode="r").shape[0]
        kind = "flat" if n <= 100_000 else "hnsw"
    return build_index(export, kind=kind)


def load_index(export: Path, use_gpu: bool = False):
    """The matcher export's FAISS index (``seqrec index build``), or an exact flat one over its item vectors."""
    from seqrec.retrieval import ItemIndex

    if (export / "index").exists():
        return ItemIndex.load(export / "index", use_gpu=use_gpu)
    return ItemIndex.build(np.load(export / "item_embeddings.npy"), kind="flat", use_gpu=use_gpu)


def rows_to_bytes(rows: pa.Table) -> bytes:
    """A session row (or rows) as Arrow IPC stream bytes, to pass between processes.

    Ray's own pickling of a sliced Arrow table copies and re-encodes every list column's
    offsets (about 1.6 ms for one session row, on each side of every hop); the IPC stream of the
    same row is written and read in under 0.1 ms each and keeps the schema exact."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def rows_from_bytes(data: bytes) -> pa.Table:
    """The inverse of :func:`rows_to_bytes`."""
    return pa.ipc.open_stream(data).read_all()


def top_items(codes: np.ndarray, raw_ids: np.ndarray, match: np.ndarray, logits: np.ndarray, k: int) -> list[dict]:
    """The top ``k`` of one request's candidates by ranker logit (stable: ties keep the matcher's order);
    ``raw_ids`` holds each candidate's raw id, and candidates with code -1 (fewer than asked) are dropped."""
    order = np.argsort(-logits, kind="stable")[:k]
    order = order[codes[order] >= 0]
    return [{"item_id": _plain(raw_ids[o]), "score": float(logits[o]), "match_score": float(match[o])} for o in order]


class Pipeline:
    """SDM user network → FAISS top ``candidates`` → BST scores → top k, in this process.

    ``matcher`` and ``ranker`` are training runs (or their ``export/`` directories); the index is
    ``<matcher export>/index`` (``seqrec index build``), or an exact flat index over the exported
    item vectors when there is none. Without a ranker, the matcher's order is the answer. The
    Serve app's deployments call the same three stages (:meth:`encode`, :meth:`retrieve`, :meth:`rank`).
    """

    def __init__(self, data_dir: str | Path, matcher: str | Path, ranker: str | Path | None = None,
                 candidates: int = 300, device: str = "cpu", use_gpu_index: bool = False):
        from seqrec.checkpoint import load_checkpoint

        self.rows = RowBuilder(data_dir)
        vocab_hash = self.rows.manifest.get("vocab_hash")
        m_dir = export_dir(matcher)
        self.matcher_info = _export_info(m_dir, "matcher")
        self.matcher, _ = load_checkpoint(m_dir / "model", map_location=device, vocab_hash=vocab_hash)
        self.item_ids = np.load(m_dir / "item_ids.npy")
        self.index = load_index(m_dir, use_gpu=use_gpu_index)
        if self.index.n_items != len(self.item_ids):
            raise ValueError(f"{m_dir}: the index has {self.index.n_items} item codes, item_ids.npy {len(self.item_ids)}")
        self.ranker, self.ranker_info = None, None
        if ranker is not None:
            r_dir = export_dir(ranker)
            self.ranker_info = _export_info(r_dir, "ranker")
            self.ranker, _ = load_checkpoint(r_dir / "model", map_location=device, vocab_hash=vocab_hash)
        self.candidates, self.device = int(candidates), device

    def versions(self) -> dict:
        """What answers a request: each model's run, epoch and checkpoint, and the index."""
        def one(info):
            return None if info is None else {"model": info["model"], "epoch": info["epoch"], "checkpoint": info["checkpoint"]}

        return {"matcher": one(self.matcher_info), "ranker": one(self.ranker_info),
                "index": {"kind": self.index.kind, "items": self.index.n_items, **self.index.params},
                "dataset": self.rows.manifest.get("vocab_hash")}

    def encode(self, rows: pa.Table) -> np.ndarray:
        from seqrec.evaluate import encode_table

        return encode_table(self.matcher, rows, self.rows.spec, device=self.device)

    def retrieve(self, user_vecs: np.ndarray, n: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, item codes), (U, n) each, by inner product; -1 / -inf where fewer than n remain."""
        return self.index.search(user_vecs, min(n, self.index.ntotal), exclude=exclude)

    def rank(self, rows: pa.Table, codes: np.ndarray) -> np.ndarray:
        """(U, C) ranker logits of candidate codes (-inf for the -1 padding)."""
        from seqrec.evaluate import score_table

        return score_table(self.ranker, rows, self.rows.spec, np.where(codes >= 0, codes, 0), device=self.device)

    def recommend(self, requests: list[Request], k: int, exclude_seen: bool = False) -> list[dict]:
        """Top ``k`` items of every request, with the ranker's and the matcher's scores and each stage's time."""
        from seqrec.evaluate import seen_items

        t0 = time.perf_counter()
        warm = [i for i, r in enumerate(requests) if r.events]
        out: list[dict | None] = [None] * len(requests)
        if warm:
            rows, reports = self.rows.rows([requests[i] for i in warm])
            t1 = time.perf_counter()
            vecs = self.encode(rows)
            t2 = time.perf_counter()
            exclude = seen_items(rows) if exclude_seen else None
            match, codes = self.retrieve(vecs, max(self.candidates, k), exclude)
            t3 = time.perf_counter()
            logits = self.rank(rows, codes) if self.ranker is not None else match
            t4 = time.perf_counter()
            timings = {"rows_ms": (t1 - t0) * 1e3, "encode_ms": (t2 - t1) * 1e3, "retrieve_ms": (t3 - t2) * 1e3,
                       "rank_ms": (t4 - t3) * 1e3}
            for j, i in enumerate(warm):
                out[i] = self.answer(codes[j], match[j], logits[j], k) | {"report": reports[j].__dict__, "timings_ms": timings}
        for i, r in enumerate(requests):
            if out[i] is None:
                out[i] = self.cold_start(k)
        return out

    def answer(self, codes: np.ndarray, match: np.ndarray, logits: np.ndarray, k: int) -> dict:
        """The top ``k`` of one request's candidates (:func:`top_items`)."""
        return {"items": top_items(codes, self.item_ids[np.maximum(codes, 0)], match, logits, k), "cold_start": False}

    def cold_start(self, k: int) -> dict:
        """The documented answer to a request with no events: the most popular items, no scores."""
        codes = self.rows.popular(k)
        return {"items": [{"item_id": _plain(self.item_ids[c]), "score": None, "match_score": None} for c in codes],
                "cold_start": True, "report": RowReport().__dict__, "timings_ms": {}}


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _cast(arr: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast raw values to the vocabulary's type; values that do not parse become null (→ unknown)."""
    import pyarrow.compute as pc

    try:
        return arr.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        out = []
        for v in arr.to_pylist():
            try:
                out.append(pa.scalar(v).cast(to).as_py() if v is not None else None)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                out.append(None)
        return pc.cast(pa.array(out, type=to), to)


def _identity(raw: list) -> np.ndarray:
    """(n,) int64 identity of each raw item id (for deduplication in rows_table)."""
    seen: dict = {}
    return np.array([seen.setdefault(str(v), len(seen)) for v in raw], np.int64)


__all__ = ["Event", "Pipeline", "Request", "RowBuilder", "RowReport", "ensure_index", "export_dir", "find_runs", "load_index", "top_items"]
