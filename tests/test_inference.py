"""seqrec.inference: the model-over-rows helpers that offline evaluation and serving share."""

from __future__ import annotations

import subprocess
import sys


def test_inference_sits_below_evaluation_and_serving():
    """Layering: importing seqrec.inference loads neither evaluation, serving, the Serve app nor Ray."""
    code = ("import sys, seqrec.inference; "
            "print(sorted(m for m in sys.modules if m in ('seqrec.evaluate', 'seqrec.serving', 'seqrec.experiment', 'ray') "
            "or m.startswith('serve_apps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_evaluation_and_serving_call_the_same_functions():
    import seqrec.evaluate as evaluate
    import seqrec.inference as inference

    for name in ("encode_table", "score_table", "chunk_candidates", "seen_items"):
        assert getattr(evaluate, name) is getattr(inference, name), name
