"""The clients of devassign (the CLI, the host agent, the Placement mirror's event follower)
facing a server that is hostile, broken or not the one they think: a wrong ``DEVASSIGN_URL``,
a proxy that garbles answers, a compromised server, a man in the middle of plain HTTP.

What a client must do with such an answer: the CLI prints one error line and exits with a
status (never a traceback, docs/cli.md); the agent, root on a host with other tenants'
devices, treats it as an outage and keeps running (never a crash, never a state it cannot
leave), and reads no more than an answer can sanely hold.

Every server here is a local fake (``httpx.MockTransport``, or an ``http.server`` on
127.0.0.1 started by the test and stopped after it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.cli.client import VERSION_HEADER, Client, CliError
from devassign.cli.follow import follow_events
from devassign.cli.main import run
from devassign.cli.output import Format
from devassign.lifecycle.host import HostOps
from devassign.openstack.placement_service import EventFollower
from tests.unit.agent.test_agent_worker import HOST, World, world  # noqa: F401

# JSON nested deeper than Python's decoder can follow (it raises RecursionError, which is
# not a ValueError).
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
# A number with more digits than Python turns into an int (ValueError), and one too large
# for a float (OverflowError where it is compared with one).
LONG_NUMBER = b"9" * 5000
HUGE_INT = "1" + "0" * 400
DEVASSIGN = {VERSION_HEADER: "0.0-fake", "content-type": "application/json"}
SSE = {VERSION_HEADER: "0.0-fake", "content-type": "text/event-stream"}
MiB = 1 << 20


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _http_server(
    answer: Callable[[], tuple[int, dict[str, str], bytes]], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with ``answer()``; its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            status, headers, body = answer()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``devassign ARGV`` in this process (no retries): its exit status and stderr. An
    exception that escapes :func:`run` is a traceback for the user, and fails the test."""
    for name in ("DEVASSIGN_URL", "DEVASSIGN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEVASSIGN_RETRY_SECONDS", "0")
    capsys.readouterr()
    status = run(list(argv))
    return status, capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stop(Exception):
    """Raised by a test's ``sleep`` to end a loop that would otherwise go on for ever."""


# ---------------------------------------------------------------------------- the CLI

HOSTILE_ANSWERS = {
    "a 200 nested 100,000 deep": (200, DEEP_ARRAY),
    "a 200 object nested 100,000 deep": (200, DEEP_OBJECT),
    "a 200 object where a list is due": (200, b'{"unexpected": 1}'),
    "a 200 list of numbers": (200, b"[1, 2, 3]"),
    "a 200 list of rows without their fields": (200, b'[{"name": NaN}]'),
    "a 200 that is not UTF-8": (200, b'["\xff\xfe"]'),
    "a 200 number of 5,000 digits": (200, b"[" + LONG_NUMBER + b"]"),
    "a 400 nested 100,000 deep": (400, DEEP_OBJECT),
    "a 400 whose error is a string": (400, b'{"error": "no"}'),
    "a 400 whose error code is an object": (400, b'{"error": {"code": {"a": 1}, "message": "no"}}'),
}


@pytest.mark.parametrize("command", ["hosts", "events"])
@pytest.mark.parametrize("answer", HOSTILE_ANSWERS, ids=list(HOSTILE_ANSWERS))
def test_cli_prints_one_error_line_for_a_hostile_or_malformed_json_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], answer: str, command: str
) -> None:
    """A server that says it is devassign (its version header) but answers JSON nested
    100,000 deep, rows of the wrong type, a body that is not UTF-8 or a number Python will not
    read, or an error body of the wrong shape: the CLI must print one ``error:`` line and
    exit non-zero, as docs/cli.md promises ("never a traceback").

    Now: ``Client.request`` catches only ``ValueError`` around ``response.json()``
    (``RecursionError`` escapes), hands a 2xx it could not decode to the command as ``None``,
    and calls ``.get`` on whatever ``error`` holds; the commands index rows without checking
    their type. Each ends in a traceback (RecursionError, TypeError, KeyError,
    AttributeError), which shows where the CLI trusted the answer, and is no answer to the
    user at a wrong URL, behind a broken proxy, or in front of a compromised server.
    """
    status, body = HOSTILE_ANSWERS[answer]
    with _http_server(lambda: (status, DEVASSIGN, body)) as url:
        code, err = _cli(monkeypatch, capsys, "--url", url, "--token", "t0ken", command)
    assert code != 0, err
    assert err.startswith("error: ") and err.count("\n") == 1, err[-400:]


