"""Job entry point: prepare a dataset on a Ray cluster.

    ray job submit --working-dir . -- python workloads/prepare_data.py SOURCE --out DIR [seqrec data prepare options]

It takes exactly the options of ``seqrec data prepare`` (run it with ``--help``) and always
uses the Ray Data engine. When seqrec is not installed on the cluster, the job ships
``platform/seqrec`` to every worker (``runtime_env={"py_modules": [...]}``), so the driver
and the workers run the same code. ``--out`` and SOURCE must be visible to every node.
"""

from __future__ import annotations

import sys

from _job import connect


def main() -> int:
    connect()
    from seqrec.cli import main as cli

    args = sys.argv[1:]
    if "--engine" not in args and not any(a.startswith("--engine=") for a in args) and "-h" not in args and "--help" not in args:
        args += ["--engine", "ray"]
    return cli(["data", "prepare", *args])


if __name__ == "__main__":
    sys.exit(main())
