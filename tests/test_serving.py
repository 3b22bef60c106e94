"""Serving rows are training rows: raw events through seqrec.serving.RowBuilder give, column for column,
the rows `seqrec data prepare` wrote for the same events (the reference is the prepared dataset itself)."""

from __future__ import annotations

import numpy as np
import pytest
from serving_inputs import raw_events, request_for

from seqrec import features as F
from seqrec.serving import Event, Request, RowBuilder


@pytest.mark.parametrize("split", ["val", "test"])
def test_rows_built_from_raw_events_equal_the_prepared_rows(tiny_prepared, split):
    from seqrec.data.prepare import read_split

    builder = RowBuilder(tiny_prepared)
    prepared = read_split(tiny_prepared, split)
    ev = raw_events(tiny_prepared.parent)
    rows = prepared.slice(0, 40).to_pylist()
    requests = [request_for(r, ev, builder) for r in rows]
    served, reports = builder.rows(requests)
    skip = {F.TARGETS, F.USER_RAW}
    for name in prepared.column_names:
        if name not in skip:
            assert served[name].to_pylist() == prepared.slice(0, 40)[name].to_pylist(), name
    assert [str(r[F.USER_RAW]) for r in rows] == served[F.USER_RAW].to_pylist()
    assert all(rep.events_used == r[F.SEQ_LEN] for rep, r in zip(reports, rows))


def test_unknown_ids_map_to_the_unknown_code_and_are_reported(tiny_prepared):
    builder = RowBuilder(tiny_prepared)
    known = builder.vocab[F.ITEM_ID][0].as_py()
    req = Request("no-such-user", [Event(known, 1_000), Event(99_999_999, 1_010), Event("not-a-number", 1_020)])
    table, (rep,) = builder.rows([req])
    assert table[F.seq_col(F.ITEM_ID)].to_pylist() == [[F.FIRST_CODE, F.UNKNOWN, F.UNKNOWN]]
    assert rep.unknown_items == [99_999_999, "not-a-number"] and rep.unknown_user and rep.events_used == 3
    assert table[F.USER_ID].to_pylist() == [F.UNKNOWN]


def test_a_request_without_events_has_no_row(tiny_prepared):
    with pytest.raises(ValueError, match=r"requests \[1\] have no events"):
        RowBuilder(tiny_prepared).rows([Request(1, [Event(5, 1)]), Request(2, [])])


def test_the_pipeline_top_k_equals_the_offline_two_stage_top_k(tiny_prepared, tiny_artifacts):
    """Served (raw events → RowBuilder → SDM → FAISS → BST) and offline (prepared rows → evaluate's two-stage) agree,
    with the ranker in fp32 and in int8 (serving's default on a CPU; offline through the same with_precision)."""
    from seqrec.checkpoint import load_checkpoint
    from seqrec.data.prepare import read_split
    from seqrec.evaluate import encode_table, rerank, retrieve, score_table
    from seqrec.inference import with_precision
    from seqrec.serving import Pipeline

    table = read_split(tiny_prepared, "test").slice(0, 25)
    ev = raw_events(tiny_prepared.parent)
    matcher, _ = load_checkpoint(tiny_artifacts["sdm"] / "export" / "model")
    ranker, _ = load_checkpoint(tiny_artifacts["bst"] / "export" / "model")
    item_ids = np.load(tiny_artifacts["sdm"] / "export" / "item_ids.npy")
    for precision in ("fp32", "int8"):
        pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50, ranker_precision=precision)
        served = pipe.recommend([request_for(r, ev, pipe.rows) for r in table.to_pylist()], k=10)
        spec = pipe.rows.spec
        top = retrieve(encode_table(matcher, table, spec), matcher.item_embeddings().detach().numpy(), 50, index="flat")
        offline = rerank(score_table(with_precision(ranker, precision), table, spec, top), top, 10)
        for got, want in zip(served, offline):
            assert [i["item_id"] for i in got["items"]] == item_ids[want].tolist(), precision
            scores = [i["score"] for i in got["items"]]
            assert scores == sorted(scores, reverse=True) and not got["cold_start"]
        assert pipe.versions()["ranker"]["precision"] == precision
    assert pipe.versions()["matcher"]["model"] == "sdm" and pipe.versions()["index"]["kind"] == "flat"


