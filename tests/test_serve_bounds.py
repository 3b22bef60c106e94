"""Bounded requests (issue 17, item 4): POST /recommend refuses a body over max_body_bytes with a 413, a field
over its bound with a 422 naming the field and the bound, and an event timestamp that `seqrec data prepare`
rejects with a 422 naming the event; no error body echoes more than a short prefix of the input.

Each rule is tested where it lives, without Ray: ``seqrec.serving.check_request`` (fields, events, timestamps)
and ``serve_apps.recommend``'s ``read_body`` / ``parse_body`` (body size, JSON, pydantic's errors). The last
test sends the oversized and the bad requests over HTTP through the Serve app of tests/test_serve_app.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from seqrec.serving import Event, Request, RequestLimits, check_request, clip, timestamp_problem
from serve_apps.recommend import MAX_BODY_BYTES, MAX_ERRORS, AppArgs, Limits, RequestError, parse_body, read_body

BIG = 3_000_000  # characters: the 3 MB user_id of the issue



def events(n: int, t0: int = 1_000_000) -> list[Event]:
    return [Event(100 + i, t0 + 60 * i, "pv", {"category_id": 7}) for i in range(n)]


def refusal(req: Request, k: int = 10, limits: RequestLimits = RequestLimits()) -> str:
    with pytest.raises(ValueError) as e:
        check_request(req, k, limits)
    return str(e.value)


# ---------------------------------------------------------------------------------------------
# fields, events and k: seqrec.serving.check_request


def test_a_request_within_the_bounds_passes():
    check_request(Request("u" * 256, events(1000), {"age": "a" * 256}), k=100)
    check_request(Request(7, []), k=1)


@pytest.mark.parametrize("req, where", [
    (Request("u" * BIG, events(3)), "user_id"),
    (Request(1, events(3), {"age": "a" * 257}), "profile['age']"),
    (Request(1, events(3), {"a" * 300: 5}), "profile name 'aaaa"),
    (Request(1, [*events(7), Event("i" * 257, 5_000)]), "events[7].item_id"),
    (Request(1, [*events(2), Event(5, 5_000, "b" * 1000)]), "events[2].behavior"),
    (Request(1, [*events(4), Event(5, 5_000, None, {"category_id": "c" * 10_000})]), "events[4].category_id"),
    (Request(1, [Event(5, 5_000, None, {"x" * 300: 1})]), "events[0]: a side-info name"),
])
def test_a_long_id_or_value_is_refused_naming_the_field_and_the_limit_without_echoing_it(req, where):
    message = refusal(req)
    assert message.startswith(where) and "max_id_chars=256" in message, message
    assert len(message) < 300, message  # a prefix of the value at most, never the value


def test_ids_must_be_one_string_or_an_int64():
    assert "out of the int64 range" in refusal(Request(2**64, events(1)))
    assert "events[0].category_id is a list" in refusal(Request(1, [Event(5, 9, None, {"category_id": list(range(10**5))})]))
    check_request(Request(-(2**63), [Event(2**63 - 1, 9, None, {"category_id": None})]), k=1)


def test_the_limits_are_settings_and_each_names_itself():
    small = RequestLimits(max_events=2, max_k=3, max_id_chars=4)
    check_request(Request("abcd", [Event("item", 60), Event(1234, 120, "buy", {"cat": "toys"})]), k=3, limits=small)
    assert refusal(Request("abcde", events(2)), 3, small).startswith("user_id is 5 characters long, more than max_id_chars=4")
    assert refusal(Request(1, events(3)), 3, small) == "3 events are more than max_events=2; send the most recent ones"
    assert refusal(Request(1, events(1)), 4, small) == "k=4 is more than max_k=3"
    assert refusal(Request(1, events(1)), 0, small) == "k=0: ask for at least 1 item"
    with pytest.raises(ValueError, match=r"RequestLimits.max_id_chars=0: it must be an integer >= 1"):
        RequestLimits(max_id_chars=0)


def test_the_default_bounds_are_the_apps_args_and_1000_events():
    """One set of defaults: RequestLimits (seqrec.serving), the Ingress's Limits and the app's args (AppArgs)."""
    limits, args = Limits(), AppArgs(data="d", run="r")
    assert limits.request() == RequestLimits() and RequestLimits().max_events == 1000
    assert set(Limits.model_fields) <= set(AppArgs.model_fields)  # build() passes each of them from the args
    assert all(getattr(args, name) == getattr(limits, name) for name in Limits.model_fields)
    assert limits.max_body_bytes == MAX_BODY_BYTES == 1 << 20
    with pytest.raises(ValueError, match="max_body_bytes"):
        AppArgs(data="d", run="r", max_body_bytes=0)


def test_a_request_at_every_other_bound_fits_in_the_default_body_limit():
    """1,000 events whose item id, behaviour and side value have max_id_chars characters: a request a client may
    send, so its body must pass the 1 MiB bound (and be accepted once parsed)."""
    n = RequestLimits().max_id_chars
    body = {"user_id": "u" * n, "k": 100, "events": [{"item_id": f"{i:0{n}d}", "timestamp": 1_511_539_200 + i,
                                                      "behavior": "b" * n, "category_id": "c" * n} for i in range(1000)]}
    raw = json.dumps(body).encode()
    assert len(raw) <= MAX_BODY_BYTES
    parsed = parse_body(raw)
    check_request(parsed.to_request(), parsed.k)


# ---------------------------------------------------------------------------------------------
# timestamps: the rule of `seqrec data prepare`


TIMESTAMPS = ["0", "881250949", str(2**53), str(2**62), "-1", "-5", str(-(2**63)), str(2**63), str(10**30),
              "881250949.7", "noon", "nan"]


def test_event_timestamps_follow_prepares_rule(tmp_path):
    """What `seqrec data prepare` reads from a file (here the Taobao loader, in quarantine mode) decides: serving
    rejects exactly the timestamps prepare rejects, with prepare's reason."""
    from seqrec.data.events import BadRows
    from seqrec.data.loaders import TaobaoCSV

    (tmp_path / "u.csv").write_text("".join(f"1,{i + 1},3,pv,{t}\n" for i, t in enumerate(TIMESTAMPS)))
    read = TaobaoCSV(tmp_path / "u.csv").read_all(BadRows.QUARANTINE)
    prepare_says = dict(zip(read.rejects["line"].to_pylist(), read.rejects["reason"].to_pylist()))
    assert len(prepare_says) == 7  # the test covers both verdicts
    for line, text in enumerate(TIMESTAMPS, start=1):
        value = int(text) if text.lstrip("-").isdigit() else float(text) if "." in text else text
        assert timestamp_problem(value) == prepare_says.get(line), text


