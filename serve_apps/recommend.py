"""Ray Serve: the two-stage recommender as one composed application.

    Ingress (FastAPI: POST /recommend, POST /events, GET /healthz, /docs)
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

The Ingress reads a request within bounds before any stage sees it (the app's args ``max_body_bytes``,
``max_events``, ``max_k``, ``max_id_chars``; event timestamps by ``seqrec data prepare``'s rule): a 413 for a
body over ``max_body_bytes``, a 422 naming the field and the bound otherwise, and no error quotes more than
~80 characters of any value (docs/serving.md, "Bounded requests").

User behaviours can be kept server-side (the app's arg ``store``, a URL: ``sqlite:///PATH`` or
``redis://HOST:PORT/DB``; :mod:`seqrec.store`): ``POST /events`` appends users' events to it (validated as a
request's, a batch written whole or not at all), and ``POST /recommend`` reads the user's stored behaviours,
then appends the request's own ``events`` for that request only (docs/serving.md, "User behaviours on the
server"). Without a store the app keeps no state and ``POST /events`` answers 501.

Two layouts (the app's arg ``layout``; docs/serving.md, "Layouts"): ``composed`` (the default) is the four
deployments above, each scaled on its own (``replicas``) and failing on its own; ``colocated`` is the Ingress alone,
each of its ``replicas`` loading the matcher, the FAISS catalogue and the ranker itself (named in the Ingress's
``user_config``, swapped by ``reconfigure`` as the stage deployments' are) and running encode → retrieve → rank in
its own process (:class:`Colocated`), with no hop between deployments. Both run the same request path
(``Ingress._stages``, :func:`call_stage`) over the same stage code (:class:`EncodeStage`, :class:`RetrieveStage`,
:class:`RankStage`): a colocated stage is called through a :class:`LocalHandle`, as a deployment's handle is.

A stage that fails or misses its deadline (the app's args ``encode_deadline_ms``, ``retrieve_deadline_ms``,
``rank_deadline_ms``, inside ``timeout_s``) does not fail the request: the Ingress answers from the stage before (the
matcher's order without the Ranker, the popular items without the UserEncoder or the Retriever), marked ``degraded``
with the stage and the reason (:func:`call_stage`; docs/serving.md, "Degraded answers").

Start it with ``seqrec serve`` (local, from a run), or ``serve run serve_apps/recommend.yaml`` (the runs of
the README's main command; ``seqrec serve --write-config`` writes one for any runs).
This module does not use ``from __future__ import annotations``: Serve validates the builder's
``args`` with the pydantic model in its annotation, which a string annotation would disable.
"""

import asyncio
import gc
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from seqrec import features as F
from seqrec.serving import (
    FALLBACKS,
    Answer,
    Candidates,
    Catalogue,
    Degraded,
    Encoded,
    Event,
    ItemFields,
    LoadedModel,
    Ranked,
    RequestLimits,
    RowBuilder,
    answer,
    check_request,
    clip,
    cold_start,
    encode,
    find_runs,
    load_catalogue,
    load_model,
    popular_fallback,
    rank,
    retrieve,
    shorten,
)
from seqrec.serving import Request as Req
from seqrec.store import Retention, Store, check_batch, check_key, merge, open_store, resolve_url
from serve_apps.config import BATCH, deployment_options

log = logging.getLogger("ray.serve")
WARM_UP_CANDIDATES = 300  # the candidate list a replica's warm-up call ranks / retrieves (the app's default)


def settle_heap() -> None:
    """Collect, then freeze what survives (``gc.freeze``): the loaded models, vocabularies and index wrappers move to
    the collector's permanent generation, so a later full collection does not walk them while requests wait. Without
    it a replica pauses in every full collection for as long as its heap takes to walk: ``gc.collect()`` right after
    loading the row builder of bench_serve's 989k-item dataset takes 114 ms, and bench_serve's slowest 1% were one
    burst of 300-600 ms answers within half a second. ``gc.unfreeze`` comes first, so that a swap's replaced version
    (frozen by the load before) can still be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()

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
                                             "default: the profile POST /events stored, else the dataset's for a known user")
    events: List[EventIn] = Field(default_factory=list, description="the user's behaviours, any order, read after "
                                  "the ones POST /events stored (not written); none at all: cold start")
    k: int = Field(10, ge=1, description="how many items to return")
    exclude_seen: bool = Field(False, description="leave out the items of the short-term session")

    def to_request(self) -> Req:
        """The request the stages read (``seqrec.serving.Request``); an event's extra fields are its side info."""
        return Req(self.user_id, [Event(e.item_id, e.timestamp, e.behavior, dict(e.model_extra or {})) for e in self.events],
                   dict(self.profile))


class UserEventsIn(BaseModel):
    """One user's new behaviours for ``POST /events``: the fields of a ``POST /recommend`` request that describe
    the user (``user_id``, ``profile``, ``events``), validated by the same rules."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id
    profile: Dict[str, Optional[Id]] = Field(default_factory=dict, description="profile values to store (the "
                                             "latest given wins)")
    events: List[EventIn] = Field(default_factory=list, description="behaviours to append, any order")

    def to_request(self) -> Req:
        return Req(self.user_id, [Event(e.item_id, e.timestamp, e.behavior, dict(e.model_extra or {})) for e in self.events],
                   dict(self.profile))


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: List[UserEventsIn] = Field(description="one or more users' behaviours: stored all together or not at all")


class EventsOut(BaseModel):
    request_id: Optional[str]
    users: int = Field(description="users of the batch")
    events: int = Field(description="events stored (durably: the store's commit came first)")
    replayed: bool = Field(False, description="true: the Idempotency-Key names a batch the store had already committed; "
                           "nothing was written again, `events` is what that batch stored")


class ItemOut(BaseModel):
    item_id: Id
    score: Optional[float] = Field(None, description="ranker logit (the matcher's score without a ranker)")
    match_score: Optional[float] = Field(None, description="inner product of the user and item vectors")
    fields: Dict[str, Any] = Field(default_factory=dict, description="what the dataset knows of the item, for people to "
                                   "read: its catalogue's fields where `seqrec data prepare` wrote one (e.g. MovieLens "
                                   "title, genres, year) and its side features as raw values; {} for an item it does "
                                   "not know (docs/serving.md)")


class DegradedOut(BaseModel):
    """A stage failed or missed its deadline, and the answer is the stage before's (docs/serving.md, "Degraded answers")."""

    stage: str = Field(description="the stage that failed: encode | retrieve | rank")
    reason: str = Field(description="why: the error's type and message, or the deadline it missed")
    fallback: str = Field(description="what was answered: matcher_order (the retriever's candidates by match score, "
                          "when the ranker failed) or popular (the popular items, when the encoder or retriever failed)")


