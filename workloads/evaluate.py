"""Job entry point: train and evaluate matching models on a prepared dataset.

    python workloads/evaluate.py --data data/ml-100k --out results/ml-100k [seqrec evaluate options]
    ray job submit --working-dir . -- python workloads/evaluate.py --data /shared/ml-100k --out /shared/results

It takes exactly the options of ``seqrec evaluate`` (run it with ``--help``). With
``--trainer ray`` each model trains on Ray Train workers across the cluster (``--workers N``,
``--gpu``); with the default ``--trainer local`` it trains in the job's driver process. Works
without installing seqrec: the package is shipped to every worker (``_job.connect``).
"""

from __future__ import annotations

import sys

from _job import connect


def main() -> int:
    connect()
    from seqrec.cli import main as cli

    return cli(["evaluate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
