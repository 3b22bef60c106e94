"""Ranking latency: score 300 candidates for one user (one CPU thread), and candidates/s in batch.

    python benchmarks/bench_rank.py                  # run it on an idle machine
    python benchmarks/bench_rank.py --quality runs/ml-100k --data data/ml-100k   # + int8's quality check

The budget (issue #5): ≤ 5 ms for 300 candidates on one CPU thread, so that match + rank stays
within the paper's 15–20 ms. Models are untrained (latency does not depend on the weights) and
built for a Taobao-sized id space (``--items``, default 1M items, 10k categories); the user has a
full BST window (20 behaviours). Each configuration is timed through ``Ranker.score`` — the call
evaluation and serving make — under ``torch.inference_mode``:

* ``one_user``: one user × 300 candidates, ``torch.set_num_threads(1)``, median (and p90) of
  ``--repeats`` calls after warm-up;
* ``batch``: ``--batch-users`` users × 300 candidates per call with all cores, candidates/s.

Configurations: BST as the paper configures it (b = 1, 8 heads, MLP 1024-512-256) in int8 (what
``seqrec serve`` runs on a CPU: ``seqrec.inference.with_precision``, the logits as one ONNX Runtime graph
with the MLP's hidden layers in dynamic int8, its first layer in fp32), in fp32 (PyTorch), and in int8 with the
first layer in int8 too, smoothed (``OnnxLogits(first_layer=True)``, the served form before: faster, but outside
the quality tolerance, see ``seqrec.inference.with_precision``), BST with the compact
MLP 256-128-64 (what the quality tables train on this CPU), BST b = 2 (no shared-window shortcut), DIN, WDL. Summary keys:
``ms_300_candidates_1thread`` (paper BST as served, int8), ``ms_300_candidates_1thread_fp32``,
``ms_300_candidates_1thread_compact``, ``ms_300_candidates_1thread_int8_first_layer``, ``candidates_per_s_batch``
(paper BST, int8), and
``gpu_ms_300_candidates`` (paper BST, fp32; null without CUDA). This machine's speed drifts between runs and within
one, so the served form and the first-layer form are also timed call by call in turn (``interleaved``):
``ms_300_int8_interleaved``, ``ms_300_int8_first_layer_interleaved`` and ``int8_first_layer_gain_interleaved``
(1 − their ratio: what the first layer in int8 would save).

**The floor** of the paper configuration on this CPU: ``linear_macs_300`` (multiply-adds of every Linear layer in
one 300-candidate ``score`` call, counted by forward hooks), ``gemm_fp32_gmac_per_s_1thread`` and
``gemm_int8_gmac_per_s_1thread`` (one thread, the best of 6 × 100 calls, at the MLP's widest layer, 300 × 1024 → 512: MKL fp32
and PyTorch's fbgemm dynamic int8), and ``floor_ms_300_candidates_1thread`` = the multiply-adds at the int8 rate: the time
of the Linear layers alone if every one of them ran int8 at the best rate measured, with the embeddings,
attention, activations and concatenations free. At the rates measured, no ``score`` call comes in under it on this thread.

**int8's quality** (``--quality RUN --data DATA``: an experiment or training run with an SDM and a
trained BST, e.g. README command 1's ``runs/ml-100k``, and its prepared dataset): the run's BST in
fp32 and in int8 re-ranks the same SDM top 300 of every test row, and ranks the popularity-negative
samples of the AUC table. Summary keys ``int8_auc_delta`` (AUC with 4 popularity negatives per
positive, as ``seqrec evaluate`` reports it; null for a ranker that reads the matcher's scores, which
ranks only the matcher's candidates), ``int8_cand_auc_delta`` (AUC over the 300 candidates),
``int8_hitrate@20_delta`` (two-stage HitRate@20, points; ``Hit@20`` on leave-one-out data), each
int8 − fp32, and ``int8_quality_ok``: |AUC deltas| ≤ 0.002 and |HitRate@20 delta| ≤ 0.2 points (issue
#17); the same for the first-layer form: ``int8_first_layer_cand_auc_delta``, ``int8_first_layer_hitrate@20_delta``,
``int8_first_layer_quality_ok``. Without ``--quality`` (or when RUN is missing) they are null and ``int8_quality_ok`` is null.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

from seqrec import features as F  # noqa: E402
from seqrec.batch import Batch  # noqa: E402
from seqrec.features import Feature, FeatureSpec  # noqa: E402
from seqrec.inference import OnnxLogits, with_precision  # noqa: E402
from seqrec.models import build_model  # noqa: E402

TOLERANCE = {"auc": 0.002, "hitrate@20_points": 0.2}  # issue #17: int8 vs fp32

CONFIGS = {  # label: (model, options, precision)
    "BST (paper: b=1, MLP 1024-512-256), int8": ("bst", {}, "int8"),
    "BST (paper: b=1, MLP 1024-512-256), fp32": ("bst", {}, "fp32"),
    "BST (paper), int8 with the first layer too (before)": ("bst", {}, "int8-first-layer"),
    "BST compact (MLP 256-128-64)": ("bst", {"mlp": "256-128-64"}, "fp32"),
    "BST b=2": ("bst", {"blocks": 2}, "fp32"),
    "DIN": ("din", {}, "fp32"),
    "WDL": ("wdl", {}, "fp32"),
}


def spec_for(items: int, categories: int) -> FeatureSpec:
    return FeatureSpec(
        (Feature(F.ITEM_ID, items), Feature(F.CATEGORY, categories), Feature(F.CATE1, 100), Feature(F.BRAND, 50_000)),
        (Feature(F.USER_ID, 100_000), Feature(F.AGE, 9), Feature(F.GENDER, 4)),
        Feature(F.BEHAVIOR, 6),
    )


def user_batch(spec: FeatureSpec, users: int, g: torch.Generator) -> Batch:
    """``users`` rows, each with a 20-behaviour history and a 10-event session."""
    h, t = 20, 10
    now = 1_700_000_000
    hist_time = now - torch.sort(torch.randint(600, 30 * 86400, (users, h), generator=g), dim=1, descending=True).values
    seq_time = now + torch.cumsum(torch.randint(5, 120, (users, t), generator=g), 1)
    seq = {f.name: torch.randint(2, f.vocab_size, (users, t), generator=g) for f in spec.item_features}
    return Batch(
        user={f.name: torch.randint(2, f.vocab_size, (users,), generator=g) for f in spec.user_features},
        seq=seq, seq_len=torch.full((users,), t), seq_time=seq_time, seq_behavior=torch.full((users, t), 2),
        long_term={f.name: torch.zeros(users, 0, dtype=torch.long) for f in spec.item_features},
        hist_item=torch.randint(2, spec.n_items, (users, h), generator=g), hist_time=hist_time,
        hist_behavior=torch.full((users, h), 2), targets=torch.zeros(users, 0, dtype=torch.long),
        session_start=seq_time[:, 0],
    )


def timed(fn, repeats: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def interleaved(fns: dict, calls: int, warmup: int = 10) -> dict:
    """{name: seconds per call (array)} with the functions called in turn, in alternating order, so that a drift in
    this machine's speed (it runs up to 2x slower on some days, and drifts within a run) hits every one alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {k: [] for k in fns}
    order = list(fns)
    for i in range(calls):
        for k in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t0)
    return {k: np.asarray(v) for k, v in out.items()}


