"""Multi-node (issue #19): a ``ray.cluster_utils.Cluster`` of three nodes on this machine, each a raylet of its own
with its own resources (1 CPU each; the two worker nodes also carry a custom resource naming them), driven the way a
real cluster is. Ray Data's prepare, a Ray Train run with its storage on the S3-compatible server (and a node killed
under it), a Tune search and the Serve app each run over several nodes, and each test asserts where its work ran.

The module leaves the session's shared single-node cluster (tests/conftest.py ``ray_cluster``) for its own one, and
starts the shared one again afterwards, so that the tests after it find it as they expect."""

from __future__ import annotations

import json
import threading
import time
from unittest import mock

import pytest

from seqrec import storage

pytestmark = pytest.mark.slow  # a cluster of three raylets, and real Ray Data, Train, Tune and Serve runs on it (minutes)

TINY = {"hidden": 8, "id_dim": 4, "side_dim": 2, "profile_dim": 2, "heads": 2}


class Nodes:
    """The test cluster: ``cluster`` (``ray.cluster_utils.Cluster``), its head's node id, and a name per node id."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.head = cluster.head_node.node_id
        self.names = {self.head: "head"}

    def add(self, name: str):
        """A worker node of 1 CPU with the custom resource ``{name: 1}``."""
        node = self.cluster.add_node(num_cpus=1, resources={name: 1})
        self.names[node.node_id] = name
        return node

    def alive(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def node(self, node_id: str):
        """The ``ray._private.node.Node`` of a worker node."""
        return next(n for n in self.cluster.worker_nodes if n.node_id == node_id)


@pytest.fixture(scope="module")
def nodes():
    """A head node and two worker nodes, 1 CPU each, with the head's dashboard (Ray Train and the State API use it)."""
    import os

    import ray
    import ray._private.utils
    from conftest import start_shared_ray
    from ray.cluster_utils import Cluster

    from seqrec.cluster import free_port

    shared = ray.is_initialized()
    if shared:
        ray.shutdown()
    api = os.environ.get("RAY_API_SERVER_ADDRESS")
    cluster = None
    try:
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # the Cluster writes its address to /tmp/ray/ray_current_cluster, where any `ray.init()` on this machine would
        # find it and attach to it: not there
        with mock.patch.object(ray._private.utils, "write_ray_address", lambda *a, **k: None):
            cluster = Cluster(initialize_head=True, head_node_args=dict(
                num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                # a node that dies is declared dead within seconds, not the default ~30 s
                _system_config={"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                                "health_check_failure_threshold": 3}))
        n = Nodes(cluster)
        n.add("node_a")
        n.add("node_b")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        yield n
    finally:
        try:
            if ray.is_initialized():
                from ray import serve

                serve.shutdown()
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            if api is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = api
            if shared:  # the session's cluster, for the tests after this module
                start_shared_ray()


def test_the_cluster_has_three_nodes_with_their_own_resources(nodes):
    import ray

    assert len(nodes.alive()) == 3 and set(nodes.names) == nodes.alive()
    total = ray.cluster_resources()
    assert total["CPU"] == 3 and total["node_a"] == 1 and total["node_b"] == 1


def actor_nodes(class_name: str | None = None) -> dict[int, str]:
    """pid -> node id of every actor (of ``class_name``) the cluster ran, alive or dead, from the State API."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] if class_name else None
    return {a.pid: a.node_id for a in list_actors(filters=filters, detail=True, limit=10_000, raise_on_missing_output=False,
                                                  timeout=120)}


def test_prepare_on_ray_data_spreads_its_tasks_over_the_nodes(nodes, tiny_prepared, tmp_path):
    """`seqrec data prepare --engine ray` on the three nodes: its Ray Data tasks ran on more than one node, and the
    dataset is the one the local engine writes."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray
    from ray.util.state import list_tasks

    from seqrec import features as F
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import load_manifest, prepare, read_split, resolve_config

    src = open_source(str(tiny_prepared.parent / "events"), "synth", None)
    cfg = resolve_config(src, min_item_count=2, rows_per_bucket=4000)  # several buckets: several tasks per stage
    m = prepare(src, tmp_path / "ray", cfg, engine="ray", progress=False)
    local = prepare(src, tmp_path / "local", cfg, engine="local", progress=False)
    assert m["engine"] == "ray" and m["counts"]["buckets"] > 2
    key = [(F.USER_RAW, "ascending"), (F.SESSION_START, "ascending"), (F.SEQ_LEN, "ascending")]
    for split in ("train", "val", "test"):
        a, b = read_split(tmp_path / "ray", split), read_split(tmp_path / "local", split)
        assert a.num_rows > 0 and a.take(pc.sort_indices(a, key)).equals(b.take(pc.sort_indices(b, key))), split
    for name in ("items.parquet", "users.parquet"):
        assert pq.read_table(tmp_path / "ray" / name).equals(pq.read_table(tmp_path / "local" / name)), name
    assert load_manifest(tmp_path / "ray")["vocab_hash"] == local["vocab_hash"]

    job = ray.get_runtime_context().get_job_id()
    tasks = [t for t in list_tasks(filters=[("job_id", "=", job)], detail=True, limit=10_000, raise_on_missing_output=False,
                                   timeout=120) if "_Task" in t.name and t.state == "FINISHED"]
    where = {t.node_id for t in tasks}
    assert len(where) >= 2 and where <= set(nodes.names), (where, nodes.names)


def listing(uri: str) -> set[str]:
    """Names directly under ``uri``."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    return {i.base_name for i in fs.get_file_info(pafs.FileSelector(path))}


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_tune_trials_spread_over_the_nodes(nodes, s3_server, tiny_prepared):
    """`seqrec tune` with in-process trials of 1 CPU, three at once: each runs on its own node (the search on S3)."""
    from ray import tune

    from seqrec.checkpoint import load_checkpoint
    from seqrec.config import TrainJob
    from seqrec.tuning.run import run_search, trial_job

    base = TrainJob.from_dict({"model": "sdm:PSDMMAL", "data": str(tiny_prepared), "options": TINY, "epochs": 1,
                               "batch_size": 64, "workers": 0, "cpus_per_worker": 1.0, "patience": None})
    grid = run_search(base, {"lr": tune.grid_search([1e-3, 3e-3, 1e-2])}, scheduler="fifo", storage=s3_server.uri("multinode", "tune"),
                      name="nodes", max_concurrent=3, log=None)
    assert not grid.errors and len(grid) == 3
    placed = actor_nodes()
    where = [placed[r.metrics["pid"]] for r in grid]  # the node of each trial's process
    assert len(set(where)) == 3 and set(where) <= set(nodes.names), (where, nodes.names)
    assert sorted(trial_job(r.config).train.lr for r in grid) == [1e-3, 3e-3, 1e-2]
    for r in grid:
        assert r.metrics["epoch"] == 1 and r.checkpoint is not None and r.checkpoint.path.startswith(s3_server.BUCKET)
    best = grid.get_best_result()
    with best.checkpoint.as_directory() as d:
        model, meta = load_checkpoint(f"{d}/checkpoint")
    assert meta["epoch"] == 1 and model.config.hidden == TINY["hidden"]


def body_of(req, k: int) -> dict:
    """A serving request as POST /recommend's body (as tests/test_serve_app.py sends it)."""
    return {"user_id": req.user_id, "k": k, "profile": req.profile,
            "events": [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior, **e.side} for e in req.events]}


def test_the_serve_app_across_nodes_answers_as_the_in_process_pipeline(nodes, tiny_prepared, tiny_artifacts):
    """The recommend app with UserEncoder on one worker node, Retriever on the other and two Ranker replicas on two
    nodes: every request crosses nodes, and gets the in-process pipeline's items in its order."""
    import numpy as np
    import requests
    from ray import serve
    from ray.util.state import list_actors
    from serving_inputs import raw_events, request_for

    from seqrec.cluster import free_port
    from seqrec.data.prepare import read_split
    from seqrec.serving import Pipeline
    from serve_apps.config import config, deploy

    a, b = [nodes.names[i] for i in sorted(nodes.alive() - {nodes.head}, key=nodes.names.get)][:2]  # two worker nodes
    port = free_port()
    cfg = config({"data": str(tiny_prepared), "matcher": str(tiny_artifacts["sdm"]), "ranker": str(tiny_artifacts["bst"]),
                  "candidates": 50, "max_k": 20}, port=port)
    pins = {"UserEncoder": {"resources": {a: 0.01}}, "Retriever": {"resources": {b: 0.01}}}
    for d in cfg["applications"][0]["deployments"]:
        d["ray_actor_options"] |= pins.get(d["name"], {})
        if d["name"] == "Ranker":
            d |= {"num_replicas": 2, "max_replicas_per_node": 1}
    try:
        deploy(cfg, timeout_s=600)
        replicas: dict[str, list[str]] = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000, timeout=120):
            if actor.class_name.startswith("ServeReplica:recommend:"):
                replicas.setdefault(actor.class_name.rsplit(":", 1)[1], []).append(actor.node_id)
        by_name = {name: i for i, name in nodes.names.items()}
        assert replicas["UserEncoder"] == [by_name[a]] and replicas["Retriever"] == [by_name[b]], (replicas, nodes.names)
        assert len(replicas["Ranker"]) == 2 and len(set(replicas["Ranker"])) == 2 and len(replicas["Ingress"]) == 1
        assert {n for ids in replicas.values() for n in ids} <= nodes.alive()

        pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
        ev = raw_events(tiny_prepared.parent)
        reqs = [request_for(row, ev, pipe.rows) for row in read_split(tiny_prepared, "test").slice(0, 8).to_pylist()]
        for req, want in zip(reqs, pipe.recommend(reqs, k=10)):
            r = requests.post(f"http://127.0.0.1:{port}/recommend", json=body_of(req, k=10), timeout=120)
            assert r.status_code == 200, r.text
            got = r.json()
            assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
            np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]],
                                       rtol=1e-4, atol=1e-6)  # batch shapes differ
            assert got["model_versions"] == want["model_versions"] and got["cold_start"] == want["cold_start"]
    finally:
        serve.shutdown()


