"""Soak: the Serve app (``--layout`` composed or colocated) under a mixed stream while its replicas are killed (issue #17 item 3).

    python benchmarks/soak_serve.py                                  # 10 min at 20 requests/s, SQLite store
    python benchmarks/soak_serve.py --duration 60 --tag short        # a short check
    python benchmarks/soak_serve.py --store redis://127.0.0.1:6379/0 # the Redis store (keys under a fresh prefix)

The app is ``serve_apps/recommend.py`` (Ingress → UserEncoder → Retriever → Ranker, with a user-behaviour store),
started from ``bench_serve.py``'s artifacts (a synthetic catalogue of about ``--items / 2`` items, untrained SDM and
BST exports, a FAISS ``--index``) on a new local cluster in ``--serve-mode`` (default fast, as ``seqrec serve``).

The stream: ``--rate`` requests per second for ``--duration`` seconds, open loop (each request sent at its
scheduled time from a thread pool; latency counts from that time), a share ``--events-share`` of them ``POST
/events`` and the rest ``POST /recommend`` by ``user_id`` alone (a user with stored events, so every stage runs).

- Users are new ids (``soak-<run>-<i>``) whose events are test users' recent events (raw item ids, behaviours and
  timestamps: ``bench_serve.bodies``), at most half the store's ``keep_last`` per user, so the store's trimming
  (``seqrec.store.Retention``) keeps every one of them, even stored twice, and what is stored can be compared
  with what was sent.
  ``--preload`` users get their first events before the stream starts.
- Each ``/events`` batch holds ``--batch-users`` users' next ``--batch-events`` events; its events count as
  acknowledged only when a 200 says so (``{"events": n}`` equal to what was sent).
- The client retries as a recommender's client would (``--retries`` times): a request that got no HTTP answer at
  all (connection refused or reset: it was in flight on an Ingress replica that was killed, whose process cannot
  answer it; Serve's HAProxy replays only requests that never reached a replica), and an ``/events`` batch that got
  a 5xx (docs/serving.md: nothing acknowledged, send it again). Every attempt of a batch carries the same
  ``Idempotency-Key``, so a batch that was committed but whose answer was lost is not stored again (``"replayed"``).
  A ``/recommend`` 5xx is not retried.
  Every failed attempt is recorded and counted (``attempts_failed``).
- The app runs in ``--layout`` (default composed: Ingress → UserEncoder → Retriever → Ranker; colocated: the Ingress
  alone, running the three stages in its replicas); the summary records it (``layout``) and each deployment's
  replicas (``replicas``).
- The kills (``--kills``, each ``Deployment@fraction`` of the duration; default in layout composed the Ranker, then
  the UserEncoder, then the Ingress; in layout colocated, where only the Ingress exists, the Ingress at the same three
  times): ``ray.kill`` of that deployment's replica actor (one; ``no_restart``: Serve starts a new one), as a user
  would kill it; a kill of a deployment the layout does not have is refused before anything starts. The Ingress runs
  ``--ingress-replicas`` replicas (default 2; either layout): HTTP reaches them through
  Serve's proxy (HAProxy in fast mode), which sends a new connection to a live one; with a single Ingress its kill
  is an outage by construction until Serve has started another.

At the end every user's behaviours are read back from the store (``Store.recent``; a new connection) and compared
with what the client saw acknowledged, event by event (user, timestamp, item, behaviour; a multiset).

Summary keys: ``events_lost`` (acknowledged events the store does not hold), ``events_acknowledged``,
``events_unacknowledged_stored`` (stored though no 200 said so: a batch committed whose answer was lost, and no
retry got through), ``events_stored_more_than_sent`` (0 with the idempotency keys), ``requests``, ``errors_5xx``
and ``errors_5xx_share`` (requests whose final answer, after the client's retries, was a 5xx or no HTTP answer at
all — connection refused or reset, client timeout: counted with the 5xx, the server did not answer), ``attempts``,
``attempts_failed`` and ``attempts_failed_share`` (every failed attempt, before the retries;
``attempts_failed_no_answer`` of them without an HTTP answer),
``errors_4xx``, ``degraded_share`` (of the ``/recommend`` 200s, the answers marked
``degraded``) and ``degraded_by_stage``, ``p50_ms``/``p95_ms``/``p99_ms`` (every request) and per endpoint,
``kills`` (each kill's time, replica, and when Serve had a new replica running), and the degraded share and
errors in the ``--window-s`` after each kill.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import WORK, artifacts, bodies, percentiles  # noqa: E402
from common import machine_info, write_result  # noqa: E402

from serve_apps.config import DEPLOYMENTS, layout_deployments  # noqa: E402

APP = "recommend"


# ---------------------------------------------------------------------------------------------
# users and their events


def event_key(user, e: dict) -> tuple:
    """An event as the soak compares it: user, timestamp, item and behaviour (as text: JSON and the store keep them)."""
    return str(user), int(e["timestamp"]), str(e["item_id"]), str(e.get("behavior"))


class Users:
    """The soak's users: each one's events to send (a test user's recent events, at most ``keep_last``), what was
    acknowledged, and who has stored events (``POST /recommend`` asks for them)."""

    def __init__(self, data: Path, run: str, keep_last: int, rows: int, seed: int = 0):
        self.sources = [b["events"][-keep_last:] for b in bodies(data, rows, 10) if b["events"]]
        if not self.sources:
            raise ValueError(f"{data} has no test rows with events to make users of")
        self.run, self.next_id, self.rng = run, 0, random.Random(seed)
        self.queues: dict[str, deque] = {}
        self.active: deque[str] = deque()
        self.acked: Counter = Counter()  # event_key -> times acknowledged
        self.sent: Counter = Counter()  # event_key -> times sent (any attempt)
        self.with_events: list[str] = []  # users with at least one acknowledged event
        self._known: set[str] = set()
        self.lock = threading.Lock()

    def new_user(self) -> str:
        uid = f"soak-{self.run}-{self.next_id}"
        self.queues[uid] = deque(self.sources[self.next_id % len(self.sources)])
        self.next_id += 1
        self.active.append(uid)
        return uid

    def batch(self, users: int, events: int) -> dict:
        """The next ``/events`` body: ``users`` users' next ``events`` events (new users replace finished ones)."""
        out = []
        while len(out) < users:
            uid = self.active.popleft() if self.active else self.new_user()
            q = self.queues[uid]
            evs = [q.popleft() for _ in range(min(events, len(q)))]
            if q:
                self.active.append(uid)
            if evs:
                out.append({"user_id": uid, "events": evs})
        return {"users": out}

    def acknowledge(self, body: dict) -> None:
        with self.lock:
            for u in body["users"]:
                self.acked.update(event_key(u["user_id"], e) for e in u["events"])
                if u["user_id"] not in self._known:
                    self._known.add(u["user_id"])
                    self.with_events.append(u["user_id"])

    def note_sent(self, body: dict) -> None:
        with self.lock:
            self.sent.update(event_key(u["user_id"], e) for u in body["users"] for e in u["events"])

    def pick(self) -> str | None:
        with self.lock:
            return self.rng.choice(self.with_events) if self.with_events else None


# ---------------------------------------------------------------------------------------------
# the client


class Client:
    """POSTs to the app over loopback, one ``requests.Session`` per thread, as a client of a recommender would: a
    request that got no HTTP answer at all (the connection refused or reset: e.g. it was in flight on an Ingress
    replica that was killed) is sent again, up to ``retries`` times; a ``/events`` batch is also sent again after a
    5xx (docs/serving.md: nothing was acknowledged, retry; at least once). One record per request: its final status,
    its latency from the scheduled time to the final answer, and every failed attempt."""

    def __init__(self, url: str, timeout_s: float, retries: int):
        import requests

        self.url, self.timeout_s, self.retries, self.requests = url, timeout_s, retries, requests
        self.local, self.records, self.lock = threading.local(), [], threading.Lock()

    def session(self):
        if not hasattr(self.local, "s"):
            self.local.s = self.requests.Session()
        return self.local.s

    def _attempt(self, path: str, body: dict, headers: dict) -> tuple[int | None, str | None, dict]:
        try:
            r = self.session().post(self.url + path, data=json.dumps(body), timeout=self.timeout_s,
                                    headers={"content-type": "application/json", **headers})
        except Exception as e:  # noqa: BLE001 - no HTTP answer
            self.local.s = self.requests.Session()  # a fresh connection for the next attempt
            return None, type(e).__name__, {}
        out = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        return r.status_code, None, out

    def post(self, path: str, body: dict, due: float, t0: float) -> dict:
        rec: dict = {"path": path, "t": due - t0, "failed_attempts": []}
        # one key for every attempt of a batch: one that was committed but whose answer was lost is not stored again
        headers = {"idempotency-key": uuid.uuid4().hex} if path == "/events" else {}
        for attempt in range(self.retries + 1):
            status, error, out = self._attempt(path, body, headers)
            again = status is None or (path == "/events" and status >= 500)
            if not again or attempt == self.retries:
                break
            rec["failed_attempts"].append({"t": time.perf_counter() - t0, "status": status, "error": error})
            time.sleep(0.2 * (attempt + 1))
        rec.update(status=status, error=error, attempts=attempt + 1, ms=(time.perf_counter() - due) * 1e3)
        if path == "/recommend" and status == 200 and out.get("degraded"):
            reason = out["degraded"]["reason"]
            rec["degraded"] = out["degraded"]["stage"]
            rec["reason"] = "deadline" if reason.startswith("no answer within") else reason.split(":", 1)[0]
        elif status not in (200, None):
            rec["detail"] = str(out.get("detail", ""))[:200]
        with self.lock:
            self.records.append(rec)
        return out | {"_status": status}


def send_events(client: Client, users: Users, body: dict, due: float, t0: float) -> None:
    """One ``/events`` batch (sent again by the client after a failure); acknowledged on a 200 that counts them all."""
    users.note_sent(body)
    n = sum(len(u["events"]) for u in body["users"])
    out = client.post("/events", body, due, t0)
    if out["_status"] == 200:
        if out.get("events") != n:
            raise RuntimeError(f"/events acknowledged {out.get('events')} events of a batch of {n}: {out}")
        users.acknowledge(body)


def ask(client: Client, users: Users, due: float, t0: float, k: int) -> None:
    uid = users.pick()
    client.post("/recommend", {"user_id": uid if uid is not None else "soak-nobody", "k": k}, due, t0)


# ---------------------------------------------------------------------------------------------
# kills


def replicas(deployment: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"])


def running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    d = None if app is None else app.deployments.get(deployment)
    return 0 if d is None else int(d.replica_states.get("RUNNING", 0))


def kill(deployment: str, t0: float) -> dict:
    """Kill one replica of ``deployment`` (``ray.kill``, as a user would): what was killed, and when."""
    import ray

    before = replicas(deployment)
    if not before:
        raise RuntimeError(f"no {deployment} replica to kill")
    victim = before[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    at = time.perf_counter()
    print(f"[{at - t0:6.1f}s] killed {victim}", flush=True)
    return {"deployment": deployment, "replica": victim, "t_s": at - t0, "replaced_s": None, "new_replica": None,
            "_before": before, "_at": at}


def watch(out: dict, want: int, t0: float) -> None:
    """Fill in ``out`` (a :func:`kill`'s) with when Serve ran ``want`` replicas of the deployment again, one of them new."""
    deployment, before, at = out["deployment"], out.pop("_before"), out.pop("_at")
    end = at + 300
    while time.perf_counter() < end:
        new = [r for r in replicas(deployment) if r not in before]
        if new and running(deployment) >= want:
            out.update(replaced_s=time.perf_counter() - at, new_replica=new[0])
            break
        time.sleep(0.2)
    print(f"[{time.perf_counter() - t0:6.1f}s] a new {deployment} replica ran "
          f"{'never' if out['replaced_s'] is None else format(out['replaced_s'], '.1f') + 's after its kill'}", flush=True)


# ---------------------------------------------------------------------------------------------
# the run


#: ``--kills``'s default in each layout: the three kills at the same times (colocated: the Ingress is all there is)
DEFAULT_KILLS = {"composed": "Ranker@0.2,UserEncoder@0.45,Ingress@0.7", "colocated": "Ingress@0.2,Ingress@0.45,Ingress@0.7"}


def parse_kills(text: str, layout: str = "composed") -> list[tuple[str, float]]:
    out = []
    names = layout_deployments(layout)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, at = part.partition("@")
        if name in DEPLOYMENTS and name not in names:
            raise ValueError(f"--kills {part!r}: layout {layout} has no {name} deployment (its stages run in the Ingress); "
                             f"it has {', '.join(names)}: kill one of them, e.g. Ingress@0.2")
        if name not in names or not at:
            raise ValueError(f"--kills {part!r}: write Deployment@fraction, a deployment of {names}, e.g. {names[-1]}@0.2")
        frac = float(at)
        if not 0 < frac < 1:
            raise ValueError(f"--kills {part!r}: the fraction of the duration must be in (0, 1)")
        out.append((name, frac))
    return sorted(out, key=lambda x: x[1])


def store_url(arg: str | None, run: str) -> str:
    """A fresh store for this run: SQLite under benchmarks/work/soak/, or the given Redis with its own key prefix."""
    if arg is None:
        path = WORK / "soak" / f"events-{run}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if arg.startswith(("redis://", "rediss://")):
        return arg + ("&" if "?" in arg else "?") + f"prefix=soak-{run}"
    return arg


def window(records: list[dict], start: float, seconds: float) -> dict:
    rs = [r for r in records if start <= r["t"] < start + seconds]
    rec = [r for r in rs if r["path"] == "/recommend" and r["status"] == 200]
    return {"requests": len(rs), "errors_5xx": sum(r["status"] is None or r["status"] >= 500 for r in rs),
            "attempts_failed": sum(len(r["failed_attempts"]) for r in rs),
            "degraded": sum(r.get("degraded") is not None for r in rec), "recommend_200": len(rec),
            "p99_ms": percentiles([r["ms"] for r in rs])["p99_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of the stream (default 600)")
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second, both endpoints (default 20)")
    ap.add_argument("--events-share", type=float, default=0.5, help="share of the requests that are POST /events (default 0.5)")
    ap.add_argument("--batch-users", type=int, default=2, help="users per /events batch (default 2)")
    ap.add_argument("--batch-events", type=int, default=3, help="events per user per batch (default 3)")
    ap.add_argument("--preload", type=int, default=100, help="users given their first events before the stream (default 100)")
    ap.add_argument("--retries", type=int, default=3, help="times the client sends a request again that got no HTTP answer, "
                    "and an /events batch that got a 5xx (default 3)")
    ap.add_argument("--layout", choices=list(DEFAULT_KILLS), default="composed",
                    help="the app's layout (default composed: a deployment per stage; colocated: the Ingress runs the stages)")
    ap.add_argument("--kills", default=None,
                    help="replica kills, Deployment@fraction of the duration (default: composed "
                    f"{DEFAULT_KILLS['composed']}; colocated {DEFAULT_KILLS['colocated']})")
    ap.add_argument("--window-s", type=float, default=30.0, help="seconds after each kill reported on their own (default 30)")
    ap.add_argument("--ingress-replicas", type=int, default=2, help="Ingress replicas, in either layout (default 2: with "
                    "one, its kill is an outage by construction, nothing is left to answer until Serve has started another)")
    ap.add_argument("--store", help="the store URL (default: a new SQLite file under benchmarks/work/soak/; redis://...: "
                    "keys under a new prefix)")
    ap.add_argument("--items", type=int, default=20_000, help="items to generate (bench_serve.py's artifacts; default 20,000)")
    ap.add_argument("--index", choices=["flat", "hnsw", "ivf"], default="flat", help="FAISS index (default flat)")
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--client-timeout-s", type=float, default=30.0, help="a request without an answer after this is an error")
    ap.add_argument("--serve-mode", choices=["fast", "standard"], default="fast")
    ap.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args()
    if args.ingress_replicas < 1:
        ap.error(f"--ingress-replicas {args.ingress_replicas}: at least 1")
    try:
        kills = parse_kills(args.kills if args.kills is not None else DEFAULT_KILLS[args.layout], args.layout)
    except ValueError as e:
        ap.error(str(e))

    import ray
    from ray import serve

    from seqrec.cluster import free_port
    from seqrec.serving import RowBuilder
    from seqrec.store import Retention, open_store
    from serve_apps.config import config, deploy, start_local_cluster
    from serve_apps.recommend import AppArgs

    run = time.strftime("%Y%m%d-%H%M%S")
    art = artifacts(args.items, args.index)
    url = store_url(args.store, run)
    app_args = AppArgs(data=str(art["data"]), matcher=str(art["sdm"]), ranker=str(art["bst"]),
                       candidates=args.candidates, store=url, layout=args.layout,
                       # colocated: the Ingress's replicas are the app's; composed: one of each, the Ingress's set below
                       replicas=args.ingress_replicas if args.layout == "colocated" else 1).model_dump()
    retention = Retention.for_protocol(RowBuilder(art["data"]).protocol, max_events=app_args["max_events"])
    # half the store's keep_last per user: a batch stored twice (a retry after a lost answer) is trimmed by nothing either
    users = Users(art["data"], run, retention.keep_last // 2, rows=1000, seed=args.seed)
    port = args.port or free_port()
    if ray.is_initialized():
        ray.shutdown()
    env = start_local_cluster(args.serve_mode)
    cfg = config({k: v for k, v in app_args.items() if v is not None}, port=port)
    for d in cfg["applications"][0]["deployments"]:
        if d["name"] == "Ingress":
            d["num_replicas"] = args.ingress_replicas
    t_deploy = time.perf_counter()
    deploy(cfg, timeout_s=600)
    print(f"app up in {time.perf_counter() - t_deploy:.0f}s on port {port}; store {url}; catalogue "
          f"{art['catalogue_size']:,} items ({art['index']['kind']})", flush=True)
    client = Client(f"http://127.0.0.1:{port}", args.client_timeout_s, args.retries)
    warm = Client(client.url, args.client_timeout_s, 0)  # preload and warm-up: not measured, but acknowledged events count
    for _ in range(math.ceil(args.preload / 10)):
        send_events(warm, users, users.batch(10, args.batch_events), time.perf_counter(), 0.0)
    for _ in range(10):
        ask(warm, users, time.perf_counter(), 0.0, args.k)
    bad = [r for r in warm.records if r["status"] != 200]
    if bad:
        raise RuntimeError(f"the warm-up failed before any kill: {bad[:3]}")

    want = {d["name"]: d.get("num_replicas", 1) for d in cfg["applications"][0]["deployments"]}
    kill_log: list[dict] = []
    t0 = time.perf_counter() + 0.5

    watchers: list[threading.Thread] = []

    def killer():  # each kill at its time, whether or not Serve has replaced the last one yet
        for name, frac in kills:
            delay = t0 + frac * args.duration - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            kill_log.append(kill(name, t0))
            watchers.append(threading.Thread(target=watch, args=(kill_log[-1], want[name], t0), daemon=True))
            watchers[-1].start()

    killer_thread = threading.Thread(target=killer, daemon=True)
    killer_thread.start()
    n = int(args.rate * args.duration)
    rng = random.Random(args.seed)
    with ThreadPoolExecutor(max_workers=128) as pool:
        futures = []
        for i in range(n):
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if rng.random() < args.events_share:
                futures.append(pool.submit(send_events, client, users, users.batch(args.batch_users, args.batch_events),
                                           due, t0))
            else:
                futures.append(pool.submit(ask, client, users, due, t0, args.k))
            if i and i % int(10 * args.rate) == 0:
                done = list(client.records)
                errs = sum(r["status"] is None or r["status"] >= 500 for r in done)
                degr = sum(r.get("degraded") is not None for r in done)
                print(f"[{time.perf_counter() - t0:6.1f}s] {len(done)} answered, {errs} 5xx or no answer, {degr} degraded",
                      flush=True)
        for f in futures:
            f.result()
    wall = time.perf_counter() - t0
    killer_thread.join(timeout=600)
    for w in watchers:
        w.join(timeout=600)

    # every user's behaviours, read back through a new connection, against what the client saw acknowledged
    stored: Counter = Counter()
    with open_store(url, retention) as store:
        ids = list(users.queues)
        for i in range(0, len(ids), 500):
            for req in store.recent(ids[i:i + 500]):
                stored.update(event_key(req.user_id, {"timestamp": e.timestamp, "item_id": e.item_id, "behavior": e.behavior})
                              for e in req.events)
    lost = users.acked - stored
    unacked_stored = stored - users.acked
    never_sent = unacked_stored - users.sent
    twice = stored - users.sent  # stored more often than sent: a retried batch written again
    serve.shutdown()
    ray.shutdown()

    recs = client.records
    rec200 = [r for r in recs if r["path"] == "/recommend" and r["status"] == 200]
    err5 = [r for r in recs if r["status"] is None or r["status"] >= 500]
    statuses = Counter(str(r["status"] if r["status"] is not None else r.get("error")) for r in recs)
    by_stage = Counter(r["degraded"] for r in rec200 if r.get("degraded"))
    summary = {
        "events_lost": sum(lost.values()),
        "events_acknowledged": sum(users.acked.values()),
        "events_sent": sum(users.sent.values()),
        "events_unacknowledged_stored": sum(unacked_stored.values()),
        "events_stored_never_sent": sum(never_sent.values()),
        "events_stored_more_than_sent": sum(twice.values()),
        "requests": len(recs),
        "attempts": sum(r["attempts"] for r in recs),
        "attempts_failed": sum(len(r["failed_attempts"]) for r in recs),
        "attempts_failed_no_answer": sum(a["status"] is None for r in recs for a in r["failed_attempts"]),
        "attempts_failed_share": sum(len(r["failed_attempts"]) for r in recs) / max(sum(r["attempts"] for r in recs), 1),
        "errors_5xx": len(err5),
        "errors_5xx_share": len(err5) / len(recs) if recs else None,
        "errors_4xx": sum(r["status"] is not None and 400 <= r["status"] < 500 for r in recs),
        "degraded_share": sum(by_stage.values()) / len(rec200) if rec200 else None,
        "degraded_by_stage": dict(by_stage),
        "degraded_reasons": dict(Counter(f"{r['degraded']}: {r['reason']}" for r in rec200 if r.get("degraded"))),
        **percentiles([r["ms"] for r in recs]),
        **{f"recommend_{k}": v for k, v in percentiles([r["ms"] for r in recs if r["path"] == "/recommend"]).items()},
        **{f"events_{k}": v for k, v in percentiles([r["ms"] for r in recs if r["path"] == "/events"]).items()},
        "statuses": dict(statuses),
        "kills": [{**k, "after": window(recs, k["t_s"], args.window_s)} for k in kill_log],
        "kill_times_s": [round(k["t_s"], 2) for k in kill_log],
        "duration_s": wall, "rate": args.rate, "users": len(users.queues),
        "store": url.split("?")[0].split(":", 1)[0], "serve_mode": args.serve_mode, "ingress_replicas": args.ingress_replicas,
        "layout": args.layout, "replicas": want,
        "deadlines_ms": {s: app_args[f"{s}_deadline_ms"] for s in ("encode", "retrieve", "rank")},
        "timeout_s": app_args["timeout_s"],
    }
    seconds = math.ceil(wall)
    timeline = [window(recs, s, 1.0) | {"t_s": s} for s in range(seconds)]
    write_result(f"soak_serve{('_' + args.tag) if args.tag else ''}", summary,
                 params={**vars(args), "store_url": url, "cluster_env": env, "catalogue_size": art["catalogue_size"],
                         "index": art["index"]["kind"], "retention": asdict(retention),
                         "models": "untrained default PSDMMAL and BST (bench_serve.py's artifacts)"},
                 runs=[{"mode": "timeline_1s", "seconds": timeline},
                       {"mode": "errors", "records": err5[:200]},
                       {"mode": "retried", "records": [r for r in recs if r["failed_attempts"]][:200]},
                       {"mode": "lost", "events": [list(k) for k in list(lost)[:200]]}],
                 machine=machine_info())


if __name__ == "__main__":
    main()
