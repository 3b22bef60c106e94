"""The cluster manifests in platform/deploy/ cannot run here; they must parse and hold what a launch needs."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from seqrec.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "platform" / "deploy"


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _check_train_command(cmd: str) -> None:
    argv = shlex.split(cmd)
    assert argv[0] == "seqrec"
    args = build_parser().parse_args(argv[1:])  # the entrypoint is a valid seqrec command line
    assert args.command == "train" and args.data and args.storage


def test_ray_up_cluster_yaml():
    c = _load("cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in c, key
    assert c["head_node_type"] in c["available_node_types"]
    workers = [n for n in c["available_node_types"] if n != c["head_node_type"]]
    assert workers and all(c["available_node_types"][w]["max_workers"] >= 1 for w in workers)
    assert any("pip install -e" in s for s in c["setup_commands"])  # every node imports the same seqrec
    assert any("ray start --head" in s for s in c["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in s for s in c["head_start_ray_commands"] + c["worker_start_ray_commands"] if "ray start" in s)
    assert any("auth_token" in k for k in c["file_mounts"])
    # every node starts Ray with Serve's fast mode (what `seqrec serve` sets on its own local cluster)
    fast = [f"{k}={v}" for k, v in _fast_env().items()]
    assert all(all(f in s for f in fast) for s in c["head_start_ray_commands"] + c["worker_start_ray_commands"] if "ray start" in s)


def _fast_env() -> dict:
    from serve_apps.config import cluster_env

    return {k: v for k, v in cluster_env("fast").items() if k in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")}


def _check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"].startswith("2.") and spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and head["resources"]["limits"]["cpu"]
    groups = spec["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and g["rayStartParams"]["num-gpus"] == "1"


def test_kuberay_raycluster():
    rc = _load("kuberay-raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster" and rc["metadata"]["name"]
    _check_cluster_spec(rc["spec"])
    pods = [rc["spec"]["headGroupSpec"]] + rc["spec"]["workerGroupSpecs"]
    for pod in pods:  # the long-running cluster serves: Serve's fast mode on every node
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert _fast_env().items() <= env.items()


def test_kuberay_rayjob():
    rj = _load("kuberay-rayjob.yaml")
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob" and rj["metadata"]["name"]
    spec = rj["spec"]
    _check_train_command(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"])
