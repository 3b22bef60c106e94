"""The composed Serve app (serve_apps/recommend.py) on the shared local Ray cluster, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from serving_inputs import raw_events, request_for


def body_of(req, k: int = 5) -> dict:
    return {"user_id": req.user_id, "k": k, "profile": req.profile,
            "events": [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior, **e.side} for e in req.events]}


@pytest.fixture(scope="module")
def app(ray_cluster, tiny_prepared, tiny_artifacts, tmp_path_factory):
    from ray import serve

    from seqrec.cluster import free_port
    from serve_apps.config import config, deploy

    port = free_port()
    args = {"data": str(tiny_prepared), "matcher": str(tiny_artifacts["sdm"]), "ranker": str(tiny_artifacts["bst"]),
            "candidates": 50, "max_k": 20, "max_events": 1000,
            "store": f"sqlite:///{tmp_path_factory.mktemp('store') / 'events.sqlite'}"}  # users' behaviours (POST /events)
    cfg = config(args, port=port)
    deploy(cfg)
    yield {"url": f"http://127.0.0.1:{port}", "config": cfg, "args": args}
    serve.shutdown()


def post(app, body, **headers) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(app["url"] + "/recommend", data=data, timeout=60,
                         headers={"content-type": "application/json", **headers})


def test_a_request_gets_k_ranked_items_the_versions_and_the_stage_timings(app, tiny_prepared):
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    req = RowBuilder(tiny_prepared).request_from_row(read_split(tiny_prepared, "test").slice(0, 1).to_pylist()[0])
    r = post(app, body_of(req, k=7), **{"x-request-id": "t-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["request_id"] == "t-1" and r.headers["x-request-id"] == "t-1"
    scores = [i["score"] for i in out["items"]]
    assert len(out["items"]) == 7 and scores == sorted(scores, reverse=True) and not out["cold_start"]
    versions = out["model_versions"]
    assert versions["matcher"]["model"] == "sdm" and versions["ranker"]["model"] == "bst" and versions["index"]["kind"] == "flat"
    assert {"encode", "retrieve", "rank", "total"} <= set(out["timings_ms"])
    assert requests.get(app["url"] + "/healthz", timeout=30).json() == {"status": "ok"}
    assert "/recommend" in requests.get(app["url"] + "/openapi.json", timeout=30).json()["paths"]


def test_served_top_k_equals_the_in_process_pipeline(app, tiny_prepared, tiny_artifacts):
    """Same artifacts, same raw events: HTTP through four deployments gives the in-process pipeline's answer."""
    from seqrec import features as F
    from seqrec.data.prepare import read_split
    from seqrec.serving import Pipeline, Request

    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
    ev = raw_events(tiny_prepared.parent)
    reqs = [request_for(row, ev, pipe.rows) for row in read_split(tiny_prepared, "test").slice(0, 6).to_pylist()]
    local = pipe.recommend(reqs, k=10)
    for req, want in zip(reqs, local):
        r = post(app, body_of(req, k=10))
        assert r.status_code == 200, r.text
        got = r.json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]],
                                   rtol=1e-4, atol=1e-6)  # batch shapes differ
        # one answer assembly (seqrec.serving.answer): the same fields, versions and reports on both paths
        assert set(got) == set(want) and got["model_versions"] == want["model_versions"] == pipe.versions()
        # the items' fields (seqrec.serving.ItemFields: here the side features, no catalogue) pass the response schema
        assert [i["fields"] for i in got["items"]] == [i["fields"] for i in want["items"]] and got["items"][0]["fields"]
        assert [got[f] for f in ("cold_start", "unknown_items", "unknown_user", "unknown_values")] == \
            [want[f] for f in ("cold_start", "unknown_items", "unknown_user", "unknown_values")]
    # exclude_seen leaves out the same items (the short-term session's) on both paths
    (want,) = pipe.recommend(reqs[:1], k=10, exclude_seen=True)
    got = post(app, {**body_of(reqs[0], k=10), "exclude_seen": True}).json()
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    rows, _ = pipe.rows.rows(reqs[:1])
    session = set(pipe.item_ids[rows[F.seq_col(F.ITEM_ID)][0].as_py()].tolist())
    assert session and not session & {i["item_id"] for i in got["items"]}
    # and a request without events gets the same cold-start answer
    (cold,) = pipe.recommend([Request(reqs[0].user_id, [])], k=4)
    got = post(app, {"user_id": reqs[0].user_id, "events": [], "k": 4}).json()
    assert got["items"] == cold["items"] and got["cold_start"] and got["model_versions"] == cold["model_versions"]


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 422, "JSON decode error"),
    ({"events": []}, 422, "user_id"),
    ({"user_id": 1, "events": [], "k": 0}, 422, "greater than or equal to 1"),
    ({"user_id": 1, "events": [], "k": 21}, 422, "k=21 is more than max_k=20"),
    ({"user_id": 1, "events": [{"item_id": 1, "timestamp": t} for t in range(1001)]}, 422, "1001 events are more than max_events=1000"),
    ({"user_id": 1, "events": [{"timestamp": 5}]}, 422, "item_id"),
    ({"user_id": 1, "events": [{"item_id": 1, "timestamp": "noon"}]}, 422, "timestamp"),
    ({"user_id": 1, "events": [], "surprise": 1}, 422, "surprise"),
])
def test_bad_requests_get_422_naming_the_problem(app, body, status, message):
    r = post(app, body, **{"x-request-id": "bad-1"})
    assert r.status_code == status and message in r.text, r.text


