"""benchmarks/bench_rank.py's floor: the Linear multiply-adds of one BST score call against a hand count."""

import benchscripts
import torch


def test_linear_macs_of_a_bst_score_call_match_a_hand_count():
    from seqrec.models import build_model

    bench = benchscripts.load("bench_rank")
    spec = bench.spec_for(500, 20)
    g = torch.Generator().manual_seed(0)
    one = bench.user_batch(spec, 1, g)
    c = 7
    cands = torch.randint(2, spec.n_items, (1, c), generator=g)
    torch.manual_seed(0)
    model = build_model("bst", spec, mlp="32-16-8").eval()
    d = model.config.d_model
    s = model.config.window
    head = model.head
    # the one-block candidate-only path: q/k/v of the window (S rows) and of the candidates (C rows), W^H and
    # the FFN on the candidates; the MLP's candidate half per candidate, its context half once
    hand = s * d * 3 * d + c * d * 3 * d + c * d * d + c * d * 4 * d + c * 4 * d * d
    hand += c * head.first_candidate.in_features * 32 + head.first_context.in_features * 32
    hand += c * (32 * 16 + 16 * 8 + 8 * 1)
    assert bench.linear_macs(model, one, cands) == hand
