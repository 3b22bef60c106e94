"""Ray Serve: the two-stage recommender as one composed application.

    Ingress (FastAPI: POST /recommend, GET /healthz, /docs)
      → UserEncoder (raw events → session row → SDM user vector; @serve.batch)
      → Retriever   (FAISS top ``candidates`` over the matcher's item vectors)
      → Ranker      (BST logits of the candidates; @serve.batch) → top k

Each deployment calls one stage function of :mod:`seqrec.serving` (``encode``, ``retrieve``,
``rank``), and the Ingress assembles the answer with its ``answer`` / ``cold_start``: the code the
in-process ``seqrec.serving.Pipeline`` runs (and, for the models, ``seqrec.inference``, as offline
evaluation does). The deployments add only batching, model swaps and placement; between them
travel the stages' typed results (``Encoded``, whose session rows go as Arrow IPC bytes,
``Candidates``, ``Ranked``). Artifacts come from training runs (``seqrec train`` / ``seqrec evaluate
--trainer ray``): the matcher's and the ranker's ``export/`` directories and the prepared
dataset (vocabularies, catalogue). They are named in each deployment's ``user_config``, so a
new model version is a ``serve deploy`` of a config with new paths: Serve calls ``reconfigure``
on the running replicas (no restart). The Retriever keeps the previous matcher's index loaded,
so a request encoded by either version during a swap is answered with the index of its own
version; every response names the versions that answered it.

Start it with ``seqrec serve`` (local, from a run), or ``serve run serve_apps/recommend.yaml`` (the runs of
the README's main command; ``seqrec serve --write-config`` writes one for any runs).
This module does not use ``from __future__ import annotations``: Serve validates the builder's
``args`` with the pydantic model in its annotation, which a string annotation would disable.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from seqrec import features as F
from seqrec.serving import (
    Candidates,
    Catalogue,
    Encoded,
    Event,
    LoadedModel,
    Ranked,
    RowBuilder,
    answer,
    cold_start,
    encode,
    find_runs,
    load_catalogue,
    load_model,
    rank,
    retrieve,
)
from seqrec.serving import Request as Req
from serve_apps.config import BATCH, deployment_options

log = logging.getLogger("ray.serve")

Id = Union[int, str]


# ---------------------------------------------------------------------------------------------
# the HTTP schema


class EventIn(BaseModel):
    """One behaviour: item, time, optional behaviour type; item side info as extra fields (e.g. category_id)."""

    model_config = ConfigDict(extra="allow")
    item_id: Id
    timestamp: int = Field(description="seconds since the epoch")
    behavior: Optional[Id] = Field(None, description="pv | fav | cart | buy, ...; default: the dataset's most frequent")


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id
    profile: Dict[str, Optional[Id]] = Field(default_factory=dict, description="user profile by feature name; "
                                             "default: the stored profile of a known user")
    events: List[EventIn] = Field(default_factory=list, description="the user's behaviours, any order; empty: cold start")
    k: int = Field(10, ge=1, description="how many items to return")
    exclude_seen: bool = Field(False, description="leave out the items of the short-term session")

    def to_request(self) -> Req:
        """The request the stages read (``seqrec.serving.Request``); an event's extra fields are its side info."""
        return Req(self.user_id, [Event(e.item_id, e.timestamp, e.behavior, dict(e.model_extra or {})) for e in self.events],
                   dict(self.profile))


class ItemOut(BaseModel):
    item_id: Id
    score: Optional[float] = Field(None, description="ranker logit (the matcher's score without a ranker)")
    match_score: Optional[float] = Field(None, description="inner product of the user and item vectors")


class RecommendOut(BaseModel):
    request_id: Optional[str]
    items: List[ItemOut]
    cold_start: bool
    unknown_items: List[Id] = Field(description="event item ids the vocabulary does not know (read as the unknown id)")
    unknown_user: bool
    unknown_values: Dict[str, List[Id]]
    model_versions: Dict[str, Any]
    timings_ms: Dict[str, float]


class Limits(BaseModel):
    max_k: int = 100
    max_events: int = 1000
    timeout_s: float = 5.0