def test_unknown_ids_are_reported_and_an_empty_history_gets_the_popular_items(app, tiny_prepared):
    from seqrec.serving import RowBuilder

    builder = RowBuilder(tiny_prepared)
    known = builder.vocab["item_id"][0].as_py()
    r = post(app, {"user_id": "stranger", "events": [{"item_id": known, "timestamp": 100},
                                                      {"item_id": 987654321, "timestamp": 130, "category_id": 4242}]})
    out = r.json()
    assert r.status_code == 200 and out["unknown_items"] == [987654321] and out["unknown_user"]
    assert len(out["items"]) == 10 and not out["cold_start"]  # the default k
    assert out["unknown_values"] == {"category_id": [4242]}
    cold = post(app, {"user_id": 3, "events": [], "k": 4}).json()
    popular = builder.popular(4)
    assert cold["cold_start"] and [i["item_id"] for i in cold["items"]] == [builder.vocab["item_id"][c - 2].as_py() for c in popular]


def _with_matchers(cfg: dict, encoder: str, retriever: str) -> dict:
    import copy

    cfg = copy.deepcopy(cfg)
    for d in cfg["applications"][0]["deployments"]:
        if d["name"] == "UserEncoder":
            d["user_config"]["matcher"] = encoder
        elif d["name"] == "Retriever":
            d["user_config"]["matcher"] = retriever
    return cfg


def _replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("SERVE_REPLICA::")}


class Traffic:
    """Requests in a loop on a thread, recording (status, matcher version id) of every answer."""

    def __init__(self, app, body):
        import threading

        self.app, self.body, self.seen, self.stop = app, body, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            r = post(self.app, self.body)
            self.seen.append((r.status_code, (r.json().get("model_versions") or {}).get("matcher", {}).get("id")
                              if r.status_code == 200 else r.text))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=120)


def _until(predicate, timeout: float = 120.0):
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _version(path) -> str:
    from seqrec.serving import export_dir, model_version

    return model_version(export_dir(path))["id"]


@pytest.mark.slow
def test_model_swaps_happen_in_place_and_a_version_mismatch_is_a_503_with_the_request_id(app, tiny_prepared, tiny_artifacts):
    """user_config swaps reconfigure the running replicas: no restart, no failed request; responses name the version."""
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder
    from serve_apps.config import deploy

    v1, v2 = _version(tiny_artifacts["sdm"]), _version(tiny_artifacts["sdm2"])
    body = body_of(RowBuilder(tiny_prepared).request_from_row(read_split(tiny_prepared, "test").slice(0, 1).to_pylist()[0]))
    sdm, sdm2 = str(tiny_artifacts["sdm"]), str(tiny_artifacts["sdm2"])
    before = _replicas()
    # 1. only the encoder moves to v2: the retriever has no index for v2 -> 503 naming the versions, with the request id
    deploy(_with_matchers(app["config"], sdm2, sdm))
    assert _until(lambda: post(app, body).status_code == 503)
    r = post(app, body, **{"x-request-id": "swap-1"})
    assert r.status_code == 503 and r.json()["request_id"] == "swap-1" and f"matcher version {v2}" in r.json()["detail"]
    # 2. both on v2, under traffic: every request answered, by v1 (the retriever keeps it) or v2
    with Traffic(app, body) as traffic:
        deploy(_with_matchers(app["config"], sdm2, sdm2))
        assert _until(lambda: any(v == v2 for s, v in traffic.seen if s == 200))
        # 3. back to v1 for both, under traffic: no failed request at all
        n = len(traffic.seen)
        deploy(_with_matchers(app["config"], sdm, sdm))
        assert _until(lambda: any(v == v1 for s, v in traffic.seen[n:] if s == 200))
    swapped = traffic.seen[n:]
    assert swapped and all(s == 200 for s, _ in swapped), [x for x in swapped if x[0] != 200][:3]
    assert _replicas() == before  # reconfigured in place: the same replica actors