def test_a_matcher_with_a_seen_penalty_serves_what_offline_retrieval_gives(tiny_prepared, tiny_artifacts):
    """A matcher's learned penalty on its input's items (session and long-term) is applied when serving as offline
    (``seqrec.inference.exclusions``); ``exclude_seen`` still leaves the session out and penalizes the rest."""
    from seqrec.checkpoint import load_checkpoint
    from seqrec.data.prepare import read_split
    from seqrec.evaluate import encode_table, retrieve_scored
    from seqrec.inference import exclusions, matcher_inputs, session_items
    from seqrec.serving import Pipeline

    table = read_split(tiny_prepared, "test").slice(0, 25)
    ev = raw_events(tiny_prepared.parent)
    matcher, _ = load_checkpoint(tiny_artifacts["sdmp"] / "export" / "model")
    penalty = float(matcher.seen_penalty().detach())
    assert penalty > 0
    item_ids = np.load(tiny_artifacts["sdmp"] / "export" / "item_ids.npy")
    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdmp"], None, candidates=20)
    spec = pipe.rows.spec
    users, items = encode_table(matcher, table, spec), matcher.item_embeddings().detach().numpy()
    requests = [request_for(r, ev, pipe.rows) for r in table.to_pylist()]
    served = pipe.recommend(requests, k=10)
    scores, top = retrieve_scored(users, items, 20, "flat", *exclusions(matcher, table))
    plain = retrieve_scored(users, items, 20, "flat")[1]
    assert (top != plain).any()  # the penalty moves items in this table
    for got, want, sc in zip(served, top, scores):
        assert [i["item_id"] for i in got["items"]] == item_ids[want[:10]].tolist()
        np.testing.assert_allclose([i["match_score"] for i in got["items"]], sc[:10], rtol=1e-4, atol=1e-5)
    inputs, sess = matcher_inputs(table), session_items(table)
    pen = np.full(inputs.shape, penalty, np.float32)
    pen[:, : sess.shape[1]] = np.inf
    top_ex = retrieve_scored(users, items, 20, "flat", inputs, pen)[1]
    served_ex = pipe.recommend(requests, k=10, exclude_seen=True)
    for got, want, s in zip(served_ex, top_ex, sess):
        assert [i["item_id"] for i in got["items"]] == item_ids[want[:10]].tolist()
        assert not set(want[:10]) & set(s[s > 0].tolist())


def test_an_empty_history_gets_the_popular_items(tiny_prepared, tiny_artifacts):
    from seqrec.serving import Pipeline

    pipe = Pipeline(tiny_prepared, tiny_artifacts["sdm"], tiny_artifacts["bst"], candidates=50)
    cold, warm = pipe.recommend([Request(7, []), Request(7, [Event(pipe.rows.vocab[F.ITEM_ID][3].as_py(), 100)])], k=5)
    counts = pipe.rows.item_counts
    assert cold["cold_start"] and [i["score"] for i in cold["items"]] == [None] * 5
    top5 = np.argsort(-np.where(np.arange(len(counts)) >= F.FIRST_CODE, counts, -1), kind="stable")[:5]
    assert [i["item_id"] for i in cold["items"]] == pipe.item_ids[top5].tolist()
    assert not warm["cold_start"] and len(warm["items"]) == 5


