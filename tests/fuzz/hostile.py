"""JSON bodies a schema-driven fuzzer never writes by itself: nested far deeper than the
server's limit, wider than its member limit, huge strings, NaN and Infinity, lone surrogate
escapes, NUL, malformed text. Each must get a 4xx with the stable error body.

The bodies are bytes, built by Hypothesis strategies; the harness hands them to schemathesis as
the raw body of a generated case, so the path and query stay schemathesis' own.
"""

from __future__ import annotations

from hypothesis import strategies as st

from devassign.domain import MAX_JSON_DEPTH

# Over the server's default limits (server/limits.py, Settings): 20,000 members in a small
# body, 1 MiB for most bodies and 16 MiB for inventory reports and work results.
MEMBERS = 20_000
SMALL_BODY = 1024 * 1024
BULK_BODY = 16 * 1024 * 1024


def _nest(depth: int, opener: str, inner: bytes) -> bytes:
    """``depth`` levels of arrays or objects (``{"a": ...}``) around ``inner``."""
    if opener == "[":
        return b"[" * depth + inner + b"]" * depth
    return b'{"a":' * depth + inner + b"}" * depth


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """Arrays and objects nested from just over the limit to far beyond what a recursive
    decoder survives, sometimes inside a string-looking decoy or an otherwise valid body."""
    depth = draw(
        st.one_of(
            st.integers(MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 8),
            st.integers(100, 5_000),
            st.sampled_from([10_000, 100_000]),
        )
    )
    opener = draw(st.sampled_from("[{"))
    inner = draw(st.sampled_from([b"1", b"null", b'"x"', b"[]", b"{}"]))
    body = _nest(depth, opener, inner)
    wrap = draw(st.sampled_from(["bare", "field", "unclosed"]))
    if wrap == "field":
        return b'{"name": "T1", "config": ' + body + b"}"
    if wrap == "unclosed":
        return body[: len(body) - depth // 2]
    return body


@st.composite
def wide(draw: st.DrawFn) -> bytes:
    """More members and items than a small body may hold, as a list, an object or a list of
    empty objects."""
    count = draw(st.integers(MEMBERS + 1, MEMBERS * 3))
    shape = draw(st.sampled_from(["list", "object", "objects"]))
    if shape == "list":
        return b'{"config": {"x": [' + b",".join([b"0"] * count) + b"]}}"
    if shape == "object":
        members = b",".join(b'"k%d":0' % i for i in range(count))
        return b'{"config": {' + members + b"}}"
    return b'{"requests": [' + b",".join([b"{}"] * count) + b"]}"


@st.composite
def huge_string(draw: st.DrawFn) -> bytes:
    """A string over the small-body limit, or (sometimes) over the bulk one."""
    size = draw(st.sampled_from([SMALL_BODY + 1, 2 * SMALL_BODY, BULK_BODY + 1]))
    field = draw(st.sampled_from([b"description", b"consumer", b"name", b"selector"]))
    return b'{"' + field + b'": "' + b"x" * size + b'"}'


_NON_FINITE = [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"]
_BAD_TEXT = [b'"\\ud800"', b'"\\udfff"', b'"a\\udc00b"', b'"\\u0000"', b'"x\\u0000"']
_MALFORMED = [b"", b"{", b"[", b'{"a": }', b"{'a': 1}", b"\xff\xfe", b'"\\ud800', b'{"a": 1,}', b"nul"]


@st.composite
def bad_values(draw: st.DrawFn) -> bytes:
    """Non-finite numbers, lone surrogates and NUL in every place a value can sit, and text
    that is not JSON at all."""
    kind = draw(st.sampled_from(["number", "text", "key", "malformed"]))
    if kind == "malformed":
        return draw(st.sampled_from(_MALFORMED))
    literal = draw(st.sampled_from(_NON_FINITE if kind == "number" else _BAD_TEXT))
    field = draw(
        st.sampled_from(
            [b"generation", b"limit", b"count", b"config", b"description", b"consumer", b"name", b"new_name"]
        )
    )
    if kind == "key":
        return b"{" + literal + b": 1}"
    place = draw(st.sampled_from(["field", "nested", "list"]))
    if place == "field":
        return b'{"' + field + b'": ' + literal + b"}"
    if place == "nested":
        return b'{"' + field + b'": {"x": ' + literal + b"}}"
    return b'{"' + field + b'": [' + literal + b"]}"


# One of each kind, sent to every operation with a body before the drawn ones, so even a short
# run covers them all.
EXAMPLES: dict[str, bytes] = {
    "depth 33": _nest(MAX_JSON_DEPTH + 1, "[", b"1"),
    "depth 100,000": _nest(100_000, "{", b"1"),
    "depth 100,000 unclosed": b"[" * 100_000,
    "20,001 items": b'{"config": {"x": [' + b",".join([b"0"] * (MEMBERS + 1)) + b"]}}",
    "20,001 members": b'{"config": {' + b",".join(b'"k%d":0' % i for i in range(MEMBERS + 1)) + b"}}",
    "string over 1 MiB": b'{"description": "' + b"x" * (SMALL_BODY + 1) + b'"}',
    "NaN": b'{"generation": NaN, "limit": NaN, "config": {"x": NaN}}',
    "Infinity": b'{"generation": Infinity, "limit": -Infinity, "config": {"x": [Infinity]}}',
    "1e400": b'{"generation": 1e400, "limit": 1e400, "config": {"x": 1e400}}',
    "lone surrogate": b'{"name": "\\ud800", "description": "\\udfff", "config": {"\\ud800": 1}}',
    "NUL": b'{"name": "a\\u0000", "new_name": "\\u0000", "config": {"x": "\\u0000"}}',
    "not JSON": b"{'a': 1,}",
}


def hostile_bodies() -> st.SearchStrategy[bytes]:
    """Every kind above; weighted towards the cheap ones, which vary more."""
    return st.one_of(bad_values(), bad_values(), deep(), deep(), wide(), huge_string())