class AppArgs(BaseModel):
    """``args`` of the application (``serve run`` config, or :func:`build`)."""

    data: str = Field(description="the prepared dataset the models were trained on")
    run: Optional[str] = Field(None, description="a training run or an experiment's --out: its SDM matcher and BST "
                               "ranker, as `seqrec serve --run` picks them (matcher / ranker override)")
    matcher: Optional[str] = Field(None, description="the matcher's training run or its export/ directory")
    ranker: Optional[str] = Field(None, description="the ranker's training run or export/ directory (none: matcher order)")
    candidates: int = 300
    max_k: int = 100
    max_events: int = 1000
    timeout_s: float = 5.0
    gpu: bool = False  # models and the FAISS index on a GPU that UserEncoder, Retriever and Ranker share (config.GPU_SHARE)
    threads: int = 1  # torch and FAISS threads per replica (Ray gives a fractional-CPU replica OMP_NUM_THREADS=1 anyway)
    max_batch_size: int = BATCH["max_batch_size"]
    batch_wait_timeout_s: float = BATCH["batch_wait_timeout_s"]


def _threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def _device(gpu: bool) -> str:
    import torch

    if gpu and not torch.cuda.is_available():
        raise RuntimeError("gpu=true but this replica sees no CUDA device")
    return "cuda" if gpu else "cpu"


