"""The `seqrec` command line: help texts, the data subcommands end to end, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqrec import features as F
from seqrec.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _subparser(*names):
    p = build_parser()
    for n in names:
        action = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
        p = action.choices[n]
    return p


@pytest.mark.parametrize("cmd", [("data", "fetch"), ("data", "synth"), ("data", "prepare"), ("data", "stats")])
def test_every_option_has_help(cmd):
    p = _subparser(*cmd)
    for a in p._actions:
        if a.dest == "help":
            continue
        assert a.help and len(a.help) > 10, f"seqrec {' '.join(cmd)}: option {a.option_strings or a.dest} lacks a help text"
    text = p.format_help()
    assert "usage:" in text


def test_synth_prepare_stats_end_to_end(tmp_path, capsys):
    syn = tmp_path / "syn"
    assert main(["data", "synth", "--rows", "30000", "--out", str(syn), "--seed", "3", "--no-progress"]) == 0
    out = tmp_path / "prep"
    assert main(["data", "prepare", str(syn), "--out", str(out), "--no-progress", "--engine", "local",
                 "--min-item-count", "2"]) == 0
    printed = capsys.readouterr().out
    assert "## Filters" in printed and "## Splits" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["rows_read"] == 30000
    assert m["config"]["min_item_count"] == 2
    assert m["config"]["protocol"]["tz_offset_s"] == 8 * 3600  # synthetic days start at 00:00 UTC+8
    assert [f["name"] for f in m["feature_spec"]["item_features"]] == [F.ITEM_ID, F.CATEGORY, F.CATE1, F.BRAND, F.SHOP]
    assert main(["data", "stats", str(out)]) == 0
    stats = capsys.readouterr().out
    assert "S.len" in stats and f"{30000:,}" in stats
    assert main(["data", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_read"] == 30000


def test_protocol_options_reach_the_manifest(tmp_path, capsys):
    syn = tmp_path / "syn"
    main(["data", "synth", "--rows", "5000", "--out", str(syn), "--no-progress"])
    out = tmp_path / "prep"
    assert main(["data", "prepare", str(syn), "--out", str(out), "--no-progress", "--engine", "local",
                 "--split", "loo", "--no-val", "--session-gap-minutes", "30", "--max-session-len", "20",
                 "--long-term-days", "3", "--long-term-max", "10", "--hist-len", "5", "--test-fraction", "0.5",
                 "--max-user-events", "0", "--behaviors", "pv,buy", "--time-range", "2017-11-24,2017-12-05"]) == 0
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    p = cfg["protocol"]
    assert (p["split"], p["val"], p["session_gap_s"], p["max_session_len"]) == ("loo", False, 1800, 20)
    assert (p["long_term_s"], p["long_term_max"], p["hist_len"], p["test_fraction"]) == (3 * 86400, 10, 5, 0.5)
    assert cfg["max_user_events"] == 0 and cfg["behaviors"] == ["pv", "buy"]
    assert cfg["time_range"] == [1511481600, 1512432000]


def test_user_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a prepared dataset" in err and "Traceback" not in err
    assert main(["data", "prepare", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "seqrec: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare", "x", "--out", "o", "--time-range", "yesterday"])
    assert "--time-range" in capsys.readouterr().err


def test_console_script_and_stdlib_platform():
    # `platform/` is a plain folder: the stdlib module must win, and the console script must run
    import platform

    assert hasattr(platform, "python_version")
    assert not (REPO / "platform" / "__init__.py").exists()
    r = subprocess.run([sys.executable, "-m", "seqrec.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "seqrec data prepare" in r.stdout


def test_training_flags_come_from_the_config_fields(tmp_path):
    """Each training option is declared once (seqrec.config): its flag, help and default come from the field,
    a YAML config holds the same keys, and only the flags given override it."""
    from dataclasses import fields

    from seqrec.cli import _job
    from seqrec.config import RunConfig, ScalingConfig, TrainConfig

    train = _subparser("train")
    flags = {s for a in train._actions for s in a.option_strings}
    for cls in (TrainConfig, ScalingConfig, RunConfig):
        for f in fields(cls):
            assert "--" + f.name.replace("_", "-") in flags, f"seqrec train has no flag for {cls.__name__}.{f.name}"
    help_of = {s: a.help for a in train._actions for s in a.option_strings}
    assert help_of["--batch-size"].endswith(f"(default {TrainConfig().batch_size})")
    assert help_of["--patience"].endswith(f"(default {TrainConfig().patience})")
    cfg = tmp_path / "job.yaml"
    cfg.write_text("model: bst\ndata: d\ntrain: {epochs: 4, lr: 0.01}\nworkers: 2\n")
    job = _job(train.parse_args(["--config", str(cfg), "--epochs", "7", "--grad-clip", "none"]), "train")
    assert (job.train.epochs, job.train.lr, job.train.grad_clip, job.scaling.workers) == (7, 0.01, None, 2)
    # tune: --seed is the search's seed and --name the search's name, never the trials' training options
    tune = _subparser("tune")
    job = _job(tune.parse_args(["sdm", "--data", "d", "--seed", "5", "--name", "s", "--epochs", "2"]), "tune", workers=0)
    assert (job.train.seed, job.run.name, job.train.epochs, job.scaling.workers) == (0, None, 2, 0)
    with pytest.raises(ValueError, match="batch size 32 does not split evenly over 3 workers"):
        _job(train.parse_args(["sdm", "--data", "d", "--batch-size", "32", "--workers", "3"]), "train")