class RecommendOut(BaseModel):
    request_id: Optional[str]
    items: List[ItemOut]
    cold_start: bool
    unknown_items: List[Id] = Field(description="event item ids the vocabulary does not know (read as the unknown id)")
    unknown_user: bool
    unknown_values: Dict[str, List[Id]]
    model_versions: Dict[str, Any]
    timings_ms: Dict[str, float]
    degraded: Optional[DegradedOut] = Field(None, description="null when every stage answered; else the stage that did "
                                            "not, why, and the fallback answered")


#: The default bound of a ``POST /recommend`` body (``max_body_bytes``): 1 MiB. A request at the other bounds
#: fits in it: 1,000 events whose item id, behaviour and one side value have 256 characters each are about
#: 830 kB of JSON (tests/test_serve_bounds.py); 1,000 events with integer ids, as ml-100k's or Taobao's, ~80 kB.
MAX_BODY_BYTES = 1 << 20
#: How many validation errors a 422 lists (it counts the others).
MAX_ERRORS = 10


class Limits(BaseModel):
    """The Ingress's bounds: the app's args of the same names (docs/serving.md, "Bounded requests")."""

    max_k: int = RequestLimits.max_k
    max_events: int = RequestLimits.max_events
    max_id_chars: int = RequestLimits.max_id_chars
    max_body_bytes: int = MAX_BODY_BYTES
    timeout_s: float = 5.0
    # each stage's deadline: ~10x its p99 on a loaded 2-core machine (docs/serving.md, "Degraded answers"); the three
    # add up to 3 s of the 5 s budget, the rest for the store read and the answer
    encode_deadline_ms: float = 1000.0
    retrieve_deadline_ms: float = 1000.0
    rank_deadline_ms: float = 1000.0

    def deadline_s(self, stage: str) -> float:
        """How long the Ingress waits for ``stage`` (encode | retrieve | rank) before answering without it."""
        return getattr(self, f"{stage}_deadline_ms") / 1e3

    def request(self) -> RequestLimits:
        """The bounds :func:`seqrec.serving.check_request` checks a parsed request against."""
        return RequestLimits(max_events=self.max_events, max_k=self.max_k, max_id_chars=self.max_id_chars)


class AppArgs(BaseModel):
    """``args`` of the application (``serve run`` config, or :func:`build`)."""

    data: str = Field(description="the prepared dataset the models were trained on")
    run: Optional[str] = Field(None, description="a training run or an experiment's --out: its SDM matcher and BST "
                               "ranker, as `seqrec serve --run` picks them (matcher / ranker override)")
    matcher: Optional[str] = Field(None, description="the matcher's training run or its export/ directory")
    ranker: Optional[str] = Field(None, description="the ranker's training run or export/ directory (none: matcher order)")
    candidates: int = 300
    max_k: int = Field(RequestLimits.max_k, ge=1, description="the most items one request may ask for (k)")
    max_events: int = Field(RequestLimits.max_events, ge=1, description="the most events one request may carry")
    max_id_chars: int = Field(RequestLimits.max_id_chars, ge=1, description="the longest id, profile or side-info "
                              "name or value, as text")
    max_body_bytes: int = Field(MAX_BODY_BYTES, ge=1, description="the largest POST /recommend body (bytes): 413 above")
    timeout_s: float = Field(5.0, gt=0, description="the longest a request may take: 504 after")
    # per-stage deadlines inside timeout_s: a stage that fails or misses its deadline is answered around (a degraded
    # answer: the matcher's order without the ranker, the popular items without the encoder or the retriever)
    encode_deadline_ms: float = Field(Limits.model_fields["encode_deadline_ms"].default, gt=0,
                                      description="the longest the Ingress waits for the UserEncoder: popular items after")
    retrieve_deadline_ms: float = Field(Limits.model_fields["retrieve_deadline_ms"].default, gt=0,
                                        description="the longest the Ingress waits for the Retriever: popular items after")
    rank_deadline_ms: float = Field(Limits.model_fields["rank_deadline_ms"].default, gt=0,
                                    description="the longest the Ingress waits for the Ranker: the matcher's order after")
    layout: Literal["composed", "colocated"] = Field("composed", description="composed: Ingress → UserEncoder → Retriever "
                                                      "→ Ranker deployments (each scaled on its own, a failure isolated); "
                                                      "colocated: the Ingress alone, running the three stages in its own "
                                                      "replicas (no hops between deployments; docs/serving.md, \"Layouts\")")
    replicas: int = Field(1, ge=1, description="replicas of every deployment: the Ingress's in layout colocated, each "
                          "deployment's in layout composed")
    gpu: bool = False  # models and the FAISS index on a GPU that UserEncoder, Retriever and Ranker share (config.GPU_SHARE)
    ranker_precision: Literal["auto", "fp32", "int8"] = Field("auto", description="what the Ranker runs at: int8 "
                                                            "(dynamic quantization of its MLP, CPU only), fp32, or auto "
                                                            "(int8 on a CPU, fp32 on a GPU)")
    encoder_runtime: Literal["auto", "torch", "onnx"] = Field("auto", description="what computes the UserEncoder's user "
                                                            "vectors: onnx (SDM's encode_users as one ONNX Runtime "
                                                            "graph, the same vectors, CPU only), torch, or auto (onnx "
                                                            "for SDM on a CPU, else torch)")
    threads: int = 1  # torch and FAISS threads per replica (Ray gives a fractional-CPU replica OMP_NUM_THREADS=1 anyway)
    max_batch_size: int = BATCH["max_batch_size"]
    batch_wait_timeout_s: float = BATCH["batch_wait_timeout_s"]
    store: Optional[str] = Field(None, description="where users' behaviours are kept (POST /events): sqlite:///PATH "
                                 "(relative to the working directory; sqlite:////PATH absolute) or redis://HOST:PORT/DB; "
                                 "none: the app keeps no state")
    store_ttl_s: Optional[int] = Field(None, ge=1, description="drop a user's behaviours after this many seconds "
                                       "without a POST /events for them (none: keep them, trimmed to the window)")

    @model_validator(mode="after")
    def _deadlines_fit(self):
        stages = self.encode_deadline_ms + self.retrieve_deadline_ms + self.rank_deadline_ms
        if stages >= self.timeout_s * 1e3:
            raise ValueError(f"the stage deadlines (encode_deadline_ms={self.encode_deadline_ms:g} + retrieve_deadline_ms="
                             f"{self.retrieve_deadline_ms:g} + rank_deadline_ms={self.rank_deadline_ms:g} = {stages:g} ms) "
                             f"must add up to less than timeout_s={self.timeout_s:g} s (the rest is for the store read and "
                             "the answer): lower a deadline or raise timeout_s")
        return self


