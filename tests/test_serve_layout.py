"""The app's layouts (serve_apps/recommend.py, docs/serving.md "Layouts"): composed (Ingress → UserEncoder → Retriever →
Ranker deployments) and colocated (the Ingress alone, running the three stages in its replicas), on the shared local
Ray cluster over HTTP on 127.0.0.1, and their configs (serve_apps/config.py)."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import requests
from serving_inputs import raw_events, request_for


def body_of(req, k: int = 10) -> dict:
    return {"user_id": req.user_id, "k": k, "profile": req.profile,
            "events": [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior, **e.side} for e in req.events]}


def _args(tiny_prepared, tiny_artifacts, **kw) -> dict:
    return {"data": str(tiny_prepared), "matcher": str(tiny_artifacts["sdm"]), "ranker": str(tiny_artifacts["bst"]),
            "candidates": 50, "max_k": 20, **kw}


@pytest.fixture(scope="module")
def apps(ray_cluster, tiny_prepared, tiny_artifacts):
    """Three apps side by side, built by ``recommend.build`` (so from ``deployment_options``): the composed layout,
    the colocated one, and the colocated one with a rank deadline no ranker meets."""
    from ray import serve

    from seqrec.cluster import free_port
    from serve_apps.recommend import build

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # the compared apps get deadlines no stage misses on a busy CI machine (the tests compare answers, not timing)
    slack = {"encode_deadline_ms": 15_000, "retrieve_deadline_ms": 15_000, "rank_deadline_ms": 15_000, "timeout_s": 60}
    for name, kw in (("composed", slack), ("colocated", {"layout": "colocated", **slack}),
                     ("late", {"layout": "colocated", "rank_deadline_ms": 0.001})):
        serve.run(build(_args(tiny_prepared, tiny_artifacts, **kw)), name=name, route_prefix=f"/{name}")
    yield {name: f"http://127.0.0.1:{port}/{name}" for name in ("composed", "colocated", "late")}
    serve.shutdown()


def post(url: str, body: dict) -> dict:
    r = requests.post(url + "/recommend", data=json.dumps(body), timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reqs(tiny_prepared):
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    builder = RowBuilder(tiny_prepared)
    ev = raw_events(tiny_prepared.parent)
    return [request_for(row, ev, builder) for row in read_split(tiny_prepared, "test").slice(0, 5).to_pylist()]


def assert_same_items(got: dict, want: dict) -> None:
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([i["match_score"] for i in got["items"]], [i["match_score"] for i in want["items"]],
                               rtol=1e-4, atol=1e-6)


def test_the_colocated_app_answers_as_the_in_process_pipeline_and_the_composed_app(apps, reqs, tiny_prepared, tiny_artifacts):
    from seqrec.serving import Pipeline

    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
    for req, want in zip(reqs, pipe.recommend(reqs, k=10)):
        got = post(apps["colocated"], body_of(req))
        composed = post(apps["composed"], body_of(req))
        for out in (got, composed):
            assert out["degraded"] is None, out["degraded"]
            assert_same_items(out, want)
            assert out["model_versions"] == want["model_versions"] == pipe.versions()
            assert [out[f] for f in ("cold_start", "unknown_items", "unknown_user", "unknown_values")] == \
                [want[f] for f in ("cold_start", "unknown_items", "unknown_user", "unknown_values")]
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in composed["items"]]
        assert {"encode", "retrieve", "rank", "total"} <= set(got["timings_ms"])
    # exclude_seen and a cold start go the same way
    (want,) = pipe.recommend(reqs[:1], k=10, exclude_seen=True)
    assert_same_items(post(apps["colocated"], {**body_of(reqs[0]), "exclude_seen": True}), want)
    cold = post(apps["colocated"], {"user_id": reqs[0].user_id, "events": [], "k": 4})
    assert cold["cold_start"] and cold["items"] == pipe.recommend([type(reqs[0])(reqs[0].user_id, [])], k=4)[0]["items"]
    assert requests.get(apps["colocated"] + "/healthz", timeout=30).json() == {"status": "ok"}


def test_a_rank_deadline_missed_in_the_colocated_app_gives_the_matcher_order_marked_degraded(apps, reqs, tiny_prepared,
                                                                                            tiny_artifacts):
    from seqrec.serving import Pipeline

    matcher_only = Pipeline(tiny_prepared, tiny_artifacts["sdm"], None, candidates=50)
    for req in reqs[:3]:
        (want,) = matcher_only.recommend([req], k=10)
        got = post(apps["late"], body_of(req))
        assert_same_items(got, want)
        assert got["model_versions"] == want["model_versions"] and got["model_versions"]["ranker"] is None
        assert got["degraded"] == {"stage": "rank", "reason": "no answer within the rank deadline of 0.001 ms",
                                   "fallback": "matcher_order"}
    stats = requests.get(apps["late"] + "/stats", timeout=30).json()
    assert stats["degraded"]["rank"] >= 3 and stats["degraded"]["encode"] == stats["degraded"]["retrieve"] == 0


def test_the_colocated_stages_return_what_the_deployments_return_and_are_unhealthy_until_loaded(tiny_prepared, tiny_artifacts,
                                                                                              reqs):
    """The LocalHandles' results (Encoded for one request, Candidates for one vector, Ranked (1, C)), equal to the stage
    deployments' bodies; a missed deadline cancels the call (StageFailed), and the next call is answered."""
    from seqrec.serving import Candidates, Encoded, Ranked, RowBuilder
    from serve_apps.recommend import Colocated, StageFailed, call_stage

    builder = RowBuilder(tiny_prepared)
    local = Colocated(builder)
    with pytest.raises(RuntimeError, match="no matcher loaded"):
        local.check()
    local.reconfigure({"matcher": str(tiny_artifacts["sdm"]), "ranker": str(tiny_artifacts["bst"]), "precision": "auto"})
    local.check()

    async def run():
        enc = await call_stage("encode", local.encoder.encode.remote(reqs[0]), 30)
        cands = await call_stage("retrieve", local.retriever.retrieve.remote(enc.vecs[0], 50, enc.matcher, None), 30)
        ranked = await call_stage("rank", local.ranker.rank.remote(enc, cands.codes[0], cands.scores[0]), 30)
        # the compute thread busy (its one worker waits on a gate), so the next call waits in its queue past any
        # deadline: a tiny deadline alone raced a tiny ranker that could finish before the deadline was armed
        gate = threading.Event()
        local.compute.submit(gate.wait, 30)
        try:
            with pytest.raises(StageFailed, match="no answer within the rank deadline"):
                await call_stage("rank", local.ranker.rank.remote(enc, cands.codes[0], cands.scores[0]), 1e-3)
        finally:
            gate.set()
        bad = await call_stage("encode", local.encoder.encode.remote(type(reqs[0])(1, [])), 30)  # no events: its error
        again = await call_stage("rank", local.ranker.rank.remote(enc, cands.codes[0], cands.scores[0]), 30)
        return enc, cands, ranked, bad, again

    enc, cands, ranked, bad, again = asyncio.run(run())
    (batch_enc,) = local.encode_stage.encode_batch([reqs[0]])
    assert isinstance(enc, Encoded) and enc.vecs.shape == batch_enc.vecs.shape == (1, enc.vecs.shape[1])
    np.testing.assert_array_equal(enc.vecs, batch_enc.vecs)
    assert enc.rows.to_pylist() == batch_enc.rows.to_pylist() and enc.matcher == batch_enc.matcher
    assert isinstance(cands, Candidates) and cands.codes.shape == (1, 50)
    assert isinstance(ranked, Ranked) and ranked.logits.shape == (1, 50)
    np.testing.assert_array_equal(ranked.logits, again.logits)
    assert isinstance(bad, Exception)
    local.reconfigure({"matcher": str(tiny_artifacts["sdm"]), "ranker": None})  # no ranker: the matcher's order
    assert local.ranker is None


