"""Job entry point: one training run on Ray Train (``seqrec train``) on a Ray cluster.

    ray job submit --working-dir . -- python workloads/train.py MODEL --data DIR --workers N [seqrec train options]
    ray job submit --working-dir . -- python workloads/train.py --config train.yaml

It takes exactly the options of ``seqrec train`` (run it with ``--help``). Where seqrec is
installed on every node, ``ray job submit ... -- seqrec train ...`` is the same job; this entry
point is for clusters without it: it ships ``platform/seqrec`` to every worker (``_job.connect``).
``--data`` and ``--storage`` must be paths every node can read and write (shared storage).
"""

from __future__ import annotations

import sys

from _job import connect


def main() -> int:
    connect()
    from seqrec.cli import main as cli

    return cli(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