def test_find_runs_picks_sdm_and_bst_and_the_config_names_them(tiny_prepared, tiny_artifacts, tmp_path):
    import yaml

    from seqrec.cli import main
    from seqrec.serving import find_runs

    root = tiny_artifacts["sdm"].parent
    matcher, ranker = find_runs(root)
    assert matcher == tiny_artifacts["sdm"] / "export" and ranker == tiny_artifacts["bst"] / "export"
    assert find_runs(tiny_artifacts["sdm2"]) == (tiny_artifacts["sdm2"] / "export", None)  # one run, no ranker
    with pytest.raises(FileNotFoundError, match="no training run with an export"):
        find_runs(tmp_path)
    out = tmp_path / "serve.yaml"
    assert main(["serve", "--data", str(tiny_prepared), "--run", str(root), "--write-config", str(out), "--port", "8123"]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["http_options"]["host"] == "127.0.0.1" and cfg["http_options"]["port"] == 8123
    app = cfg["applications"][0]
    assert app["import_path"] == "serve_apps.recommend:build" and app["args"]["ranker"] == str(tiny_artifacts["bst"] / "export")
    configs = {d["name"]: d.get("user_config") for d in app["deployments"]}
    assert configs["UserEncoder"]["matcher"] == configs["Retriever"]["matcher"] == str(tiny_artifacts["sdm"] / "export")


def test_rows_travel_between_deployments_as_arrow_ipc_bytes_unchanged(tiny_prepared):
    from seqrec.data.prepare import read_split
    from seqrec.serving import rows_from_bytes, rows_to_bytes

    rows = read_split(tiny_prepared, "test")
    for part in (rows.slice(3, 1), rows.slice(0, 5), rows):  # a slice is what a batched encoder sends per request
        back = rows_from_bytes(rows_to_bytes(part))
        assert back.schema == part.schema and back.to_pylist() == part.to_pylist()


def test_encoded_requests_travel_with_their_rows_as_arrow_ipc_bytes(tiny_prepared, tiny_artifacts):
    """What the UserEncoder hands on (one request's Encoded) pickles its rows as IPC bytes and comes back equal."""
    import pickle

    from seqrec.serving import encode, load_model

    builder = RowBuilder(tiny_prepared)
    matcher = load_model(tiny_artifacts["sdm"], "matcher", vocab_hash=builder.manifest.get("vocab_hash"))
    known = builder.vocab[F.ITEM_ID]
    enc = encode(builder, matcher, [Request(1, [Event(known[0].as_py(), 10), Event(known[1].as_py(), 20)]),
                                    Request(2, [Event(known[2].as_py(), 10), Event(987654321, 20)])]).take(1)
    assert isinstance(enc.__getstate__()["rows"], bytes)
    back = pickle.loads(pickle.dumps(enc))
    assert back.rows.schema == enc.rows.schema and back.rows.to_pylist() == enc.rows.to_pylist()
    np.testing.assert_array_equal(back.vecs, enc.vecs)
    assert back.vecs.shape == (1, enc.vecs.shape[1]) and back.reports[0].unknown_items == [987654321]
    assert back.matcher == matcher.version and back.seen().tolist() == [[F.FIRST_CODE + 2, F.UNKNOWN]]


def test_a_model_of_the_wrong_kind_is_refused_with_what_is_needed(tiny_artifacts):
    from seqrec.serving import load_catalogue, load_model

    with pytest.raises(ValueError, match="holds a ranker .*a matcher is needed"):
        load_model(tiny_artifacts["bst"], "matcher")
    with pytest.raises(ValueError, match="holds a ranker .*a matcher is needed"):
        load_catalogue(tiny_artifacts["bst"])


def test_the_fast_serve_mode_sets_serves_high_throughput_variables_with_free_ports():
    from serve_apps.config import SERVE_MODES, cluster_env

    fast = cluster_env("fast")
    assert fast["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and fast["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = {int(fast["RAY_SERVE_HAPROXY_STATS_PORT"]), int(fast["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}  # not Ray's fixed defaults, which two clusters would share
    assert cluster_env("standard") == {} and set(SERVE_MODES) == {"fast", "standard"}
    with pytest.raises(ValueError, match="serve mode 'turbo'"):
        cluster_env("turbo")


def test_the_gpu_layout_shares_one_gpu_between_the_model_deployments():
    from serve_apps.config import config

    def options(gpu: bool) -> dict:
        cfg = config({"data": "d", "matcher": "m", "ranker": "r", "gpu": gpu})
        return {d["name"]: d["ray_actor_options"] for d in cfg["applications"][0]["deployments"]}

    gpu = options(True)
    assert "num_gpus" not in gpu["Ingress"] and all(gpu[n]["num_gpus"] > 0 for n in ("UserEncoder", "Retriever", "Ranker"))
    assert sum(o.get("num_gpus", 0) for o in gpu.values()) <= 1  # one GPU node holds a replica of each
    assert not any("num_gpus" in o for o in options(False).values())


def test_a_retriever_asked_for_a_gpu_without_one_keeps_the_cpu_index_and_says_so(tiny_artifacts):
    import asyncio
    import logging

    from seqrec.serving import model_version
    from serve_apps.recommend import Retriever

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    keep, logger = Keep(), logging.getLogger("ray.serve")  # Serve's logger does not propagate to caplog
    logger.addHandler(keep)
    try:
        retriever = Retriever.func_or_class(threads=1, gpu=True)  # the deployment's class, outside Serve
        retriever.reconfigure({"matcher": str(tiny_artifacts["sdm"])})
    finally:
        logger.removeHandler(keep)
    assert any("stays on the CPU" in line for line in keep.lines)
    export = tiny_artifacts["sdm"] / "export"
    vec = np.load(export / "item_embeddings.npy")[2]
    out = asyncio.run(retriever.retrieve(vec, 5, model_version(export)))
    assert out.index["on_gpu"] is False and len(out.codes[0]) == 5


def test_the_app_builder_names_a_missing_path_and_a_missing_matcher(tiny_prepared, tmp_path):
    from serve_apps.recommend import build

    with pytest.raises(ValueError, match="needs `run` .* or `matcher`"):
        build({"data": str(tiny_prepared)})
    with pytest.raises(FileNotFoundError, match=r"run=no/such/run does not exist \(relative paths are read from "):
        build({"data": str(tiny_prepared), "run": "no/such/run"})
    with pytest.raises(FileNotFoundError, match="no training run with an export"):
        build({"data": str(tiny_prepared), "run": str(tmp_path)})
