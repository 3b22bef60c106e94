"""Self-describing checkpoints: rebuild, resume state, dataset identity."""

from __future__ import annotations

import json

import pytest
import torch
from batchgen import item_side_table, random_batch, tiny_spec, with_history

from seqrec.checkpoint import load_checkpoint, load_optimizer, read_meta, save_checkpoint
from seqrec.models import build_model

DATASET = {"content_hash": "c0ffee", "vocab_hash": "v1", "source": "tiny"}


@pytest.mark.parametrize("name,opts", [("sdm:PSDMMAL", {"hidden": 8, "heads": 2}),
                                       ("bst", {"mlp": "16-8", "pos_dim": 8, "heads": 4, "id_dim": 8, "side_dim": 8})])
def test_round_trip_rebuilds_the_model_and_the_optimizer(tmp_path, name, opts):
    spec = tiny_spec()
    torch.manual_seed(0)
    model = build_model(name, spec, **opts)
    if hasattr(model, "set_item_table"):
        model.set_item_table(*item_side_table(spec))
    batch = with_history(random_batch(spec), [3, 1, 0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(batch).loss.backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", model, opt, epoch=3, step=42, dataset=DATASET, metrics={"AUC": 0.7}, history=[{"epoch": 1}])
    again, meta = load_checkpoint(tmp_path / "ck", vocab_hash="v1")
    assert (meta["epoch"], meta["step"], meta["metrics"], meta["dataset"]["content_hash"]) == (3, 42, {"AUC": 0.7}, "c0ffee")
    assert meta["kind"] == ("ranker" if name == "bst" else "matcher") and not again.training
    model.eval()
    if name == "bst":
        c = torch.randint(2, spec.n_items, (3, 5))
        torch.testing.assert_close(model.score(batch, c), again.score(batch, c))
    else:
        torch.testing.assert_close(model.encode_users(batch), again.encode_users(batch))
    opt2 = torch.optim.Adam(again.parameters(), lr=1e-3)
    assert load_optimizer(tmp_path / "ck", opt2)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert not list(tmp_path.joinpath("ck").glob(".*tmp*"))  # no temporary files left behind


def test_checkpoint_errors_name_the_problem(tmp_path):
    spec = tiny_spec()
    model = build_model("gru4rec", spec, hidden=8)
    save_checkpoint(tmp_path / "ck", model, epoch=1, step=1, dataset=DATASET)
    with pytest.raises(ValueError, match="trained on vocabulary v1, the dataset has v2"):
        load_checkpoint(tmp_path / "ck", vocab_hash="v2")
    assert not load_optimizer(tmp_path / "ck", torch.optim.Adam(model.parameters()))
    with pytest.raises(FileNotFoundError, match="is not a seqrec checkpoint"):
        read_meta(tmp_path)
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="is not seqrec-checkpoint v1"):
        load_checkpoint(tmp_path / "ck")