def test_train_workers_on_two_nodes_keep_the_run_on_s3_and_a_killed_node_s_worker_recovers(nodes, s3_server, tiny_prepared,
                                                                                          monkeypatch):
    """`seqrec train` with 2 workers of 1 CPU: they run on two different nodes, and the dataset and the run (its
    checkpoints, export, run.json) are on the S3 server. In epoch 2, after the epoch-1 checkpoint is registered, the
    worker node (not the head) of one worker is removed, as a crash, and a new node joins: the run restarts its
    worker group from the epoch-1 checkpoint on the nodes alive, and finishes."""
    from seqrec.checkpoint import load_checkpoint
    from seqrec.config import TrainJob
    from seqrec.train.distributed import run_training

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # the controller notices the dead worker sooner
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    data, runs = s3_server.uri("multinode", "data"), s3_server.uri("multinode", "runs")
    storage.upload(tiny_prepared, data)
    job = TrainJob.from_dict(dict(model="sdm:PSDMMAL", data=data, options=TINY, epochs=3, batch_size=32, group_pool=4,
                                  workers=2, cpus_per_worker=1.0, storage=runs, name="nodes", shuffle_buffer_rows=0,
                                  patience=None, status_every=1, max_failures=2, cache="off", keep_checkpoints=3))
    run = storage.join(runs, "nodes")
    status = storage.work_dir(run) / "status"  # the workers' status files: one machine, one directory for all nodes
    seen: dict = {}

    def registered(epoch: int) -> bool:
        try:
            return f"checkpoint_epoch-{epoch:04d}" in storage.read_text(storage.join(run, "checkpoint_manager_snapshot.json"))
        except (OSError, FileNotFoundError):
            return False

    def train():
        try:
            seen["summary"] = run_training(job, log=None)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            seen["error"] = e

    # the run on a thread, the node operations here: a new node's processes are started from the main thread (Ray
    # installs signal handlers for them)
    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    end = time.time() + 900
    while trainer.is_alive() and time.time() < end and "killed" not in seen:
        ranks = [_read_json(status / f"worker-{r}.json") for r in (0, 1)]
        if all(ranks) and "first" not in seen:  # where the first worker group runs
            placed = actor_nodes("RayTrainWorker")
            if all(r["pid"] in placed for r in ranks):
                seen["first"] = {r["rank"]: (r["pid"], placed[r["pid"]]) for r in ranks}
        if "first" in seen and all(ranks) and all(r["epoch"] == 2 for r in ranks) and registered(1):
            seen["ck1"] = storage.read_text(storage.join(run, "checkpoint_epoch-0001", "meta.json"))
            rank = next(r for r in (1, 0) if seen["first"][r][1] != nodes.head)
            victim = seen["first"][rank][1]
            nodes.cluster.remove_node(nodes.node(victim), allow_graceful=False)  # its raylet and workers, at once
            seen["killed"] = (rank, victim)
            seen["replacement"] = nodes.add("node_c").node_id
        time.sleep(0.25)
    trainer.join(timeout=max(1.0, end - time.time()))
    assert not trainer.is_alive(), f"the run did not finish in 900 s: {seen}"
    assert "error" not in seen, seen["error"]
    assert "killed" in seen, f"no node was removed in epoch 2: {seen}"
    s = seen["summary"]

    # the first worker group: two workers on two different nodes of the cluster
    (_, node0), (_, node1) = seen["first"][0], seen["first"][1]
    assert node0 != node1 and {node0, node1} <= set(nodes.names), (seen["first"], nodes.names)
    # the run went on from the epoch-1 checkpoint: epoch 1 was not trained again, and every epoch is there once
    rank, victim = seen["killed"]
    hist = s["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[-1]["steps"] == 3 * hist[0]["steps"]
    assert storage.read_text(storage.join(run, "checkpoint_epoch-0001", "meta.json")) == seen["ck1"]
    assert json.loads(seen["ck1"])["history"][0] == hist[0]
    # the killed node's worker came back in a new process, on a node alive, beside the other rank on another node
    last = {r: _read_json(status / f"worker-{r}.json") for r in (0, 1)}
    assert last[rank]["pid"] != seen["first"][rank][0] and last[rank]["epoch"] == 3
    placed = actor_nodes("RayTrainWorker")
    after = {r: placed[last[r]["pid"]] for r in (0, 1)}
    assert victim not in after.values() and after[0] != after[1] and set(after.values()) <= nodes.alive(), (after, seen)
    assert victim not in nodes.alive() and seen["replacement"] in nodes.alive()

    # the run lives on S3: its checkpoints, export and summary
    assert s["run_dir"] == run and s["best_checkpoint"].startswith(run.split("?")[0])
    assert {"checkpoint_epoch-0003", "export", "run.json", "training_curve.png"} <= listing(run)
    assert json.loads(storage.read_text(storage.join(run, "run.json")))["history"] == hist
    vocab = json.loads((tiny_prepared / "manifest.json").read_text())["vocab_hash"]
    model, meta = load_checkpoint(storage.join(run, "checkpoint_epoch-0003"), vocab_hash=vocab)
    assert meta["epoch"] == 3 and meta["step"] == hist[-1]["steps"] and meta["dataset"]["data_dir"] == data