FOLLOW_STREAMS = {
    "data that is not JSON": (SSE, b"id: 1\ndata: {nope\n\n"),
    "data that is a JSON list": (SSE, b"id: 1\ndata: [1]\n\n"),
    "an event without an id": (SSE, b'id: 1\ndata: {"a": 1}\n\n'),
    "an event whose id is not a number": (
        SSE,
        b'id: 1\ndata: {"id": "x", "at": "2026-01-01T00:00:00Z", "actor": "a", "action": "b", '
        b'"message": "m"}\n\n',
    ),
    "data nested 100,000 deep": (SSE, b"id: 1\ndata: " + DEEP_ARRAY + b"\n\n"),
    "a body that says gzip and is not": ({**SSE, "content-encoding": "gzip"}, b"not gzip at all"),
}


@pytest.mark.parametrize("stream", FOLLOW_STREAMS, ids=list(FOLLOW_STREAMS))
def test_events_follow_survives_or_reports_a_malformed_stream(stream: str) -> None:
    """``devassign events --follow`` reading a stream with an event that is not JSON, not an
    object, without an id or with one that is not a number, nested 100,000 deep, or a body
    marked gzip that is not: it must either report it as one line (a :class:`CliError`) or
    treat it as a broken connection and connect again, never a traceback.

    Now: ``follow_events`` runs ``json.loads(data)``, ``event["id"]`` and ``int(...)`` with
    no guard, and catches only ``httpx.TransportError`` (a ``DecodingError`` is not one):
    JSONDecodeError, KeyError, TypeError, ValueError, RecursionError and DecodingError all
    escape ``run()`` as tracebacks.
    """
    headers, body = FOLLOW_STREAMS[stream]

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, content=body)

    client = Client("http://devassign.test", "t0ken", transport=httpx.MockTransport(handle), retry_for=0)

    def sleep(seconds: float) -> None:
        raise _Stop

    with contextlib.suppress(_Stop, CliError):
        follow_events(client, {}, history=0, fmt=Format.table, out=lambda line: None, sleep=sleep)


def test_events_follow_does_not_buffer_an_endless_line() -> None:
    """A server (or a man in the middle) that answers ``GET /v1/events/stream`` with a line
    that never ends: ``devassign events --follow`` must give up on it (drop the connection,
    or fail with one line) long before it holds more than the largest body the server itself
    takes (16 MiB); no event the server sends is anywhere near that.

    Now: ``sse_lines`` appends every chunk to ``pending`` and scans it again from its start
    for a line end, so memory grows for as long as the server sends, and each chunk costs
    time in proportion to all of them (quadratic: 16 MiB already takes over a second of CPU,
    256 MiB some minutes). The stream here stops itself once the client has taken more than
    16 MiB, and says so.
    """
    taken = 0
    overran = False
    chunk = b"x" * MiB

    def endless() -> Iterator[bytes]:
        nonlocal taken, overran
        yield b"id: 1\ndata: "
        while True:
            if taken > 16 * MiB:
                overran = True
                raise httpx.ReadError("the test stops the endless line here")
            taken += len(chunk)
            yield chunk

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=endless())

    client = Client("http://devassign.test", "t0ken", transport=httpx.MockTransport(handle), retry_for=0)

    def sleep(seconds: float) -> None:
        raise _Stop

    with contextlib.suppress(_Stop, CliError):
        follow_events(client, {}, history=0, fmt=Format.table, out=lambda line: None, sleep=sleep)
    assert not overran, f"the CLI read a single event line of {taken // MiB} MiB and wanted more"


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server-side TLS context with a certificate no CA signed (made here by openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl program to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_a_certificate_the_cli_cannot_verify_is_named_not_reported_as_no_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], self_signed: ssl.SSLContext
) -> None:
    """``--url https://...`` to a server whose certificate does not verify (a man in the
    middle, a self-signed proxy, an internal CA the CLI was not given): the CLI rightly
    refuses to send the token, but it must say that the certificate is the problem.

    Now it says "cannot reach the devassign server at https://...: is `devassign server`
    running? (set --url or DEVASSIGN_URL)": the first-contact branch of ``Client._send``
    drops the ``ConnectError``'s text ("[SSL: CERTIFICATE_VERIFY_FAILED] ... self-signed
    certificate"). The server is running and did answer; an operator told otherwise goes
    looking elsewhere, and the easy "fix" that makes the error go away is ``http://``, which
    sends the bearer token in the clear.
    """
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)  # the default trust: certifi's CAs
    with _http_server(lambda: (200, DEVASSIGN, b"[]"), tls=self_signed) as url:
        code, err = _cli(monkeypatch, capsys, "--url", url, "--token", "t0ken", "hosts")
    assert code != 0, err
    assert "certificate" in err.lower(), err


