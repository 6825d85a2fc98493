"""The ASGI application: wiring of store, auth, routes, errors and the background sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import devassign
from devassign import errors, schemas
from devassign.server import apidocs, audit, claims, gang_routes, lifecycle, routes, stream, taints
from devassign.server import cyborg as cyborg_routes
from devassign.server import metrics as fleet_metrics
from devassign.server import moves as move_routes
from devassign.server.access import authorize, check_table
from devassign.server.auth import TokenCache
from devassign.server.limits import BodyLimit
from devassign.server.placement import Placer
from devassign.server.settings import Settings
from devassign.store import Database, Store
from devassign.store.db import busy_error, busy_now
from devassign.web import dashboard

log = logging.getLogger("devassign.server")

REQUESTS = Counter("devassign_http_requests", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "devassign_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# On every answer: the CLI's client tells devassign from another server at a wrong URL (a
# proxy's sign-in page, another JSON API) by it, instead of reading their 200s as answers.
VERSION_HEADER = (b"devassign-version", devassign.__version__.encode())


class Metrics:
    """Request counts and latencies per route for ``/metrics``, and the version header on
    every answer.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs
    every response through a stream and a task group, which cost a claim ~10 % (py-spy).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), VERSION_HEADER]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - start)
            REQUESTS.labels(scope["method"], path, str(status)).inc()


