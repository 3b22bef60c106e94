"""User behaviours kept server-side: the store that ``POST /events`` writes and ``POST /recommend`` by
``user_id`` reads (issue 17, item 1).

A store is chosen by URL (:func:`open_store`):

- ``sqlite:///PATH`` — SQLite in WAL mode (standard library ``sqlite3``): the embedded default, for one
  machine and the replicas on it (processes share the file). ``sqlite:///events.sqlite`` is relative to
  the working directory, ``sqlite:////abs/events.sqlite`` absolute (SQLAlchemy's convention).
- ``redis://HOST:PORT[/DB][?prefix=P]`` (and ``rediss://``) — Redis through redis-py, for clusters whose
  replicas run on several nodes.

What a store keeps, per user (the key is ``str(user_id)``: 5 and "5" are one user, as in the vocabularies):
the user's events in (timestamp, arrival) order — ties in timestamp keep the order they were appended in,
as ``seqrec data prepare`` keeps the input order — and the latest profile values given. Each event keeps its
raw item id, timestamp, behaviour and side info exactly as sent (JSON), so a user's stored behaviours become a
:class:`seqrec.serving.Request` and go through the one row builder (:class:`seqrec.serving.RowBuilder`):
the rows are training's rows, with the same sessionizing and vocabularies.

Bounded (:class:`Retention`): every append trims the users it touched to what the model can read — the
events of the last ``window_s`` before the user's newest event (the long-term window plus a day for the
current session), never fewer than the last ``keep_last`` (BST's history and a whole session, for a user who
comes back after weeks), never more than ``max_events``; reads return the same bounded set. ``idle_ttl_s``
(off by default) drops a user nobody appended to for that long (wall clock).

Atomic: :meth:`Store.append` validates the whole batch by serving's rules (:func:`check_batch`:
``seqrec.serving.check_request``, the request limits and ``seqrec data prepare``'s timestamp rule) before
writing anything, then writes every user of the batch in one transaction (SQLite) or one Lua script
(Redis): a batch is stored whole or not at all.

Durable: :meth:`Store.append` returns (and ``POST /events`` acknowledges) only after the write is on disk
as far as the backend promises it: SQLite commits with ``synchronous=FULL``; Redis as its server is set
up (``appendonly yes`` with ``appendfsync always`` makes an acknowledged write survive a crash of the
server; :attr:`RedisStore.durability` says what the server runs with and a warning is logged otherwise).

Once, with a key: a client whose answer was lost (a killed replica, a timeout) cannot know whether its batch was
committed, so it sends it again; without more, the events would be stored twice. :meth:`Store.append_once` takes
an idempotency key (``POST /events``' ``Idempotency-Key`` header) and records it in the batch's own transaction
or script: a batch sent again with the key of a committed one writes nothing and gets the first one's count.
Keys are kept :data:`KEY_TTL_S` (a day), longer than any client retries.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from seqrec.serving import Event, Request, RequestLimits, check_request

if TYPE_CHECKING:
    import pyarrow as pa

    from seqrec.data.sessions import Protocol

log = logging.getLogger(__name__)

DAY_S = 86_400
KEY_TTL_S = DAY_S  # how long a committed batch's idempotency key is remembered (Store.append_once)
MAX_KEY_CHARS = 200  # the longest idempotency key
SCHEMES = ("sqlite", "redis", "rediss")


@dataclass(frozen=True)
class Retention:
    """What a store keeps of each user (and what a read returns).

    - ``window_s``: events older than the user's newest event minus this are trimmed ...
    - ``keep_last``: ... except the user's last ``keep_last`` events, whatever their age;
    - ``max_events``: never more than this many events per user (the most recent);
    - ``idle_ttl_s``: a user not appended to for this long (wall-clock seconds) is dropped; None: never.

    :meth:`for_protocol` derives the first two from the dataset's protocol, so that a stored user gives the
    row the model would read from the whole history: the current session (at most ``max_session_len`` events,
    each < ``session_gap_s`` after the previous: well within a day) plus the long-term window before it, and
    BST's ``hist_len`` events before the session however old. It differs only where the user's gap-free run of
    events is longer than a day (a session split by ``max_session_len`` counts from the run's start) or
    holds more than ``max_events`` events — `seqrec data prepare` drops users with more than 1,000 events as spam.
    """

    window_s: int = 7 * DAY_S + DAY_S
    keep_last: int = 70
    max_events: int = 1000
    idle_ttl_s: int | None = None

    def __post_init__(self) -> None:
        for name in ("window_s", "keep_last", "max_events"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "window_s" else 1):
                raise ValueError(f"Retention.{name}={v!r}: it must be an integer >= {0 if name == 'window_s' else 1}")
        if self.keep_last > self.max_events:
            raise ValueError(f"Retention.keep_last={self.keep_last} is more than max_events={self.max_events}")
        if self.idle_ttl_s is not None and (isinstance(self.idle_ttl_s, bool) or not isinstance(self.idle_ttl_s, int)
                                            or self.idle_ttl_s < 1):
            raise ValueError(f"Retention.idle_ttl_s={self.idle_ttl_s!r}: seconds >= 1, or None to keep idle users")

    @classmethod
    def for_protocol(cls, protocol: Protocol, max_events: int = RequestLimits.max_events,
                     idle_ttl_s: int | None = None) -> Retention:
        """The retention a dataset's protocol needs: its long-term window plus a day, its history plus a session."""
        keep = min(protocol.hist_len + protocol.max_session_len, max_events)
        return cls(window_s=protocol.long_term_s + DAY_S, keep_last=keep, max_events=max_events, idle_ttl_s=idle_ttl_s)

    def first_kept(self, ts: list[int]) -> int:
        """Index of the first event kept of one user's events, ``ts`` their timestamps in stored order (sorted)."""
        n = len(ts)
        if n == 0:
            return 0
        older = bisect.bisect_left(ts, ts[-1] - self.window_s)  # events before the window
        return max(min(older, n - self.keep_last), n - self.max_events, 0)

    def select(self, events: list[Event]) -> list[Event]:
        """The events of one user this retention keeps, ``events`` in stored (timestamp, arrival) order."""
        return events[self.first_kept([int(e.timestamp) for e in events]):]


def check_batch(requests: list[Request], limits: RequestLimits = RequestLimits()) -> None:
    """Raise ``ValueError`` naming the first problem of a batch of users' events (``POST /events``): no user,
    more events in all than ``limits.max_events``, or the first field :func:`seqrec.serving.check_request` refuses
    in any user (``users[i].events[j].timestamp: ...``). Nothing of a refused batch is written."""
    if not requests:
        raise ValueError("no users in the batch: send {\"users\": [{\"user_id\": ..., \"events\": [...]}]}")
    total = sum(len(r.events) for r in requests)
    if total > limits.max_events:
        raise ValueError(f"{total} events in the batch are more than max_events={limits.max_events}; "
                         "send them in several batches")
    for i, req in enumerate(requests):
        try:
            check_request(req, 1, limits)
        except ValueError as e:
            msg = str(e)
            sep = "." if msg.startswith(("events[", "user_id", "profile")) else ": "
            raise ValueError(f"users[{i}]{sep}{msg}") from None


def check_key(key: str | None) -> None:
    """ValueError for an idempotency key (:meth:`Store.append_once`) that is empty or over :data:`MAX_KEY_CHARS`."""
    if key is not None and not (0 < len(key) <= MAX_KEY_CHARS):
        raise ValueError(f"Idempotency-Key of {len(key)} characters: give 1 to {MAX_KEY_CHARS}")


def merge(stored: Request, request: Request) -> Request:
    """What ``POST /recommend`` reads when the store holds the user's behaviours and the request sends events
    too: the stored events, then the request's (for this request only: they are not written), and the stored
    profile updated by the request's. The row builder orders them by timestamp (ties: stored first)."""
    return Request(request.user_id, [*stored.events, *request.events], {**stored.profile, **request.profile})


def _encode_event(e: Event) -> str:
    """An event's payload as stored (its timestamp is stored beside it, as a sortable key)."""
    d: dict = {"item_id": e.item_id}
    if e.behavior is not None:
        d["behavior"] = e.behavior
    if e.side:
        d["side"] = e.side
    return json.dumps(d, separators=(",", ":"))


def _decode_event(ts: int, payload: str) -> Event:
    d = json.loads(payload)
    return Event(d["item_id"], ts, d.get("behavior"), d.get("side", {}))


class Store:
    """A user-behaviour store (:func:`open_store`); the methods are blocking and thread-safe."""

    url: str
    retention: Retention

    def append(self, requests: list[Request], limits: RequestLimits | None = RequestLimits()) -> int:
        """Store every request's events (and profile values) atomically: all of them or, on any error, none.

        ``limits``: the batch is first checked with :func:`check_batch` (``ValueError`` before anything is
        written); None when the caller has checked it. Returns the number of events written, once they are
        durable (see the module's docstring). Trims the users it touched (:class:`Retention`)."""
        return self.append_once(requests, None, limits)[0]

    def append_once(self, requests: list[Request], key: str | None,
                    limits: RequestLimits | None = RequestLimits()) -> tuple[int, bool]:
        """:meth:`append` with an idempotency key: a batch sent again with the ``key`` of a batch the store already
        committed (within :data:`KEY_TTL_S`) is not written again. Returns (events written, False), or for such a
        repeat (the events the first one wrote, True). The key is recorded in the batch's own transaction, so a
        client that lost the answer can send the batch again with its key, and each event is stored once."""
        check_key(key)
        if limits is not None:
            check_batch(requests, limits)
        if not requests:
            return 0, False
        return self._append(requests, key)

    def recent(self, user_ids: Iterable) -> list[Request]:
        """Each user's stored behaviours (bounded by the retention) and profile as a request, in order; a user
        with nothing stored gets a request without events."""
        return [self._recent(u) for u in user_ids]

    def count(self, user_id) -> int:
        """How many events the store holds for ``user_id`` (before the read bound)."""
        raise NotImplementedError

    def delete(self, user_id) -> None:
        """Forget a user: events and profile."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _append(self, requests: list[Request], key: str | None = None) -> tuple[int, bool]:
        raise NotImplementedError

    def _recent(self, user_id) -> Request:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(url: str, retention: Retention = Retention()) -> Store:
    """The store at ``url``: ``sqlite:///PATH`` (relative; ``sqlite:////PATH`` absolute) or ``redis://HOST:PORT[/DB]``."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SQLiteStore(url, retention)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, retention)
    raise ValueError(f"store URL {url!r}: the scheme must be one of {SCHEMES} "
                     "(sqlite:///events.sqlite, sqlite:////abs/events.sqlite, redis://127.0.0.1:6379/0)")


def resolve_url(url: str, base: str | Path | None = None) -> str:
    """``url`` with a relative SQLite path made absolute (against ``base``, default the working directory), so
    that processes with another working directory (Serve replicas) open the same file; other URLs unchanged."""
    if urlparse(url).scheme != "sqlite":
        return url
    path = sqlite_path(url)
    if path == ":memory:" or Path(path).is_absolute():
        return url
    return "sqlite:///" + str((Path(base or Path.cwd()) / path).resolve())


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///`` URL (SQLAlchemy's convention: three slashes and a relative path, four and an
    absolute one)."""
    p = urlparse(url)
    if p.netloc or not p.path.startswith("/") or len(p.path) < 2:
        raise ValueError(f"store URL {url!r}: write sqlite:///relative/file.sqlite or sqlite:////absolute/file.sqlite")
    return p.path[1:]


# ---------------------------------------------------------------------------------------------
# SQLite: the embedded default


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order (AUTOINCREMENT: never reused, also after deletes)
    user TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL                     -- JSON: item_id, behavior, side
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user, ts, seq);
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY,
    profile TEXT NOT NULL DEFAULT '{}',     -- JSON: the latest value of every profile field given
    touched REAL NOT NULL                   -- wall-clock time of the last append (idle_ttl_s)
);
CREATE INDEX IF NOT EXISTS users_by_touched ON users (touched);
CREATE TABLE IF NOT EXISTS batches (
    key TEXT PRIMARY KEY,                   -- a committed batch's idempotency key (Store.append_once)
    events INTEGER NOT NULL,                -- the events it wrote
    at REAL NOT NULL                        -- wall-clock time of its commit (kept KEY_TTL_S)
);
CREATE INDEX IF NOT EXISTS batches_by_at ON batches (at);
"""


