import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/eventgen.py


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
