"""``GET /v1/events/stream``: the event log as server-sent events, as it grows.

Scoped exactly like ``GET /v1/events``: the same query of ``server/views.py`` with the caller's
scope (a member sees its project's consumers' events, an agent its host's, an admin all). The
stream polls the database every :data:`POLL_INTERVAL` seconds instead of listening to one
process's writes, so it sees the events every server process writes into one PostgreSQL.

Each event is sent as ``id: N`` and ``data: {...}`` (the event's JSON as in ``/v1/events``); a
client that reconnects sends the last id it saw as ``Last-Event-ID`` (EventSource does this by
itself) or as ``?after=``, and gets every event after it. A comment line every
:data:`HEARTBEAT_INTERVAL` seconds keeps proxies from closing a quiet stream. The stream ends
when the client goes, when the server shuts down, when the caller's token is revoked (checked
before each read), or, with ``?once=true``, once the events there are now have been sent.

Ids are given when an event is written but become visible when its transaction commits, so with
concurrent writers an event can appear after one with a higher id. The stream keeps looking for
such late events for :data:`LATE_COMMIT_WINDOW` seconds after it first saw a gap in the ids, and
each event's SSE ``id`` is the stream's position with those gaps (:class:`Cursor`), so a client
that reconnects (to any server process) still gets them.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool

from devassign import errors, schemas
from devassign.server import views
from devassign.server.access import Access, LoginRequired, Scope, authorize
from devassign.server.jsonbody import StrictJsonRoute
from devassign.store import Store
from devassign.store.db import busy_now

log = logging.getLogger(__name__)

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")

POLL_INTERVAL = 1.0  # seconds between two reads of the event log
HEARTBEAT_INTERVAL = 15.0  # seconds of silence before a comment line is sent
LATE_COMMIT_WINDOW = 30.0  # seconds a gap in the ids is looked at again
BATCH = 500  # events per read
RETRY_MS = 3000  # how long an EventSource waits before it reconnects
# Open streams a server process keeps, per token and in all: each reads the database every
# POLL_INTERVAL, so one member's token opening streams by the thousand must not take the
# database and the thread pool from everyone (a dashboard tab or `events --follow` is one).
MAX_STREAMS_PER_CALLER = 16
MAX_STREAMS = 512

# Applications whose server is shutting down: their streams end at their next poll.
_CLOSING: weakref.WeakSet[Starlette] = weakref.WeakSet()


MAX_GAPS = 64  # gaps a position carries (the ones nearest its last id; a stream keeps all)
# Ids below its last one that a position sent back by a client may watch for late events:
# each poll re-reads its scope from the first gap and asks which ids exist across the gaps,
# and a position is the client's word (``N~1-N@now``). Gaps a stream finds itself are whole.
MAX_GAP_SPAN = 10_000


class Cursor:
    """Where a stream is in the log: the highest id sent, and the gaps below it (ranges of
    ids not seen yet) that a transaction still in flight may fill.

    The position travels with each event as its SSE id (:meth:`token`: ``151`` or
    ``151~1-150@1764979200``), so a client that reconnects with ``Last-Event-ID`` resumes with
    the gaps it had, on any server process: an event committed late, below the last id sent,
    is sent after a reconnect too. A gap is given up :data:`LATE_COMMIT_WINDOW` seconds (by
    the wall clock, which the servers share) after it was first seen, and as soon as its ids
    turn out to be other scopes' events (``committed`` in :meth:`read`).
    """

    def __init__(self, after: int, gaps: list[tuple[int, int, float]] | None = None) -> None:
        self.last = after
        self.gaps: list[tuple[int, int, float]] = sorted(gaps or ())  # (lo, hi, first seen)

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """The position a :meth:`token` names; ``ValueError`` for anything else."""
        last, _, rest = token.partition("~")
        if not (last.isdecimal() and last.isascii()) or int(last) > schemas.MAX_INT64:
            raise ValueError(token)
        gaps = []
        for part in rest.split(",") if rest else ():
            span, _, seen = part.partition("@")
            lo, _, hi = span.partition("-")
            if not all(f.isdecimal() and f.isascii() and len(f) <= 19 for f in (lo, hi, seen)):
                raise ValueError(token)
            if not 0 < int(lo) <= int(hi) < int(last):
                raise ValueError(token)
            # "first seen" is the client's word: never later than now (a time in the future
            # would keep the gap, and its re-reads, for ever)
            gaps.append((int(lo), int(hi), min(float(seen), time.time())))
        gaps.sort()
        if len(gaps) > MAX_GAPS or any(a[1] >= b[0] for a, b in itertools.pairwise(gaps)):
            raise ValueError(token)  # overlapping gaps would send their events twice
        # The client's word again: a gap over the whole log would make every poll re-read the
        # scope from its start. A reconnect watches the ids just below its last one.
        floor = int(last) - MAX_GAP_SPAN
        gaps = [(max(lo, floor), hi, t) for lo, hi, t in gaps if hi >= floor]
        return cls(int(last), gaps)

    def token(self) -> str:
        """This position as text (an SSE event id), with its :data:`MAX_GAPS` newest gaps."""
        if not self.gaps:
            return str(self.last)
        return f"{self.last}~" + ",".join(f"{lo}-{hi}@{int(t)}" for lo, hi, t in self.gaps[-MAX_GAPS:])

    def read(self, fetch: Any, committed: Any = None) -> list[tuple[schemas.Event, str]]:
        """New events, oldest first, each with the position after it.

        ``fetch(after, limit)`` is the scoped query; ``committed(lo, hi)`` the ids that exist
        from ``lo`` to ``hi``, in any scope: a member's events come between other projects',
        whose ids are no gap to watch (only ids still in flight are).
        """
        now = time.time()
        self.gaps = [g for g in self.gaps if now - g[2] < LATE_COMMIT_WINDOW]
        # Asked before the scoped read: every id that exists now is visible to it, so one it
        # does not return is another scope's. (Asked after, an event of this scope committed
        # in between would be taken for another's and never sent.)
        existing = committed(self.gaps[0][0], self.gaps[-1][1]) if committed and self.gaps else []
        after = self.gaps[0][0] - 1 if self.gaps else self.last
        out: list[tuple[schemas.Event, str]] = []
        while True:
            batch: list[schemas.Event] = fetch(after, BATCH)
            for event in batch:
                if event.id > self.last:
                    # Ids in between are not (yet) visible: an uncommitted or rolled back
                    # write, or an event outside this scope.
                    if event.id > self.last + 1:
                        self.gaps.append((self.last + 1, event.id - 1, now))
                    self.last = event.id
                elif not self._take({event.id}):
                    continue  # sent before
                out.append((event, self.token()))
            if len(batch) < BATCH:
                break
            after = batch[-1].id
        if existing and self._take(set(existing)) and out:
            out[-1] = (out[-1][0], self.token())  # without the gaps found to be other scopes'
        return out

    def _take(self, ids: set[int]) -> bool:
        """Take ``ids`` out of the gaps; whether any was in one."""
        kept: list[tuple[int, int, float]] = []
        found = False
        ordered = sorted(ids)
        for lo, hi, t in self.gaps:
            start = lo
            for i in ordered[bisect.bisect_left(ordered, lo) : bisect.bisect_right(ordered, hi)]:
                found = True
                if start < i:
                    kept.append((start, i - 1, t))
                start = i + 1
            if start <= hi:
                kept.append((start, hi, t))
        self.gaps = kept
        return found


def _format(event: schemas.Event, position: str) -> str:
    return f"id: {position}\ndata: {event.model_dump_json()}\n\n"


def _position(last_event_id: str | None, after: int | None) -> Cursor | None:
    """Where to start: the ``Last-Event-ID`` header (a reconnect, with its gaps) over ``?after=``."""
    if last_event_id is not None and last_event_id.strip():
        try:
            return Cursor.parse(last_event_id.strip())
        except ValueError:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                "Last-Event-ID must be an event id that this stream sent (its `id:` line, as sent)",
            ) from None
    return Cursor(after) if after is not None else None


@router.get(
    "/events/stream",
    tags=["events"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def stream_events(
    request: Request,
    scope: Access,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    after: Annotated[
        int | None, Query(ge=0, le=schemas.MAX_INT64, description="Send the events after this id")
    ] = None,
    once: Annotated[
        bool, Query(description="End once the events there are now have been sent, instead of following")
    ] = False,
    last_event_id: Annotated[
        str | None, Header(description="The last event id a client got: a reconnect resumes after it")
    ] = None,
) -> StreamingResponse:
    """The event log as server-sent events, oldest first, as new events are written; scoped as
    ``/v1/events``. Without ``after`` or ``Last-Event-ID``, only events written from now on."""
    return await respond(
        request,
        scope,
        host=host,
        device=device,
        consumer=consumer,
        after=after,
        once=once,
        last_event_id=last_event_id,
    )


async def respond(
    request: Request,
    scope: Scope,
    *,
    host: str | None,
    device: str | None,
    consumer: str | None,
    after: int | None,
    once: bool,
    last_event_id: str | None,
) -> StreamingResponse:
    """The stream for ``scope`` with these filters: the API's route and the dashboard's
    (``/ui/events/stream``, signed in by its cookie) both answer with it."""
    store: Store = request.app.state.store
    start = _position(last_event_id, after)

    def fetch(after_id: int | None, limit: int) -> list[schemas.Event]:
        return views.list_events(
            store, scope, host=host, device=device, consumer=consumer, after=after_id, limit=limit
        )

    def committed(lo: int, hi: int) -> list[int]:
        # ids only, never sent: which gaps are other scopes' events rather than in flight
        return store.event_ids_in(lo, hi)

    # Read once before answering: a filter outside the caller's scope is a 403 now, not a
    # broken stream; without a position the stream starts after the newest event.
    newest = await run_in_threadpool(fetch, None, 1)
    release = _take_slot(request.app, scope.actor)
    moved = False
    if start is None:
        start = Cursor(newest[0].id if newest else 0)
    else:
        top = await run_in_threadpool(store.newest_event_id)
        if start.last > top:
            # A position past the end of the log: the database was restored from a backup
            # older than the events the client saw, and gives their ids again. From the end of
            # the log as it is (sent as the client's position), or the client would miss every
            # event until the ids passed its position.
            start, moved = Cursor(top), True
    return StreamingResponse(
        _held(_events(request, start, fetch, committed, once=once, moved=moved), release),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _take_slot(app: Starlette, actor: str) -> Callable[[], None]:
    """Count a stream of ``actor`` open in this process, or refuse it (429) over the limits;
    returns what gives the slot back (once)."""
    open_: dict[str, int] | None = getattr(app.state, "open_streams", None)
    if open_ is None:
        open_ = app.state.open_streams = {}
    if sum(open_.values()) >= MAX_STREAMS:
        raise errors.DevassignError(
            errors.TOO_MANY_STREAMS,
            f"this server process has {MAX_STREAMS} event streams open: try again later, or "
            "read GET /v1/events with before= instead",
        )
    if open_.get(actor, 0) >= MAX_STREAMS_PER_CALLER:
        raise errors.DevassignError(
            errors.TOO_MANY_STREAMS,
            f"this token has {MAX_STREAMS_PER_CALLER} event streams open on this server: close "
            "one (a dashboard tab, an `events --follow`) first",
        )
    open_[actor] = open_.get(actor, 0) + 1
    given = False

    def release() -> None:
        nonlocal given
        if not given:
            given = True
            open_[actor] -= 1
            if not open_[actor]:
                del open_[actor]

    return release


async def _held(events: AsyncIterator[str], release: Callable[[], None]) -> AsyncIterator[str]:
    """``events``, giving the stream's slot back however it ends."""
    try:
        async for chunk in events:
            yield chunk
    finally:
        release()