def test_the_colocated_config_lists_only_the_ingress_with_the_models(tiny_prepared, tiny_artifacts, tmp_path):
    import yaml

    from seqrec.cli import main
    from serve_apps.config import config, deployment_options

    args = {"data": "d", "matcher": "m", "ranker": "r", "ranker_precision": "fp32", "layout": "colocated", "replicas": 3}
    opts = deployment_options(args)
    assert list(opts) == ["Ingress"]
    assert opts["Ingress"]["user_config"] == {"matcher": "m", "ranker": "r", "precision": "fp32", "encoder_runtime": "auto"}
    assert opts["Ingress"]["num_replicas"] == 3 and "num_gpus" not in opts["Ingress"]["ray_actor_options"]
    gpu = deployment_options({**args, "gpu": True})["Ingress"]["ray_actor_options"]
    assert gpu["num_gpus"] == 1.0  # the sum of the stage deployments' shares
    (dep,) = config(args)["applications"][0]["deployments"]
    assert dep["name"] == "Ingress" and dep["num_replicas"] == 3 and dep["user_config"]["matcher"] == "m"
    # composed: unchanged, one replica of each by default, `replicas` of each when asked
    composed = config({"data": "d", "matcher": "m", "ranker": "r"})["applications"][0]["deployments"]
    assert [(d["name"], d["num_replicas"]) for d in composed] == [(n, 1) for n in ("Ingress", "UserEncoder", "Retriever", "Ranker")]
    assert "user_config" not in composed[0]
    assert {d["num_replicas"] for d in config({"data": "d", "matcher": "m", "replicas": 2})["applications"][0]["deployments"]} == {2}
    with pytest.raises(ValueError, match="layout 'stacked'"):
        deployment_options({**args, "layout": "stacked"})
    # seqrec serve --layout --replicas: into the app's args and the written config
    out = tmp_path / "serve.yaml"
    assert main(["serve", "--data", str(tiny_prepared), "--run", str(tiny_artifacts["sdm"].parent), "--layout", "colocated",
                 "--replicas", "2", "--write-config", str(out)]) == 0
    app = yaml.safe_load(out.read_text())["applications"][0]
    assert app["args"]["layout"] == "colocated" and app["args"]["replicas"] == 2
    (dep,) = app["deployments"]
    assert dep["name"] == "Ingress" and dep["num_replicas"] == 2
    assert dep["user_config"]["matcher"] == str(tiny_artifacts["sdm"] / "export")
    assert dep["user_config"]["ranker"] == str(tiny_artifacts["bst"] / "export")