class NoNulInUrl:
    """Refuse a NUL (``%00``) in the path or query string (400): PostgreSQL cannot hold one
    in text, so every lookup by such a name would fail in the database, on SQLite not at all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in bytes(scope.get("query_string") or b"")
        ):
            body = errors.DevassignError(
                errors.INVALID_REQUEST,
                "the URL holds a NUL character (%00); names and filters are text without NUL",
            ).body()
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts: dict[str, list[str]] = {}  # place -> what is wrong there (a union's branches, together)
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            # the decoder's own words ("Expecting value", a repeated key), not "JSON decode error"
            pos = next((p for p in err.get("loc", ()) if isinstance(p, int)), -1)
            at = f" at character {pos}" if pos >= 0 else ""
            parts.setdefault("body", []).append(
                f"not valid JSON{at}: {err.get('ctx', {}).get('error', 'invalid')}"
            )
            continue
        loc = list(err.get("loc", ()))
        place = _in_body(exc.body, loc[1:]) if loc[:1] == ["body"] else [p for p in loc if p != "body"]
        where = ".".join(str(p) for p in place) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        said = parts.setdefault(where, [])
        if said and msg.startswith("Input should be ") and said[-1].startswith("Input should be "):
            said[-1] += " or " + msg.removeprefix("Input should be ")  # a string or an integer
        elif msg not in said:
            said.append(msg)
    shown = [f"{where}: {'; '.join(msgs)}" for where, msgs in list(parts.items())[:5]]
    more = len(parts) - 5
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _in_body(body: Any, loc: list[Any]) -> list[Any]:
    """``loc`` as far as it goes down ``body``: the validator adds the branch of a union it
    tried (``extra_specs.KEY.str``), which is no place in the body; a field that is missing or
    not allowed is kept (the place it names)."""
    here, out = body, []
    for p in loc:
        inside = (isinstance(here, dict) and p in here) or (
            isinstance(here, list) and isinstance(p, int) and 0 <= p < len(here)
        )
        if inside:
            here = here[p]
        elif isinstance(here, dict) and isinstance(p, str):
            out.append(p)
            break
        else:
            break
        out.append(p)
    return out


def _validation_pointer(exc: RequestValidationError) -> str | None:
    """The JSON pointer of the first field of the body that is wrong (``/requests/0/cont``),
    or None when the first error is not in the body (a query, the JSON itself)."""
    first = next(iter(exc.errors()), None)
    loc = list(first.get("loc", ())) if first else []
    if not loc or loc[0] != "body" or first is None or first.get("type") == "json_invalid":
        return None
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in _in_body(exc.body, loc[1:]))


def _install_error_handlers(app: FastAPI) -> None:
    def busy(request: Request, err: errors.DevassignError) -> JSONResponse:
        # 503: the database is overloaded, unreachable or failing over; nothing was changed
        # (the transaction rolled back). Retry-After spreads the clients' retries (1 to 3 s).
        seconds = random.randint(1, 3)
        body = err.body()
        body["error"]["retry_after"] = seconds
        log.warning(
            "database busy on %s %s (%s): %s",
            request.method,
            request.url.path,
            err.extra.get("reason", "-"),
            err.__cause__ or err.message,
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(seconds)})

    @app.exception_handler(errors.DevassignError)
    async def _domain(request: Request, exc: errors.DevassignError) -> JSONResponse:
        if exc.status == 503:
            return busy(request, exc)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        pointer = _validation_pointer(exc)
        extra = {"pointer": pointer} if pointer is not None else {}
        err = errors.DevassignError(errors.INVALID_REQUEST, _validation_message(exc), **extra)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}.get(
            exc.status_code, errors.INVALID_REQUEST
        )
        status = exc.status_code if exc.status_code in (404, 405) else 400
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            # No route has this path (a name with an escaped "/" in it reaches none either).
            path = request.url.path
            shown = path if len(path) <= 200 else path[:200] + "..."
            message = f"no such route: {request.method} {shown} (the routes are listed at /docs)"
        return JSONResponse(errors.DevassignError(code, message).body(), status_code=status)

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        # A value the database refuses (out of range, too long, NUL): the request's fault,
        # but one the validation should have caught first, so it is logged as a warning.
        log.warning("database refused a value on %s %s", request.method, request.url.path, exc_info=exc)
        reason = (str(exc.orig) or "invalid value").splitlines()[0]
        err = errors.DevassignError(
            errors.INVALID_REQUEST,
            f"the database cannot store a value of this request ({reason}); "
            "check the lengths and ranges of its fields",
        )
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # Refused or lost connections, an exhausted pool, statement and lock timeouts, a
        # standby refusing writes: 503 database_busy. Any other database error is a bug.
        err = busy_error(exc)
        if err is None:
            return await _bug(request, exc)
        err.__cause__ = exc
        return busy(request, err)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        err = errors.DevassignError(
            errors.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
        )
        return JSONResponse(err.body(), status_code=500)


# How far a replica's clock may be from the database's before it says so: well under the
# seconds a host may stay silent before it is down (``--down-after``).
CLOCK_SKEW_WARN = 5.0


def _warn_of_clock_skew(store: Store, settings: Settings) -> float | None:
    """Log a warning where this server's clock is off the database's (an NTP that stopped):
    other replicas write the times this one judges hosts' liveness by."""
    try:
        skew = store.db.clock_skew()
    except Exception as exc:  # the database may not answer yet: the routes say so
        log.warning("could not compare this server's clock with the database's: %s", exc)
        return None
    if skew is not None and abs(skew) > CLOCK_SKEW_WARN:
        way = "ahead of" if skew > 0 else "behind"
        log.warning(
            "this server's clock is %.1f s %s the database's: hosts' liveness (--down-after %s s) is "
            "judged against times other replicas wrote, so hosts may flap down and up; keep the "
            "clocks in sync (NTP)",
            abs(skew),
            way,
            int(settings.down_after.total_seconds()),
        )
    return skew


async def _sweeper(app: FastAPI) -> None:
    """Mark silent hosts down and expire unconfirmed reservations, by the server's clock."""
    store: Store = app.state.store
    while True:
        await asyncio.sleep(app.state.settings.sweep_interval)
        try:
            await run_in_threadpool(store.sweep)
        except Exception as exc:  # the sweeper must outlive a database hiccup
            busy = busy_now(exc)
            if busy is None:
                log.exception("sweep failed; will retry")
            else:  # expected while the database is locked, failing over or restarting
                log.warning("sweep skipped: %s; will retry", busy.message)


_ERROR_RESPONSES = {
    "400": "Bad input: the message says what to fix",
    "401": "No token, or an unknown one",
    "403": "The token's role may not do this (or a quota is exceeded)",
    "404": "No such thing",
    "409": "Conflicts with the current state (the code says which)",
}


