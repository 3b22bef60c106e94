"""The `serve run` / `serve deploy` config of the recommend app, for given artifacts (``seqrec serve --write-config``)."""

from __future__ import annotations

from pathlib import Path

DEPLOYMENTS = ("Ingress", "UserEncoder", "Retriever", "Ranker")


def config(app_args: dict, host: str = "127.0.0.1", port: int = 8000, request_timeout_s: float = 30.0) -> dict:
    """The config as a dict. A model swap is a new ``user_config`` (the same matcher for UserEncoder and
    Retriever), deployed with ``serve deploy``: the replicas reconfigure in place."""
    batch = {"max_batch_size": app_args.get("max_batch_size", 16), "batch_wait_timeout_s": app_args.get("batch_wait_timeout_s", 0.002)}
    deployments = [
        {"name": "Ingress", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}},
        {"name": "UserEncoder", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
         "user_config": {"matcher": app_args["matcher"], **batch}},
        {"name": "Retriever", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
         "user_config": {"matcher": app_args["matcher"]}},
    ]
    if app_args.get("ranker"):
        deployments.append({"name": "Ranker", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25},
                            "user_config": {"ranker": app_args["ranker"], **batch}})
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
              "# Start: serve run THIS.yaml   Update models in place: edit the user_config paths, then serve deploy THIS.yaml\n")
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