class SQLiteStore(Store):
    """SQLite in WAL mode: one writer at a time, readers never blocked; several processes (the replicas on one
    machine) share the file. Not for replicas on several machines (each would have its own file): use Redis."""

    PURGE_EVERY_S = 60.0  # how often an append also drops idle users (idle_ttl_s)

    def __init__(self, url: str, retention: Retention = Retention()):
        import sqlite3

        self.url, self.retention, self.path = url, retention, sqlite_path(url)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode (isolation_level=None): transactions are the explicit BEGIN ... COMMIT below
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self.lock = threading.Lock()  # one connection, used by one thread at a time
        self.db.execute("PRAGMA journal_mode=WAL")
        # Durability: an event is acknowledged after COMMIT returns. In WAL mode synchronous=NORMAL already keeps
        # every committed transaction across a crash of the process (a killed replica), but may roll back the last
        # ones on a power loss or OS crash, because the WAL is fsynced only at checkpoints. FULL fsyncs the WAL at
        # every commit, so an acknowledged event survives that too; it costs one fsync per POST /events batch.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")  # wait for another process's write instead of failing
        with self.lock:
            self.db.executescript(_SCHEMA)
        self._purged = 0.0

    def _append(self, requests: list[Request], key: str | None = None) -> tuple[int, bool]:
        now = time.time()
        rows = [(str(r.user_id), int(e.timestamp), _encode_event(e)) for r in requests for e in r.events]
        users: dict[str, dict] = {}
        for r in requests:  # profile values, the last given winning
            users.setdefault(str(r.user_id), {}).update(r.profile)
        with self.lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")  # the write lock now: no other writer between our reads and writes
            try:
                done = None if key is None else db.execute("SELECT events FROM batches WHERE key = ? AND at >= ?",
                                                           (key, now - KEY_TTL_S)).fetchone()
                if done is not None:  # this batch was committed before: nothing to write
                    db.execute("COMMIT")
                    return int(done[0]), True
                if key is not None:
                    db.execute("INSERT OR REPLACE INTO batches (key, events, at) VALUES (?, ?, ?)", (key, len(rows), now))
                db.executemany("INSERT INTO events (user, ts, event) VALUES (?, ?, ?)", rows)
                for user, profile in users.items():
                    old = db.execute("SELECT profile FROM users WHERE user = ?", (user,)).fetchone()
                    merged = {**(json.loads(old[0]) if old else {}), **profile}
                    db.execute("INSERT INTO users (user, profile, touched) VALUES (?, ?, ?) ON CONFLICT (user) DO "
                               "UPDATE SET profile = excluded.profile, touched = excluded.touched",
                               (user, json.dumps(merged, separators=(",", ":")), now))
                    self._trim(user)
                if now - self._purged >= self.PURGE_EVERY_S:
                    self._purge_idle(now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(rows), False

    def _trim(self, user: str) -> None:
        """Apply the retention to one user (inside the append's transaction): :meth:`Retention.first_kept` in SQL."""
        r, db = self.retention, self.db
        n, newest = db.execute("SELECT count(*), max(ts) FROM events WHERE user = ?", (user,)).fetchone()
        if n == 0:
            return
        (older,) = db.execute("SELECT count(*) FROM events WHERE user = ? AND ts < ?", (user, newest - r.window_s)).fetchone()
        drop = max(min(older, n - r.keep_last), n - r.max_events, 0)
        if drop:
            db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE user = ? ORDER BY ts, seq LIMIT ?)",
                       (user, drop))

    def _purge_idle(self, now: float) -> None:
        """Drop idle users (``idle_ttl_s``) and idempotency keys older than :data:`KEY_TTL_S`."""
        if self.retention.idle_ttl_s is not None:
            cutoff = now - self.retention.idle_ttl_s
            self.db.execute("DELETE FROM events WHERE user IN (SELECT user FROM users WHERE touched < ?)", (cutoff,))
            self.db.execute("DELETE FROM users WHERE touched < ?", (cutoff,))
        self.db.execute("DELETE FROM batches WHERE at < ?", (now - KEY_TTL_S,))
        self._purged = now

    def _recent(self, user_id) -> Request:
        user = str(user_id)
        with self.lock:
            self.db.execute("BEGIN")  # one snapshot for both reads
            try:
                meta = self.db.execute("SELECT profile, touched FROM users WHERE user = ?", (user,)).fetchone()
                rows = self.db.execute("SELECT ts, event FROM events WHERE user = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                                       (user, self.retention.max_events)).fetchall()
            finally:
                self.db.execute("COMMIT")
        ttl = self.retention.idle_ttl_s
        if meta is None or (ttl is not None and meta[1] < time.time() - ttl):
            return Request(user_id, [], {})
        events = [_decode_event(ts, payload) for ts, payload in reversed(rows)]
        return Request(user_id, self.retention.select(events), json.loads(meta[0]))

    def count(self, user_id) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM events WHERE user = ?", (str(user_id),)).fetchone()[0]

    def delete(self, user_id) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM events WHERE user = ?", (str(user_id),))
            self.db.execute("DELETE FROM users WHERE user = ?", (str(user_id),))
            self.db.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.db.close()


# ---------------------------------------------------------------------------------------------
# Redis: for replicas on several nodes

# One script call appends a whole batch: Redis runs a script atomically (no other command runs in between)
# and writes its effects to the AOF as one MULTI/EXEC. The batch is validated before the call, so the
# script's commands cannot fail on their input; a server over maxmemory refuses the script before it starts.
# Per user two keys, in one hash slot (the {user} hash tag): a sorted set of events, all with score 0 so that
# members sort by their bytes: a 20-digit timestamp, a 20-digit arrival number (the user's counter), the JSON;
# and a hash with the counter (__seq) and the profile fields (p:<name>, JSON values).
# With an idempotency key, the last KEY is the batch's key (in the first user's hash slot) and ARGV[5] its expiry in
# seconds: a key already set returns {events it wrote, 1} and writes nothing; else the batch is written, the key set
# to its count, and {written, 0} returned.
# ARGV: window_s, keep_last, max_events, ttl_ms (0: none), key_ttl_s (0: no key), then per user: n events, n profile fields,
# n (timestamp key, payload) pairs, n (name, value) pairs. Timestamps are compared as Lua numbers (doubles):
# exact below 2**53 (the year 285 million).
_APPEND_LUA = """
local window, keep, maxn, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local key_ttl = tonumber(ARGV[5])
local nkeys = #KEYS
if key_ttl > 0 then
  local done = redis.call('GET', KEYS[nkeys])
  if done then return {tonumber(done), 1} end
  nkeys = nkeys - 1
end
local a, written = 6, 0
for u = 1, nkeys, 2 do
  local ev, meta = KEYS[u], KEYS[u + 1]
  local n, np = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local seq = redis.call('HINCRBY', meta, '__seq', n) - n
  for i = 1, n do
    redis.call('ZADD', ev, 0, ARGV[a] .. string.format('%020d', seq + i) .. ARGV[a + 1])
    a = a + 2
  end
  for i = 1, np do
    redis.call('HSET', meta, 'p:' .. ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  local total = redis.call('ZCARD', ev)
  if total > 0 then
    local newest = tonumber(string.sub(redis.call('ZRANGE', ev, -1, -1)[1], 1, 20))
    local cutoff = string.format('%020d', math.max(newest - window, 0))
    local older = redis.call('ZLEXCOUNT', ev, '-', '(' .. cutoff)
    local drop = math.max(math.min(older, total - keep), total - maxn, 0)
    if drop > 0 then redis.call('ZREMRANGEBYRANK', ev, 0, drop - 1) end
  end
  if ttl > 0 then
    redis.call('PEXPIRE', ev, ttl)
    redis.call('PEXPIRE', meta, ttl)
  end
  written = written + n
end
if key_ttl > 0 then redis.call('SET', KEYS[#KEYS], written, 'EX', key_ttl) end
return {written, 0}
"""


class RedisStore(Store):
    """Redis through redis-py. ``?prefix=P`` (default ``seqrec``) namespaces the keys. A batch's users must be
    on one server: Redis Cluster refuses a script over several hash slots (send one user per batch there)."""

    def __init__(self, url: str, retention: Retention = Retention()):
        import redis

        p = urlparse(url)
        query = parse_qs(p.query)
        self.prefix = query.pop("prefix", ["seqrec"])[0]
        self.url, self.retention = url, retention
        self.client = redis.Redis.from_url(urlunparse(p._replace(query=urlencode(query, doseq=True))),
                                           decode_responses=True)
        self.client.ping()  # fail at start, with the URL, not at the first request
        self._script = self.client.register_script(_APPEND_LUA)
        self.durability = self._durability()
        if not (self.durability.get("appendonly") == "yes" and self.durability.get("appendfsync") == "always"):
            log.warning("Redis at %s runs with %s: an acknowledged event can be lost if the server stops; for none to be "
                        "lost run it with appendonly yes and appendfsync always (docs/serving.md)", url, self.durability)

    def _durability(self) -> dict:
        """What the server promises for an acknowledged write: its ``appendonly`` and ``appendfsync`` settings
        (``unknown`` where CONFIG is not allowed, as on some managed services)."""
        import redis

        try:
            got = self.client.config_get("append*")
            return {"appendonly": got.get("appendonly", "unknown"), "appendfsync": got.get("appendfsync", "unknown")}
        except redis.ResponseError:
            return {"appendonly": "unknown", "appendfsync": "unknown"}

    def _keys(self, user: str) -> tuple[str, str]:
        return f"{self.prefix}:{{{user}}}:ev", f"{self.prefix}:{{{user}}}:meta"

    def _append(self, requests: list[Request], key: str | None = None) -> tuple[int, bool]:
        r = self.retention
        ttl_ms = 0 if r.idle_ttl_s is None else r.idle_ttl_s * 1000
        keys: list[str] = []
        args: list = [r.window_s, r.keep_last, r.max_events, ttl_ms, 0 if key is None else KEY_TTL_S]
        for req in requests:
            keys += self._keys(str(req.user_id))
            args += [len(req.events), len(req.profile)]
            for e in req.events:
                args += [f"{int(e.timestamp):020d}", _encode_event(e)]
            for name, value in req.profile.items():
                args += [str(name), json.dumps(value)]
        if key is not None:  # in the first user's hash slot, beside the batch's (one-slot) user keys
            keys.append(f"{self.prefix}:{{{requests[0].user_id}}}:batch:{key}")
        written, replayed = self._script(keys=keys, args=args)
        return int(written), bool(replayed)

    def _recent(self, user_id) -> Request:
        ev, meta = self._keys(str(user_id))
        pipe = self.client.pipeline(transaction=True)  # one snapshot for both reads
        pipe.zrange(ev, -self.retention.max_events, -1)
        pipe.hgetall(meta)
        members, fields = pipe.execute()
        events = [_decode_event(int(m[:20]), m[40:]) for m in members]
        profile = {k[2:]: json.loads(v) for k, v in fields.items() if k.startswith("p:")}
        return Request(user_id, self.retention.select(events), profile)

    def count(self, user_id) -> int:
        return int(self.client.zcard(self._keys(str(user_id))[0]))

    def delete(self, user_id) -> None:
        self.client.delete(*self._keys(str(user_id)))

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------
# bulk load: warm a store with a prepared dataset's recent behaviours


def dataset_events(data_dir: str | Path, source, fmt: str | None = None, mapping=None) -> pa.Table:
    """The events a prepared dataset was made from, after its filters (time range, behaviours, spam users,
    rare items), sorted by (user, timestamp, input order), as ``seqrec data prepare`` reads them: ``source`` is
    what was given to prepare (a path or an :class:`~seqrec.data.events.EventSource`), with its ``fmt`` and
    ``mapping``. Holds the filtered events in memory."""
    import pyarrow as pa

    from seqrec import features as F
    from seqrec.data.events import BadRows
    from seqrec.data.loaders import open_source
    from seqrec.data.prepare import (
        PrepareConfig,
        _value_counts,
        filtered_sorted,
        item_keep_set,
        load_manifest,
        read_stage,
        user_filter,
    )
    from seqrec.data.sessions import Protocol

    manifest = load_manifest(data_dir)
    c = dict(manifest["config"])
    c["protocol"] = Protocol(**c["protocol"])
    c["bad_rows"] = BadRows(c["bad_rows"])
    c["behaviors"] = None if c.get("behaviors") is None else tuple(c["behaviors"])
    c["time_range"] = None if c.get("time_range") is None else tuple(c["time_range"])
    cfg = PrepareConfig(**c)
    src = source if hasattr(source, "chunks") else open_source(str(source), fmt, mapping)
    want, have = manifest["source"].get("paths"), src.describe().get("paths")
    if want and have and sorted(map(str, want)) != sorted(map(str, have)):
        log.warning("bulk load: %s reads %s, but %s was prepared from %s", source, have, data_dir, want)
    events = pa.concat_tables([read_stage(src, ch, i, cfg)[0] for i, ch in enumerate(src.chunks(cfg.chunk_bytes))],
                              promote_options="permissive")
    events, _ = user_filter(events, cfg)
    keep, _ = item_keep_set(_value_counts(events[F.ITEM_ID]), cfg)
    return filtered_sorted(events, cfg, keep, users_filtered=True)


def requests_from_events(events: pa.Table, item_side: list[str], user_profile: list[str],
                         retention: Retention | None = None) -> list[Request]:
    """One request per user of an events table sorted by (user, timestamp, input order) (:func:`dataset_events`):
    each user's events (only those ``retention`` keeps, when given) with raw ids and side info, and the profile
    of the user's last event (prepare's ``users.parquet`` keeps the latest)."""
    from seqrec import features as F

    users = events[F.USER_ID].to_pylist()
    cols = {name: events[name].to_pylist() for name in [F.ITEM_ID, F.TIMESTAMP, F.BEHAVIOR, *item_side, *user_profile]}
    out, lo = [], 0
    while lo < len(users):
        hi = lo + 1
        while hi < len(users) and users[hi] == users[lo]:
            hi += 1
        first = lo if retention is None else lo + retention.first_kept(cols[F.TIMESTAMP][lo:hi])
        evs = [Event(cols[F.ITEM_ID][k], cols[F.TIMESTAMP][k], cols[F.BEHAVIOR][k], {n: cols[n][k] for n in item_side})
               for k in range(first, hi)]
        out.append(Request(users[lo], evs, {n: cols[n][hi - 1] for n in user_profile}))
        lo = hi
    return out


def load_dataset(store: Store, data_dir: str | Path, source, fmt: str | None = None, mapping=None,
                 batch_events: int = 50_000) -> dict:
    """Warm ``store`` with a prepared dataset's recent behaviours: every user's events that the store's retention
    keeps (:func:`dataset_events`, :func:`requests_from_events`), appended in batches of whole users of about
    ``batch_events`` events (each batch atomic). Returns counts: users, events read, events written."""
    from seqrec.serving import RowBuilder

    builder = RowBuilder(data_dir)
    src_events = dataset_events(data_dir, source, fmt, mapping)
    reqs = requests_from_events(src_events, builder.item_names[1:], builder.user_names[1:], store.retention)
    limits = RequestLimits(max_events=max(batch_events, store.retention.max_events))
    batch: list[Request] = []
    n_batch = written = 0
    for req in reqs:
        if batch and n_batch + len(req.events) > batch_events:
            written += store.append(batch, limits)
            batch, n_batch = [], 0
        batch.append(req)
        n_batch += len(req.events)
    if batch:
        written += store.append(batch, limits)
    return {"users": len(reqs), "events_read": src_events.num_rows, "events_written": written}


__all__ = ["Retention", "RedisStore", "SQLiteStore", "Store", "check_batch", "dataset_events", "load_dataset", "merge",
           "open_store", "requests_from_events", "resolve_url", "sqlite_path"]
