"""The pieces behind the limits at the edge: the JSON depth scan, the body middleware, the
identifier rules, reading back over-deep stored values, and private files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from devassign import domain, errors
from devassign.agent.state import StateFile
from devassign.domain import (
    CONSUMER_PUNCTUATION,
    CONSUMER_RE,
    LABEL_PUNCTUATION,
    LABEL_RE,
    MAX_JSON_DEPTH,
    PROJECT_PUNCTUATION,
    PROJECT_RE,
    TOO_DEEP,
    check_consumer,
    check_project,
    consumer_problem,
    cut_too_deep,
    label_problem,
    project_problem,
)
from devassign.server.limits import BodyLimit, json_depth
from devassign.store.db import Database

# ---------------------------------------------------------------- json_depth


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u202e,:'),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='[]{}"\\k'), inner, max_size=4)
    ),
    max_leaves=40,
)


@given(JSON)
def test_json_depth_is_the_nesting_of_arrays_and_objects(value: Any) -> None:
    text = json.dumps(value).encode()
    assert json_depth(text) == _depth(value)
    assert json_depth(json.dumps(value, ensure_ascii=False).encode()) == _depth(value)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"", 0),
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [[{}]]}', 4),
        (b'["[[[[", "]]]"]', 1),
        (b'["\\"[[[[\\"", {}]', 2),
        (b'["\\\\", [[]]]', 3),  # an escaped backslash ends before the quote
        (b"]]]]", 0),  # malformed: the decoder says so afterwards
    ],
)
def test_json_depth_examples(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_json_depth_answers_hostile_text() -> None:
    """Large hostile texts get the right depth (the scan is a few C passes; its speed is for
    benchmarks, not assertions)."""
    hostile = [
        (b'"' + b'\\"' * 1_000_000, 0),  # an unterminated string of escaped quotes
        (b"[" * 2_000_000, 2_000_000),
        (b'["' + b"x" * 4_000_000 + b'"]', 1),
        (b"[" + b"{}," * 1_000_000 + b"[]]", 2),
    ]
    for text, depth in hostile:
        assert json_depth(text) == depth, text[:20]


def test_json_depth_skips_the_scan_when_the_limit_cannot_be_passed() -> None:
    assert json_depth(b'[[["]]]"', at_most=3) == 3  # a bound: no more openers than that


# ---------------------------------------------------------------- the middleware


def _run(
    app: Any, body_chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, Any, bool]:
    """One request through ``app``: its status, decoded body, and whether the inner app ran."""
    reached: list[bytes] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        reached.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages: Iterator[Message] = iter(
        [
            {"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
            for i, c in enumerate(body_chunks)
        ]
        + [{"type": "http.disconnect"}]
    )
    sent: list[Message] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or []}
    asyncio.run(app(inner)(scope, receive, send))
    status = sent[0]["status"] if sent else 0
    body = b"".join(m.get("body", b"") for m in sent[1:])
    if reached:
        assert reached == [b"".join(body_chunks)]  # the inner app gets the body whole, once
    return status, json.loads(body) if body else None, bool(reached)


def test_the_middleware_hands_the_body_on_once() -> None:
    status, _, reached = _run(lambda a: BodyLimit(a, 100), [b'{"a":', b" [1]}"])
    assert (status, reached) == (200, True)


def test_the_middleware_stops_reading_over_the_limit() -> None:
    status, body, reached = _run(lambda a: BodyLimit(a, 10), [b"x" * 6, b"x" * 6, b"never read"])
    assert (status, reached) == (413, False) and body["error"]["code"] == errors.BODY_TOO_LARGE


def test_the_middleware_refuses_deep_json_but_not_other_media() -> None:
    deep = [b"[" * 40 + b"]" * 40]
    status, body, reached = _run(lambda a: BodyLimit(a, 1000), deep)
    assert (status, reached) == (400, False) and "at most 32 levels" in body["error"]["message"]
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    assert _run(lambda a: BodyLimit(a, 1000), deep, form)[0] == 200
    problem = [(b"content-type", b"application/problem+json")]
    assert _run(lambda a: BodyLimit(a, 1000), deep, problem)[0] == 400
    assert _run(lambda a: BodyLimit(a, 1000, max_depth=40), deep)[0] == 200


def test_a_client_gone_mid_body_never_reaches_the_app() -> None:
    reached = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"[", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        raise AssertionError("nothing to send to a client that left")

    asyncio.run(BodyLimit(inner, 100)({"type": "http", "headers": []}, receive, send))
    assert reached == []


# ---------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    ("pattern", "punctuation"),
    [(CONSUMER_RE, CONSUMER_PUNCTUATION), (PROJECT_RE, PROJECT_PUNCTUATION), (LABEL_RE, LABEL_PUNCTUATION)],
)
def test_each_rule_allows_exactly_its_documented_alphabet(pattern: Any, punctuation: str) -> None:
    for c in map(chr, range(0x2FF)):
        allowed = c in string.ascii_letters + string.digits + punctuation
        assert bool(pattern.fullmatch("a" + c)) == allowed, repr(c)
        assert bool(pattern.fullmatch(c)) == (c.isascii() and c.isalnum()), repr(c)
    assert not pattern.fullmatch("a\n")  # $ before a final newline is no match


def test_docs_list_the_identifier_rules_the_code_has() -> None:
    text = (Path(__file__).parents[2] / "docs" / "limits.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)`[^|]* \| (\d+)-(\d+) \| `domain\.(\w+)` \|$", text, re.M)
    assert {name for *_, name in rows} >= {"CONSUMER_RE", "PROJECT_RE", "LABEL_RE", "HOST_RE", "NAME_RE"}
    for pattern, low, high, name in rows:
        if pattern.endswith("*"):  # a first character, then up to high - 1 more
            expected = f"^{pattern[:-1]}{{0,{int(high) - 1}}}$"
        else:
            expected = f"^{pattern[:-1]}{{{low},{high}}}$"
        assert getattr(domain, name).pattern == expected, name
    assert f"{domain.MAX_JSON_DEPTH} levels" in text


def test_problems_name_the_character_and_the_rule() -> None:
    assert consumer_problem("6f1c0b4e-0000-4000-8000-000000000001") is None
    assert consumer_problem("ns:name") is None
    assert "'/' at position 2" in (consumer_problem("vm/1") or "")
    assert "U+202E RIGHT-TO-LEFT OVERRIDE at position 1" in (consumer_problem("a\u202eb") or "")
    assert "NUL (U+0000)" in (consumer_problem("a\x00") or "")
    assert "at most 64" in (consumer_problem("c" * 65) or "")
    assert "empty" in (project_problem("") or "")
    assert "':' at position 2" in (project_problem("ns:p") or "")
    assert label_problem("member:demo#17") is None and label_problem("alice@example.com") is None
    assert "\u202e" not in (label_problem("\u202e") or "")  # never echoed raw


def test_check_helpers_raise_a_400_naming_the_field() -> None:
    assert check_project("demo") == "demo" and check_consumer("vm-1") == "vm-1"
    with pytest.raises(errors.DevassignError) as caught:
        check_project("a b")
    assert caught.value.status == 400 and caught.value.code == errors.INVALID_REQUEST
    assert caught.value.message.startswith("project: ")
    with pytest.raises(errors.DevassignError) as caught:
        check_consumer("x/y", field="consumer (query)")
    assert caught.value.message.startswith("consumer (query): ")


# ---------------------------------------------------------------- reading stored JSON back


def test_cut_too_deep_cuts_off_only_what_nests_too_deep() -> None:
    shallow = {"a": [1, {"b": [2]}], "c": "x"}
    assert cut_too_deep(shallow) is shallow
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    cut = cut_too_deep({"k": deep}, limit=MAX_JSON_DEPTH)
    assert _depth(cut) == MAX_JSON_DEPTH
    inner = cut["k"]
    while inner != TOO_DEEP:
        inner = inner[0]


# ---------------------------------------------------------------- private files


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_database_and_its_journals_are_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "data" / "devassign.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    try:
        assert _mode(path) == 0o600
        assert _mode(path.parent) == 0o700
        journals = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
        assert all(j.exists() for j in journals)
        assert [_mode(j) for j in journals] == [0o600, 0o600]
    finally:
        db.dispose()


def test_an_existing_database_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    db = Database(f"sqlite:///{path}")
    try:
        db.upgrade()
        assert _mode(path) == 0o640
    finally:
        db.dispose()


def test_the_agent_state_file_is_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "agent" / "state.json"
    state = StateFile(path, durable=False)
    state.next_generation()
    assert _mode(path) == 0o600
    state.state.journal["d1"] = {"action": "setup", "params": {"mac": "52:54:00:00:00:01"}}
    state.save()
    assert _mode(path) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".agent-state.")]
