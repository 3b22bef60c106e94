"""Degrade, don't fail (issue #17 item 3): a stage that fails or misses its deadline is answered around.

The app is the real one (serve_apps/recommend.py's Ingress, UserEncoder, Retriever, Ranker) on the shared local
Ray cluster, over HTTP on 127.0.0.1. Faults are injected into the real deployments: each stage's class is
subclassed so that, before its real method runs, it reads a fault file (``{"rank": {"raise": "..."}}`` or
``{"encode": {"sleep_s": 6}}``) and raises or sleeps as it says; with no fault the real stage answers. The last
test kills the Ranker's replica actor, as a user would.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests

#: The test app's stage deadlines (ms) and request budget (s); an injected sleep is well past a deadline.
DEADLINE_MS = 1500.0
TIMEOUT_S = 10.0
SLEEP_S = 6.0


def _faulty(deployment, method: str, stage: str, fault_file: str):
    """``deployment`` with its class's ``method`` preceded by the fault of ``stage`` in ``fault_file`` (if any)."""
    base = deployment.func_or_class
    real = getattr(base, method)

    async def wrapped(self, *args, **kwargs):
        import asyncio
        import json
        from pathlib import Path

        path = Path(fault_file)
        fault = (json.loads(path.read_text() or "{}") if path.exists() else {}).get(stage, {})
        if "sleep_s" in fault:
            await asyncio.sleep(fault["sleep_s"])
        if "raise" in fault:
            raise RuntimeError(fault["raise"])
        return await real(self, *args, **kwargs)

    wrapped.__dict__.update(real.__dict__)  # serve.batch's setters (set_max_batch_size, ...), which reconfigure calls
    cls = type(base.__name__, (base,), {method: wrapped, "__module__": __name__})
    return deployment.options(func_or_class=cls)


def body_of(req, k: int = 10) -> dict:
    return {"user_id": req.user_id, "k": k, "profile": req.profile,
            "events": [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior, **e.side} for e in req.events]}


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_prepared, tiny_artifacts, tmp_path_factory):
    from ray import serve

    from seqrec.cluster import free_port
    from serve_apps.config import deployment_options
    from serve_apps.recommend import AppArgs, Ingress, Limits, Ranker, Retriever, UserEncoder

    faults = tmp_path_factory.mktemp("faults") / "faults.json"
    faults.write_text("{}")
    args = AppArgs(data=str(tiny_prepared), matcher=str(tiny_artifacts["sdm"]), ranker=str(tiny_artifacts["bst"]),
                   candidates=50, max_k=20, timeout_s=TIMEOUT_S, encode_deadline_ms=DEADLINE_MS,
                   retrieve_deadline_ms=DEADLINE_MS, rank_deadline_ms=DEADLINE_MS)
    opts = deployment_options(args.model_dump())
    encoder = _faulty(UserEncoder, "encode", "encode", str(faults)).options(**opts["UserEncoder"]).bind(args.data)
    retriever = _faulty(Retriever, "retrieve", "retrieve", str(faults)).options(**opts["Retriever"]).bind()
    ranker = _faulty(Ranker, "rank", "rank", str(faults)).options(**opts["Ranker"]).bind(args.data)
    limits = {k: getattr(args, k) for k in Limits.model_fields}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Ingress.options(**opts["Ingress"]).bind(encoder, retriever, ranker, args.data, args.candidates, limits),
              name="degrade", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "faults": faults}
    serve.shutdown()


@pytest.fixture
def fault(app):
    """Set a fault: ``fault("rank", raise_="...")`` or ``fault("encode", sleep_s=6)``; cleared after the test."""

    def set_fault(stage: str, raise_: str | None = None, sleep_s: float | None = None) -> None:
        spec = {k: v for k, v in (("raise", raise_), ("sleep_s", sleep_s)) if v is not None}
        app["faults"].write_text(json.dumps({stage: spec}))

    yield set_fault
    app["faults"].write_text("{}")


def post(app, body, **headers) -> requests.Response:
    return requests.post(app["url"] + "/recommend", data=json.dumps(body), timeout=60,
                         headers={"content-type": "application/json", **headers})


@pytest.fixture(scope="module")
def reqs(tiny_prepared):
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    builder = RowBuilder(tiny_prepared)
    return [builder.request_from_row(r) for r in read_split(tiny_prepared, "test").slice(0, 3).to_pylist()]


@pytest.fixture(scope="module")
def pipelines(tiny_prepared, tiny_artifacts):
    """The in-process pipeline with the ranker, and without it (the matcher's order)."""
    from seqrec.serving import Pipeline

    return {"ranked": Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50),
            "matcher": Pipeline(tiny_prepared, tiny_artifacts["sdm"], None, candidates=50)}


def assert_same_items(got: dict, want: dict) -> None:
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], rtol=1e-4, atol=1e-6)


def test_every_stage_answering_gives_the_full_answer_with_degraded_null(app, reqs, pipelines):
    (want,) = pipelines["ranked"].recommend(reqs[:1], k=10)
    r = post(app, body_of(reqs[0]))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["degraded"] is None and want["degraded"] is None
    assert_same_items(got, want)
    assert got["model_versions"] == want["model_versions"]


