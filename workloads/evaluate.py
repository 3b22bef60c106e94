"""Job entry point: train and evaluate matching models on a prepared dataset.

    python workloads/evaluate.py --data data/ml-100k --out results/ml-100k [seqrec evaluate options]
    ray job submit --working-dir . -- python workloads/evaluate.py --data /shared/ml-100k --out /shared/results

It takes exactly the options of ``seqrec evaluate`` (run it with ``--help``). Training is the
shared single-process loop (``seqrec.train.fit``) on the node that runs the job; the distributed
version of the same loop is ``seqrec train`` (Ray Train). Works without installing seqrec: the
package is imported from ``platform/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    try:
        import seqrec  # noqa: F401  installed with `pip install -e .`
    except ImportError:
        sys.path.insert(0, str(ROOT / "platform"))
    from seqrec.cli import main as cli

    return cli(["evaluate", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
