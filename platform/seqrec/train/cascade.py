"""Cascade training data for the rankers: every training position's candidates from a matcher that never
trained on it.

A two-stage recommender's ranker orders what the matcher retrieved, so it should learn on the matcher's
own candidates, not on random popular items (that contrast is easy and cancels the popularity prior). But
a matcher's candidates for a position it trained on are too good: it has seen the answer. So the candidates
are *cross-fitted*: users are split into ``folds`` by a stable hash of their raw id; for each fold, a matcher
is trained on the other folds' rows (picking its epoch on the other folds' validation rows), and it
retrieves the candidates of this fold's rows. Every training position is then scored by a matcher that
never saw it, as the final matcher (trained on every user) never saw the test positions. K-fold over users
rather than an earlier time window: every training position gets candidates, and no training period is
spent on the matcher alone.

For each session row and each position t >= 1 (the matcher needs one event of the session before it):
the matcher's user state after event t-1 retrieves its top ``candidates`` items (``cand_item_id``, with
their inner products ``cand_match_score``), and the position's own item gets its inner product and its rank
among every item (``target_match_score``, ``target_match_rank``). Position 0 gets empty lists.

Each fold also fits an item-CF table (:class:`seqrec.models.itemcf.ItemCF`, settings ``ranking.COVISIT``) on the
same rows as its matcher, and every drawn candidate and target gets its co-visitation score with the behaviours
before t (``cand_covisit_score``, ``target_covisit_score``): a ``covisit`` ranker's cross feature, cross-fitted
for the same reason as the matcher's scores (a table built on a position's own pairs has seen its answer).

The label window is the rest of the session (the session row: events at most ``session_gap_s`` apart, at most
``max_session_len`` of them, from the prepared dataset's protocol): for position t, the items of events t+1 .. end of
the row. The drawn candidates are never the item at t nor an item of its label window. With ``positives="window"``
(:class:`seqrec.config.CascadeConfig`), every item of the label window that is in the position's list (the matcher's
top ``depth``) is stored as well, after the drawn ones (deduplicated, the item at t left out): the candidates a
``positives="window"`` ranker labels 1 with the next item. A ranker with ``positives="next"`` never uses a stored
candidate that is in the label window as a negative, so it learns the same on either data
(:meth:`seqrec.models.ranking.Ranker.training_input`).

:func:`generate` runs the retrieval as a Ray Data stage over the training rows (or in this process) and
writes ``<out>/train/*.parquet`` (the training rows with the four columns added) and ``<out>/cascade.json``
(the matcher, each fold's checkpoint, K, the folds, the dataset's and the output's content hashes).
``seqrec train --candidates OUT`` and ``seqrec evaluate --cascade`` train rankers on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import collate
from seqrec.config import CascadeConfig
from seqrec.features import FeatureSpec

CASCADE_FILE = "cascade.json"
TYPES = {F.CAND_ITEM: pa.list_(pa.list_(pa.int32())), F.CAND_SCORE: pa.list_(pa.list_(pa.float32())),
         F.CAND_RANK: pa.list_(pa.list_(pa.int32())), F.TARGET_SCORE: pa.list_(pa.float32()),
         F.TARGET_RANK: pa.list_(pa.int32()), F.TOP_SCORE: pa.list_(pa.float32()),
         F.CAND_COVISIT: pa.list_(pa.list_(pa.float32())), F.TARGET_COVISIT: pa.list_(pa.float32())}
CASCADE_COLUMNS = (F.CAND_ITEM, F.CAND_SCORE, F.CAND_RANK, F.TARGET_SCORE, F.TARGET_RANK, F.TOP_SCORE,
                   F.CAND_COVISIT, F.TARGET_COVISIT)
COVISIT_FILE = "itemcf.npz"  # each fold's item-CF table, next to its matcher's checkpoint


def row_folds(table: pa.Table, folds: int, seed: int, by: str) -> np.ndarray:
    """(B,) the fold of each session row: by its user (``user``) or by its session (``session``: user and start)."""
    if by == "user":
        return fold_of(table[F.USER_RAW], folds, seed)
    keys = [f"{u}@{t}" for u, t in zip(table[F.USER_RAW].to_pylist(), table[F.SESSION_START].to_pylist())]
    return fold_of(keys, folds, seed)


def fold_of(users: pa.Array | pa.ChunkedArray | list, folds: int, seed: int = 0) -> np.ndarray:
    """(U,) the fold of each raw user id: a stable hash (CRC-32 of the id's text and the seed) modulo ``folds``.

    Stable across processes, machines and Python versions (unlike ``hash()``), so every worker and every
    later run assigns a user to the same fold."""
    values = users.to_pylist() if hasattr(users, "to_pylist") else list(users)
    salt = str(seed).encode()
    return np.array([zlib.crc32(salt + b":" + str(u).encode()) % folds for u in values], np.int64)


def _row_keys(table: pa.Table, seed: int) -> torch.Tensor:
    """(B,) a stable key per session row (user, session start, seed): the draws depend on the row, not on the batch."""
    users, starts = table[F.USER_RAW].to_pylist(), table[F.SESSION_START].to_pylist()
    return torch.tensor([zlib.crc32(f"{u}:{t}:{seed}".encode()) & 0x7FFFFFFF for u, t in zip(users, starts)], dtype=torch.long)


DRAW_ORDERS = 8192  # stable uniform orders of a list's slots, one picked per position by its key


@functools.lru_cache(maxsize=4)
def draw_orders(depth: int, m: int) -> torch.Tensor:
    """(DRAW_ORDERS, m) the first ``m`` slots of uniformly random orders of ``depth`` list slots, from a fixed seed.

    A position's negatives are the first good slots of the order its stable key picks: a uniform draw without
    replacement from its list, the same for a row in any batch, worker or run (one table per process, not one
    hash per list slot and position, which was the stage's second cost after the top-``depth`` selection)."""
    rng = np.random.Generator(np.random.PCG64(0x5EED))
    orders = np.argsort(rng.random((DRAW_ORDERS, depth)), axis=1, kind="stable")[:, :m]
    return torch.from_numpy(np.ascontiguousarray(orders))


@torch.no_grad()
def position_candidates(matcher: torch.nn.Module, table: pa.Table, spec: FeatureSpec, k: int, depth: int = 300,
                        seed: int = 0, batch_size: int = 256, cf=None, window: bool = False) -> dict[str, pa.Array]:
    """The cascade columns (``CASCADE_COLUMNS``) of every row of ``table`` by ``matcher`` (exact inner products).

    For row r and position t >= 1, the state after event t-1 (``user_states``) scores every item. Its top
    ``depth`` items are the list the ranker will re-order (as serving's ``candidates``); ``k`` of them are drawn
    uniformly (a stable draw per row and position: :func:`draw_orders`), never the item at t nor an item later in
    the session (the label window), with their scores and ranks; then the score and exact
    rank of the item at t, and the list's first score. A position whose item is not in the top ``depth`` gets
    empty lists: the ranker never sees that list with its positive, so it trains on it neither (and the list is
    never selected). Position 0 gets empty lists too.

    ``cf``: the fold's :class:`ItemCF` (fitted with ``ranking.COVISIT``); the drawn candidates' and the target's
    co-visitation scores with the behaviours before t (``CAND_COVISIT`` / ``TARGET_COVISIT``, what a ``covisit``
    ranker reads; zeros without it).

    ``window``: each position's list also gets every item of its label window (the rest of the session) that is in
    the matcher's top ``depth``, after the ``k`` draws, with its score, rank and co-visitation score: the extra
    positives of a ``positives="window"`` ranker (each item once; the item at t is the position's target)."""
    from seqrec.inference import seen_penalty_of
    from seqrec.models.common import input_items, penalize
    from seqrec.models.ranking import COVISIT, behaviour_stream, covisit_scores, covisit_table, windows

    matcher.eval()
    items = matcher.item_embeddings().detach().float()  # (N, D)
    penalty = seen_penalty_of(matcher)
    depth = min(depth, items.shape[0] - F.FIRST_CODE)
    k = min(k, depth)
    m = min(k + 16, depth)  # draws checked against the session per position: a draw is rarely a session item
    orders = draw_orders(depth, m)
    out: dict[str, list] = {name: [] for name in CASCADE_COLUMNS}
    cf_table = None if cf is None else covisit_table(torch.from_numpy(cf.neighbors), torch.from_numpy(cf.weights))
    # rows by length, so a batch pads little (the matcher's states and the label-window check cost B × T); the
    # columns go back to the table's order at the end
    order = np.argsort(table[F.SEQ_LEN].to_numpy(), kind="stable")
    ordered = table.take(order)
    for start in range(0, table.num_rows, batch_size):
        part = ordered.slice(start, batch_size)
        batch = collate(part, spec)
        states = matcher.user_states(batch).float()  # (B, T, D)
        lengths = batch.seq_len.tolist()
        b, t = batch.items.shape
        rows, pos = torch.nonzero(torch.arange(1, max(t, 1))[None, :] < batch.seq_len[:, None], as_tuple=True)  # t-1
        scores = states[rows, pos] @ items.T  # (P, N) by the state after event pos = t-1
        if penalty is not None:  # scored as retrieval scores them (MatchConfig.seen_penalty)
            scores = penalize(scores, input_items(batch, rows, pos), penalty)
        scores[:, : F.FIRST_CODE] = float("-inf")
        target = batch.items[rows, pos + 1]  # (P,) the item at t = pos + 1
        t_score = scores.gather(1, target[:, None])[:, 0]
        t_rank = (scores > t_score[:, None]).sum(1, dtype=torch.int32)  # exact rank: the items the matcher puts first
        top1 = scores.amax(1)
        kept = (t_rank < depth).nonzero()[:, 0]  # (Pk,) positions whose item is in the list: the ones with samples
        top_s, top_i = scores[kept].topk(depth, dim=1)  # (Pk, depth) the list; a slot is the matcher's rank
        later = torch.arange(t)[None, :]
        later = (later > (pos[kept] + 1)[:, None]) & (later < batch.seq_len[rows[kept]][:, None])  # the label window
        future = torch.where(later, batch.items[rows[kept]], torch.zeros_like(later, dtype=batch.items.dtype))
        key = (_row_keys(part, seed)[rows[kept]] + pos[kept]) % 2_147_483_629
        pre = orders[key % DRAW_ORDERS]  # (Pk, m) list slots in the position's draw order
        items_pre = top_i.gather(1, pre)
        bad = (items_pre == target[kept, None]) | (items_pre[:, :, None] == future[:, None, :]).any(-1)
        first, at = torch.arange(m, 0, -1).expand(len(kept), m).masked_fill(bad, 0).topk(k, dim=1)
        slot = pre.gather(1, at)  # (Pk, k) the first k good draws
        cand_i, cand_s = top_i.gather(1, slot), top_s.gather(1, slot)
        take = first > 0  # (Pk, k) kept draws
        if window:  # the label window's items in the list: rank = the list's scores above theirs (the list's slot)
            w_s = scores[kept[:, None], future]  # (Pk, T); -inf for padding (codes < FIRST_CODE)
            w_rank = torch.searchsorted(-top_s.contiguous(), -w_s.contiguous(), side="left")  # (Pk, T)
            w_in = (w_rank < depth) & torch.isfinite(w_s) & (future != target[kept, None])
            w_in &= top_i.gather(1, w_rank.clamp(max=depth - 1)) == future  # exactly in the list (ties: left out)
            same = (future[:, :, None] == future[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)
            w_in &= ~same.any(-1)  # a later repeat of an item already in the window: once
            cand_i, cand_s = torch.cat([cand_i, future], 1), torch.cat([cand_s, w_s.masked_fill(~w_in, 0.0)], 1)
            slot, take = torch.cat([slot, w_rank.masked_fill(~w_in, 0)], 1), torch.cat([take, w_in], 1)
        t_cov, cand_cov = torch.zeros(len(rows)), torch.zeros(cand_i.shape)
        if cf is not None:  # scored with the behaviours before t = pos + 1 (history, then session)
            stream = behaviour_stream(batch)
            triggers = windows(stream, rows, stream[3][rows] + pos + 1, COVISIT.n_triggers)[0]
            t_cov = covisit_scores(cf_table, triggers, target[:, None], COVISIT.recency_decay)[:, 0]
            cand_cov = covisit_scores(cf_table, triggers[kept], cand_i, COVISIT.recency_decay)
        # Arrow lists built from offsets (no per-position Python): each row is [position 0, its positions 1..n]
        n_row = np.maximum(np.asarray(lengths, np.int64) - 1, 0)  # (B,)
        slots = rows.numpy() + 1 + np.arange(len(rows))  # (P,) each sample's list among the B + P of the part
        outer = np.concatenate([[0], np.cumsum(n_row + 1)]).astype(np.int32)
        take = take.numpy()  # (Pk, k [+ T]) kept draws [and window items]
        counts = np.zeros(b + len(rows), np.int64)
        counts[slots[kept.numpy()]] = take.sum(1)
        inner = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        drawn = {F.CAND_ITEM: (cand_i.numpy()[take].astype(np.int32), pa.int32()),
                 F.CAND_SCORE: (cand_s.numpy()[take].astype(np.float32), pa.float32()),
                 F.CAND_RANK: (slot.numpy()[take].astype(np.int32), pa.int32()),
                 F.CAND_COVISIT: (cand_cov.numpy()[take].astype(np.float32), pa.float32())}
        for name, (values, kind) in drawn.items():
            lists = pa.ListArray.from_arrays(pa.array(inner), pa.array(values, kind))
            out[name].append(pa.ListArray.from_arrays(pa.array(outer), lists))
        scalars = {F.TARGET_SCORE: (t_score.numpy(), np.nan, np.float32, pa.float32()),
                   F.TARGET_RANK: (t_rank.numpy(), -1, np.int32, pa.int32()),
                   F.TOP_SCORE: (top1.numpy(), np.nan, np.float32, pa.float32()),
                   F.TARGET_COVISIT: (t_cov.numpy(), np.nan, np.float32, pa.float32())}
        for name, (values, empty, dtype, kind) in scalars.items():
            flat = np.full(b + len(rows), empty, dtype)
            flat[slots] = values
            out[name].append(pa.ListArray.from_arrays(pa.array(outer), pa.array(flat, kind)))
    back = pa.array(np.argsort(order, kind="stable"))
    return {name: pa.concat_arrays(out[name]).take(back) if out[name] else pa.array([], TYPES[name]) for name in CASCADE_COLUMNS}


@torch.no_grad()
def row_candidates(matcher: torch.nn.Module, table: pa.Table, spec: FeatureSpec, n: int) -> dict[str, pa.Array]:
    """``ROW_CAND_ITEM`` / ``ROW_CAND_SCORE`` of evaluation rows: the matcher's top ``n`` after each row's whole
    input (exact inner products), what the ranker re-orders at validation as at serving."""
    from seqrec.inference import encode_table, exclusions
    from seqrec.retrieval import exact_topk

    users = encode_table(matcher, table, spec)
    items = matcher.item_embeddings().detach().float().cpu().numpy()
    exclude, penalty = exclusions(matcher, table)
    scores, codes = exact_topk(users, items, min(n, items.shape[0] - F.FIRST_CODE), exclude=exclude, penalty=penalty)
    return {F.ROW_CAND_ITEM: pa.array(list(codes.astype(np.int32)), pa.list_(pa.int32())),
            F.ROW_CAND_SCORE: pa.array(list(scores.astype(np.float32)), pa.list_(pa.float32()))}


class CandidateStage:
    """The Ray Data stage (``map_batches``, an actor): session rows → the same rows with the candidates of the
    matcher of their user's fold: per training position (:func:`position_candidates`, ``k`` each), or per
    evaluation row (:func:`row_candidates`, ``rows=True``). ``window``: each training position's label-window items
    in its list are stored too (``CascadeConfig.positives="window"``)."""

    window = False

    def __init__(self, checkpoints: list[str], spec: dict, k: int, seed: int, rows: bool = False, depth: int = 300,
                 by: str = "session", threads: int | None = None, window: bool = False):
        from seqrec.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        from seqrec.models.itemcf import ItemCF

        self.matchers = [load_checkpoint(c)[0] for c in checkpoints]
        cfs = [Path(c) / COVISIT_FILE for c in checkpoints]
        self.cfs = [ItemCF.from_state(np.load(f)) if f.exists() else None for f in cfs]
        self.spec, self.k, self.seed, self.rows, self.depth, self.by = FeatureSpec.from_dict(spec), k, seed, rows, depth, by
        self.window = window

    def __call__(self, table: pa.Table) -> pa.Table:
        folds = row_folds(table, len(self.matchers), self.seed, self.by)
        parts = []
        for f, matcher in enumerate(self.matchers):
            idx = np.flatnonzero(folds == f)
            if len(idx):
                part = table.take(idx)
                if self.rows:
                    made = row_candidates(matcher, part, self.spec, self.k)
                else:
                    made = position_candidates(matcher, part, self.spec, self.k, self.depth, self.seed, cf=self.cfs[f],
                                               window=self.window)
                for name, col in made.items():
                    part = part.append_column(name, col)
                parts.append(part)
        return pa.concat_tables(parts) if parts else table.slice(0, 0)


def train_fold_matchers(data_dir: str | Path, cfg: CascadeConfig, out: Path, log=print) -> list[str]:
    """One matcher per fold, each trained on the other folds' training rows and picking its epoch on the other
    folds' validation rows; returns their checkpoint directories (``<out>/matchers/fold-<f>``)."""
    from seqrec.checkpoint import dataset_identity, save_checkpoint
    from seqrec.data.prepare import load_manifest, read_split
    from seqrec.evaluate import fit_item_cf
    from seqrec.models.ranking import COVISIT
    from seqrec.train.factory import build
    from seqrec.train.loop import fit
    from seqrec.train.validation import select_metric, validator

    manifest = load_manifest(data_dir)
    train = read_split(data_dir, "train")
    val = read_split(data_dir, "val") if manifest["config"]["protocol"].get("val") else None
    train_fold = row_folds(train, cfg.folds, cfg.seed, cfg.fold_by)
    val_fold = row_folds(val, cfg.folds, cfg.seed, cfg.fold_by) if val is not None else None
    paths = []
    for f in range(cfg.folds):
        model, spec, _ = build(cfg.matcher, data_dir, cfg.matcher_options, seed=cfg.train.seed + f)
        rows = train.filter(pa.array(train_fold != f))
        check = val.filter(pa.array(val_fold != f)) if val is not None else None
        validate = None if check is None or check.num_rows == 0 else validator(cfg.matcher, check, spec, manifest)
        if log:
            log(f"cascade: fold {f + 1}/{cfg.folds} (by {cfg.fold_by}): {cfg.matcher} on {rows.num_rows:,} of "
                f"{train.num_rows:,} training rows")
        res = fit(model, rows, spec, cfg.train, validate=validate,
                  select=select_metric(cfg.matcher, manifest) if validate else None, log=None)
        path = save_checkpoint(out / "matchers" / f"fold-{f}", model, epoch=res.best_epoch, step=0,
                               dataset=dataset_identity(manifest, data_dir), metrics={"best": res.best_metric},
                               train={"fold": f, "folds": cfg.folds, **cfg.to_dict()})
        # the fold's item-CF table (co-visitation scores of its positions), on the same rows as its matcher
        state = fit_item_cf(rows, spec, **COVISIT.to_dict()).state_dict()
        np.savez(Path(path) / COVISIT_FILE, **{**state, "config": json.dumps(state["config"])})
        paths.append(str(path))
    return paths


def generate(data_dir: str | Path, out: str | Path, cfg: CascadeConfig, engine: str = "ray", log=print) -> dict:
    """Train the fold matchers, retrieve every training position's candidates, write ``<out>/train`` and
    ``<out>/cascade.json`` (see the module docstring); returns the manifest. ``engine``: ``ray`` (a Ray Data
    stage over the training split's files) or ``local`` (this process)."""
    import pyarrow.parquet as pq

    from seqrec.data.prepare import load_manifest, read_split
    from seqrec.models.ranking import COVISIT

    if engine not in ("ray", "local"):
        raise ValueError(f"engine={engine!r}; choose ray (a Ray Data stage) or local (this process)")
    data_dir, out = Path(data_dir), Path(out)
    manifest = load_manifest(data_dir)
    if (out / CASCADE_FILE).exists():
        raise FileExistsError(f"{out} already holds cascade data; remove it or choose another --out")
    t0 = time.perf_counter()
    checkpoints = train_fold_matchers(data_dir, cfg, out, log)
    t1 = time.perf_counter()
    setup = 0.0  # local engine: loading the fold matchers (Ray: inside the stage's actors, counted in the rate)
    stage = dict(checkpoints=checkpoints, spec=manifest["feature_spec"], seed=cfg.seed, by=cfg.fold_by)
    splits = {"train": dict(k=cfg.candidates, depth=cfg.depth, window=cfg.positives == "window")}
    if manifest["config"]["protocol"].get("val") and any((data_dir / "val").glob("*.parquet")):
        splits["val"] = dict(k=cfg.depth, rows=True)  # the cross-fitted candidates rankers are picked on
    for split, how in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        if engine == "ray":
            import ray.data

            from seqrec.cluster import start_ray

            start_ray(0)
            ds = ray.data.read_parquet(str((data_dir / split).resolve()))
            ds = ds.map_batches(CandidateStage, fn_constructor_kwargs=stage | how | {"threads": 1}, batch_format="pyarrow",
                                batch_size=1024, concurrency=cfg.workers, num_cpus=1)
            ds.write_parquet(str((out / split).resolve()))
        else:
            ts = time.perf_counter()
            fn = CandidateStage(**stage, **how)  # loads the fold matchers and tables: a fixed cost, timed apart
            if split == "train":
                setup = time.perf_counter() - ts
            pq.write_table(fn(read_split(data_dir, split)), out / split / "part-00000.parquet")
        if split == "train":
            t2 = time.perf_counter()
    files = sorted((out / "train").glob("*.parquet"))
    lengths = np.concatenate([pq.read_table(f, columns=[F.SEQ_LEN])[F.SEQ_LEN].to_numpy() for f in files])
    positions = int(np.maximum(lengths - 1, 0).sum())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    info = {
        "format": "seqrec-cascade", "format_version": 1,
        "config": cfg.to_dict(),
        "matchers": checkpoints,
        "splits": sorted(splits),
        "dataset": {"data_dir": str(data_dir.resolve()), "content_hash": manifest.get("content_hash"),
                    "vocab_hash": manifest.get("vocab_hash")},
        "label_window": "the rest of the session: later items of the same session are never negatives",
        "positives": cfg.positives,  # window: the label window's items in each list are stored after the draws
        "covisit": {"item_cf": "each fold's, fitted on the same rows as its matcher", **COVISIT.to_dict()},
        "rows": len(lengths), "positions": positions,
        "content_hash": digest.hexdigest()[:16],
        "seconds": {"matchers": t1 - t0, "candidates": t2 - t1, "setup": setup},
        "positions_per_s": positions / max(t2 - t1 - setup, 1e-9),
        "engine": engine,
        "out": str(out.resolve()),
    }
    (out / CASCADE_FILE).write_text(json.dumps(info, indent=1, default=str))
    if log:
        log(f"cascade: {positions:,} positions of {len(lengths):,} rows, {cfg.candidates} candidates each, "
            f"in {t2 - t1:.1f}s ({info['positions_per_s']:,.0f} positions/s) -> {out}")
    return info


def load_cascade(path: str | Path, manifest: dict | None = None) -> dict:
    """``cascade.json`` of a cascade directory; with the dataset's ``manifest``, refuse data made from another dataset."""
    f = Path(path) / CASCADE_FILE
    if not f.exists():
        raise FileNotFoundError(f"{path} holds no cascade data (no {CASCADE_FILE}): make it with `seqrec data candidates`")
    info = json.loads(f.read_text())
    if manifest is not None and info["dataset"]["content_hash"] != manifest.get("content_hash"):
        raise ValueError(f"the cascade data {path} was made from another dataset ({info['dataset']['data_dir']}); "
                         "make it again from this one")
    return info


__all__ = ["CASCADE_COLUMNS", "CASCADE_FILE", "CandidateStage", "fold_of", "generate", "load_cascade",
           "position_candidates", "train_fold_matchers"]
