"""How much can long-term behaviours help, on a prepared dataset? (Explains PSDMMAL vs PSDMMA.)

    python benchmarks/longterm_signal.py benchmarks/work/synth-150000-dataset-day
    python benchmarks/longterm_signal.py benchmarks/work/ml-100k-user-day

For every **training target** (the item at position t of a session, t >= 1) and every
**test ground-truth item**, it asks where the item's leaf category was already visible:

* ``in_session``: in the short-term input (the session prefix before t; the test input),
* ``long_term_only``: not there, but in the long-term subset L_category of the row,
* ``neither``.

SDM learns to use the long-term representation only from the training targets in the second
class. Writes ``benchmarks/results/longterm_signal_<dataset dir name>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from seqrec import features as F  # noqa: E402
from seqrec.data.prepare import load_manifest, read_split  # noqa: E402


def shares(counts: dict) -> dict:
    n = sum(counts.values())
    return {k: round(v / n, 4) for k, v in counts.items()} | {"n": n}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    data = Path(sys.argv[1])
    manifest = load_manifest(data)
    names = [f["name"] for f in manifest["feature_spec"]["item_features"]]
    if F.CATEGORY not in names:
        raise SystemExit(f"{data}: no {F.CATEGORY} feature; nothing to measure")
    cat = pq.read_table(data / "items.parquet", columns=[F.CATEGORY])[F.CATEGORY].to_numpy()
    train = {"in_session": 0, "long_term_only": 0, "neither": 0}
    for r in read_split(data, "train").select([F.seq_col(F.CATEGORY), F.long_term_col(F.CATEGORY)]).to_pylist():
        seq, lt = r[F.seq_col(F.CATEGORY)], set(r[F.long_term_col(F.CATEGORY)])
        for t in range(1, len(seq)):
            key = "in_session" if seq[t] in seq[:t] else ("long_term_only" if seq[t] in lt else "neither")
            train[key] += 1
    test = {"in_session": 0, "long_term_only": 0, "neither": 0}
    rows = read_split(data, "test").select([F.seq_col(F.CATEGORY), F.long_term_col(F.CATEGORY), F.TARGETS]).to_pylist()
    for r in rows:
        seq, lt = set(r[F.seq_col(F.CATEGORY)]), set(r[F.long_term_col(F.CATEGORY)])
        for item in r[F.TARGETS]:
            if item < F.FIRST_CODE:
                continue
            c = int(cat[item])
            test["in_session" if c in seq else ("long_term_only" if c in lt else "neither")] += 1
    summary = {"train_targets": shares(train), "test_truth": shares(test),
               "test_rows_with_long_term": round(float(np.mean([len(r[F.long_term_col(F.CATEGORY)]) > 0 for r in rows])), 4)}
    write_result(f"longterm_signal_{data.name}", summary, {"data": str(data), "content_hash": manifest.get("content_hash"),
                                                           "command": "python benchmarks/longterm_signal.py " + sys.argv[1]}, [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
