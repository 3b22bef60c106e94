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
