"""Job entry point: a hyperparameter search with Ray Tune (``seqrec tune``) on a Ray cluster.

    ray job submit --working-dir . -- python workloads/tune.py sdm:PSDMMAL --data DIR --space default --samples 20
    ray job submit --working-dir . -- python workloads/tune.py sdm:PSDMMAL --data DIR --space paper_heads \\
        --workers-per-trial 2 --gpu --scheduler fifo --storage /shared/tune

It takes exactly the options of ``seqrec tune`` (run it with ``--help``). Where seqrec is
installed on every node, ``ray job submit ... -- seqrec tune ...`` is the same job; this entry
point is for clusters without it: it ships ``platform/seqrec`` and ``tune_spaces`` to every
worker (``_job.connect``). ``--data`` and ``--storage`` must be paths every node can read and
write (shared storage).
"""

from __future__ import annotations

import sys

from _job import connect


def main() -> int:
    connect()
    from seqrec.cli import main as cli

    return cli(["tune", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