@pytest.mark.parametrize("how", ["raise", "slow"])
def test_a_failing_or_slow_ranker_gives_the_matcher_order_marked_degraded(app, fault, reqs, pipelines, how):
    """The matcher's order of the candidates, as the pipeline without a ranker answers, with the stage and the reason."""
    if how == "raise":
        fault("rank", raise_="injected: the ranker ran out of memory")
    else:
        fault("rank", sleep_s=SLEEP_S)
    for req in reqs:
        (want,) = pipelines["matcher"].recommend([req], k=10)
        t0 = time.perf_counter()
        r = post(app, body_of(req), **{"x-request-id": f"rank-{how}"})
        wall = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        got = r.json()
        assert_same_items(got, want)
        assert got["model_versions"] == want["model_versions"] and got["model_versions"]["ranker"] is None
        assert got["request_id"] == f"rank-{how}" and not got["cold_start"]
        degraded = got["degraded"]
        assert degraded["stage"] == "rank" and degraded["fallback"] == "matcher_order", degraded
        if how == "raise":
            assert degraded["reason"] == "RuntimeError: injected: the ranker ran out of memory", degraded
        else:
            assert degraded["reason"] == f"no answer within the rank deadline of {DEADLINE_MS:g} ms", degraded
            assert got["timings_ms"]["rank"] >= DEADLINE_MS and wall < SLEEP_S  # answered at the deadline, not after
    # a bad request stays a 4xx while the ranker is down: only stage failures degrade
    bad = post(app, {**body_of(reqs[0]), "k": 21})
    assert bad.status_code == 422 and "max_k=20" in bad.text


@pytest.mark.parametrize("stage, how", [("encode", "raise"), ("encode", "slow"), ("retrieve", "raise")])
def test_a_failing_or_slow_encoder_or_retriever_gives_the_popular_items_marked_degraded(app, fault, reqs, tiny_prepared,
                                                                                        stage, how):
    from seqrec.serving import RowBuilder

    popular = RowBuilder(tiny_prepared).popular_ids(7)
    if how == "raise":
        fault(stage, raise_=f"injected: the {stage} stage is down")
    else:
        fault(stage, sleep_s=SLEEP_S)
    r = post(app, body_of(reqs[0], k=7))
    assert r.status_code == 200, r.text
    got = r.json()
    assert [i["item_id"] for i in got["items"]] == popular and all(i["score"] is None for i in got["items"])
    assert not got["cold_start"] and got["model_versions"] == {"popular": "popular items of the training window"}
    reason = (f"RuntimeError: injected: the {stage} stage is down" if how == "raise"
              else f"no answer within the {stage} deadline of {DEADLINE_MS:g} ms")
    assert got["degraded"] == {"stage": stage, "reason": reason, "fallback": "popular"}


def test_after_a_fault_clears_answers_are_whole_again_and_stats_count_the_degraded_ones(app, fault, reqs, pipelines):
    before = requests.get(app["url"] + "/stats", timeout=30).json()
    fault("rank", sleep_s=SLEEP_S)
    assert post(app, body_of(reqs[1])).json()["degraded"]["stage"] == "rank"
    app["faults"].write_text("{}")  # the sleeping call was cancelled at its deadline; the next one is answered
    (want,) = pipelines["ranked"].recommend(reqs[1:2], k=10)
    got = post(app, body_of(reqs[1])).json()
    assert got["degraded"] is None
    assert_same_items(got, want)
    after = requests.get(app["url"] + "/stats", timeout=30).json()
    assert after["degraded"]["rank"] == before["degraded"]["rank"] + 1 and after["answers"] == before["answers"] + 2
    assert after["deadlines_ms"] == {"encode": DEADLINE_MS, "retrieve": DEADLINE_MS, "rank": DEADLINE_MS}


def test_stage_deadlines_must_fit_inside_the_request_budget():
    from serve_apps.recommend import AppArgs

    with pytest.raises(ValueError, match=r"= 5000 ms\) must add up to less than timeout_s=5 s .* lower a deadline or raise timeout_s"):
        AppArgs(data=".", matcher=".", encode_deadline_ms=2000, retrieve_deadline_ms=2000, rank_deadline_ms=1000)
    assert AppArgs(data=".", matcher=".", timeout_s=6, encode_deadline_ms=2000, retrieve_deadline_ms=2000,
                   rank_deadline_ms=1000).rank_deadline_ms == 1000


def test_killing_the_ranker_replica_under_traffic_gives_no_5xx(app, reqs):
    """As in the issue: the only Ranker replica killed under a stream of requests. Every request is answered:
    by the matcher's order, marked degraded, until Serve has replaced the replica; then by the ranker again."""
    import ray

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Ranker#" in a["name"]}

    (ranker,) = replicas()
    seen: list[tuple[int, dict]] = []
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            r = post(app, body_of(reqs[i % len(reqs)]))
            seen.append((r.status_code, r.json()))
            i += 1

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        end = time.time() + 60
        while len(seen) < 3 and time.time() < end:
            time.sleep(0.1)
        ray.kill(ray.get_actor(ranker, namespace="serve"), no_restart=True)
        killed_at = len(seen)
        end = time.time() + 120
        # until a new replica answers: 3 whole answers after at least one degraded one
        while time.time() < end:
            after = seen[killed_at:]
            first = next((i for i, (_, b) in enumerate(after) if b.get("degraded")), None)
            if first is not None and sum(s == 200 and b["degraded"] is None for s, b in after[first:]) >= 3:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    failed = [(s, b) for s, b in seen if s != 200]
    assert not failed, failed[:3]
    after = seen[killed_at:]
    degraded = [b["degraded"] for _, b in after if b["degraded"]]
    assert degraded and all(d["stage"] == "rank" and d["fallback"] == "matcher_order" for d in degraded), degraded[:3]
    assert sum(b["degraded"] is None for _, b in after) >= 3, f"no whole answer after the kill: {len(after)} requests"
    assert replicas() != {ranker}  # Serve replaced it
