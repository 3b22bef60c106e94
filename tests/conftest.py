import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/eventgen.py


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        from seqrec.tuning.run import free_port

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
    from seqrec.data.prepare import prepare, resolve_config
    from seqrec.data.loaders import open_source
    from seqrec.data.synth import generate

    root = tmp_path_factory.mktemp("tiny")
    generate(root / "events", 20_000, seed=5, users=200, items=400, progress=False)
    src = open_source(str(root / "events"), "synth", None)
    prepare(src, root / "prep", resolve_config(src, min_item_count=2), engine="local", progress=False)
    return root / "prep"