# ---------------------------------------------------------------------------------------------
# reading a request: bounded in size, and in what its errors echo


class RequestError(Exception):
    """A request the Ingress answers with ``status`` and ``{"detail": detail, "request_id": ...}``, never echoing
    more than a clipped prefix of any input (``seqrec.serving.clip``)."""

    def __init__(self, status: int, detail: Union[str, List[Dict[str, Any]]]):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _too_large(size: Optional[int], max_bytes: int) -> RequestError:
    size_text = "more than" if size is None else f"{size} bytes, more than"
    unit = next((f" ({max_bytes / 2**p:.3g} {u})" for p, u in ((20, "MiB"), (10, "KiB")) if max_bytes >= 2**p), "")
    return RequestError(413, f"the request body is {size_text} max_body_bytes={max_bytes}{unit}: "
                        "send fewer events (the most recent ones) or shorter values")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body of ``request``, refused (413) when it is over ``max_bytes``: before reading any of it when the
    Content-Length says so, else as soon as the bytes read pass the bound (chunked or understated bodies)."""
    declared = request.headers.get("content-length")
    try:
        size = None if declared is None else int(declared)
    except ValueError:  # not a number: the server's own parser will say so; count the bytes instead
        size = None
    if size is not None and size > max_bytes:
        raise _too_large(size, max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(None, max_bytes)
    return bytes(body)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def parse_body(raw: bytes, content_type: Optional[str] = "application/json", schema=RecommendIn):
    """A ``POST /recommend`` body as :class:`RecommendIn` (``POST /events``: ``schema=EventsIn``); :class:`RequestError`
    (415, 422) says why not, with pydantic's errors bounded by :func:`validation_detail`. JSON is read as FastAPI
    reads it (``json.loads``; no content-type counts as JSON)."""
    if content_type is not None and not _is_json(content_type):
        path = "/events" if schema is EventsIn else "/recommend"
        raise RequestError(415, f"content-type {clip(content_type)}: POST {path} takes a JSON body "
                           "(content-type: application/json)")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:  # FastAPI's own error, as before
        raise RequestError(422, [{"type": "json_invalid", "loc": ["body", e.pos], "msg": "JSON decode error",
                                  "input": {}, "ctx": {"error": e.msg}}]) from None
    except (ValueError, RecursionError) as e:  # not UTF-8/16/32, an integer of over 4,300 digits, nesting too deep
        raise RequestError(422, [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error", "input": {},
                                  "ctx": {"error": shorten(f"{type(e).__name__}: {e}")}}]) from None
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise RequestError(422, validation_detail(e.errors(include_url=False))) from None


def _echo(value: Any) -> Any:
    """A value an error quotes: itself when it is a short scalar, else a clipped text (``seqrec.serving.clip``)."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else clip(value)
    if isinstance(value, str):
        return shorten(value)
    return clip(value)


