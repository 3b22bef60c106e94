"""Shared start of the job entry points: import seqrec and connect to Ray with the package shipped.

When seqrec is not installed on the cluster, it is imported from ``platform/`` (and the search
spaces from ``tune_spaces/``) and shipped to every worker (``runtime_env={"py_modules": [...]}``), so the driver and all workers run the
same code. Where it is installed, the shipped copy still wins, for the same reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def connect():
    """Import seqrec and connect to (or start) Ray with the package in the job's runtime env; returns seqrec."""
    try:
        import seqrec  # installed with `pip install -e .`
    except ImportError:
        sys.path.insert(0, str(ROOT / "platform"))
        import seqrec
    try:
        import tune_spaces  # the search spaces (seqrec tune); a top-level package beside platform/
    except ImportError:
        sys.path.insert(0, str(ROOT))
        import tune_spaces
    import ray

    if not ray.is_initialized():
        modules = [str(Path(seqrec.__file__).parent), str(Path(tune_spaces.__file__).parent)]
        ray.init(runtime_env={"py_modules": modules})
    return seqrec
