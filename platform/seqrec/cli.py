"""The ``seqrec`` command line.

    seqrec data fetch ml-100k                  download MovieLens-100k (RecBole's atomic files) into the cache
    seqrec data synth --rows N --out DIR       write a seeded synthetic Taobao-style log
    seqrec data prepare SOURCE --out DIR       raw log → sessionized Parquet shards + manifest (Ray Data)
    seqrec data stats DIR                      print a prepared dataset's statistics
    seqrec evaluate --data DIR --out DIR       train + evaluate matchers, rankers and the two stages, several seeds
    seqrec train MODEL --data DIR --workers N  distributed training on Ray Train (checkpoints, resume, exports)
    seqrec index build --run DIR               FAISS index over a trained matcher's exported item vectors

Run ``seqrec <command> --help`` for every option. Every DIR may also be a storage URI (s3://bucket/key; the
S3 endpoint and keys from AWS_ENDPOINT_URL and the other AWS_* variables, see docs/cluster.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
from pathlib import Path

EPILOG_PREPARE = """\
examples:
  seqrec data prepare ml-100k --out data/ml-100k
  seqrec data prepare UserBehavior.csv --format taobao --out data/taobao --bad-rows quarantine
  seqrec data prepare events.parquet --format parquet --mapping mapping.yaml --out data/mine
  seqrec data prepare logs.csv --format csv --column user_id=uid --column item_id=sku \\
      --column timestamp=ts --column item_features.category_id=cat --out data/mine
  seqrec data prepare ml-100k --split loo --input last-n --input-events 50 --out data/ml-100k-recbole