@pytest.mark.slow
def test_a_killed_replica_is_replaced_and_later_requests_succeed(app, tiny_prepared):
    import time

    import ray

    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    body = body_of(RowBuilder(tiny_prepared).request_from_row(read_split(tiny_prepared, "test").slice(0, 1).to_pylist()[0]))
    (ranker,) = [n for n in _replicas() if "#Ranker#" in n]
    with Traffic(app, body) as traffic:
        assert _until(lambda: len(traffic.seen) >= 3)
        ray.kill(ray.get_actor(ranker, namespace="serve"), no_restart=True)
        killed_at = len(traffic.seen)
        assert _until(lambda: [n for n in _replicas() if "#Ranker#" in n and n != ranker], timeout=120)
        time.sleep(2)
        assert _until(lambda: len(traffic.seen) >= killed_at + 10)
    failed = [x for x in traffic.seen[killed_at:] if x[0] != 200]
    # a request caught by the kill: a 5xx naming the request (500, or 504 after the 5 s limit while the handle
    # waits for the replacement), never a hang
    assert all(500 <= s < 600 and "request_id" in json.loads(text) for s, text in failed), failed
    assert all(s == 200 for s, _ in traffic.seen[-5:])
    assert all(post(app, body).status_code == 200 for _ in range(5))


@pytest.mark.slow
def test_seqrec_serve_once_prints_one_served_recommendation(tiny_prepared, tiny_artifacts):
    """The README main command's last step: start the app from the runs, serve one test user, shut down."""
    import os
    import subprocess
    import sys

    from seqrec.cluster import free_port

    out = subprocess.run([sys.executable, "-m", "seqrec.cli", "serve", "--data", str(tiny_prepared), "--run",
                          str(tiny_artifacts["sdm"].parent), "--once", "--port", str(free_port())],
                         env=os.environ | {"RAY_ADDRESS": "local"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "served 10 items for user" in out.stdout and "  10. item " in out.stdout
    assert "versions: matcher sdm epoch 1" in out.stdout and "ranker bst epoch 1, index flat" in out.stdout
    # a new local cluster runs Serve in fast mode (HAProxy ingress, gRPC between deployments) ...
    assert "Serve mode fast (HAProxy ingress" in out.stdout
    # ... and answers what the in-process pipeline answers for the same request
    import re

    from seqrec.data.prepare import read_split
    from seqrec.serving import Pipeline, RowBuilder, find_runs

    served = [m.group(1) for m in re.finditer(r"^\s*\d+\. item (\S+)", out.stdout, re.M)]
    matcher, ranker = find_runs(tiny_artifacts["sdm"].parent)
    pipe = Pipeline(tiny_prepared, matcher, ranker)
    req = RowBuilder(tiny_prepared).request_from_row(read_split(tiny_prepared, "test").slice(0, 1).to_pylist()[0])
    (expected,) = pipe.recommend([req], k=10)
    assert served == [str(i["item_id"]) for i in expected["items"]]


@pytest.mark.slow
def test_seqrec_serve_stops_on_sigterm_and_leaves_no_listener(tiny_prepared, tiny_artifacts, tmp_path):
    """SIGTERM (what systemd, Kubernetes and `timeout` send) stops `seqrec serve` as Ctrl-C does: exit 0 with the
    one-line message, and nothing (Serve's HAProxy in fast mode was the process that outlived it) still listens on
    its port."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from seqrec.cluster import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "seqrec.cli", "serve", "--data", str(tiny_prepared), "--run",
                             str(tiny_artifacts["sdm"].parent), "--port", str(port)],
                            env=os.environ | {"RAY_ADDRESS": "local"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        end, up = time.time() + 300, False
        while time.time() < end and proc.poll() is None and not up:
            try:
                up = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or listening before its replicas answer
                pass
            if not up:
                time.sleep(2)
        assert up, (tmp_path / "serve.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping: Serve shuts down with its local Ray cluster" in (tmp_path / "serve.log").read_text()
    with socket.socket() as sock:  # nothing listens there any more (bind fails while a listener holds it)
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_serve_run_of_the_repository_config_serves_an_experiments_runs(tiny_prepared, tiny_artifacts, tmp_path):
    """Ray Serve's own CLI: `serve run` of serve_apps/recommend.yaml (relative `data` and `run`, as after the
    README's main command) starts the app on its own cluster, here in fast mode (the cluster's variables, as
    the file's header says), and answers as the in-process pipeline does, with the request id and the 422s."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    from seqrec.cluster import free_port
    from seqrec.data.prepare import read_split
    from seqrec.serving import Pipeline, RowBuilder, find_runs
    from serve_apps.config import cluster_env

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "serve_apps" / "recommend.yaml").read_text())
    assert cfg["http_options"]["host"] == "127.0.0.1"
    port = free_port()
    cfg["http_options"]["port"] = port
    run_root = tiny_artifacts["sdm"].parent
    cfg["applications"][0]["args"].update(data=os.path.relpath(tiny_prepared, tmp_path), run=os.path.relpath(run_root, tmp_path))
    (tmp_path / "recommend.yaml").write_text(yaml.safe_dump(cfg))
    serve_cli = Path(sys.executable).parent / "serve"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(serve_cli), "run", "recommend.yaml"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env=os.environ | {"RAY_ADDRESS": "local"} | cluster_env("fast"))
    try:
        req = RowBuilder(tiny_prepared).request_from_row(read_split(tiny_prepared, "test").slice(0, 1).to_pylist()[0])
        app, answer, end = {"url": f"http://127.0.0.1:{port}"}, None, time.time() + 300
        while time.time() < end and proc.poll() is None:
            try:
                r = post(app, body_of(req, k=10), **{"x-request-id": "cli-1"})
                # a replica's first calls can miss a stage deadline (a degraded answer): wait for a whole one
                if r.status_code == 200 and r.json().get("degraded") is None:
                    answer = r.json()
                    assert answer["request_id"] == "cli-1" and r.headers["x-request-id"] == "cli-1"
                    bad = post(app, {**body_of(req), "k": 1000})
                    assert bad.status_code == 422 and "max_k" in bad.json()["detail"]
                    break
            except requests.ConnectionError:
                pass
            time.sleep(2)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    (expected,) = Pipeline(tiny_prepared, *find_runs(run_root)).recommend([req], k=10)
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in expected["items"]]
    assert answer["model_versions"]["matcher"]["model"] == "sdm" and answer["model_versions"]["ranker"]["model"] == "bst"