def gemm_rates(rows: int = 300, k: int = 1024, n: int = 512, rounds: int = 6, repeats: int = 100) -> dict:
    """Multiply-adds per second of one thread at the paper MLP's widest layer (rows × k → n): an fp32 Linear
    (MKL/oneDNN) and the same layer dynamically quantized to int8 in PyTorch (fbgemm; the ONNX Runtime graph that
    ``with_precision`` builds ran this layer at 85 G/s in a profile here, MLAS, a like rate). The
    best call over `rounds` rounds of `repeats` calls, each round with freshly allocated layers and input: the
    rate of one round varies by up to 30% here (52–73 G/s for int8), and a floor takes the best."""
    import warnings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {"fp32": float("inf"), "int8": float("inf")}
    try:
        for _ in range(rounds):
            lin = torch.nn.Linear(k, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
            x = torch.randn(rows, k)
            with torch.inference_mode():
                for name, f in (("fp32", lin), ("int8", q)):
                    best[name] = min(best[name], float(timed(lambda f=f: f(x), repeats).min()))
    finally:
        torch.set_num_threads(threads)
    return {name: rows * k * n / t for name, t in best.items()}


def linear_macs(model, batch: Batch, candidates: torch.Tensor) -> int:
    """Multiply-adds of every Linear layer (fp32 or dynamically quantized) in one ``score`` call, counted by
    forward hooks: rows × in_features × out_features per call."""
    from torch.ao.nn.quantized import dynamic as qd

    total = [0]

    def hook(mod, args, _out):
        total[0] += args[0].numel() // mod.in_features * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Linear, qd.Linear))]
    try:
        with torch.inference_mode():
            model.score(batch, candidates)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def quality(run: str, data: str, candidates: int, split: str = "test") -> dict:
    """int8 against fp32 for a trained BST: two-stage metrics on the same SDM candidates, and AUC (module doc)."""
    from seqrec.data.prepare import load_manifest, read_split
    from seqrec.evaluate import evaluate_ranker, protocol_of, two_stage
    from seqrec.experiment import item_counts
    from seqrec.serving import find_runs, load_model

    manifest = load_manifest(data)
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    protocol = protocol_of(manifest)
    matcher_export, ranker_export = find_runs(run)
    if ranker_export is None:
        raise FileNotFoundError(f"--quality {run}: no trained ranker there")
    vh = manifest.get("vocab_hash")
    matcher = load_model(matcher_export, "matcher", vocab_hash=vh).model
    rankers = {p: load_model(ranker_export, "ranker", vocab_hash=vh, precision=p).model for p in ("fp32", "int8")}
    rankers["int8_first_layer"] = copy.copy(rankers["fp32"])  # the served form before: the first layer in int8 too
    rankers["int8_first_layer"].runtime = OnnxLogits(rankers["fp32"], first_layer=True)
    test = read_split(data, split)
    res = two_stage(matcher, rankers, test, spec, protocol, candidates=candidates, ks=(10, 20, 50))
    auc = {p: None for p in rankers}
    if not rankers["fp32"].config.match_features:  # a ranker that reads the matcher's scores ranks only its candidates
        counts = item_counts(data, spec.n_items)
        auc = {p: evaluate_ranker(m, test, spec, counts, negatives=4, seed=0)["AUC"] for p, m in rankers.items()}
    hit = "Hit@20" if protocol == "loo" else "HitRate@20"
    d_auc = None if auc["fp32"] is None else auc["int8"] - auc["fp32"]
    d_cand = res["int8"]["cand_AUC"] - res["fp32"]["cand_AUC"]
    d_hit = 100 * (res["int8"][hit] - res["fp32"][hit])
    f_cand = res["int8_first_layer"]["cand_AUC"] - res["fp32"]["cand_AUC"]
    f_hit = 100 * (res["int8_first_layer"][hit] - res["fp32"][hit])
    return {"run": str(run), "data": str(data), "matcher_export": str(matcher_export), "ranker_export": str(ranker_export),
            "protocol": protocol, "split": split, "rows": test.num_rows, "auc": auc, "two_stage": res, "hit_key": hit,
            "int8_auc_delta": d_auc, "int8_cand_auc_delta": d_cand, "int8_hitrate@20_delta": d_hit,
            "int8_quality_ok": bool(abs(d_auc or 0.0) <= TOLERANCE["auc"] and abs(d_cand) <= TOLERANCE["auc"]
                                    and abs(d_hit) <= TOLERANCE["hitrate@20_points"]),
            "int8_first_layer_cand_auc_delta": f_cand, "int8_first_layer_hitrate@20_delta": f_hit,
            "int8_first_layer_quality_ok": bool(abs(f_cand) <= TOLERANCE["auc"] and abs(f_hit) <= TOLERANCE["hitrate@20_points"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--categories", type=int, default=10_000)
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--batch-users", type=int, default=64)
    p.add_argument("--batch-repeats", type=int, default=5)
    p.add_argument("--quality", metavar="RUN", help="a run with an SDM and a trained BST: check int8 against fp32 (module doc)")
    p.add_argument("--data", help="the prepared dataset RUN was trained on (with --quality)")
    p.add_argument("--quality-split", choices=["val", "test"], default="test",
                   help="the split --quality reads (val: to choose what to quantize; test: the report)")
    args = p.parse_args()
    if args.quality and not args.data:
        p.error("--quality needs --data (the prepared dataset the run was trained on)")
    rates = gemm_rates()
    check = None
    if args.quality:
        check = quality(args.quality, args.data, args.candidates, args.quality_split)
        cand = {p: check["two_stage"][p]["cand_AUC"] for p in ("fp32", "int8")}
        print(f"int8 vs fp32 on {args.quality}: AUC over the candidates {cand['fp32']:.4f} -> {cand['int8']:.4f}, "
              f"{check['hit_key']} {check['two_stage']['fp32'][check['hit_key']]:.4f} -> "
              f"{check['two_stage']['int8'][check['hit_key']]:.4f}; within tolerance: {check['int8_quality_ok']}")
    spec = spec_for(args.items, args.categories)
    g = torch.Generator().manual_seed(0)
    side = torch.stack([torch.randint(2, f.vocab_size, (spec.n_items,), generator=g) for f in spec.item_side], 1)
    counts = torch.rand(spec.n_items, generator=g)
    one = user_batch(spec, 1, g)
    many = user_batch(spec, args.batch_users, g)
    c1 = torch.randint(2, spec.n_items, (1, args.candidates), generator=g)
    cb = torch.randint(2, spec.n_items, (args.batch_users, args.candidates), generator=g)
    torch.manual_seed(0)
    name, opts, _ = next(iter(CONFIGS.values()))  # the paper configuration
    paper_model = build_model(name, spec, **opts)
    paper_model.set_item_table(side, counts)
    macs = linear_macs(paper_model.eval(), one, c1)
    floor_ms = macs / rates["int8"] * 1e3
    print(f"paper BST: {macs / 1e6:.1f} M multiply-adds in Linear layers per call; one thread does {rates['fp32'] / 1e9:.1f} "
          f"(fp32) / {rates['int8'] / 1e9:.1f} (int8) G multiply-adds/s at its widest layer: {floor_ms:.2f} ms with every "
          f"Linear at the int8 rate and nothing else costing anything")
    threads = torch.get_num_threads()
    runs, models = [], {}
    for label, (name, opts, precision) in CONFIGS.items():
        torch.manual_seed(0)
        model = build_model(name, spec, **opts)
        model.set_item_table(side, counts)
        if precision == "int8-first-layer":  # the served form before: the first layer in int8 too, smoothed
            model = copy.copy(model.eval())
            model.runtime = OnnxLogits(model, first_layer=True)
        else:
            model = with_precision(model.eval(), precision)
        with torch.inference_mode():
            torch.set_num_threads(1)
            t1 = timed(lambda: model.score(one, c1), args.repeats)
            torch.set_num_threads(threads)
            tb = timed(lambda: model.score(many, cb), args.batch_repeats, warmup=2)
            gpu_ms = None
            if torch.cuda.is_available() and precision == "fp32":
                mg = model.to("cuda")
                og, cg = one.to("cuda"), c1.to("cuda")

                def call():
                    mg.score(og, cg)
                    torch.cuda.synchronize()

                gpu_ms = float(np.median(timed(call, args.repeats)) * 1e3)
                model.to("cpu")
        run = {
            "label": label, "model": name, "options": opts, "precision": precision,
            "parameters": sum(x.numel() for x in model.parameters()),
            "int8_layers": None if model.runtime is None else model.runtime.quantized,  # the ONNX graph's int8 MatMuls
            "ms_300_1thread_median": float(np.median(t1) * 1e3),
            "ms_300_1thread_p90": float(np.percentile(t1, 90) * 1e3),
            "batch_threads": threads,
            "candidates_per_s_batch": float(args.batch_users * args.candidates / np.median(tb)),
            "gpu_ms_300": gpu_ms,
        }
        runs.append(run)
        models[label] = model
        print(f"{label:38s} {run['ms_300_1thread_median']:7.2f} ms (p90 {run['ms_300_1thread_p90']:.2f}) 1 thread; "
              f"{run['candidates_per_s_batch']:,.0f} candidates/s in batch ({threads} threads)")
    paper, paper32, first, compact = runs[0], runs[1], runs[2], runs[3]
    with torch.inference_mode():  # the served int8 against its previous form, call by call in turn (the rows above
        torch.set_num_threads(1)  # time each form in its own block of calls, which the machine's drift can skew)
        pair = interleaved({k: (lambda m=models[runs[i]["label"]]: m.score(one, c1)) for i, k in ((0, "int8"), (2, "first"))},
                           args.repeats * 2)
        torch.set_num_threads(threads)
    pair_ms = {k: float(np.median(v) * 1e3) for k, v in pair.items()}
    print(f"interleaved, {args.repeats * 2} calls each: int8 as served {pair_ms['int8']:.2f} ms, with the first layer in int8 "
          f"too {pair_ms['first']:.2f} ms")
    summary = {
        "ms_300_candidates_1thread": round(paper["ms_300_1thread_median"], 3),
        "ms_300_candidates_1thread_fp32": round(paper32["ms_300_1thread_median"], 3),
        "ms_300_candidates_1thread_compact": round(compact["ms_300_1thread_median"], 3),
        "ms_300_candidates_1thread_int8_first_layer": round(first["ms_300_1thread_median"], 3),
        "ms_300_int8_interleaved": round(pair_ms["int8"], 3),
        "ms_300_int8_first_layer_interleaved": round(pair_ms["first"], 3),
        "int8_first_layer_gain_interleaved": round(1 - pair_ms["first"] / pair_ms["int8"], 4),
        "candidates_per_s_batch": round(paper["candidates_per_s_batch"]),
        "candidates_per_s_batch_fp32": round(paper32["candidates_per_s_batch"]),
        "candidates_per_s_batch_compact": round(compact["candidates_per_s_batch"]),
        "target_ms": 5.0,
        "paper_config_meets_target": paper["ms_300_1thread_median"] <= 5.0,
        "compact_config_meets_target": compact["ms_300_1thread_median"] <= 5.0,
        "gpu_ms_300_candidates": paper32["gpu_ms_300"],
        "linear_macs_300": macs,
        "gemm_fp32_gmac_per_s_1thread": round(rates["fp32"] / 1e9, 2),
        "gemm_int8_gmac_per_s_1thread": round(rates["int8"] / 1e9, 2),
        "floor_ms_300_candidates_1thread": round(floor_ms, 3),
        **{k: (None if check is None else check[k]) for k in
           ("int8_auc_delta", "int8_cand_auc_delta", "int8_hitrate@20_delta", "int8_quality_ok",
            "int8_first_layer_cand_auc_delta", "int8_first_layer_hitrate@20_delta", "int8_first_layer_quality_ok")},
    }
    if check is not None:
        runs.append({"label": "int8 quality check", **check})
    params = {k: v for k, v in vars(args).items()} | {"command": "python benchmarks/bench_rank.py " + " ".join(sys.argv[1:]),
                                                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    write_result("bench_rank", summary, params, runs, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