@pytest.mark.parametrize("bundle", ["missing", "not PEM"])
def test_a_bad_ca_bundle_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: str
) -> None:
    """The CLI's only way to trust a private CA is httpx's ``SSL_CERT_FILE``; pointing it at
    a file that is not there, or is not a PEM bundle, must be one ``error:`` line that names
    the setting or the file, as any other wrong setting is (docs/cli.md).

    Now ``httpx.Client(...)`` in ``Client.__init__`` builds its SSL context at once (even for
    an ``http://`` URL) and the ``FileNotFoundError`` ("[Errno 2] No such file or
    directory", without the file's name) or ``ssl.SSLError`` ("no certificate or crl
    found") escapes as a traceback, on every command.
    """
    path = tmp_path / "ca.pem"
    if bundle == "not PEM":
        path.write_text("this is not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    with _http_server(lambda: (200, DEVASSIGN, b"[]")) as url:
        code, err = _cli(monkeypatch, capsys, "--url", url, "--token", "t0ken", "hosts")
    assert code != 0, err
    assert err.startswith("error: "), err[-400:]
    assert "SSL_CERT_FILE" in err or str(path) in err, err


def test_the_cli_does_not_print_a_password_from_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``DEVASSIGN_URL=https://user:password@host`` (for a proxy that asks for a password)
    and a server that cannot be reached: the error line must not carry the password, as the
    server's own messages never carry the database's (``_safe_url`` in cli/main.py).

    Now every message built from ``Client.url`` prints it whole ("cannot reach the devassign
    server at http://alice:s3cret-pw@127.0.0.1:...") to a terminal, a CI log or a ticket.
    """
    url = f"http://alice:s3cret-pw@127.0.0.1:{_closed_port()}"
    code, err = _cli(monkeypatch, capsys, "--url", url, "--token", "t0ken", "hosts")
    assert code != 0, err
    assert "s3cret-pw" not in err, err


def test_a_url_with_a_user_and_password_is_refused_not_sent_in_place_of_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx sends a URL's USER:PASSWORD as Basic auth instead of the token: the server then
    said "send a token" to a user who had set one. Refused before any request, password hidden."""
    url = f"http://alice:s3cret-pw@127.0.0.1:{_closed_port()}"
    code, err = _cli(monkeypatch, capsys, "--url", url, "--token", "t0ken", "types")
    assert code == 2, err
    assert "user name or password" in err and "DEVASSIGN_TOKEN" in err, err
    assert "s3cret-pw" not in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------- the agent


def _intercept(world: World, route: str, answer: Callable[[httpx.Request], httpx.Response]) -> None:  # noqa: F811
    """Make ``world``'s fake server answer ``route`` ("PUT inventory", "GET work", ...) with
    ``answer``; every other request as usual."""
    honest = world.server.handle
    method, suffix = route.split()

    def handle(request: httpx.Request) -> httpx.Response:
        if (request.method, request.url.path) == (method, f"/v1/hosts/{HOST}/{suffix}"):
            return answer(request)
        return honest(request)

    world.server.handle = handle  # type: ignore[method-assign]


def _waits(status: int, code: str, seconds: str) -> Callable[[httpx.Request], httpx.Response]:
    """An error answer whose body asks the agent to wait ``seconds`` (a JSON number)."""
    body = f'{{"error": {{"code": "{code}", "message": "m", "retry_after": {seconds}}}}}'
    return _json(status, body.encode())


def _json(status: int, body: bytes, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        status, content=body, headers={"content-type": "application/json", **headers}
    )


AGENT_ANSWERS: dict[str, tuple[str, Callable[[httpx.Request], httpx.Response]]] = {
    "work list nested 100,000 deep": ("GET work", _json(200, DEEP_ARRAY)),
    "report answer nested 100,000 deep": ("PUT inventory", _json(200, DEEP_OBJECT)),
    "report refusal nested 100,000 deep": ("PUT inventory", _json(400, DEEP_OBJECT)),
    "work results answer nested 100,000 deep": ("POST work", _json(200, DEEP_ARRAY)),
    "work list marked gzip that is not": ("GET work", _json(200, b"garbage", **{"content-encoding": "gzip"})),
    "report answer marked gzip that is not": (
        "PUT inventory",
        _json(200, b"garbage", **{"content-encoding": "gzip"}),
    ),
    "503 asking to wait 10^400 s": ("PUT inventory", _waits(503, "busy", HUGE_INT)),
    "429 asking to wait 10^400 s": ("GET work", _waits(429, "slow", HUGE_INT)),
    "agent_conflict retrying after 10^400 s": ("PUT inventory", _waits(409, "agent_conflict", HUGE_INT)),
}


@pytest.mark.parametrize("answer", AGENT_ANSWERS, ids=list(AGENT_ANSWERS))
def test_the_agent_treats_an_answer_it_cannot_read_as_an_outage_not_a_crash(
    world: World,  # noqa: F811
    answer: str,
) -> None:
    """A broken proxy or a hostile server answers the agent with JSON nested 100,000 deep, a
    body marked gzip that is not gzip, or a ``retry_after`` of 10^400: one ``Agent.step()``
    must record it as an error (retried with backoff, as docs/agent.md says of "an answer
    that is not JSON ... never a crash") and return; a work result it could not get an
    answer for stays journaled (never taken as posted).

    Now ``step()`` catches only ``ServerUnavailable``/``ReportRefused``/``WorkRefused``, and
    ``payload``/``_error`` catch only ``ValueError``, ``Reporter._send`` only
    ``httpx.TransportError``: a ``RecursionError``, an ``httpx.DecodingError`` (not a
    transport error) and the ``OverflowError`` of ``math.isfinite(10**400)`` /
    ``float(10**400)`` end ``agent run``, the root process that heartbeats and cleans
    devices; restarted by systemd, it crashes again at the same answer, so the host's
    cleanups never run while the answer stays.
    """
    route, respond = AGENT_ANSWERS[answer]
    world.server.claim("d0")  # a setup to run, and its result to post
    _intercept(world, route, respond)
    agent = world.make()
    out = agent.step()
    assert out.errors, "the answer was taken as a good one"
    if route == "POST work":
        assert world.journal(), "a result the server never acknowledged left the journal"


@pytest.mark.parametrize("current", [2**63 - 1, 10**30], ids=["2^63-1", "10^30"])
def test_a_forged_current_generation_does_not_stop_the_agent_for_good(
    world: World,  # noqa: F811
    current: int,
) -> None:
    """A hostile server (or a man in the middle of plain HTTP, once) answers a report with
    ``409 stale_generation`` and a ``current_generation`` at or past the largest the schema
    allows (2^63-1). Later the real server answers again. The agent must come back: a
    restarted agent's report is taken by the honest server.

    Now ``Reporter.report`` stores any int it is given (``StateFile.set_generation``, written
    to the state file), the next generation is past ``InventoryReport``'s ``le=MAX_INT64``, and
    building the report raises a pydantic ``ValidationError`` that nothing catches: the step
    crashes, and so does every step of every restart after it, against any server, until
    someone edits ``/var/lib/devassign-agent/state.json`` by hand. One forged answer takes the
    host's agent (heartbeats, setups, cleanups) away for good.
    """
    hostile = True
    honest = world.server.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if hostile and request.url.path.endswith("/inventory"):
            error = {"code": "stale_generation", "message": "stale", "current_generation": current}
            return httpx.Response(409, json={"error": error})
        return honest(request)

    world.server.handle = handle  # type: ignore[method-assign]
    with contextlib.suppress(Exception):  # what the forged answer does now is not the point
        world.make().step()
    hostile = False
    out = world.make().step()  # a restart, against the honest server
    assert out.report is not None, out.errors


def test_the_agent_does_not_read_an_endless_answer_into_memory(world: World) -> None:  # noqa: F811
    """A hostile server, or a man in the middle, answers the agent's ``GET work`` with a body
    that never ends (or a small gzip bomb that httpx inflates on the fly). The agent runs as
    root on a host whose memory is its tenants' VMs: it must stop reading at a bound (and
    treat the answer as an outage) long before a gigabyte; the server's own limit on what an
    agent may send it is 16 MiB.

    Now ``Reporter._send`` uses ``client.request``, which reads the whole body into memory
    whatever its size: the agent grows until the kernel's OOM killer picks a victim, quite
    possibly a tenant's VM. The body here stops itself once the agent has taken 1 GiB (the
    same 1 MiB chunk again, so the test itself stays small) and says so.
    """
    taken = 0
    overran = False
    chunk = b" " * MiB

    def endless() -> Iterator[bytes]:
        nonlocal taken, overran
        while True:
            if taken >= 1024 * MiB:
                overran = True
                raise httpx.ReadError("the test stops the endless answer here")
            taken += len(chunk)
            yield chunk

    _intercept(
        world,
        "GET work",
        lambda request: httpx.Response(200, headers={"content-type": "application/json"}, content=endless()),
    )
    agent = world.make()
    agent.step()
    assert not overran, f"the agent read a {taken // MiB} MiB answer and wanted more"


def test_the_agent_does_not_wait_for_ever_on_an_answer_that_trickles(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server (or a man in the middle) that sends its answer a byte at a time, each within
    the client's read timeout, held the agent for ever: no heartbeat, no health check, no
    cleanup. Past a deadline on the body the answer is an outage. The clock here stands in for
    the slow bytes: each chunk comes a minute after the one before."""
    import devassign.agent.reporter as reporter_module

    now = [0.0]
    monkeypatch.setattr(reporter_module.time, "monotonic", lambda: now[0])
    sent = 0

    def trickle() -> Iterator[bytes]:
        nonlocal sent
        while sent < 1000:
            now[0] += 60.0
            sent += 1
            yield b" "
        raise httpx.ReadError("the test stops the trickle here")

    _intercept(
        world,
        "GET work",
        lambda request: httpx.Response(200, headers={"content-type": "application/json"}, content=trickle()),
    )
    out = world.make().step()
    assert sent < 10, f"the agent read {sent} bytes over {sent} minutes"
    assert any("still coming after 120 s" in e for e in out.errors), out.errors


def test_the_agent_does_not_log_a_password_from_its_server_url(
    world: World,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``server = "https://user:password@proxy"`` in agent.toml (which the config accepts)
    and a server that cannot be reached: what the agent logs (journald, readable by the
    ``adm`` group, shipped to central logging) must not carry the password.

    Now every ``ServerUnavailable`` starts with ``config.server`` as written.
    """
    config = dataclasses.replace(world.config, server="http://alice:s3cret-pw@devassign.test")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    state = StateFile(config.state_file, durable=False)
    ops = HostOps.simulated(world.h.root)
    agent = Agent(config, world.h.root, ops, client, state=state, pci_ids=None, sleep=lambda s: None)
    with caplog.at_level(logging.DEBUG):
        agent.run(iterations=2)
        errors = agent.step().errors
    said = caplog.text + json.dumps(errors)
    assert "connection refused" in said
    assert "s3cret-pw" not in said, said[-600:]


# ---------------------------------------------------------------------------- the Placement mirror


def test_the_placement_mirror_follower_skips_an_event_it_cannot_read() -> None:
    """``devassign placement-mirror``'s event follower reads devassign's event stream to sync
    changed hosts within a second. An event nested 100,000 deep (a hostile or broken server)
    must be skipped like any other unreadable event, and the events after it still read.

    Now ``EventFollower._note`` catches ``ValueError`` and ``AttributeError`` only; the
    ``RecursionError`` ends ``EventFollower.run``, its thread dies (a daemon thread: a
    traceback on stderr, nothing in the log), and the mirror falls back to its periodic full
    sync for the rest of its life without saying so.
    """
    calls = 0
    follower: EventFollower

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls > 1:
            follower.stopped.set()
            return httpx.Response(503)
        body = b"id: 1\ndata: " + DEEP_ARRAY + b'\n\nid: 2\ndata: {"host": "h2"}\n\n'
        return httpx.Response(200, headers=SSE, content=body)

    client = httpx.Client(base_url="http://devassign.test", transport=httpx.MockTransport(handle))
    follower = EventFollower(client, threading.Event())
    follower.stopped.wait = lambda timeout=None: follower.stopped.is_set()  # type: ignore[method-assign]
    follower.run()
    assert follower.take() == {"h2"}