def validation_detail(errors: List[Dict[str, Any]], limit: int = MAX_ERRORS) -> List[Dict[str, Any]]:
    """pydantic's errors as a 422 lists them (FastAPI's ``type``, ``loc`` from ``body``, ``msg``, ``input``,
    ``ctx``), bounded: the first ``limit`` errors, then a count of the rest; every location part, message and
    echoed value at most ~80 characters, saying when it was truncated. So the body stays small, whatever the input."""
    out = []
    for e in errors[:limit]:
        one = {"type": e["type"], "loc": ["body", *(x if isinstance(x, int) else shorten(str(x)) for x in e["loc"])],
               "msg": shorten(e["msg"], 160), "input": _echo(e.get("input"))}
        if e.get("ctx"):
            one["ctx"] = {shorten(str(k)): _echo(v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                          for k, v in list(e["ctx"].items())[:8]}
        out.append(one)
    if len(errors) > limit:
        out.append({"type": "too_many_errors", "loc": ["body"], "msg": f"{len(errors) - limit} more errors not shown",
                    "input": None})
    return out


def _inline_refs(schema: Dict[str, Any]) -> Dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place (an OpenAPI operation cannot point into them)."""
    defs = schema.pop("$defs", {})

    def walk(x):
        if isinstance(x, dict):
            return walk(defs[x["$ref"].rsplit("/", 1)[-1]]) if "$ref" in x else {k: walk(v) for k, v in x.items()}
        return [walk(v) for v in x] if isinstance(x, list) else x

    return walk(schema)


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
# the stages' state and calls, outside Serve: what the stage deployments run (layout composed), and what the
# Ingress runs in its own process (layout colocated, :class:`Colocated`)


def _warm_up_request(builder: RowBuilder) -> Req:
    """A two-event request of the catalogue's first item: what a replica runs through its stage before taking traffic."""
    item = builder.vocab[F.ITEM_ID][0].as_py()
    return Req("warm-up", [Event(item, 0), Event(item, 60)])


class EncodeStage:
    """The encode stage (``seqrec.serving.encode``) with its matcher: loads (and warms up) a matcher, encodes requests."""

    def __init__(self, builder: RowBuilder, device: str):
        self.builder, self.device = builder, device
        self.matcher: Optional[LoadedModel] = None

    def load(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir, "encoder_runtime": auto | torch | onnx, ...}``: swap the model in place."""
        matcher = load_model(config["matcher"], "matcher", self.device, self.builder.manifest.get("vocab_hash"),
                             runtime=config.get("encoder_runtime", "auto"))
        # one row through the row builder and the model before taking traffic (numba and torch warm up here,
        # not in the first user's request)
        encode(self.builder, matcher, [_warm_up_request(self.builder)])
        self.matcher = matcher  # one assignment: a batch sees one version

    def encode_batch(self, requests: List[Req]) -> List[Union[Encoded, Exception]]:
        """Each request's :class:`Encoded` (U = 1), or the exception its row raised."""
        matcher = self.matcher
        try:
            enc = encode(self.builder, matcher, requests)
        except Exception:  # one bad request must not fail the others: encode them one by one
            return [self._one(r, matcher) for r in requests]
        return [enc.take(i) for i in range(len(requests))]

    def encode_one(self, request: Req) -> Union[Encoded, Exception]:
        """One request's :class:`Encoded` (U = 1), or the exception its row raised: a batch of one's slot."""
        return self._one(request, self.matcher)

    def _one(self, request: Req, matcher: LoadedModel) -> Union[Encoded, Exception]:
        try:
            return encode(self.builder, matcher, [request])
        except Exception as e:  # noqa: BLE001 - returned in its slot, raised by the caller (serve.batch)
            return e

    def check(self) -> None:
        if self.matcher is None:
            raise RuntimeError("no matcher loaded")


class RetrieveStage:
    """The retrieve stage (``seqrec.serving.retrieve``) over the matcher's catalogue: the export's index
    (``seqrec index build``) or an exact flat one; on the GPU where there is one (flat and IVF indexes).
    Keeps the previous version during a swap."""

    def __init__(self, gpu: bool = False):
        self.gpu = gpu
        self.catalogues: Dict[str, Catalogue] = {}  # matcher version id -> catalogue: the current and the previous one
        self.current: Optional[str] = None

    def load(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir, ...}``: load its catalogue next to the current one."""
        cat = load_catalogue(config["matcher"])
        if self.gpu:  # the GPU index where FAISS can make one, else the CPU index, said in the log and every answer
            why = "FAISS sees no GPU (a faiss-cpu build?)" if _faiss_gpus() == 0 else (
                "FAISS has no GPU hnsw index (build flat or ivf)" if cat.index.kind == "hnsw" else None)
            if why:
                log.warning("gpu=true, but the %s index stays on the CPU: %s", cat.index.kind, why)
            else:
                cat.index = cat.index.to_gpu()
        # one search before taking traffic (the index's first query pays its allocations; see RankStage.load)
        retrieve(cat, np.ones((1, cat.index.dim), np.float32), WARM_UP_CANDIDATES)
        vid = cat.matcher["id"]
        keep = {k: v for k, v in self.catalogues.items() if k == self.current}
        self.catalogues = {**keep, vid: cat}
        self.current = vid

    def retrieve(self, vec: np.ndarray, n: int, matcher: Dict[str, Any], exclude: Optional[np.ndarray] = None,
                 penalty: Any = math.inf) -> Candidates:
        """The top ``n`` of one (D,) user vector, searched in the index of the ``matcher`` version that encoded it;
        ``exclude``: (1, E) item codes to leave out, or with a finite ``penalty`` to score lower (:func:`retrieve`)."""
        cat = self.catalogues.get(matcher["id"])
        if cat is None:
            raise LookupError(f"matcher version {matcher['id']} ({matcher['checkpoint']}) is not loaded in the Retriever; "
                              f"it has {sorted(self.catalogues)}: UserEncoder and Retriever must name the same matcher")
        return retrieve(cat, vec[None, :], n, exclude, penalty)

    def check(self) -> None:
        if not self.catalogues:
            raise RuntimeError("no index loaded")


def _faiss_gpus() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class RankStage:
    """The rank stage (``seqrec.serving.rank``) with its ranker: loads (and warms up) a ranker, ranks candidates."""

    def __init__(self, builder: RowBuilder, device: str):
        self.builder = builder  # for the warm-up row only: requests bring their rows from the encode stage
        self.spec = builder.spec
        self.device = device
        self.ranker: Optional[LoadedModel] = None

    def load(self, config: Dict[str, Any]) -> None:
        """``{"ranker": run or export dir, "precision": auto | fp32 | int8, ...}``: swap the model in place."""
        ranker = load_model(config["ranker"], "ranker", self.device, self.builder.manifest.get("vocab_hash"),
                            config.get("precision", "auto"))
        # one row with a full candidate list through the model before taking traffic: a cold replica's first
        # forward pass (allocator, oneDNN kernels, the int8 layer's packing) would otherwise spend the first
        # user's rank deadline, and a replaced replica would answer its first requests degraded
        rows, _ = self.builder.rows([_warm_up_request(self.builder)])
        n_items = len(self.builder.vocab[F.ITEM_ID])
        codes = (np.arange(min(WARM_UP_CANDIDATES, n_items)) + F.FIRST_CODE)[None, :]
        rank(ranker, self.spec, rows, codes, np.zeros(codes.shape, np.float32))
        self.ranker = ranker

    def rank_batch(self, encoded: List[Encoded], codes: List[np.ndarray], scores: List[np.ndarray]) -> List[Ranked]:
        """Each request's :class:`Ranked` (U = 1) for its (C,) candidate codes and their match scores; ``encoded``
        carries its session row. One scoring call for all of them."""
        import pyarrow as pa

        width = max(len(c) for c in codes)
        cands = np.full((len(codes), width), -1, np.int64)
        match = np.full((len(codes), width), -np.inf, np.float32)
        for i, (c, s) in enumerate(zip(codes, scores)):
            cands[i, : len(c)] = c
            match[i, : len(s)] = s
        out = rank(self.ranker, self.spec, pa.concat_tables([e.rows for e in encoded]), cands, match)
        return [Ranked(out.logits[i:i + 1, : len(c)], out.ranker, out.ms) for i, c in enumerate(codes)]

    def rank_one(self, encoded: Encoded, codes: np.ndarray, scores: np.ndarray) -> Ranked:
        """One request's :class:`Ranked` (logits (1, C)): a batch of one."""
        (one,) = self.rank_batch([encoded], [codes], [scores])
        return one

    def check(self) -> None:
        if self.ranker is None:
            raise RuntimeError("no ranker loaded")


def _set_batching(method, config: Dict[str, Any]) -> None:
    """A ``@serve.batch`` method's batch size and wait from a ``user_config``."""
    method.set_max_batch_size(int(config.get("max_batch_size", BATCH["max_batch_size"])))
    method.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", BATCH["batch_wait_timeout_s"])))


# ---------------------------------------------------------------------------------------------
# deployments (layout composed): each stage in its own replicas, batched across requests


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class UserEncoder:
    """The encode stage (:class:`EncodeStage`), batched across requests."""

    def __init__(self, data: str, threads: int = 1, gpu: bool = False):
        _threads(threads)
        self.stage = EncodeStage(RowBuilder(data), _device(gpu))

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir, "max_batch_size": n, "batch_wait_timeout_s": s}``: swap the model in place."""
        self.stage.load(config)
        _set_batching(self.encode, config)
        settle_heap()

    @serve.batch(**BATCH)
    async def encode(self, requests: List[Req]) -> List[Union[Encoded, Exception]]:
        """Each request's :class:`Encoded` (U = 1), or the exception its row raised."""
        return self.stage.encode_batch(requests)

    def check_health(self) -> None:
        self.stage.check()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class Retriever:
    """The retrieve stage (:class:`RetrieveStage`): keeps the previous matcher's index during a swap."""

    def __init__(self, threads: int = 1, gpu: bool = False):
        _threads(threads)
        self.stage = RetrieveStage(gpu)

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir}``: load its catalogue next to the current one."""
        self.stage.load(config)
        settle_heap()

    async def retrieve(self, vec: np.ndarray, n: int, matcher: Dict[str, Any], exclude: Optional[np.ndarray] = None,
                       penalty: Any = math.inf) -> Candidates:
        """:meth:`RetrieveStage.retrieve`: the top ``n`` of one (D,) user vector."""
        return self.stage.retrieve(vec, n, matcher, exclude, penalty)

    def check_health(self) -> None:
        self.stage.check()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, health_check_period_s=5)
class Ranker:
    """The rank stage (:class:`RankStage`), batched across requests (one scoring call per batch)."""

    def __init__(self, data: str, threads: int = 1, gpu: bool = False):
        _threads(threads)
        self.stage = RankStage(RowBuilder(data), _device(gpu))

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"ranker": run or export dir, "precision": auto | fp32 | int8, "max_batch_size": n,
        "batch_wait_timeout_s": s}``."""
        self.stage.load(config)
        _set_batching(self.rank, config)
        settle_heap()

    @serve.batch(**BATCH)
    async def rank(self, encoded: List[Encoded], codes: List[np.ndarray], scores: List[np.ndarray]) -> List[Ranked]:
        """Each request's :class:`Ranked` (U = 1) for its (C,) candidate codes and their match scores."""
        return self.stage.rank_batch(encoded, codes, scores)

    def check_health(self) -> None:
        self.stage.check()