def _install_openapi(app: FastAPI) -> None:
    """Describe the errors the API really returns: ``400`` with the ``{"error": ...}`` body,
    never FastAPI's default ``422`` (clients and schema-driven tests rely on this)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        components.update(
            schemas.ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {})
        )
        components["ErrorBody"] = {
            k: v
            for k, v in schemas.ErrorBody.model_json_schema(
                ref_template="#/components/schemas/{model}"
            ).items()
            if k != "$defs"
        }
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith(("/v1/", "/accelerator/")):  # the API, Cyborg's subset too
                continue
            for op in operations.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                errors_here = dict(_ERROR_RESPONSES)
                if "requestBody" in op:  # server/limits.py refuses a body over the route's limit
                    errors_here["413"] = "The body is over this route's size limit (body_too_large)"
                errors_here["503"] = "The database cannot serve now (database_busy): retry"
                for status, text in errors_here.items():
                    responses.setdefault(status, {"description": text})
                    responses[status].setdefault("content", {"application/json": {"schema": ref}})
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    settings = settings or Settings()
    owned = store is None  # a database this app opened is closed at its stop
    if store is None:
        db = Database(settings.db_url, **settings.database_options())
        db.ensure_schema(migrate=settings.migrate)
        store = Store(
            db,
            down_after=settings.down_after,
            reservation_ttl=settings.reservation_ttl,
            agent_takeover_after=settings.agent_takeover_after,
            event_retention=settings.event_retention,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth:
            log.warning(
                "AUTHENTICATION IS OFF: anyone who can reach this server is an admin. "
                "Use it for local development only."
            )
        await run_in_threadpool(_warn_of_clock_skew, store, settings)
        if settings.sweep_interval > 0:
            await run_in_threadpool(store.refresh_statistics)
        task = asyncio.create_task(_sweeper(app)) if settings.sweep_interval > 0 else None
        yield
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if owned:
            await run_in_threadpool(store.db.close)

    app = FastAPI(
        title="devassign",
        version=devassign.__version__,
        description="Direct hardware assignment: inventory, scheduling, claims, lifecycle.",
        lifespan=lifespan,
        # Every route, API and dashboard, passes the access table first (server/access.py).
        dependencies=[Depends(authorize)],
        # Served by server/apidocs.py, with pinned and checked scripts.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.tokens = TokenCache(store)
    _install_error_handlers(app)
    _install_openapi(app)
    app.state.placer = Placer(store, settings.placement)

    # Starlette tries routes in order, so the calls made most (probes, claims, the agents'
    # work, reports and heartbeats) come first; no two routes here match the same path and
    # method, so the order changes nothing else.
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": devassign.__version__}

    app.include_router(claims.router)
    app.include_router(lifecycle.router)
    app.include_router(routes.router)
    app.include_router(move_routes.router)
    app.include_router(gang_routes.router)
    app.include_router(stream.router)
    app.include_router(taints.router)
    app.include_router(audit.router)
    app.include_router(cyborg_routes.router)
    app.include_router(dashboard.router)
    app.include_router(apidocs.router)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> PlainTextResponse:
        # The fleet's gauges read at scrape time, and this process's counters (docs/metrics.md).
        return PlainTextResponse(fleet_metrics.exposition(app).decode(), media_type=CONTENT_TYPE_LATEST)

    check_table(app)
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        small_limit=min(settings.max_small_body_bytes, settings.max_body_bytes),
        max_members=settings.max_members,
        bulk_max_members=settings.max_bulk_members,
    )
    app.add_middleware(NoNulInUrl)
    # Outermost (added last): it counts, and marks with the version header, every answer,
    # the two refusals above included.
    app.add_middleware(Metrics)
    return app


def app_from_env() -> FastAPI:
    """The app of one worker process of ``devassign server --workers N``."""
    import os

    from devassign.server.settings import SETTINGS_ENV, settings_from_env

    return create_app(settings_from_env(os.environ[SETTINGS_ENV]))