def test_over_http_a_large_body_gets_a_413_and_bad_fields_a_small_422_naming_them(app):
    def post_bounded(body):
        return post(app, body, **{"x-request-id": "bounds-1"})

    r = post_bounded(json.dumps({"user_id": "u" * 5_000_000, "events": []}))
    assert r.status_code == 413 and len(r.content) < 500, r.text[:500]
    assert "max_body_bytes=1048576" in r.json()["detail"] and r.json()["request_id"] == "bounds-1"
    r = post_bounded({"user_id": "u" * 900_000, "events": []})
    assert r.status_code == 422 and len(r.content) < 500 and "user_id is 900000 characters long" in r.json()["detail"], r.text[:500]
    r = post_bounded({"user_id": 1, "events": [], "x" * 900_000: 1})
    assert r.status_code == 422 and len(r.content) < 500 and "truncated; 900000 characters" in r.text, r.text[:500]
    r = post_bounded({"user_id": 1, "events": [{"item_id": 1, "timestamp": 100}, {"item_id": 2, "timestamp": -5}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("events[1].timestamp: negative timestamp -5"), r.text


# ---------------------------------------------------------------------------------------------
# user behaviours on the server: POST /events, then POST /recommend by user id


def post_events(app, users, **headers) -> requests.Response:
    body = {"users": [{k: v for k, v in body_of(u).items() if k in ("user_id", "profile", "events")} for u in users]}
    return requests.post(app["url"] + "/events", data=json.dumps(body), timeout=60,
                         headers={"content-type": "application/json", **headers})


def _fresh_requests(tiny_prepared, rows: slice):
    """Requests of test users that no other test of this module sends (the store keeps what it is sent)."""
    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    builder = RowBuilder(tiny_prepared)
    table = read_split(tiny_prepared, "test")
    taken = {str(u) for u in table.slice(0, 6)["user_raw"].to_pylist()} | {"1", "3"}
    ev = raw_events(tiny_prepared.parent)
    return [request_for(r, ev, builder) for r in table.to_pylist()[rows] if str(r["user_raw"]) not in taken]


def test_events_then_recommend_by_id_answers_as_the_same_events_inline(app, tiny_prepared, tiny_artifacts):
    from seqrec.serving import Event, Pipeline, Request

    reqs = _fresh_requests(tiny_prepared, slice(20, 24))
    inline = []
    for req in reqs:  # before anything is stored for these users
        r = post(app, body_of(req, k=10))
        assert r.status_code == 200, r.text
        inline.append(r.json())
    batches, batch = [], []
    for req in reqs:  # batches of at most max_events events, several users each where they fit
        if batch and sum(len(b.events) for b in batch) + len(req.events) > 1000:
            batches.append(batch)
            batch = []
        batch.append(req)
    for batch in [*batches, batch]:
        r = post_events(app, batch, **{"x-request-id": "ev-1"})
        assert r.status_code == 200, r.text
        assert r.json() == {"request_id": "ev-1", "users": len(batch), "events": sum(len(b.events) for b in batch),
                            "replayed": False}
    for req, want in zip(reqs, inline):
        r = post(app, {"user_id": req.user_id, "k": 10})  # by id alone: the store's behaviours and profile
        assert r.status_code == 200, r.text
        got = r.json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]] and not got["cold_start"]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], rtol=1e-4, atol=1e-6)
        assert "store_read" in got["timings_ms"]
    # both: the request's events come after the stored ones, for this request only
    req = reqs[0]
    extra = Event(req.events[-1].item_id, req.events[-1].timestamp + 30, req.events[-1].behavior, req.events[-1].side)
    r = post(app, {"user_id": req.user_id, "k": 10, "events": [{"item_id": extra.item_id, "timestamp": extra.timestamp,
                                                                 "behavior": extra.behavior, **extra.side}]})
    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
    (want,) = pipe.recommend([Request(req.user_id, [*req.events, extra], req.profile)], k=10)
    assert r.status_code == 200 and [i["item_id"] for i in r.json()["items"]] == [i["item_id"] for i in want["items"]]
    again = post(app, {"user_id": req.user_id, "k": 10}).json()  # the extra event was not written
    assert [i["item_id"] for i in again["items"]] == [i["item_id"] for i in inline[0]["items"]]