async def _events(
    request: Request, cursor: Cursor, fetch: Any, committed: Any, *, once: bool, moved: bool = False
) -> AsyncIterator[str]:
    app = request.app
    position = f"id: {cursor.token()}\n" if moved else ""  # an EventSource takes it as its own
    yield f"retry: {RETRY_MS}\n{position}: events after {cursor.last}\n\n"
    quiet_since = time.monotonic()
    while True:
        # A token revoked while its stream is open stops it, as it stops every other call
        # (the token cache answers without the database; other replicas within its 10 s).
        try:
            await authorize(request)
        except (errors.DevassignError, LoginRequired):
            return
        try:
            found = await run_in_threadpool(cursor.read, fetch, committed)
        except Exception as exc:
            busy = busy_now(exc)
            if busy is None:
                raise
            # The database cannot serve now: the stream stays open and reads again at the next
            # poll from where it was (the response was started: an error would cut it).
            log.warning("event stream: read skipped: %s", busy.message)
            found = []
        if found:
            yield "".join(_format(e, position) for e, position in found)
            quiet_since = time.monotonic()
        if once:
            return
        waited = 0.0
        while waited < POLL_INTERVAL:
            if app in _CLOSING or await request.is_disconnected():
                return
            step = min(0.25, POLL_INTERVAL - waited)
            await asyncio.sleep(step)
            waited += step
        if time.monotonic() - quiet_since >= HEARTBEAT_INTERVAL:
            yield ": heartbeat\n\n"
            quiet_since = time.monotonic()


def closing(app: Starlette) -> None:
    """End ``app``'s streams: its server is shutting down."""
    _CLOSING.add(app)


def _install_uvicorn_shutdown_hook() -> None:
    """Uvicorn waits for open responses to finish before it shuts down, and a stream never
    finishes by itself: tell the application's streams to end when its server shuts down
    (on SIGTERM or Ctrl-C, or ``should_exit`` set by an embedding program)."""
    try:
        from uvicorn.server import Server
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return
    original = Server.shutdown
    if getattr(original, "_ends_event_streams", False):
        return

    async def shutdown(self: Server, sockets: list[socket.socket] | None = None) -> None:
        found: Any = getattr(self.config, "loaded_app", None)
        for _ in range(16):  # uvicorn's own middleware wraps the application
            if found is None or isinstance(found, Starlette):
                break
            found = getattr(found, "app", None)
        if isinstance(found, Starlette):
            closing(found)
        await original(self, sockets)

    shutdown._ends_event_streams = True  # type: ignore[attr-defined]
    Server.shutdown = shutdown  # type: ignore[method-assign]


_install_uvicorn_shutdown_hook()