# ---------------------------------------------------------------------------------------------
# layout colocated: the three stages in the Ingress replica's own process


class _LocalCall:
    """``handle.METHOD`` of a :class:`LocalHandle`: ``.remote(*args)`` runs the stage function on the replica's compute
    thread and returns an asyncio future of its result (what :func:`call_stage` awaits, and cancels at its deadline)."""

    def __init__(self, compute: ThreadPoolExecutor, fn: Callable[..., Any]):
        self.compute, self.fn = compute, fn

    def remote(self, *args: Any) -> "asyncio.Future[Any]":
        return asyncio.get_running_loop().run_in_executor(self.compute, self.fn, *args)


class LocalHandle:
    """A stage in this process, called as its deployment's ``DeploymentHandle`` is (``handle.encode.remote(req)``, ...),
    so that the Ingress's one request path (:meth:`Ingress._stages`, :func:`call_stage`) serves both layouts. Each
    keyword names a method and the stage function that answers it, returning what the deployment's method returns."""

    def __init__(self, compute: ThreadPoolExecutor, **methods: Callable[..., Any]):
        for name, fn in methods.items():
            setattr(self, name, _LocalCall(compute, fn))


class Colocated:
    """The colocated layout's stages in one Ingress replica: the matcher, its FAISS catalogue and the ranker, loaded
    and warmed up as the stage deployments do (:class:`EncodeStage`, :class:`RetrieveStage`, :class:`RankStage`),
    called through :class:`LocalHandle` s on one compute thread (``max_workers=1``: one request's stage at a time,
    while the replica's event loop keeps serving ``POST /events``, ``GET /healthz`` and the next requests' reads).

    A stage that misses its deadline is answered around as in the composed layout; its future is cancelled, which
    drops a call still queued for the compute thread, but a computation already running cannot be interrupted: it
    finishes in the background (its result unread), and the calls queued behind it wait for it."""

    def __init__(self, builder: RowBuilder, threads: int = 1, gpu: bool = False):
        _threads(threads)
        device = _device(gpu)
        self.encode_stage, self.retrieve_stage = EncodeStage(builder, device), RetrieveStage(gpu)
        self.rank_stage = RankStage(builder, device)
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stages")
        self.encoder = LocalHandle(self.compute, encode=self.encode_stage.encode_one)
        self.retriever = LocalHandle(self.compute, retrieve=self.retrieve_stage.retrieve)
        self.ranker: Optional[LocalHandle] = None

    def reconfigure(self, config: Dict[str, Any]) -> None:
        """``{"matcher": run or export dir, "ranker": run or export dir or null, "precision": auto | fp32 | int8,
        "encoder_runtime": auto | torch | onnx}``: the
        catalogue first (kept beside the previous one), then the matcher, then the ranker, so that a request encoded by
        either matcher version during a swap finds its own version's index."""
        self.retrieve_stage.load(config)
        self.encode_stage.load(config)
        if config.get("ranker"):
            self.rank_stage.load(config)
            self.ranker = LocalHandle(self.compute, rank=self.rank_stage.rank_one)
        else:  # none: the matcher's order
            self.ranker = None
        settle_heap()

    def check(self) -> None:
        self.encode_stage.check()
        self.retrieve_stage.check()