# ---------------------------------------------------------------------------------------------
# deployments


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class UserEncoder:
    """The encode stage (``seqrec.serving.encode``), batched across requests."""

    def __init__(self, data: str, threads: int = 1, gpu: bool = False):
        _threads(threads)
        self.builder = RowBuilder(data)
        self.device = _device(gpu)
        self.matcher: Optional[LoadedModel] = None

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir, "max_batch_size": n, "batch_wait_timeout_s": s}``: swap the model in place."""
        matcher = load_model(config["matcher"], "matcher", self.device, self.builder.manifest.get("vocab_hash"))
        # one row through the row builder and the model before taking traffic (numba and torch warm up here,
        # not in the first user's request)
        item = self.builder.vocab[F.ITEM_ID][0].as_py()
        encode(self.builder, matcher, [Req("warm-up", [Event(item, 0), Event(item, 60)])])
        self.matcher = matcher  # one assignment: a batch sees one version
        self.encode.set_max_batch_size(int(config.get("max_batch_size", BATCH["max_batch_size"])))
        self.encode.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", BATCH["batch_wait_timeout_s"])))

    @serve.batch(**BATCH)
    async def encode(self, requests: List[Req]) -> List[Union[Encoded, Exception]]:
        """Each request's :class:`Encoded` (U = 1), or the exception its row raised."""
        matcher = self.matcher
        try:
            enc = encode(self.builder, matcher, requests)
        except Exception:  # one bad request must not fail the others: encode them one by one
            return [self._one(r, matcher) for r in requests]
        return [enc.take(i) for i in range(len(requests))]

    def _one(self, request: Req, matcher: LoadedModel) -> Union[Encoded, Exception]:
        try:
            return encode(self.builder, matcher, [request])
        except Exception as e:  # noqa: BLE001 - returned in its slot, raised by the caller (serve.batch)
            return e

    def check_health(self) -> None:
        if self.matcher is None:
            raise RuntimeError("no matcher loaded")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class Retriever:
    """The retrieve stage (``seqrec.serving.retrieve``) over the matcher's catalogue: the export's index
    (``seqrec index build``) or an exact flat one; on the GPU where there is one (flat and IVF indexes).
    Keeps the previous version during a swap."""

    def __init__(self, threads: int = 1, gpu: bool = False):
        _threads(threads)
        self.gpu = gpu
        self.catalogues: Dict[str, Catalogue] = {}  # matcher version id -> catalogue: the current and the previous one
        self.current: Optional[str] = None

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir}``: load its catalogue next to the current one."""
        cat = load_catalogue(config["matcher"])
        if self.gpu:  # the GPU index where FAISS can make one, else the CPU index, said in the log and every answer
            why = "FAISS sees no GPU (a faiss-cpu build?)" if _faiss_gpus() == 0 else (
                "FAISS has no GPU hnsw index (build flat or ivf)" if cat.index.kind == "hnsw" else None)
            if why:
                log.warning("gpu=true, but the %s index stays on the CPU: %s", cat.index.kind, why)
            else:
                cat.index = cat.index.to_gpu()
        vid = cat.matcher["id"]
        keep = {k: v for k, v in self.catalogues.items() if k == self.current}
        self.catalogues = {**keep, vid: cat}
        self.current = vid

    async def retrieve(self, vec: np.ndarray, n: int, matcher: Dict[str, Any], exclude: Optional[np.ndarray] = None) -> Candidates:
        """The top ``n`` of one (D,) user vector, searched in the index of the ``matcher`` version that encoded it;
        ``exclude``: (1, E) item codes to leave out."""
        cat = self.catalogues.get(matcher["id"])
        if cat is None:
            raise LookupError(f"matcher version {matcher['id']} ({matcher['checkpoint']}) is not loaded in the Retriever; "
                              f"it has {sorted(self.catalogues)}: UserEncoder and Retriever must name the same matcher")
        return retrieve(cat, vec[None, :], n, exclude)

    def check_health(self) -> None:
        if not self.catalogues:
            raise RuntimeError("no index loaded")


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class Ranker:
    """The rank stage (``seqrec.serving.rank``), batched across requests (one scoring call per batch)."""

    def __init__(self, data: str, threads: int = 1, gpu: bool = False):
        from seqrec.data.prepare import load_manifest
        from seqrec.features import FeatureSpec

        _threads(threads)
        manifest = load_manifest(data)
        self.vocab_hash = manifest.get("vocab_hash")
        self.spec = FeatureSpec.from_dict(manifest["feature_spec"])
        self.device = _device(gpu)
        self.ranker: Optional[LoadedModel] = None

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"ranker": run or export dir, "max_batch_size": n, "batch_wait_timeout_s": s}``."""
        self.ranker = load_model(config["ranker"], "ranker", self.device, self.vocab_hash)
        self.rank.set_max_batch_size(int(config.get("max_batch_size", BATCH["max_batch_size"])))
        self.rank.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", BATCH["batch_wait_timeout_s"])))

    @serve.batch(**BATCH)
    async def rank(self, encoded: List[Encoded], codes: List[np.ndarray], scores: List[np.ndarray]) -> List[Ranked]:
        """Each request's :class:`Ranked` (U = 1) for its (C,) candidate codes and their match scores; ``encoded``
        carries its session row."""
        import pyarrow as pa

        width = max(len(c) for c in codes)
        cands = np.full((len(codes), width), -1, np.int64)
        match = np.full((len(codes), width), -np.inf, np.float32)
        for i, (c, s) in enumerate(zip(codes, scores)):
            cands[i, : len(c)] = c
            match[i, : len(s)] = s
        out = rank(self.ranker, self.spec, pa.concat_tables([e.rows for e in encoded]), cands, match)
        return [Ranked(out.logits[i:i + 1, : len(c)], out.ranker, out.ms) for i, c in enumerate(codes)]

    def check_health(self) -> None:
        if self.ranker is None:
            raise RuntimeError("no ranker loaded")


