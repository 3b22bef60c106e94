import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/eventgen.py, tests/benchscripts.py

# moto's S3 server (the s3_server fixture) keeps the framing of an upload that carries the AWS SDK's default trailing
# checksum (aws-chunked, as pyarrow's S3 client sends it) in the stored object; checksums only where an operation needs
# one keep uploads plain. Set at import, before any Ray cluster starts, so that Ray's worker processes inherit it.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")

# exported ONNX Runtime graphs (seqrec.inference._cached_graph) go to a directory of this test session's own, gone at
# its end, not to the user's ~/.cache; set at import, so that Ray workers, Serve replicas and CLI subprocesses share it
_ONNX_CACHE = tempfile.mkdtemp(prefix="seqrec-test-onnx-")
os.environ["SEQREC_ONNX_CACHE"] = _ONNX_CACHE
atexit.register(shutil.rmtree, _ONNX_CACHE, ignore_errors=True)


def start_shared_ray() -> None:
    """Start the session's local Ray cluster (the ``ray_cluster`` fixture's; tests/test_multinode.py starts it
    again after its own multi-node cluster)."""
    import ray

    from seqrec.cluster import free_port

    # the dashboard, as on a real cluster: Ray Train frees the workers of a trial that Tune stops through its
    # State API (tests/test_tune_run.py); its address is named so that Ray finds it beside other clusters
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # address="local": always a new cluster, never one a `ray start` elsewhere on the machine left behind
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             logging_level="WARNING", log_to_driver=False)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        start_shared_ray()
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
    """Two tiny SDM versions (the first with a flat index), one with a learned seen penalty, and a BST, trained
    briefly on the tiny dataset, exported like `seqrec train` does."""
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
                                            ("sdmp", "sdm:PSDMMAL", {**sdm, "seen_penalty": True}, 2),  # a seen penalty
                                            ("bst", "bst", {"id_dim": 8, "side_dim": 4, "mlp": "16-8", "heads": 2}, 0)):
        model, spec, manifest = build(model_name, tiny_prepared, options, seed=seed)
        fit(model, train, spec, TrainConfig(epochs=1, batch_size=64, seed=seed), log=None)
        ck = save_checkpoint(root / name / "ck", model, epoch=1, step=0, dataset=dataset_identity(manifest, tiny_prepared))
        export_checkpoint(ck, root / name / "export", tiny_prepared)
        out[name] = root / name
    build_index(out["sdm"] / "export", kind="flat")  # sdm2 and sdmp have none: the Retriever builds a flat one
    return out


def skip_or_fail(why: str | None, tests: str) -> None:
    """A real component ``tests`` need is missing (``why``): skip with the reason, or fail under CI=true."""
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {tests} cannot run: {why}")
    pytest.skip(why)


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
    skip_or_fail(why, "the Redis tests")
    server = RedisServer(exe, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=30)


class S3Server:
    """A real S3-compatible server: moto's standalone server (``moto_server``) over HTTP on a free 127.0.0.1 port, with
    one bucket. :meth:`uri` puts everything a reader needs in the URI itself (endpoint, scheme, moto's test keys), so
    the Ray cluster's workers, started before this server and without its settings, reach it too."""

    BUCKET = "seqrec-test"

    def __init__(self, exe: str, directory):
        from seqrec.cluster import free_port

        self.exe, self.dir, self.port, self.proc = exe, directory, free_port(), None

    def uri(self, *keys: str) -> str:
        """``s3://.../KEY`` in the test bucket."""
        return f"s3://testing:testing@{self.BUCKET}/{'/'.join(keys)}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def start(self) -> None:
        import subprocess
        import time
        import urllib.error
        import urllib.request

        import pyarrow.fs as pafs

        log = open(self.dir / "moto.log", "wb")
        self.proc = subprocess.Popen([self.exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        end = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > end:
                    raise RuntimeError(f"moto_server did not start: {(self.dir / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                          allow_bucket_creation=True).create_dir(self.BUCKET)

    def stop(self) -> None:
        """Stop the server, and remove what seqrec copied of its URIs into this machine's cache."""
        import json
        import shutil

        from seqrec import storage

        self.proc.terminate()
        self.proc.wait(timeout=30)
        for marker in [*storage.cache_root().glob(f"*/{storage.MARKER}"), *storage.cache_root().glob(f"work/*/{storage.MARKER}")]:
            try:
                mine = f"127.0.0.1:{self.port}&" in json.loads(marker.read_text())["uri"]
            except (OSError, ValueError, KeyError):
                continue
            if mine:
                shutil.rmtree(marker.parent, ignore_errors=True)
                Path(f"{marker.parent}.lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server for the session (moto's, never a mock of S3) with the bucket ``seqrec-test``. Where
    moto's server is not installed the storage-URI tests skip and say why; under CI=true that skip is a failure (the
    test extra installs ``moto[server]``)."""
    import importlib.util
    import shutil

    exe = shutil.which("moto_server")
    why = None
    if exe is None or importlib.util.find_spec("moto") is None:
        why = "moto's S3 server is not installed (pip install 'moto[server]')"
    elif importlib.util.find_spec("flask") is None or importlib.util.find_spec("flask_cors") is None:
        why = "moto is installed without its server's packages (pip install 'moto[server]')"
    skip_or_fail(why, "the storage-URI tests")
    server = S3Server(exe, tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()