def test_a_bad_event_gets_a_422_naming_it_and_nothing_of_its_batch_is_stored(app):
    good = {"user_id": "batch-a", "events": [{"item_id": 1, "timestamp": 100}, {"item_id": 2, "timestamp": 110}]}
    bad = {"user_id": "batch-b", "events": [{"item_id": 3, "timestamp": 100}, {"item_id": 4, "timestamp": -5}]}

    def send(body):
        return requests.post(app["url"] + "/events", data=json.dumps(body), timeout=60,
                             headers={"content-type": "application/json", "x-request-id": "ev-bad"})

    r = send({"users": [good, bad]})
    assert r.status_code == 422 and r.json()["detail"].startswith("users[1].events[1].timestamp: negative timestamp -5"), r.text
    assert r.json()["request_id"] == "ev-bad"
    r = send({"users": [good, {"user_id": "batch-b", "events": [{"timestamp": 5}]}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "users", 1, "events", 0, "item_id"], r.text
    r = send({"users": [good, {"user_id": "batch-b", "events": [{"item_id": 1, "timestamp": t} for t in range(999)]}]})
    assert r.status_code == 422 and "1001 events in the batch are more than max_events=1000" in r.json()["detail"]
    assert send({"users": []}).status_code == 422
    r = requests.post(app["url"] + "/events", data=json.dumps({"users": [good]}), timeout=60,
                      headers={"content-type": "application/json", "idempotency-key": "k" * 201})
    assert r.status_code == 422 and "Idempotency-Key of 201 characters" in r.json()["detail"], r.text
    for user in ("batch-a", "batch-b"):  # nothing of the refused batches was stored
        out = post(app, {"user_id": user, "k": 3}).json()
        assert out["cold_start"], out


def test_a_batch_sent_again_with_its_idempotency_key_is_acknowledged_and_stored_once(app):
    body = json.dumps({"users": [{"user_id": "once-a", "events": [{"item_id": 1, "timestamp": 100},
                                                                   {"item_id": 2, "timestamp": 110}]}]})

    def send(key):
        r = requests.post(app["url"] + "/events", data=body, timeout=60,
                          headers={"content-type": "application/json", "idempotency-key": key})
        assert r.status_code == 200, r.text
        return r.json()

    assert (send("batch-1")["replayed"], send("batch-1")["replayed"], send("batch-1")["events"]) == (False, True, 2)
    assert send("batch-2")["replayed"] is False  # another key is another batch: stored again
    from seqrec.store import open_store

    with open_store(app["args"]["store"]) as store:  # counted back from the store, through a connection of its own
        assert store.count("once-a") == 4