app = FastAPI(
    title="seqrec: two-stage recommendations",
    description="SDM (sequential deep matching) retrieves candidates with FAISS; BST (behaviour sequence "
    "transformer) ranks them. POST a user's raw events; an empty history gets the popular items.",
)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    """HTTP in and out: checks the request's limits, sends it through the stage deployments and assembles the
    answer with ``seqrec.serving.answer`` / ``cold_start``, as the in-process pipeline does."""

    def __init__(self, encoder: DeploymentHandle, retriever: DeploymentHandle, ranker: Optional[DeploymentHandle],
                 data: str, candidates: int = 300, limits: Optional[Dict[str, Any]] = None):
        self.encoder, self.retriever, self.ranker = encoder, retriever, ranker
        self.candidates = int(candidates)
        self.limits = Limits(**(limits or {}))
        self.popular_ids = RowBuilder(data).popular_ids(self.limits.max_k)

    @app.get("/healthz")
    async def healthz(self) -> Dict[str, str]:
        return {"status": "ok"}

    @app.post("/recommend", response_model=RecommendOut)
    async def recommend(self, body: RecommendIn, request: Request):
        rid = request.headers.get("x-request-id")
        problem = self._check(body)
        if problem:
            return JSONResponse(status_code=422, content={"detail": problem, "request_id": rid})
        try:
            return await asyncio.wait_for(self._recommend(body, rid), timeout=self.limits.timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse(status_code=504, content={"detail": f"no answer within {self.limits.timeout_s:g}s", "request_id": rid})
        except Exception as e:  # noqa: BLE001 - a replica error: a 5xx that names the request, never a hang
            cause = getattr(e, "cause", None) or e
            status = 503 if isinstance(cause, LookupError) else 500
            log.error("request %s failed: %r", rid, e)
            return JSONResponse(status_code=status, content={"detail": f"{type(cause).__name__}: {cause}", "request_id": rid})

    def _check(self, body: RecommendIn) -> Optional[str]:
        if body.k > self.limits.max_k:
            return f"k={body.k} is more than max_k={self.limits.max_k}"
        if body.k > self.candidates and body.events:
            return f"k={body.k} is more than the {self.candidates} candidates the retriever returns"
        if len(body.events) > self.limits.max_events:
            return f"{len(body.events)} events are more than max_events={self.limits.max_events}; send the most recent ones"
        return None

    async def _recommend(self, body: RecommendIn, rid: Optional[str]) -> Dict[str, Any]:
        t0 = time.perf_counter()
        if not body.events:
            return cold_start(self.popular_ids, body.k, {"total": (time.perf_counter() - t0) * 1e3}).response(rid)
        enc = await self.encoder.encode.remote(body.to_request())
        if isinstance(enc, Exception):
            raise enc
        t1 = time.perf_counter()
        cands = await self.retriever.retrieve.remote(enc.vecs[0], self.candidates, enc.matcher,
                                                     enc.seen() if body.exclude_seen else None)
        t2 = time.perf_counter()
        ranked = None if self.ranker is None else await self.ranker.rank.remote(enc, cands.codes[0], cands.scores[0])
        t3 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3, "retrieve": (t2 - t1) * 1e3, "rank": (t3 - t2) * 1e3,
                   "encode_compute": enc.rows_ms + enc.encode_ms, "retrieve_compute": cands.ms,
                   "rank_compute": 0.0 if ranked is None else ranked.ms, "total": (time.perf_counter() - t0) * 1e3}
        (one,) = answer(enc, cands, ranked, body.k, timings)
        return one.response(rid)


# ---------------------------------------------------------------------------------------------
# the application


def build(args: AppArgs):
    """The application for ``serve run`` / ``serve deploy`` (``import_path: serve_apps.recommend:build``)."""
    if isinstance(args, dict):  # called directly from Python
        args = AppArgs(**args)
    for path, what in ((args.data, "data"), (args.run, "run"), (args.matcher, "matcher"), (args.ranker, "ranker")):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{what}={path} does not exist (relative paths are read from {Path.cwd()})")
    if args.matcher is None and args.run is None:
        raise ValueError("the recommend app needs `run` (a training run or experiment) or `matcher`")
    if args.run is not None:
        matcher, ranker = find_runs(args.run)
        args = args.model_copy(update={"matcher": args.matcher or str(matcher), "ranker": args.ranker or (ranker and str(ranker))})
    # absolute paths: the replicas need not share this process's working directory
    args = args.model_copy(update={k: str(Path(v).resolve()) for k in ("data", "matcher", "ranker")
                                   if (v := getattr(args, k)) is not None})
    opts = deployment_options(args.model_dump())
    encoder = UserEncoder.options(**opts["UserEncoder"]).bind(args.data, args.threads, args.gpu)
    retriever = Retriever.options(**opts["Retriever"]).bind(args.threads, args.gpu)
    ranker = Ranker.options(**opts["Ranker"]).bind(args.data, args.threads, args.gpu) if args.ranker else None
    limits = {"max_k": args.max_k, "max_events": args.max_events, "timeout_s": args.timeout_s}
    return Ingress.options(**opts["Ingress"]).bind(encoder, retriever, ranker, args.data, args.candidates, limits)
