"""Commands that keep running: ``devassign events --follow`` and ``devassign types --watch``.

``events --follow`` reads ``GET /v1/events/stream`` (server-sent events) and prints each event
as it comes; when the connection drops or the server restarts, it connects again with the last
event id it printed (``Last-Event-ID``), so nothing is printed twice or missed. ``types --watch``
redraws the types table in place (Rich Live) every ``--interval`` seconds; where the output is
not a terminal it prints the table again instead. Ctrl-C ends both with exit status 0.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from devassign.cli.client import Client, CliError, ExitCode, exit_status_of
from devassign.cli.output import Column, Format, _cell, console, fit_table, printable, when

# The server sends a comment every 15 s on a quiet stream; three missed ones mean a dead link.
READ_TIMEOUT = 45.0
MAX_BACKOFF = 10.0


def event_line(event: dict[str, Any], fmt: Format) -> str:
    """One event as one line: its id, time, actor, action and message (or its JSON)."""
    if fmt is Format.json:
        return json.dumps(event, default=str)
    line = f"{event['id']}  {when(event['at'])}  {event['actor']}  {event['action']}  {event['message']}"
    return printable(line, one_line=True)


# Where a server-sent events line ends: CRLF, LF or CR, nowhere else.
_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


# The longest line a stream may send: an event is a few KiB; a line that never ends is a
# broken or hostile server, not an event to wait for.
MAX_LINE = 1 << 20


class LineTooLong(ValueError):
    """A stream line past :data:`MAX_LINE` characters: the stream is dropped."""


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """The lines of a ``text/event-stream``, ended only where the format ends them (CRLF, LF,
    CR). Not ``iter_lines()``: like ``str.splitlines`` it also ends a line at U+2028, U+2029,
    NEL and other separators that an event's JSON keeps unescaped, inside an agent's text.
    A line longer than :data:`MAX_LINE` raises :class:`LineTooLong`."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        if len(pending) > MAX_LINE and not _SSE_LINE_END.search(pending, len(pending) - len(chunk) - 1):
            raise LineTooLong(f"a stream line longer than {MAX_LINE >> 20} MiB")
        # A CR at the end may be the first half of a CRLF: it waits for the next chunk.
        end = len(pending) - 1 if pending.endswith("\r") else len(pending)
        start = 0
        for m in _SSE_LINE_END.finditer(pending, 0, end):
            yield pending[start : m.start()]
            start = m.end()
        pending = pending[start:]
    if pending:
        yield pending.removesuffix("\r")


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """(id, data) of each event of a ``text/event-stream``; comments and retry hints skipped."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            event_id, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def _refusal(response: httpx.Response) -> CliError:
    """The server's error answer as the CLI's other commands report it."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("code"), str):
        err = None
    status = exit_status_of(err.get("code") if err else None, response.status_code)
    if isinstance(err, dict):
        return CliError(str(err.get("message", "error")), code=err.get("code"), status=status, body=body)
    return CliError(f"HTTP {response.status_code} from {response.request.url}", status=status)


def follow_events(
    client: Client,
    filters: dict[str, Any],
    *,
    history: int,
    fmt: Format,
    out: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the last ``history`` events, then every new one as it comes, until Ctrl-C."""
    write = out or (lambda line: print(line, flush=True))
    filters = {k: v for k, v in filters.items() if v is not None}
    recent = client.get("/v1/events", limit=history, **filters) if history > 0 else []
    for event in reversed(recent):
        write(event_line(event, fmt))
    # After the newest one printed; with none, from the start of what matches (nothing yet).
    last: int = recent[0]["id"] if recent else 0
    # The stream's position as it last sent it (its `id:`: the last id and any gaps below it
    # that a late transaction may fill): sent back as is on a reconnect.
    position = str(last)
    backoff = 1.0
    while True:
        try:
            with client.http.stream(
                "GET",
                "/v1/events/stream",
                params={**filters, "after": last},
                headers={"Accept": "text/event-stream", "Last-Event-ID": position},
                timeout=httpx.Timeout(30.0, read=READ_TIMEOUT),
            ) as response:
                if response.is_error:
                    response.read()
                    error = _refusal(response)
                    if error.exit_status != ExitCode.UNREACHABLE:
                        raise error
                    problem = error.message
                else:
                    backoff = 1.0
                    for event_id, data in server_sent_events(sse_lines(response.iter_text())):
                        event = _event(client, data)
                        write(event_line(event, fmt))
                        last = max(last, event["id"])
                        position = event_id or str(last)
                    problem = "the server ended the stream"
        except (httpx.HTTPError, LineTooLong) as exc:  # DecodingError too: a garbled body
            problem = f"lost the connection to {client.shown} ({type(exc).__name__})"
        print(f"{problem}; connecting again in {backoff:.0f} s", file=sys.stderr, flush=True)
        sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


def _event(client: Client, data: str) -> dict[str, Any]:
    """One event of the stream, or a :class:`CliError` for data that is not one (a server
    that is not devassign's, or broken): said in one line, never a traceback."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("id"), int) or isinstance(event["id"], bool):
        raise CliError(
            f"the server at {client.shown} sent an event this CLI cannot read: check --url or DEVASSIGN_URL"
        )
    return event


def watch_table(
    fetch: Callable[[], Any],
    columns: Sequence[Column],
    *,
    interval: float,
    fmt: Format,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Show ``fetch()``'s rows as a table, again every ``interval`` seconds, until Ctrl-C; in
    place on a terminal. A server that cannot be reached is said above the last table."""
    headers = [name for name, _ in columns]
    last: Any = None

    def render() -> RenderableType:
        nonlocal last
        note = ""
        try:
            last = fetch()
        except CliError as exc:
            if exc.exit_status != ExitCode.UNREACHABLE or last is None:
                raise
            note = f"  ({exc.message}; showing the last answer)"
        stamp = Text(
            printable(f"every {interval:g} s, {datetime.now().strftime('%H:%M:%S')}{note}"), style="dim"
        )
        rows = [[_cell(get(row)) for _, get in columns] for row in last]
        table, _ = fit_table(headers, rows, width=console.width)
        return Group(stamp, table)

    if fmt is Format.json:
        while True:
            try:
                print(json.dumps(fetch(), default=str), flush=True)
            except CliError as exc:
                if exc.exit_status != ExitCode.UNREACHABLE:
                    raise
                print(exc.message, file=sys.stderr, flush=True)
            sleep(interval)
    if not console.is_terminal:
        while True:
            console.print(render())
            sys.stdout.flush()
            sleep(interval)
    with Live(render(), console=console, auto_refresh=False, transient=False) as live:
        while True:
            sleep(interval)
            live.update(render(), refresh=True)