On a running cluster (RAY_ADDRESS set, or `ray job submit -- seqrec data prepare ...`) the
pipeline runs there; otherwise a local Ray instance is started. --out must be a path every
node can write (local disk on one machine, a shared file system on a cluster) or a storage URI
(s3://bucket/data/NAME: the dataset is written to a local temporary directory, then uploaded).
"""

EPILOG_EVALUATE = """\
examples:
  seqrec evaluate --data data/ml-100k --out results/ml-100k            # every model, 3 seeds
  seqrec evaluate --data data/ml-100k --models sdm:PSDMMAL gru4rec --seeds 1 --out /tmp/r
  seqrec evaluate --data data/ml-100k --models sdm:PSDMMAL --ablation heads --ablation fusion --out /tmp/abl
  seqrec evaluate --data data/synth --models "sdm:PSDMMAL@hidden=128,lstm_layers=2#big" --out /tmp/big
  seqrec evaluate --data data/ml-100k --models wdl wdl_seq din bst "bst@blocks=2#BST b=2" --out /tmp/rank
  seqrec evaluate --data data/ml-100k --models sdm:PSDMMAL bst din --pipeline --out /tmp/two-stage

matchers: item_cf, youtube_dnn, gru4rec, narm, sasrec, sdm (custom) and the paper variants sdm:SDMMA,
sdm:PSDMMA, sdm:PSDMMAL, sdm:PSDMMAL-N, sdm:PSDMMAL-NoS (options: seqrec.models.sdm.SDMConfig).
rankers: bst, wdl, wdl_seq, din (options: seqrec.models.bst.BSTConfig, e.g. bst@blocks=2,
positions=sinusoid,output=all,mlp=256-128-64). @K=V sets a model option; #LABEL names the row. Matchers get
HitRate/Recall/Precision/F1@K, rankers AUC/GAUC/log loss; --pipeline adds the two-stage table
(the first matcher's top --candidates re-ranked by each ranker).
"""


EPILOG_TRAIN = """\
examples:
  seqrec train sdm:PSDMMAL --data data/ml-100k --workers 2 --cpus-per-worker 0.5 --epochs 20
  seqrec train bst --data data/ml-100k --workers 2 --option mlp=256-128-64 --name bst-ml
  seqrec train sdm --data data/taobao --workers 8 --gpu --amp bf16 --config configs/sdm.yaml
  ray job submit --working-dir . -- seqrec train sdm:PSDMMAL --data /shared/data/ml-100k --storage /shared/runs

A run lives in <storage>/<name>: Ray Train's checkpoint_epoch-N directories (seqrec checkpoints:
model config + weights + optimizer + epoch/step + the dataset's content and vocabulary hashes),
tensorboard/, training_curve.png, run.json and export/ (the best checkpoint's model, and for a
matcher its item vectors; `seqrec index build` adds the FAISS index). Re-running the same
--name with the same --storage resumes from the last checkpoint. A --config YAML holds the
options of seqrec.config.TrainJob (model, data, options, and the sections train, scaling and run,
or their keys flat: epochs, workers, ...); flags given on the command line win. --batch-size is
the global batch: each of N workers takes batch_size / N rows. With RAY_ADDRESS set (or under `ray job submit`) the run uses
that cluster; otherwise a local Ray instance is started.
"""

EPILOG_TUNE = """\
examples:
  seqrec tune sdm:PSDMMAL --data data/ml-100k --space small --samples 4 --epochs 5
  seqrec tune sdm:PSDMMAL --data data/ml-100k --space paper_heads --seeds 3 --scheduler fifo
  seqrec tune sdm:PSDMMAL --data data/ml-100k --space default --samples 20 --set fusion=gated,add
  seqrec tune bst --data data/ml-100k --space default --samples 16 --workers-per-trial 2 --gpu
  seqrec tune sdm:PSDMMAL --data data/ml-100k --space small --samples 4 --name my-search --resume

Spaces live in tune_spaces/<model>.py (sdm: default, paper_heads, paper_fusion, small; bst:
default, paper_blocks, small; baselines: default). --workers-per-trial 0 trains each trial in its
own process (fast for small searches on one machine); N >= 1 makes each trial a Ray Train run of
N workers. A search lives in <storage>/<name>: Tune's trial directories, trials.csv and trials.md
(every trial, best first), best.yaml (`seqrec train --config best.yaml` trains the best config),
search.json (with the best checkpoint's path) and search.png (the metric by heads x fusion and by
hidden size). --resume continues an interrupted search.
"""

EPILOG_SERVE = """\
examples:
  seqrec serve --data data/ml-100k --run runs/ml-100k                  # the main command's experiment
  seqrec serve --data data/ml-100k --matcher runs/sdm-ml --ranker runs/bst-ml --port 8000
  seqrec serve --data data/ml-100k --run runs/ml-100k --once            # one recommendation, then stop
  seqrec serve --data data/ml-100k --run runs/ml-100k --store redis://127.0.0.1:6379/0
  seqrec serve --data data/ml-100k --run runs/ml-100k --write-config serve.yaml && serve run serve.yaml

POST /events {"users": [{"user_id": 5, "events": [{"item_id": 50, "timestamp": 881250949}, ...]}]} stores
behaviours; POST /recommend {"user_id": 5, "k": 10} answers from them (events in the request are added to the
stored ones for that request) with {"items": [{"item_id", "score", "match_score", "fields"}, ...], "model_versions",
"timings_ms", ...}. The store is SQLite at DATA/events.sqlite unless --store names another (sqlite:///PATH,
redis://HOST:PORT/DB); `seqrec store load` warms it. OpenAPI docs at /docs. The server listens on 127.0.0.1
unless --host says otherwise.
"""

EPILOG_STORE = """\
examples:
  seqrec store load --data data/ml-100k --source ml-100k                          # into DATA/events.sqlite
  seqrec store load --data data/synth --source data/synth-raw --format synth --store redis://127.0.0.1:6379/0

Reads the events the prepared dataset was made from (SOURCE, as given to `seqrec data prepare`, with the same
--format/--mapping) through prepare's filters, and appends each user's recent behaviours (what serving reads:
the protocol's long-term window plus a day, at least the last history-plus-session events, at most 1,000) to
the store `seqrec serve --store` reads. Run it once on an empty store: events appended twice are stored twice.
"""


def _time(value: str) -> int:
    """Epoch seconds, or an ISO 8601 date/time (naive times are UTC)."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither epoch seconds nor an ISO 8601 date/time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp())


def _time_range(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--time-range {value!r}: expected START,END")
    return _time(parts[0]), _time(parts[1])


def _positive_int(value: str) -> int:
    v = int(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return v


def _nullable(cast):
    """An argparse type for an optional value: ``none`` is None."""
    def parse(text: str):
        return None if text.lower() in ("none", "null") else cast(text)

    parse.__name__ = cast.__name__
    return parse


def config_flags(parser, cls, defaults=None, prefix: str = "", skip=(), title: str | None = None) -> None:
    """One flag per field of the config dataclass ``cls`` (``--batch-size``), with the field's help and choices.

    The default shown is ``defaults``' value (an instance of ``cls``; default: ``cls()``), so each default is
    stated once, in :mod:`seqrec.config`. A flag not given leaves no attribute (``argparse.SUPPRESS``): a YAML
    config's value stands then. Written here rather than with a CLI library because the command keeps
    argparse's subcommands, examples and help layout."""
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title) if title else parser
    base = defaults if defaults is not None else cls()
    made = []
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        made.append(f.name)
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = getattr(base, f.name)
        shown = "none" if default is None else default
        hint = hints[f.name]
        if hint is bool:  # a switch: off unless given
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=f.metadata["help"])
            continue
        kw = {"default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default {shown})"}
        args = typing.get_args(hint)
        cast = next(a for a in args if a is not type(None)) if args else hint
        kw["type"] = _nullable(cast) if type(None) in args else cast
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        group.add_argument(flag, metavar=f.name.upper() if not kw.get("choices") else None, **kw)
    parser.set_defaults(**{_made(cls, prefix): tuple(made)})  # which flags config_values reads back


def _made(cls, prefix: str) -> str:
    return f"config_flags.{cls.__name__}.{prefix}"


def config_values(args, cls, prefix: str = "") -> dict:
    """The fields of ``cls`` given on the command line, among the flags :func:`config_flags` made."""
    names = getattr(args, _made(cls, prefix), ())
    return {n: getattr(args, prefix + n) for n in names if hasattr(args, prefix + n)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from seqrec import __version__
    from seqrec.config import CascadeConfig, ExperimentSpec, RunConfig, ScalingConfig, TrainConfig

    parser.add_argument("--version", action="version", version=f"seqrec {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = top.add_parser("data", help="fetch, synthesize, prepare and inspect datasets",
                          description="Datasets: fetch, synth, prepare, stats.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    fetch = sub.add_parser("fetch", help="download a public dataset into the cache",
                           description="Download a public dataset into the cache directory and print its path. "
                           "ml-100k comes from the RecBole 1.2.1 wheel on PyPI (RecBole's atomic files; RecBole is not installed).")
    fetch.add_argument("dataset", choices=["ml-100k"], help="dataset to fetch")
    fetch.add_argument("--cache-dir", help="where to put it (default: $SEQREC_CACHE or ~/.cache/seqrec)")
    fetch.add_argument("--force", action="store_true", help="download again even if the files are there")

    synth = sub.add_parser("synth", help="write a seeded synthetic Taobao-style event log",
                           description="Write a seeded synthetic event log with the Taobao schema plus brand, shop, "
                           "first-level category and user profile (see seqrec.data.synth for the generative model). "
                           "Streams to disk: 100M rows need no more memory than 1M.")
    synth.add_argument("--rows", type=int, required=True, help="number of events to write")
    synth.add_argument("--out", required=True, help="output directory (events/part-*.parquet + synth.json)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same data")
    synth.add_argument("--users", type=int, help="number of users (default rows/100)")
    synth.add_argument("--items", type=int, help="catalogue size (default rows/25, clamped to [1000, 4M])")
    synth.add_argument("--days", type=int, default=9, help="days covered (default 9, like UserBehavior)")
    synth.add_argument("--layout", choices=["parquet", "taobao-csv"], default="parquet",
                       help="parquet: all columns; taobao-csv: UserBehavior.csv's 5 columns only (default parquet)")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")

    prep = sub.add_parser("prepare", help="raw events → sessionized Parquet shards + manifest (Ray Data)",
                          description="Read, validate and filter a raw behaviour log, encode ids (0 = padding, 1 = unknown), "
                          "group by user, sessionize (SDM §3.1), add long-term behaviours, split by time (SDM §4.1) "
                          "and write one row per session as Parquet shards plus manifest.json.",
                          epilog=EPILOG_PREPARE, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("source", help="a file or directory, or 'ml-100k' for the fetched MovieLens-100k")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--format", dest="fmt", choices=["taobao", "movielens", "recbole", "csv", "parquet", "synth"],
                      help="input format (default: detected)")
    prep.add_argument("--mapping", help="YAML column mapping for --format csv/parquet (see README)")
    prep.add_argument("--column", action="append", default=[], metavar="KEY=SOURCE_COLUMN",
                      help="one mapping entry for --format csv/parquet, e.g. user_id=uid or item_features.category_id=cat; repeatable")
    g = prep.add_argument_group("protocol (SDM §3.1, §4.1)")
    g.add_argument("--split", choices=["dataset-day", "user-day", "loo"],
                   help="test window: the dataset's last day (default), each user's last active day "
                   "(default for MovieLens), or leave-one-out (RecBole's protocol)")
    g.add_argument("--no-val", dest="val", action="store_false", default=None,
                   help="no validation window (default: the day / event before the test window)")
    g.add_argument("--session-gap-minutes", type=float, help="a gap >= this starts a new session (default 10)")
    g.add_argument("--max-session-len", type=int, help="a session longer than this is split (default 50)")
    g.add_argument("--long-term-days", type=float, help="long-term window before a session (default 7)")
    g.add_argument("--long-term-max", type=int, help="max distinct values per long-term feature (default 20)")
    g.add_argument("--hist-len", type=int, help="events of history kept before each session for BST (default 20)")
    g.add_argument("--test-fraction", type=float, help="share of the test window's events used as input (default 0.25)")
    g.add_argument("--input", choices=["session", "last-n"],
                   help="what a row's input holds: the session plus 7 days of long-term behaviours (session, the "
                   "paper's protocol, default), or the last --input-events events whatever their age (last-n, the "
                   "history RecBole's peers see: the session's part of them is the short-term input, the rest the "
                   "long-term input and history)")
    g.add_argument("--input-events", type=int, help="N of --input last-n (default 50, as RecBole)")
    g.add_argument("--tz-offset-hours", type=float, help="UTC offset that defines calendar days (default 0; Taobao: 8)")
    g.add_argument("--train-horizon-hours", type=float,
                   help="give each training row targets beyond its session: the distinct items of the user's training "
                   "events within this many hours after the session (what a matcher's horizon_weight trains on; "
                   "default 0: none, the paper's next-item targets only)")
    f = prep.add_argument_group("filters (every count goes to the manifest)")
    f.add_argument("--min-item-count", type=_positive_int, help="drop items seen fewer times (default 5; 1 keeps all)")
    f.add_argument("--max-user-events", type=_positive_int, help="drop users with more events (default 1000; 0 keeps all)")
    f.add_argument("--behaviors", help="keep only these behaviours, comma-separated (e.g. pv,buy)")
    f.add_argument("--time-range", type=_time_range, metavar="START,END",
                   help="keep START <= timestamp < END; epoch seconds or ISO dates (Taobao default: 2017-11-25..2017-12-04 +08:00)")
    f.add_argument("--bad-rows", choices=["error", "quarantine"],
                   help="malformed rows stop the run (error, default) or go to OUT/rejects/ and are counted (quarantine)")
    r = prep.add_argument_group("execution")
    r.add_argument("--engine", choices=["auto", "ray", "local"], default="auto",
                   help="ray: the Ray Data pipeline; local: the same stages in this process; auto (default): "
                   "local when the input fits in one bucket (Ray would run one task per stage and only add "
                   "start-up time) and no cluster is configured (RAY_ADDRESS), ray otherwise")
    r.add_argument("--rows-per-bucket", type=int, help="events per group-by-user bucket (default 2,000,000; bounds memory per task)")
    r.add_argument("--chunk-mb", type=int, help="MB of input per read task (default 64)")
    r.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    r.add_argument("--keep-tmp", action="store_true", help="keep OUT/_tmp (the bucketed events) for inspection")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    stats = sub.add_parser("stats", help="print a prepared dataset's statistics",
                           description="Print the statistics of a prepared dataset: the manifest's filter funnel, splits "
                           "and vocabularies, then session lengths and where next items' categories come from (the "
                           "session prefix, only the 7-day long-term subset, neither) beside the Taobao figures: "
                           "whether long-term behaviour can matter on this data.")
    stats.add_argument("data_dir", help="a directory written by `seqrec data prepare`")
    stats.add_argument("--json", action="store_true",
                       help="print the raw manifest counts as JSON, with the session and next-item figures under \"behaviour\"")

    ca = sub.add_parser("candidates", help="cascade data: every training position's candidates from a cross-fitted matcher",
                        description="Train one matcher per fold of users (each on the other folds' users), retrieve every "
                        "training position's top candidates with the matcher of its user's fold (a Ray Data stage), and "
                        "write them next to the dataset for rankers (`seqrec train bst --candidates OUT`, "
                        "`seqrec evaluate --cascade`). The label window is the rest of the session.")
    ca.add_argument("--data", required=True, help="a directory written by `seqrec data prepare`")
    ca.add_argument("--out", required=True, help="output directory (train/, val/, cascade.json, matchers/)")
    ca.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a matcher option, e.g. heads=2; repeatable")
    ca.add_argument("--engine", choices=["ray", "local"], default="ray",
                    help="ray (default): a Ray Data stage over the splits' files; local: in this process")
    cascade = CascadeConfig()
    config_flags(ca, CascadeConfig, cascade, title="cascade")
    config_flags(ca, TrainConfig, cascade.train, skip=("seed",), title="the fold matchers' training (seed: --seed + fold)")

    ev = top.add_parser("evaluate", help="train matching models and evaluate them (SDM §4.2), several seeds",
                        description="Train each model with the shared training loop on the train split, pick the best "
                        "epoch on the validation split, and evaluate top-K retrieval on the test split "
                        "(HitRate/Precision/Recall/F1@{20,50,100}; Hit/NDCG@{10,20,50} for --split loo datasets). "
                        "Writes results.json, results.csv, results.md and plots/ to --out.",
                        epilog=EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--data", required=True, help="a directory written by `seqrec data prepare`")
    ev.add_argument("--models", nargs="+", metavar="MODEL", help="model entries NAME[@K=V,...][#LABEL], space-separated "
                    "(default: item_cf and every neural baseline and SDM variant)")
    ev.add_argument("--ablation", action="append", default=[], choices=["heads", "fusion"],
                    help="add the paper's ablation: heads 1/2/4/8 (Table 3) or fusion types (Table 4); repeatable")
    ev.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    ev.add_argument("--hidden", type=int, default=64, help="hidden size D of every model (default 64)")
    ev.add_argument("--loss", choices=["auto", "sampled", "full"], default="auto",
                    help="sampled softmax, exact softmax, or auto: exact up to 5,000 items (default)")
    ev.add_argument("--num-sampled", type=int, default=1000, help="negatives per batch for the sampled softmax (default 1000)")
    spec = ExperimentSpec(data="")
    cascade = CascadeConfig()
    config_flags(ev, ExperimentSpec, spec, title="experiment")
    config_flags(ev, TrainConfig, spec.match, skip=("seed",), title="matchers' training (seeds come from --seeds)")
    config_flags(ev, TrainConfig, spec.rank, prefix="rank_", skip=("seed",), title="rankers' training")
    config_flags(ev, ScalingConfig, spec.scaling, title="--trainer ray: Ray Train workers")
    ev.add_argument("--cascade", action="store_true",
                    help="rankers train on the first matcher's cross-fitted candidates (seqrec data candidates) and are "
                    "picked and measured on its candidates")
    config_flags(ev, CascadeConfig, cascade, prefix="cascade_", skip=("matcher", "depth"), title="--cascade (depth: --candidates)")
    ev.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ev.add_argument("--out", required=True, help="output directory for results and plots")
    ev.add_argument("--no-plots", action="store_true", help="skip the attention and gate plots")
    ev.add_argument("--quiet", action="store_true", help="no per-epoch lines")

    tr = top.add_parser("train", help="distributed training on Ray Train fed by Ray Data (checkpoints, resume, exports)",
                        description="Train one model on a prepared dataset with N Ray Train workers (DDP), streaming the "
                        "training split with Ray Data; report per-epoch validation metrics, keep the best checkpoints, "
                        "resume after failures, and export the best model for serving.",
                        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("model", nargs="?", help="sdm | sdm:VARIANT | gru4rec | narm | sasrec | youtube_dnn | bst | din | wdl | wdl_seq "
                    "(or `model:` in --config)")
    tr.add_argument("--data", help="a directory written by `seqrec data prepare` (or `data:` in --config)")
    tr.add_argument("--config", help="YAML file of training options (seqrec.config.TrainJob: sections train, scaling, run, or flat keys)")
    tr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option, e.g. heads=2; repeatable")
    tr.add_argument("--candidates", metavar="DIR", help="a ranker's cascade data (`seqrec data candidates`): train on the "
                    "matcher's candidates of each position, pick the epoch on the matcher's candidates of the validation rows")
    config_flags(tr, TrainConfig, title="training")
    config_flags(tr, ScalingConfig, title="scaling")
    config_flags(tr, RunConfig, title="the run")

    tu = top.add_parser("tune", help="hyperparameter search with Ray Tune (ASHA; in-process or Ray Train trials)",
                        description="Search a model's hyperparameters on a prepared dataset with Ray Tune: every trial "
                        "reports its validation metric each epoch, ASHA stops the poor ones, and the results come as a "
                        "sorted table, a plot, the best config (YAML) and the best checkpoint.",
                        epilog=EPILOG_TUNE, formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_argument("model", nargs="?", help="sdm | sdm:VARIANT | gru4rec | narm | sasrec | youtube_dnn | bst | din | wdl | wdl_seq")
    tu.add_argument("--data", help="a directory written by `seqrec data prepare` (with a validation split)")
    tu.add_argument("--config", help="YAML of the base training options every trial shares (seqrec.config.TrainJob)")
    tu.add_argument("--space", default="default", help="a search space of tune_spaces/<model>.py (default: default)")
    tu.add_argument("--samples", type=_positive_int, default=1,
                    help="trials drawn from the space (grid spaces: repeats of the whole grid; default 1)")
    tu.add_argument("--seeds", type=_positive_int, help="seeds of the paper_* grid spaces (default 3)")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                    help="restrict (or add) one dimension of the space, e.g. fusion=gated,add or heads=2; a joint one "
                    "with ':' inside each value, e.g. heads,hidden=2:64,4:64; repeatable")
    tu.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option every trial shares")
    tu.add_argument("--workers-per-trial", type=int, default=0,
                    help="0 (default): each trial trains in its own process; N: each trial is a Ray Train run of N workers")
    tu.add_argument("--cpus-per-worker", type=float,
                    help="CPUs per trial (0 workers; default 1) or per Ray Train worker (default 0.5)")
    tu.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                    help="asha (default): stop poor trials at epoch milestones; fifo: train every trial to the end")
    tu.add_argument("--search", choices=["random", "optuna"], default="random",
                    help="random (default; grids are enumerated) or optuna (TPE; pip install 'seqrec[optuna]')")
    tu.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster's resources hold)")
    tu.add_argument("--seed", type=int, default=0, help="the search's random seed (default 0; trials' seeds are --set seed=...)")
    tu.add_argument("--name", help="search name (default MODEL-SPACE-DATASET)")
    tu.add_argument("--storage", default="runs/tune", help="where searches live (default runs/tune; shared on a cluster)")
    tu.add_argument("--resume", action="store_true", help="continue the interrupted search <storage>/<name>")
    config_flags(tu, TrainConfig, skip=("seed",), title="every trial's training (trials' seeds: --set seed=...)")
    config_flags(tu, ScalingConfig, skip=("workers", "cpus_per_worker"), title="scaling")

    sv = top.add_parser("serve", help="Ray Serve: SDM -> FAISS -> BST as one HTTP endpoint, from training runs",
                        description="Start the recommendation app (Ingress -> UserEncoder -> Retriever -> Ranker; with --layout "
                        "colocated, the Ingress alone running the three stages) on Ray Serve from training runs' exports.",
                        epilog=EPILOG_SERVE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("--data", required=True, help="the prepared dataset the models were trained on")
    sv.add_argument("--run", help="a training run, or an experiment's --out (its train/ runs: SDM and BST preferred)")
    sv.add_argument("--matcher", help="the matcher's training run (or export/ directory); overrides --run's")
    sv.add_argument("--ranker", help="the ranker's training run (or export/ directory); overrides --run's")
    sv.add_argument("--no-ranker", action="store_true", help="answer in the matcher's order (no BST stage)")
    sv.add_argument("--keep-ranker", action="store_true",
                    help="serve --run's ranker even when its two-stage result says it lowered Hit/Recall against the "
                    "matcher alone (by default the matcher's order is served then)")
    sv.add_argument("--index", choices=["auto", "flat", "hnsw", "ivf"], default="auto",
                    help="the FAISS index to build when the matcher export has none (auto: flat up to 100k items, else hnsw)")
    sv.add_argument("--candidates", type=_positive_int, default=300, help="items retrieved for the ranker (default 300)")
    sv.add_argument("--ranker-precision", choices=["auto", "fp32", "int8"], default="auto",
                    help="the ranker's arithmetic: int8 (dynamic quantization of its MLP, CPU only), fp32, or auto "
                    "(default: int8 on a CPU, fp32 with --gpu)")
    sv.add_argument("--encoder-runtime", choices=["auto", "torch", "onnx"], default="auto",
                    help="what computes the matcher's user vectors: onnx (SDM's network as one ONNX Runtime graph, the "
                    "same vectors, CPU only), torch, or auto (default: onnx for SDM on a CPU, else torch)")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    sv.add_argument("--gpu", action="store_true", help="models and the FAISS index on a GPU that UserEncoder, Retriever and Ranker share")
    sv.add_argument("--layout", choices=["composed", "colocated"], default="composed",
                    help="composed (default): Ingress -> UserEncoder -> Retriever -> Ranker deployments, each scaled on its "
                    "own; colocated: the Ingress alone runs the three stages in its replicas (no hops between deployments)")
    sv.add_argument("--replicas", type=_positive_int, default=1,
                    help="replicas of each deployment (colocated: of the Ingress; default 1)")
    sv.add_argument("--once", action="store_true", help="send one request (a test user's recent events), print the answer, stop")
    sv.add_argument("--address", default=None, help="a running Ray cluster to serve on (default: $RAY_ADDRESS; "
                    "without either, a new local cluster that stops with the command)")
    sv.add_argument("--serve-mode", choices=["fast", "standard"], default="fast",
                    help="Serve's mode on the new local cluster: fast (default: HAProxy ingress, gRPC between "
                    "deployments, Ray Serve's high-throughput settings) or standard (Serve's defaults); "
                    "a running cluster keeps the mode it was started with")
    sv.add_argument("--write-config", metavar="YAML", help="write a `serve run` / `serve deploy` config for these artifacts and exit")
    sv.add_argument("--store", metavar="URL", help="where users' behaviours are kept (POST /events): sqlite:///PATH "
                    "(relative; sqlite:////PATH absolute) or redis://HOST:PORT/DB (default: SQLite at DATA/events.sqlite; "
                    "with --once, a temporary SQLite file)")
    sv.add_argument("--store-ttl-s", type=_positive_int, help="forget a user's behaviours this many seconds after the last "
                    "POST /events for them (default: keep them, trimmed to the protocol's window)")

    st = top.add_parser("store", help="the user-behaviour store that `seqrec serve` reads",
                        description="The store of users' recent behaviours (POST /events; seqrec.store).",
                        epilog=EPILOG_STORE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sts = st.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    sl = sts.add_parser("load", help="warm a store with a prepared dataset's recent behaviours",
                        epilog=EPILOG_STORE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sl.add_argument("--data", required=True, help="the prepared dataset (its filters, protocol and vocabularies)")
    sl.add_argument("--source", required=True, help="the raw events the dataset was prepared from (as given to prepare)")
    sl.add_argument("--format", dest="fmt", choices=["taobao", "movielens", "recbole", "csv", "parquet", "synth"],
                    help="input format (default: detected)")
    sl.add_argument("--mapping", help="YAML column mapping for --format csv/parquet")
    sl.add_argument("--column", action="append", default=[], metavar="KEY=SOURCE_COLUMN", help="one mapping entry; repeatable")
    sl.add_argument("--store", metavar="URL", help="the store (default: SQLite at DATA/events.sqlite, as seqrec serve)")
    sl.add_argument("--batch-events", type=_positive_int, default=50_000, help="events per atomic append (default 50,000)")

    ix = top.add_parser("index", help="FAISS index over a trained matcher's item vectors",
                        description="Build the retrieval index of a training run's export (<run>/export).")
    ixs = ix.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    ib = ixs.add_parser("build", help="build <run>/export/index from <run>/export/item_embeddings.npy")
    ib.add_argument("--run", required=True, help="a run directory written by `seqrec train` (or its export/ directory)")
    ib.add_argument("--kind", choices=["flat", "hnsw", "ivf"], default="hnsw", help="index type (default hnsw)")
    ib.add_argument("--gpu", action="store_true", help="build on the GPU (faiss GPU build)")
    return parser


def _mapping(args):
    from seqrec.data.loaders import ColumnMapping

    if not args.mapping and not args.column:
        return None
    if args.mapping and args.column:
        raise SystemExit("seqrec data prepare: use --mapping or --column, not both")
    if args.mapping:
        return ColumnMapping.from_yaml(args.mapping)
    return ColumnMapping.from_pairs(args.column)


def cmd_prepare(args) -> int:
    from seqrec import storage
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import prepare, resolve_config
    from seqrec.data.stats import format_stats

    # a URI source is read from a local copy (the loaders read local files)
    source = open_source(str(storage.local_copy(args.source)) if storage.is_uri(args.source) else args.source,
                         fmt=args.fmt, mapping=_mapping(args))
    cfg = resolve_config(
        source,
        split=args.split,
        val=args.val,
        session_gap_s=None if args.session_gap_minutes is None else int(round(args.session_gap_minutes * 60)),
        max_session_len=args.max_session_len,
        long_term_s=None if args.long_term_days is None else int(round(args.long_term_days * 86400)),
        long_term_max=args.long_term_max,
        hist_len=args.hist_len,
        test_fraction=args.test_fraction,
        input=args.input,
        input_events=args.input_events,
        tz_offset_hours=args.tz_offset_hours,
        train_horizon_s=None if args.train_horizon_hours is None else int(round(args.train_horizon_hours * 3600)),
        min_item_count=args.min_item_count,
        max_user_events=args.max_user_events,
        behaviors=None if args.behaviors is None else tuple(b for b in args.behaviors.split(",") if b),
        time_range=args.time_range,
        bad_rows=args.bad_rows,
        rows_per_bucket=args.rows_per_bucket,
        chunk_bytes=None if args.chunk_mb is None else args.chunk_mb << 20,
    )
    manifest = prepare(source, args.out, cfg, engine=args.engine, progress=not args.no_progress,
                       overwrite=args.overwrite, keep_tmp=args.keep_tmp)
    print(format_stats(manifest))
    print(f"\nwrote {storage.absolute(args.out)}")
    return 0


def cmd_stats(args) -> int:
    import json

    from seqrec import storage
    from seqrec.data.prepare import load_manifest
    from seqrec.data.stats import behaviour_stats, format_behaviour_stats, format_stats

    m = load_manifest(storage.local_copy(args.data_dir, only=["manifest.json"]))
    # the session and next-item figures read the training and test rows (for a URI, a local copy of them)
    local = storage.local_copy(args.data_dir, only=["manifest.json", "items.parquet", "train", "test"])
    b = behaviour_stats(local, m)
    print(json.dumps({**m["counts"], "behaviour": b}, indent=2) if args.json
          else format_stats(m) + "\n\n" + format_behaviour_stats(b))
    return 0


def cmd_candidates(args) -> int:
    from dataclasses import replace

    from seqrec import storage
    from seqrec.config import CascadeConfig, TrainConfig
    from seqrec.experiment import parse_model
    from seqrec.train.cascade import generate

    base = CascadeConfig()
    given = config_values(args, CascadeConfig)
    options = {}
    for kv in args.option:
        options.update(parse_model(f"{given.get('matcher', base.matcher)}@{kv}").options)
    cfg = replace(base, **given, matcher_options=options, train=replace(base.train, **config_values(args, TrainConfig)))
    if storage.is_uri(args.out) and not storage.is_empty(args.out):
        raise FileExistsError(f"{args.out} is not empty; remove it or choose another --out")
    with storage.local_output(args.out) as out:  # a URI: written to a local directory, then uploaded
        info = generate(storage.local_copy(args.data), out, cfg, engine=args.engine)
    print(f"wrote {info['positions']:,} positions' candidates ({info['positions_per_s']:,.0f} positions/s) to {args.out}")
    return 0


def cmd_fetch(args) -> int:
    from seqrec.data.fetch import fetch_ml100k

    path = fetch_ml100k(args.cache_dir, force=args.force)
    print(path)
    return 0


def cmd_synth(args) -> int:
    from seqrec import storage
    from seqrec.data.synth import generate

    with storage.local_output(args.out, replace=True) as out:  # a URI: written to a local directory, then uploaded
        meta = generate(out, args.rows, seed=args.seed, users=args.users, items=args.items, days=args.days,
                        fmt=args.layout, progress=not args.no_progress)
    print(f"wrote {meta['rows']:,} events of {meta['users']:,} users over {meta['items']:,} items to {storage.absolute(args.out)}")
    return 0


def cmd_evaluate(args) -> int:
    from dataclasses import replace

    import torch

    from seqrec import storage
    from seqrec.config import CascadeConfig, ExperimentSpec, ScalingConfig, TrainConfig
    from seqrec.experiment import expand_models, run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} must be >= 1")
    base = ExperimentSpec(data=args.data)
    spec = replace(
        base, **config_values(args, ExperimentSpec), models=expand_models(args.models, args.ablation),
        seeds=list(range(args.seeds)), out=args.out, plots=not args.no_plots,
        match=replace(base.match, **config_values(args, TrainConfig)),
        rank=replace(base.rank, **config_values(args, TrainConfig, prefix="rank_")),
        scaling=replace(base.scaling, **config_values(args, ScalingConfig)),
        model_options={"hidden": args.hidden, "loss": args.loss, "num_sampled": args.num_sampled},
        cascade=CascadeConfig(**config_values(args, CascadeConfig, prefix="cascade_")) if args.cascade else None)
    report = run_experiment(spec, log=None if args.quiet else print)
    print(f"\n{report['dataset']}: {report['split']} split, test split, % mean ± std over {args.seeds} seed(s)\n")
    print(report["table"])
    print(f"\nwrote {storage.join(storage.absolute(args.out), 'results.{md,csv,json}')}")
    return 0


def _job(args, command: str, **fixed):
    """The training job of ``seqrec train`` / ``seqrec tune``: --config's YAML, then the flags given, then ``fixed``."""
    from seqrec.config import RunConfig, ScalingConfig, TrainConfig, TrainJob
    from seqrec.experiment import parse_model

    options = {}
    for kv in args.option:
        options.update(parse_model(f"{args.model or 'sdm'}@{kv}").options)
    given = {k: v for k, v in (("model", args.model), ("data", args.data),
                               ("candidates", getattr(args, "candidates", None))) if v is not None}
    for cls in (TrainConfig, ScalingConfig, RunConfig):
        given.update(config_values(args, cls))  # a flag given as `none` sets None
    given.update(fixed)
    if args.config:
        job = TrainJob.from_yaml(args.config, options=options)
        return job.replace(**given)
    if not args.model or not args.data:
        raise ValueError(f"seqrec {command} needs MODEL and --data (or a --config file that names them)")
    return TrainJob.from_dict(given | {"options": options})


def cmd_train(args) -> int:
    from seqrec import storage
    from seqrec.cluster import start_ray
    from seqrec.train.distributed import run_training

    job = _job(args, "train")
    start_ray(job.scaling.workers)
    summary = run_training(job)
    print(f"export: {summary['export']['files']} in {storage.join(summary['run_dir'], 'export')}")
    return 0


def cmd_tune(args) -> int:
    import json

    import yaml

    from seqrec import storage
    from seqrec.config import TrainJob
    from seqrec.tuning.run import run_search, write_results
    from seqrec.tuning.space import override
    from tune_spaces import load_space

    name = args.name
    exp = None
    if args.resume:
        if not name:
            raise ValueError("--resume needs the --name of the search to continue")
        exp = storage.join(storage.absolute(args.storage), name)
        saved = storage.join(exp, "seqrec_search.json")
        if not storage.exists(saved):
            raise FileNotFoundError(f"no search to resume at {exp} (no seqrec_search.json)")
        state = json.loads(storage.read_text(saved))
        job, space_name = TrainJob.from_dict(state["job"]), state["space"]
        space = {}
    else:
        workers = args.workers_per_trial
        cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (1.0 if workers == 0 else 0.5)
        job = _job(args, "tune", workers=workers, cpus_per_worker=cpus)
        job = job.replace(data=storage.absolute(job.data))
        space_name = args.space
        space = load_space(job.model, space_name, **({"seeds": args.seeds} if args.seeds is not None else {}))
        for kv in args.set:
            key, sep, values = kv.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {kv!r}: expected KEY=V1,V2,...")
            key = key.strip()
            parsed = [tuple(yaml.safe_load(x) for x in v.split(":")) if "," in key else yaml.safe_load(v)
                      for v in values.split(",") if v.strip()]
            space = override(space, key, parsed)
        name = name or f"{job.model.replace(':', '-')}-{space_name}-{storage.basename(job.data)}"
    grid = run_search(job, space, samples=args.samples, scheduler=args.scheduler, search=args.search, name=name,
                      storage=args.storage, seed=args.seed, max_concurrent=args.max_concurrent, resume=args.resume,
                      space_name=space_name)
    from seqrec.data.prepare import load_manifest
    from seqrec.train.validation import select_metric

    exp = storage.join(storage.absolute(args.storage), name)
    select = select_metric(job.model, load_manifest(storage.local_copy(job.data, only=["manifest.json"])))
    summary = write_results(grid, job, space_name, exp, select,
                            search={"scheduler": args.scheduler, "search": args.search, "samples": args.samples})
    print(storage.read_text(storage.join(exp, "trials.md")))
    print(f"{summary['trials']} trials ({summary['stopped_early']} stopped early, {summary['errors']} failed) in {exp}")
    if summary["unfinished"]:
        print(f"the search was interrupted with {summary['unfinished']} trial(s) unfinished; continue it with: "
              f"seqrec tune --resume --name {name} --storage {args.storage}")
    if "best" in summary:
        best = summary["best"]
        print(f"best: validation {select} {best[select]:.4f} with {best['config']}\n"
              f"  checkpoint: {best['checkpoint']}\n  config: {summary['best_yaml']} (seqrec train --config ...)\n"
              f"  plot: {summary['plot']}")
    return 1 if summary["errors"] == summary["trials"] else 0


def default_store(data: str | Path) -> str:
    """The store `seqrec serve` and `seqrec store load` use without --store: SQLite beside the prepared dataset (for a
    dataset at a storage URI, in this machine's local directory for it: SQLite needs a local file)."""
    from seqrec import storage

    where = storage.work_dir(data) if storage.is_uri(data) else Path(data).resolve()
    return f"sqlite:///{where / 'events.sqlite'}"


def cmd_store_load(args) -> int:
    from seqrec import storage
    from seqrec.serving import RowBuilder
    from seqrec.store import Retention, load_dataset, open_store, resolve_url

    url = resolve_url(args.store or default_store(args.data))
    data = storage.local_copy(args.data)  # a URI: read from a local copy, as the source
    source = str(storage.local_copy(args.source)) if storage.is_uri(args.source) else args.source
    retention = Retention.for_protocol(RowBuilder(data).protocol)
    with open_store(url, retention) as store:
        got = load_dataset(store, data, source, args.fmt, _mapping(args), batch_events=args.batch_events)
    print(f"stored {got['events_written']:,} of {got['events_read']:,} events ({got['users']:,} users; each user's "
          f"last {retention.window_s // 86_400} days, at least {retention.keep_last} and at most {retention.max_events} "
          f"events) in {url}")
    return 0


def cmd_serve(args) -> int:
    import tempfile

    from seqrec import storage
    from seqrec.serving import ensure_index, export_dir, find_runs, ranker_verdict
    from seqrec.store import resolve_url

    if not (args.run or args.matcher):
        raise ValueError("seqrec serve needs --run (a training run or experiment directory) or --matcher")
    # the Serve app reads local files: a storage URI's exports (and results.json) are served from a local copy
    run = storage.local_copy(args.run, only=SERVED_FILES) if args.run else None
    matcher, ranker = find_runs(run) if run else (None, None)
    matcher = export_dir(storage.local_copy(args.matcher, only=SERVED_FILES)) if args.matcher else matcher
    if ranker is not None and not args.ranker and not args.no_ranker:  # the run's own ranker: did it help?
        verdict = ranker_verdict(run, _as_recorded(args.run, run, ranker))
        if not verdict["use"] and not args.keep_ranker:
            print(f"serving the matcher's order, not the ranker: {verdict['why']} (--keep-ranker serves it anyway)")
            ranker = None
        else:
            print(f"ranker: {verdict['why']}")
    ranker = None if args.no_ranker else (export_dir(storage.local_copy(args.ranker, only=SERVED_FILES)) if args.ranker
                                          else ranker)
    index = ensure_index(matcher, args.index)
    data = str(storage.local_copy(args.data).resolve())
    scratch = None
    if args.store:
        store = resolve_url(args.store)
    elif args.once and not args.write_config:  # one demo request: a store of its own, gone afterwards
        scratch = tempfile.TemporaryDirectory(prefix="seqrec-once-")
        store = f"sqlite:///{Path(scratch.name) / 'events.sqlite'}"
    else:
        store = default_store(args.data)
    app_args = {"data": data, "matcher": str(matcher.resolve()), "ranker": str(ranker.resolve()) if ranker else None,
                "candidates": args.candidates, "gpu": args.gpu, "store": store, "store_ttl_s": args.store_ttl_s,
                "ranker_precision": args.ranker_precision, "encoder_runtime": args.encoder_runtime, "layout": args.layout,
                "replicas": args.replicas}
    print(f"matcher: {matcher} ({index['kind']} index over {index['items']:,} item codes)\nranker: {ranker or 'none'}\n"
          f"store: {store}{' (temporary)' if scratch else ''}")
    if args.write_config:
        from serve_apps.config import write_config

        path = write_config(args.write_config, app_args, host=args.host, port=args.port)
        print(f"wrote {path}: serve run {path}  (or serve deploy {path} on a cluster with the dashboard)")
        if any(storage.is_uri(p) for p in (args.data, args.run, args.matcher, args.ranker) if p):
            print(f"note: it names this machine's local copies of the storage URIs (under {storage.cache_root()}): "
                  "serve it here, or copy them to the same paths on every node")
        return 0
    import ray
    from ray import serve

    from serve_apps.config import config, deploy, start_local_cluster

    address = args.address or os.environ.get("RAY_ADDRESS")
    own_cluster = not ray.is_initialized() and address in (None, "", "local")
    if own_cluster:
        env = start_local_cluster(args.serve_mode)
        mode = f"Serve mode {args.serve_mode}" + (" (HAProxy ingress, gRPC between deployments)" if env else "")
    else:  # a running cluster: its Serve mode is the one it was started with (SERVE_MODES in serve_apps/config.py)
        if not ray.is_initialized():
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        mode = "Serve mode: the running cluster's"
    previous = _stop_on_sigterm()
    try:
        deploy(config(app_args, host=args.host, port=args.port))  # as `serve run CONFIG` would: swappable in place
        url = f"http://{args.host}:{args.port}"
        print(f"serving on {url}/recommend and {url}/events (docs: {url}/docs); {mode}")
        if args.once:
            one = _one_request(url, data)
            res, req = one["response"], one["request"]
            t = res["timings_ms"]
            print(f"stored {req['events']} events of user {req['user_id']} (POST /events), then asked by id (POST /recommend)")
            print(f"served {len(res['items'])} items for user {req['user_id']} ({req['events']} events) in {t['total']:.0f} ms "
                  f"(encode {t['encode']:.0f}, retrieve {t['retrieve']:.0f}, rank {t['rank']:.0f} ms, measured in the app):")
            for i, item in enumerate(res["items"], 1):
                print(item_line(i, item))
            v = res["model_versions"]
            ranker = f"{v['ranker']['model']} epoch {v['ranker']['epoch']}" if v.get("ranker") else "none"
            print(f"versions: matcher {v['matcher']['model']} epoch {v['matcher']['epoch']} ({v['matcher']['checkpoint']}), "
                  f"ranker {ranker}, index {v['index']['kind']}")
            return 0
        import time

        while True:  # until Ctrl-C or SIGTERM
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: Serve shuts down" + (" with its local Ray cluster" if own_cluster else ""), flush=True)
        return 0
    finally:
        serve.shutdown()
        if own_cluster:
            ray.shutdown()
        if scratch is not None:
            scratch.cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm():
    """SIGTERM (systemd, Kubernetes, ``timeout``, ``kill``) stops ``seqrec serve`` as Ctrl-C does, so that Serve and
    the local Ray cluster shut down: by default SIGTERM ended the process at once, and the HAProxy that Serve's fast
    mode starts outlived it, still listening on the port. Returns the previous handler (None off the main thread,
    where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM (`timeout` forwards its own) must not cut the shutdown short
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


# what `seqrec serve` copies of a storage URI's run or experiment: the exports and the experiment's results.json
SERVED_FILES = ("results.json", "export.json", "model", "index", "item_embeddings.npy", "item_ids.npy", "export", "*/export/*")


def _as_recorded(run_arg, run: Path, export: Path) -> Path:
    """``export`` as the experiment's results.json names it, for :func:`seqrec.serving.ranker_verdict` (which finds the
    ranker's row by its run directory): a URI experiment names its runs by URI; a local one, by ``export``'s own path."""
    import json

    from seqrec import storage

    if not storage.is_uri(run_arg) or not (run / "results.json").exists():
        return export
    runs = json.loads((run / "results.json").read_text()).get("runs", [])
    named = [r["run_dir"] for r in runs if r.get("run_dir") and storage.basename(r["run_dir"]) == export.parent.name]
    return Path(named[0]) / "export" if named else export


def item_line(rank: int, item: dict) -> str:
    """One answered item as `seqrec serve --once` prints it: its id, then its title and genres where the answer's
    ``fields`` hold them (``fields`` may be missing or ``{}``), then its scores (either may be null)."""
    f = item.get("fields") or {}
    text = f"{rank:2d}. item {item['item_id']}"
    if f.get("title"):
        text += f"  {f['title']}"
    if f.get("genres"):
        genres = f["genres"]
        text += f"  [{' '.join(map(str, genres)) if isinstance(genres, list) else genres}]"
    if item.get("score") is not None:
        text += f"  score {item['score']:.4f}"
    if item.get("match_score") is not None:
        text += f" (match {item['match_score']:.4f})"
    return "  " + text


def _one_request(url: str, data: str) -> dict:
    """POST the recent events of the first test user (raw ids) to /events, then ask /recommend by the user's id alone;
    return the answer."""
    import json
    import urllib.request

    from seqrec.data.prepare import read_split
    from seqrec.serving import RowBuilder

    builder = RowBuilder(data)
    row = read_split(data, "test").slice(0, 1).to_pylist()[0]
    req = builder.request_from_row(row)
    events = [{"item_id": e.item_id, "timestamp": e.timestamp, "behavior": e.behavior} for e in req.events]

    def post(path: str, body: dict) -> dict:
        http = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                      headers={"content-type": "application/json", "x-request-id": "seqrec-serve-once"})
        with urllib.request.urlopen(http, timeout=60) as r:
            return json.loads(r.read())

    post("/events", {"users": [{"user_id": req.user_id, "events": events}]})
    answer = post("/recommend", {"user_id": req.user_id, "k": 10})
    return {"request": {"user_id": req.user_id, "events": len(events), "k": 10}, "response": answer}


def cmd_index_build(args) -> int:
    from seqrec import storage
    from seqrec.export import build_index

    export = args.run if storage.exists(storage.join(args.run, "export.json")) else storage.join(args.run, "export")
    info = build_index(export, kind=args.kind, use_gpu=args.gpu)
    print(f"built a {info['kind']} index over {info['items']:,} items of {info['model']} (epoch {info['epoch']}) in {info['path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {("data", "fetch"): cmd_fetch, ("data", "synth"): cmd_synth, ("data", "prepare"): cmd_prepare, ("data", "stats"): cmd_stats,
                ("data", "candidates"): cmd_candidates,
                ("evaluate", None): cmd_evaluate, ("train", None): cmd_train, ("tune", None): cmd_tune, ("serve", None): cmd_serve,
                ("index", "build"): cmd_index_build, ("store", "load"): cmd_store_load}
    try:
        sub = getattr(args, "data_command", None) or getattr(args, "index_command", None) or getattr(args, "store_command", None)
        return handlers[(args.command, sub)](args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        # user errors: one clear line, no traceback (set SEQREC_DEBUG=1 for one)
        import os

        if os.environ.get("SEQREC_DEBUG"):
            raise
        print(f"seqrec: error: {e}\n(set SEQREC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