# ---------------------------------------------------------------------------------------------
# degrading: a stage that fails or misses its deadline is answered around, never a 5xx


class StageFailed(Exception):
    """A stage call that raised or missed its deadline: the Ingress answers from the stage before (``degraded``)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.degraded = Degraded(stage, reason)


async def call_stage(stage: str, response, deadline_s: float):
    """The result of one stage's call within ``deadline_s``: a DeploymentHandle's (``response``: a ``DeploymentResponse``;
    layout composed), or a :class:`LocalHandle`'s (an asyncio future of the stage function on the Ingress replica's
    compute thread; layout colocated: on a missed deadline it is cancelled too, which drops it if it has not started,
    while a computation already running finishes in the background, unread).

    :class:`StageFailed` when the call raised or missed its deadline. Raised: the deployment's own exception (a
    ``RayTaskError`` that is also an instance of it), a replica that died (``ActorDiedError``; in fast mode, where
    gRPC carries the calls, ``ActorUnavailableError``), a handle that refused the call (``BackPressureError``), a
    call cancelled on the replica's side (``RequestCancelledError``). A deadline missed: the handle was still
    waiting for a replica (none alive: Serve starts a new one), or the replica was slow; the call is then cancelled
    (``DeploymentResponse.cancel``: taken off the handle's queue, or the replica's task cancelled), so waiting calls
    do not pile up on a dead or slow replica. Not caught: a ``LookupError`` (a matcher version the Retriever does
    not hold: a deploy to fix, answered 503), and the request's own cancellation (``asyncio.CancelledError``: its
    ``timeout_s``, or the client gone)."""

    async def result():
        return await response

    try:
        return await asyncio.wait_for(result(), deadline_s)
    except asyncio.TimeoutError:
        response.cancel()
        raise StageFailed(stage, f"no answer within the {stage} deadline of {deadline_s * 1e3:g} ms") from None
    except Exception as e:
        cause = getattr(e, "cause", None)  # a RayTaskError's: the deployment's exception
        cause = cause if isinstance(cause, BaseException) else e
        if isinstance(cause, LookupError):
            raise
        raise StageFailed(stage, _reason(cause)) from e


def _reason(e: BaseException) -> str:
    """An error as a degraded answer's ``reason``: its type and the start of its message, on one line."""
    return shorten(" ".join(f"{type(e).__name__}: {e}".split()), 200)