def test_a_bad_timestamp_is_refused_naming_the_event_and_the_reason():
    message = refusal(Request(1, [*events(2), Event(5, -5), *events(3)]))
    assert message.startswith("events[2].timestamp: negative timestamp -5") and "prepare" in message, message
    assert refusal(Request(1, [Event(5, 2**63)])).startswith("events[0].timestamp: timestamp 9223372036854775808 is out of the int64")
    assert "out of the int64 range" in refusal(Request(1, [Event(5, 10**5000)]))  # more digits than str() prints


def test_clip_quotes_a_bounded_prefix_and_says_it_was_truncated():
    assert clip("abc") == "'abc'"
    for value in ("x" * BIG, list(range(10**5)), {str(i): "y" * 1000 for i in range(1000)}, 10**5000):
        text = clip(value)
        assert len(text) < 150 and "truncated" in text, text


# ---------------------------------------------------------------------------------------------
# the HTTP body: serve_apps.recommend.read_body and parse_body


class Body:
    """An ASGI request with a body sent in ``chunks``; ``received`` counts the chunks the app read."""

    def __init__(self, chunks: list[bytes], headers: dict):
        from starlette.requests import Request as HTTPRequest

        self.chunks, self.received = list(chunks), 0
        scope = {"type": "http", "method": "POST", "path": "/recommend",
                 "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        self.request = HTTPRequest(scope, self.receive)

    async def receive(self) -> dict:
        self.received += 1
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    def read(self, max_bytes: int) -> bytes:
        return asyncio.run(read_body(self.request, max_bytes))


def too_large(body: Body, max_bytes: int) -> str:
    with pytest.raises(RequestError) as e:
        body.read(max_bytes)
    assert e.value.status == 413
    return e.value.detail


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read_when_its_length_is_declared():
    body = Body([b"x" * 1000] * 5_000, {"content-length": str(5_000_000)})
    detail = too_large(body, MAX_BODY_BYTES)
    assert body.received == 0
    assert detail.startswith("the request body is 5000000 bytes, more than max_body_bytes=1048576 (1 MiB)")


@pytest.mark.parametrize("headers", [{}, {"content-length": "10"}], ids=["chunked", "understated"])
def test_a_body_over_the_limit_is_refused_while_it_is_read_when_its_length_is_not_declared(headers):
    body = Body([b"x" * 1000] * 5_000, headers)
    assert too_large(body, 4096).startswith("the request body is more than max_body_bytes=4096 (4 KiB)")
    assert body.received == 5  # stopped at the first chunk past the limit


def test_a_body_at_the_limit_is_read_whole():
    assert Body([b"ab", b"cd"], {"content-length": "4"}).read(4) == b"abcd"
    assert Body([b"ab", b"cd"], {}).read(4) == b"abcd"


def unprocessable(raw: bytes, content_type: str = "application/json"):
    with pytest.raises(RequestError) as e:
        parse_body(raw, content_type)
    assert e.value.status == 422
    return e.value.detail


def test_a_422_stays_small_whatever_the_size_of_the_input():
    """Values, field names and the count of errors in a 422 are bounded: a 1 MB input gets a body of a few kB."""
    huge_field = json.dumps({"user_id": 1, "x" * 500_000: "y" * 500_000}).encode()
    (error,) = unprocessable(huge_field)
    assert error["type"] == "extra_forbidden" and error["loc"][1].startswith("xxx") and "truncated; 500000 characters" in error["loc"][1]
    assert "truncated" in error["input"] and len(json.dumps(error)) < 500
    wrong_type = json.dumps({"user_id": ["u" * 1000] * 1000, "events": []}).encode()
    detail = unprocessable(wrong_type)
    assert [e["loc"] for e in detail] == [["body", "user_id", "int"], ["body", "user_id", "str"]]
    assert all("truncated" in e["input"] for e in detail) and len(json.dumps(detail)) < 1000
    many = json.dumps({"user_id": 1, "events": [{"item_id": 1, "timestamp": "noon " * 100}] * 1000}).encode()
    detail = unprocessable(many)
    assert len(detail) == MAX_ERRORS + 1 and detail[-1]["msg"] == f"{1000 - MAX_ERRORS} more errors not shown"
    assert detail[0]["loc"] == ["body", "events", 0, "timestamp"] and len(json.dumps(detail)) < 4000


def test_json_that_cannot_be_read_gets_a_422_not_an_error():
    assert unprocessable(b"{not json")[0]["msg"] == "JSON decode error"
    assert unprocessable(b"[" * 100_000)[0]["ctx"]["error"].startswith("RecursionError")  # nesting too deep
    assert "4300 digits" in unprocessable(b'{"user_id": ' + b"9" * 5000 + b"}")[0]["ctx"]["error"]
    with pytest.raises(RequestError) as e:
        parse_body(b"user_id=1", "application/x-www-form-urlencoded")
    assert e.value.status == 415 and "application/json" in e.value.detail
    assert parse_body(b'{"user_id": 1}', None).user_id == 1  # no content-type: read as JSON, as FastAPI does
