"""How much can long-term behaviours help, on a prepared dataset? (Explains PSDMMAL vs PSDMMA.)

    python benchmarks/longterm_signal.py benchmarks/work/synth-150000-dataset-day
    python benchmarks/longterm_signal.py benchmarks/work/ml-100k-user-day

For every **training target** (the item at position t of a session, t >= 1) and every
**test ground-truth item**, it asks where the item's leaf category was already visible:

* ``in_prefix``: in the short-term input (the session prefix before t; the test input),
* ``long_term_only``: not there, but in the long-term subset L_category of the row,
* ``neither``.

SDM learns to use the long-term representation only from the training targets in the second
class. It also reports session lengths. The figures are those of ``seqrec data stats``
(:func:`seqrec.data.stats.behaviour_stats`, the one implementation), beside the Taobao figures
the synthetic generator is calibrated to. Writes
``benchmarks/results/longterm_signal_<dataset dir name>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from seqrec.data.prepare import load_manifest  # noqa: E402
from seqrec.data.stats import TAOBAO, behaviour_stats, format_behaviour_stats  # noqa: E402


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    data = Path(sys.argv[1])
    manifest = load_manifest(data)
    summary = behaviour_stats(data, manifest)
    print(format_behaviour_stats(summary))
    write_result(f"longterm_signal_{data.name}", summary | {"taobao": TAOBAO},
                 {"data": str(data), "content_hash": manifest.get("content_hash"),
                  "command": "python benchmarks/longterm_signal.py " + sys.argv[1]}, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