app = FastAPI(
    title="seqrec: two-stage recommendations",
    description="SDM (sequential deep matching) retrieves candidates with FAISS; BST (behaviour sequence "
    "transformer) ranks them. POST a user's raw events; an empty history gets the popular items.",
)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(app)
class Ingress:
    """HTTP in and out: reads the request within its bounds (:func:`read_body`, :func:`parse_body`,
    ``seqrec.serving.check_request``), sends it through the stage deployments (layout colocated: through the same
    stages in this replica, :class:`Colocated`) and assembles the
    answer with ``seqrec.serving.answer`` / ``cold_start``, as the in-process pipeline does. Holds the
    user-behaviour store (``seqrec.store``), if any: ``POST /events`` writes it, ``POST /recommend`` reads it."""

    def __init__(self, encoder: Optional[DeploymentHandle], retriever: Optional[DeploymentHandle],
                 ranker: Optional[DeploymentHandle], data: str, candidates: int = 300, limits: Optional[Dict[str, Any]] = None,
                 store: Optional[str] = None, store_ttl_s: Optional[int] = None, layout: str = "composed", threads: int = 1,
                 gpu: bool = False):
        builder = RowBuilder(data)
        # layout colocated: no stage deployments; the stages run in this replica (Colocated), whose models come with
        # this deployment's user_config (reconfigure), and are called through LocalHandles as the deployments are
        self.local: Optional[Colocated] = None
        if layout == "colocated":
            if encoder is not None or retriever is not None or ranker is not None:
                raise ValueError("layout colocated runs the stages in the Ingress: bind it without stage handles")
            self.local = Colocated(builder, threads, gpu)
            encoder, retriever = self.local.encoder, self.local.retriever
        elif layout != "composed":
            raise ValueError(f"layout {layout!r}: composed or colocated")
        elif encoder is None or retriever is None:
            raise ValueError("layout composed needs the UserEncoder's and the Retriever's handles")
        self.encoder, self.retriever, self.ranker = encoder, retriever, ranker
        self.candidates = int(candidates)
        self.limits = Limits(**(limits or {}))
        self.request_limits = self.limits.request()
        self.popular_ids = builder.popular_ids(self.limits.max_k)
        self.fields = ItemFields.load(data, builder)  # every answered item's `fields`, as the in-process Pipeline's
        # what the store keeps of a user: what the dataset's protocol reads (long-term window, history, a session)
        retention = Retention.for_protocol(builder.protocol, max_events=self.limits.max_events, idle_ttl_s=store_ttl_s)
        self.store: Optional[Store] = None if store is None else open_store(store, retention)
        # POST /recommend reads through a connection and threads of their own, so that a read never queues behind
        # POST /events commits (a store's connection serves one call at a time, and an fsync'd SQLite commit can take
        # a while on a busy disk; in WAL mode a reader on another connection does not wait for the writer)
        self.reader: Optional[Store] = None if store is None else open_store(store, retention)
        self.read_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-read")
        # answers given, and degraded ones by the stage that failed (GET /stats; Ray's metrics: seqrec_degraded_answers)
        self.answers, self.degraded = 0, {stage: 0 for stage in FALLBACKS}
        from ray.util.metrics import Counter

        self.degraded_metric = Counter("seqrec_degraded_answers", description="POST /recommend answers from a fallback, "
                                       "by the stage that failed or missed its deadline", tag_keys=("stage",))
        settle_heap()  # the row builder's vocabularies, the store (layout colocated: again after the models load)

    async def reconfigure(self, config: Dict[str, Any]) -> None:
        """Layout colocated: ``{"matcher": ..., "ranker": ... or null, "precision": ..., "encoder_runtime": ...}`` (this deployment's
        ``user_config``), loaded as the stage deployments load theirs (a ``serve deploy`` of new paths swaps them in
        place), on a thread of its own: the event loop, and the compute thread with the models before, keep serving."""
        if self.local is None:
            raise ValueError("the composed layout's Ingress takes no user_config (the stage deployments hold the models)")
        await asyncio.to_thread(self.local.reconfigure, config)
        self.ranker = self.local.ranker

    def check_health(self) -> None:
        """Layout colocated: unhealthy until its models are loaded (the composed Ingress holds none)."""
        if self.local is not None:
            self.local.check()

    @app.get("/healthz")
    async def healthz(self) -> Dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def stats(self) -> Dict[str, Any]:
        """This Ingress replica's counts since it started: POST /recommend answers given (200s), and the degraded ones
        by the stage that failed or missed its deadline (each is also logged, and counted in Ray's metrics as
        ``seqrec_degraded_answers{stage=...}``, summed over replicas)."""
        return {"answers": self.answers, "degraded": dict(self.degraded), "deadlines_ms": {
            stage: self.limits.deadline_s(stage) * 1e3 for stage in FALLBACKS}}

    # The body is read here, not by FastAPI, so that its size is bounded before it is parsed and its errors are
    # bounded after; the documentation still shows RecommendIn (openapi_extra).
    @app.post("/recommend", response_model=RecommendOut, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": _inline_refs(RecommendIn.model_json_schema())}}}},
        responses={413: {"description": "the body is over max_body_bytes (1 MiB by default)"},
                   415: {"description": "the body is not JSON"},
                   422: {"description": "malformed JSON, a field missing, mistyped or over its bound (max_k, max_events, "
                         "max_id_chars), or a timestamp `seqrec data prepare` rejects; values quoted at most ~80 characters"}})
    async def recommend(self, request: Request):
        rid = request.headers.get("x-request-id")
        try:
            body = parse_body(await read_body(request, self.limits.max_body_bytes), request.headers.get("content-type"))
            req = body.to_request()
            self._check(body, req)
        except RequestError as e:
            return JSONResponse(status_code=e.status, content={"detail": e.detail, "request_id": rid})
        try:
            return await asyncio.wait_for(self._recommend(body, req, rid), timeout=self.limits.timeout_s)
        except asyncio.TimeoutError:
            return JSONResponse(status_code=504, content={"detail": f"no answer within {self.limits.timeout_s:g}s", "request_id": rid})
        except Exception as e:  # noqa: BLE001 - a replica error: a 5xx that names the request, never a hang
            cause = getattr(e, "cause", None) or e
            status = 503 if isinstance(cause, LookupError) else 500
            log.error("request %s failed: %r", rid, e)
            return JSONResponse(status_code=status, content={"detail": shorten(f"{type(cause).__name__}: {cause}", 300),
                                                             "request_id": rid})

    @app.post("/events", response_model=EventsOut, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": _inline_refs(EventsIn.model_json_schema())}}}},
        responses={413: {"description": "the body is over max_body_bytes"}, 415: {"description": "the body is not JSON"},
                   422: {"description": "an event or field that POST /recommend would refuse (named: users[i].events[j]...), "
                         "more than max_events events in the batch, or an Idempotency-Key over 200 characters; nothing of "
                         "the batch is stored"},
                   501: {"description": "the app was started without a store"},
                   503: {"description": "the store could not be written; nothing of the batch is stored"}})
    async def events(self, request: Request):
        """Append one or more users' behaviours to the store: all of the batch, or (on any error) none of it. The
        answer comes after the store's commit, so an acknowledged event is durable (docs/serving.md). With an
        ``Idempotency-Key`` header, a batch sent again after a lost answer is stored once (``replayed``: true)."""
        rid = request.headers.get("x-request-id")
        key = request.headers.get("idempotency-key")
        try:
            try:
                check_key(key)
            except ValueError as e:
                raise RequestError(422, str(e)) from None
            body = parse_body(await read_body(request, self.limits.max_body_bytes), request.headers.get("content-type"),
                              schema=EventsIn)
            reqs = [u.to_request() for u in body.users]
            try:
                check_batch(reqs, self.request_limits)
            except ValueError as e:
                raise RequestError(422, str(e)) from None
            if self.store is None:
                raise RequestError(501, "this app keeps no user behaviours: start it with a store (seqrec serve --store "
                                   "URL, or the app's arg store)")
        except RequestError as e:
            return JSONResponse(status_code=e.status, content={"detail": e.detail, "request_id": rid})
        try:
            n, replayed = await asyncio.wait_for(asyncio.to_thread(self.store.append_once, reqs, key, None),
                                                 timeout=self.limits.timeout_s)
        except Exception as e:  # noqa: BLE001 - the store failed (or is slow): nothing acknowledged, say so
            # a timeout is a 503 too, and the batch may still be committed then: a client retries it (at least once;
            # once with an Idempotency-Key)
            log.error("request %s: the store failed: %r", rid, e)
            return JSONResponse(status_code=503, content={"detail": shorten(f"the store failed: {type(e).__name__}: {e}", 300),
                                                          "request_id": rid})
        return {"request_id": rid, "users": len(reqs), "events": n, "replayed": replayed}

    def _check(self, body: RecommendIn, req: Req) -> None:
        """:class:`RequestError` (422) for a request out of bounds (``seqrec.serving.check_request``)."""
        try:
            check_request(req, body.k, self.request_limits)
        except ValueError as e:
            raise RequestError(422, str(e)) from None
        if body.k > self.candidates and (body.events or self.store is not None):
            raise RequestError(422, f"k={body.k} is more than the {self.candidates} candidates the retriever returns")

    async def _recommend(self, body: RecommendIn, req: Req, rid: Optional[str]) -> Dict[str, Any]:
        t0 = time.perf_counter()
        timings: Dict[str, float] = {}
        if self.store is not None:  # the stored behaviours, then the request's (for this request only)
            (stored,) = await asyncio.get_running_loop().run_in_executor(self.read_threads, self.reader.recent, [req.user_id])
            req = merge(stored, req)
            timings["store_read"] = (time.perf_counter() - t0) * 1e3
        if not req.events:
            self.answers += 1
            return cold_start(self.popular_ids, body.k, {**timings, "total": (time.perf_counter() - t0) * 1e3},
                              self.fields).response(rid)
        one = await self._stages(body, req, timings)
        one.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        self.answers += 1
        if one.degraded is not None:
            self.degraded[one.degraded.stage] += 1
            self.degraded_metric.inc(tags={"stage": one.degraded.stage})
            log.warning("request %s degraded: %s failed (%s); answered with the %s", rid, one.degraded.stage,
                        one.degraded.reason, one.degraded.fallback.replace("_", " "))
        return one.response(rid)

    async def _stages(self, body: RecommendIn, req: Req, timings: Dict[str, float]) -> Answer:
        """Encode → retrieve → rank, each within its deadline (:func:`call_stage`); a stage that fails gets the stage
        before's answer, marked ``degraded``: the popular items without the encoder or the retriever, the matcher's
        order without the ranker."""
        lim, t = self.limits, time.perf_counter()
        enc = None
        try:
            enc = await call_stage("encode", self.encoder.encode.remote(req), lim.deadline_s("encode"))
            if isinstance(enc, Exception):  # the encoder's error for this request alone (serve.batch slot)
                raise StageFailed("encode", _reason(enc))
            timings.update(encode=(time.perf_counter() - t) * 1e3, encode_compute=enc.rows_ms + enc.encode_ms)
            t = time.perf_counter()
            cands = await call_stage("retrieve", self.retriever.retrieve.remote(
                enc.vecs[0], self.candidates, enc.matcher, *enc.exclusions(body.exclude_seen)), lim.deadline_s("retrieve"))
            timings.update(retrieve=(time.perf_counter() - t) * 1e3, retrieve_compute=cands.ms)
        except StageFailed as e:
            timings[e.degraded.stage] = (time.perf_counter() - t) * 1e3
            report = None if enc is None or isinstance(enc, Exception) else enc.reports[0]
            return popular_fallback(self.popular_ids, body.k, timings, e.degraded, report, self.fields)
        ranked, degraded, t = None, None, time.perf_counter()
        if self.ranker is not None:
            try:
                ranked = await call_stage("rank", self.ranker.rank.remote(enc, cands.codes[0], cands.scores[0]),
                                          lim.deadline_s("rank"))
            except StageFailed as e:
                degraded = e.degraded
        timings.update(rank=(time.perf_counter() - t) * 1e3, rank_compute=0.0 if ranked is None else ranked.ms)
        (one,) = answer(enc, cands, ranked, body.k, timings, degraded, self.fields)
        return one


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
    if args.store is not None:  # a relative sqlite path likewise; opening it here names a bad URL before deploying
        args = args.model_copy(update={"store": resolve_url(args.store)})
        open_store(args.store).close()
    opts = deployment_options(args.model_dump())
    limits = {k: getattr(args, k) for k in Limits.model_fields}
    if args.layout == "colocated":  # the Ingress alone: its user_config names the models (deployment_options)
        return Ingress.options(**opts["Ingress"]).bind(None, None, None, args.data, args.candidates, limits, args.store,
                                                       args.store_ttl_s, layout="colocated", threads=args.threads,
                                                       gpu=args.gpu)
    encoder = UserEncoder.options(**opts["UserEncoder"]).bind(args.data, args.threads, args.gpu)
    retriever = Retriever.options(**opts["Retriever"]).bind(args.threads, args.gpu)
    ranker = Ranker.options(**opts["Ranker"]).bind(args.data, args.threads, args.gpu) if args.ranker else None
    return Ingress.options(**opts["Ingress"]).bind(encoder, retriever, ranker, args.data, args.candidates, limits,
                                                   args.store, args.store_ttl_s)
