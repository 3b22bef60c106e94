"""Shared start of the job entry points: connect to Ray with seqrec shipped to every worker.

seqrec (with ``tune_spaces`` and ``serve_apps``) is installed where the job's driver runs
(``pip install -e .``, or the container image). Its packages are still shipped to every worker
(``runtime_env={"py_modules": [...]}``), so the driver and all workers run the same code even on a
cluster whose nodes carry another version.
"""

from __future__ import annotations

from pathlib import Path


def connect():
    """Connect to (or start) Ray with seqrec's packages in the job's runtime env; returns seqrec."""
    try:
        import seqrec
        import tune_spaces
    except ImportError as e:
        raise SystemExit(f"{e}: install seqrec where the job's driver runs (`pip install -e .` in the repository, "
                         "or use the seqrec container image)") from None
    import ray

    if not ray.is_initialized():
        modules = [str(Path(seqrec.__file__).parent), str(Path(tune_spaces.__file__).parent)]
        ray.init(runtime_env={"py_modules": modules})
    return seqrec
