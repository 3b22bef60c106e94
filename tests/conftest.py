import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/eventgen.py


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        from seqrec.cluster import free_port

        # the dashboard, as on a real cluster: Ray Train frees the workers of a trial that Tune stops through its
        # State API (tests/test_tune_run.py); its address is named so that Ray finds it beside other clusters
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # address="local": always a new cluster, never one a `ray start` elsewhere on the machine left behind
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """A small synthetic dataset prepared with the default protocol (dataset-day split, validation on)."""
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import prepare, resolve_config
    from seqrec.data.synth import generate

    root = tmp_path_factory.mktemp("tiny")
    generate(root / "events", 20_000, seed=5, users=200, items=400, progress=False)
    src = open_source(str(root / "events"), "synth", None)
    prepare(src, root / "prep", resolve_config(src, min_item_count=2), engine="local", progress=False)
    return root / "prep"


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_prepared, tmp_path_factory):
    """Two tiny SDM versions (the first with a flat index) and a BST, trained briefly on the tiny dataset,
    exported like `seqrec train` does."""
    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.config import TrainConfig
    from seqrec.data.prepare import read_split
    from seqrec.export import build_index, export_checkpoint
    from seqrec.train.factory import build
    from seqrec.train.loop import fit

    root = tmp_path_factory.mktemp("artifacts")
    train = read_split(tiny_prepared, "train")
    out = {}
    sdm = {"hidden": 8, "heads": 2, "id_dim": 4, "side_dim": 2, "profile_dim": 2}
    for name, model_name, options, seed in (("sdm", "sdm:PSDMMAL", sdm, 0), ("sdm2", "sdm:PSDMMAL", sdm, 1),  # two versions
                                            ("bst", "bst", {"id_dim": 8, "side_dim": 4, "mlp": "16-8", "heads": 2}, 0)):
        model, spec, manifest = build(model_name, tiny_prepared, options, seed=seed)
        fit(model, train, spec, TrainConfig(epochs=1, batch_size=64, seed=seed), log=None)
        ck = save_checkpoint(root / name / "ck", model, epoch=1, step=0, dataset=dataset_identity(manifest, tiny_prepared))
        export_checkpoint(ck, root / name / "export", tiny_prepared)
        out[name] = root / name
    build_index(out["sdm"] / "export", kind="flat")  # sdm2 has none: the Retriever builds a flat one
    return out


class RedisServer:
    """A real ``redis-server`` on a free localhost port, in its own directory, with the durable settings
    docs/serving.md asks for (``appendonly yes``, ``appendfsync always``); :meth:`kill` and :meth:`start`
    stop it hard and start it again on the same files."""

    def __init__(self, exe: str, directory):
        from seqrec.cluster import free_port

        self.exe, self.dir, self.port, self.proc = exe, directory, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 30
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.time() > end:
                    raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as a crash."""
        self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session (never a mock). Where none is installed the Redis tests skip and say
    why; under CI=true that skip is a failure (`.ci/run` installs Debian's redis-server)."""
    import shutil

    exe = shutil.which("redis-server")
    why = None
    if exe is None:
        why = "no redis-server on PATH (Debian: apt-get install -y redis-server)"
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            why = "redis-py is not installed (pip install redis)"
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the Redis tests cannot run: {why}")
        pytest.skip(why)
    server = RedisServer(exe, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=30)
