"""The ``devassign`` program: server, operator commands and client commands.

Whatever goes wrong that a user can cause ends as one line on stderr (usage errors: the usage
first) and an exit status from :class:`~devassign.cli.client.ExitCode`, never a traceback;
docs/cli.md lists the codes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

import devassign
from devassign.cli import audit as audit_cli
from devassign.cli import claims as claims_cli
from devassign.cli import gangs as gangs_cli
from devassign.cli import inventory as inventory_cli
from devassign.cli import load as load_cli
from devassign.cli import moves as moves_cli
from devassign.cli import openstack as openstack_cli
from devassign.cli import taints as taints_cli
from devassign.cli.client import CliError, ExitCode, api_path, exit_status
from devassign.cli.output import Format, emit, printable, when

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 failed (the server said no: not found, cannot place, quota...); "
    "2 usage (a wrong option, argument, configuration file or database URL; also a command "
    "group given no command, which prints its help); 3 the server or the database could not be "
    "reached (or failed): try again later; 4 the server refused the credentials (no token, an "
    "unknown or revoked one, or a role that may not do this)."
)

app = typer.Typer(
    help="devassign: direct hardware assignment for clouds.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The database's schema: upgrade it, or show its revision.", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens: create, list and revoke them; one-time sign-in links to the dashboard.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
claims_cli.register(app, inventory_cli.register(app))
gangs_cli.register(app)
audit_cli.register(app)
taints_cli.register(app)
load_cli.register(app)
moves_cli.register(app)
openstack_cli.register(app)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="DEVASSIGN_DB", help="Database URL (default: SQLite in the data folder)"),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"devassign {devassign.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="DEVASSIGN_URL", help="The server's URL (default: http://127.0.0.1:8470)"
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="DEVASSIGN_TOKEN", help="API token (from `token create`)")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print devassign's version and exit", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    ctx.obj = {"url": url, "token": token}


class PlacementPolicy(StrEnum):
    """``devassign server --policy``: how claims rank the hosts that fit."""

    pack = "pack"
    spread = "spread"


_YEAR_S = 365 * 86400


@app.command()
def server(
    db: DbOpt = None,
    bind: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port)")] = 8470,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Everyone is admin: local development only")
    ] = False,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Refuse to start on an old schema instead of migrating")
    ] = False,
    down_after: Annotated[
        float, typer.Option(min=1, max=_YEAR_S, help="Seconds of silence before a host is down")
    ] = 90,
    reservation_ttl: Annotated[
        float, typer.Option(min=1, max=_YEAR_S, help="Seconds before an unconfirmed reservation expires")
    ] = 300,
    agent_takeover_after: Annotated[
        float,
        typer.Option(
            min=1,
            max=_YEAR_S,
            help="Seconds a host's agent must be silent before another agent process may take over",
        ),
    ] = 30,
    db_pool_size: Annotated[
        int,
        typer.Option(
            min=1, max=1000, help="Database connections per process (PostgreSQL: plus half as many in bursts)"
        ),
    ] = 10,
    db_max_overflow: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Extra connections per process in bursts (default: half the pool on PostgreSQL; SQLite 10)",
        ),
    ] = None,
    db_pool_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a request waits for a free connection before a 503")
    ] = 10,
    db_statement_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds a statement may run before a 503 (0: no limit)")
    ] = 30,
    db_lock_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds a statement may wait for a lock before a 503 (0: none)")
    ] = 0,
    workers: Annotated[
        int, typer.Option(help="Server processes on this port (PostgreSQL; SQLite is for one process)")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    policy: Annotated[
        PlacementPolicy,
        typer.Option(
            help="How claims rank the hosts that fit: pack fills busy hosts first (whole hosts "
            "stay free), spread keeps load even"
        ),
    ] = PlacementPolicy.pack,
    balance_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the pack or spread score in a host's score")
    ] = 1.0,
    numa_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the score for devices on one NUMA node")
    ] = 1.0,
    fragmentation_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the score for VFs and vGPUs of PFs and GPUs already in use (whole "
            "ones stay free)",
        ),
    ] = 0.5,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            envvar="FORWARDED_ALLOW_IPS",
            help="Addresses of the TLS proxy in front (comma-separated, or *) whose "
            "X-Forwarded-Proto and X-Forwarded-For are believed, so the dashboard's cookie is "
            "marked Secure behind it (default: 127.0.0.1 only)",
        ),
    ] = None,
    event_retention_days: Annotated[
        int,
        typer.Option(
            min=0,
            max=36500,
            help="Days the event log keeps an event; older ones are deleted, oldest first (0: keep "
            "every event for ever)",
        ),
    ] = 90,
    keep_alive: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds an idle client connection stays open; keep it above the idle timeout of "
            "a proxy or load balancer in front (and of clients' pools), or a request sent as the "
            "server closes the connection fails",
        ),
    ] = 75,
    metrics_per_host: Annotated[
        bool,
        typer.Option(
            "--metrics-per-host",
            envvar="DEVASSIGN_METRICS_PER_HOST",
            help="/metrics also per host: devices per host, type and state, and seconds since each "
            "host was heard from (one series per host: mind the cardinality)",
        ),
    ] = False,
) -> None:
    """Run the API server and its dashboard (/ui/): SQLite in the data folder unless --db says
    otherwise; the schema is migrated on start."""
    import logging
    import os
    import shutil
    import tempfile
    from dataclasses import replace
    from datetime import timedelta

    import uvicorn

    from devassign.server.app import create_app
    from devassign.server.metrics import MULTIPROC_DIR_ENV
    from devassign.server.settings import SETTINGS_ENV, Settings, placement_with, settings_to_env
    from devassign.store import SchemaError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for option, seconds in (
        ("--down-after", down_after),
        ("--reservation-ttl", reservation_ttl),
        ("--agent-takeover-after", agent_takeover_after),
        ("--db-pool-timeout", db_pool_timeout),
        ("--db-statement-timeout", db_statement_timeout),
        ("--db-lock-timeout", db_lock_timeout),
    ):
        if not math.isfinite(seconds):
            raise CliError(f"{option} is a number of seconds, not {seconds}", status=2)
    for option, weight in (
        ("--balance-weight", balance_weight),
        ("--numa-weight", numa_weight),
        ("--fragmentation-weight", fragmentation_weight),
    ):
        if not math.isfinite(weight):
            raise CliError(f"{option} is a finite number, 0 or more, not {weight}", status=2)
    db = _check_db_url(db)
    placement = placement_with(  # the options' ranges already refused negative weights
        mode=policy.value,
        binpack_weight=balance_weight,
        numa_weight=numa_weight,
        fragmentation_weight=fragmentation_weight,
    )
    settings = Settings(
        db_url=db,
        auth=not no_auth,
        migrate=not no_migrate,
        down_after=timedelta(seconds=down_after),
        reservation_ttl=timedelta(seconds=reservation_ttl),
        event_retention=timedelta(days=event_retention_days) if event_retention_days else None,
        agent_takeover_after=timedelta(seconds=agent_takeover_after),
        pool_size=db_pool_size,
        max_overflow=db_max_overflow,
        pool_timeout=db_pool_timeout,
        statement_timeout=db_statement_timeout,
        lock_timeout=db_lock_timeout,
        metrics_per_host=metrics_per_host,
        placement=placement,
    )
    if workers < 1:
        raise CliError("--workers must be at least 1", status=2)
    _check_listen(bind, port)
    if workers > 1 and settings.db_url and settings.db_url.startswith("sqlite"):
        raise CliError("--workers > 1 needs PostgreSQL: SQLite is for one server process", status=2)
    try:
        with _database_errors(
            db, "the server did not start (its schema check or migration was cut short): start it again"
        ):
            application = create_app(settings)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    typer.echo(f"devassign server on http://{bind}:{port} (database {_safe_url(settings.db_url)})", err=True)
    if no_auth:
        typer.secho(
            "WARNING: authentication is OFF (--no-auth): anyone who can reach this port is admin",
            fg="red",
            err=True,
            bold=True,
        )
    # The same HTTP serving for one process and for several.
    serving: dict[str, Any] = {
        "host": bind,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "forwarded_allow_ips": forwarded_allow_ips,
        "timeout_keep_alive": keep_alive,
    }
    if workers == 1:
        uvicorn.run(application, **serving)
        return
    # Several processes: each builds its own app from the same settings (the schema is migrated).
    os.environ[SETTINGS_ENV] = settings_to_env(replace(settings, migrate=False))
    # A scrape of this port reaches one worker: each answers the counters of all of them, kept
    # in files of a folder made for this run (docs/metrics.md), unless one is given.
    made = None
    if not os.environ.get(MULTIPROC_DIR_ENV):
        made = tempfile.mkdtemp(prefix="devassign-metrics-")
        os.environ[MULTIPROC_DIR_ENV] = made
    try:
        uvicorn.run("devassign.server.app:app_from_env", factory=True, workers=workers, **serving)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _check_listen(bind: str, port: int) -> None:
    """``--bind``/``--port`` this machine can listen on, said before anything starts (the
    HTTP server's own error came after the database was opened, as a log line)."""
    import socket

    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise CliError(
            f"--bind {bind}: not an address or name of this machine ({getattr(exc, 'strerror', exc)}); "
            "e.g. 127.0.0.1, 0.0.0.0 or ::",
            status=2,
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CliError(f"cannot listen on {bind} port {port}: {exc.strerror}", status=2) from None


def _safe_url(url: str | None) -> str:
    """The database URL without its password, for logs and errors (even one that does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not url:
        return "-"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


DB_URL_FORMS = "sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def _check_db_url(url: str | None, *, create: bool = True) -> str:
    """The database URL to use (``--db``, ``DEVASSIGN_DB`` or the default SQLite file); one
    that does not parse, or names a database devassign has no driver for, is a usage error.
    ``create=False`` (a command that only reads): a missing SQLite file is an error, not a new
    empty database at a mistyped path."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from devassign.store.db import create_private, default_url, normalize_url, sqlite_file

    if not url:
        try:
            url = default_url()
        except OSError as exc:
            raise CliError(f"cannot create the data folder of the default database: {exc}") from exc
    shown = _safe_url(url)
    try:
        parsed = make_url(normalize_url(url))
        parsed.get_dialect().import_dbapi()
    except ValueError as exc:  # a port that is not a number, an unclosed [ of an IPv6 address
        raise CliError(
            f"database URL {shown}: it does not parse ({exc}); give {DB_URL_FORMS}", status=ExitCode.USAGE
        ) from exc
    except ArgumentError as exc:  # NoSuchModuleError (an unknown scheme) is one too
        raise CliError(
            f"database URL {shown}: not one devassign can use ({exc}); give {DB_URL_FORMS}",
            status=ExitCode.USAGE,
        ) from exc
    except ImportError as exc:
        raise CliError(
            f"database URL {shown}: no driver for it is installed ({exc.name}); "
            f"devassign uses {DB_URL_FORMS}",
            status=ExitCode.USAGE,
        ) from exc
    path = sqlite_file(url) if url.startswith("sqlite") else None
    if url.startswith("sqlite") and parsed.database in (None, "", ":memory:"):
        raise CliError(  # each connection would see its own empty database, gone at the end
            f"database URL {shown} is an in-memory database, which nothing keeps: give a file "
            "(sqlite:///PATH) or a PostgreSQL URL",
            status=ExitCode.USAGE,
        )
    try:
        missing = path is not None and not path.exists()
        folder = path is not None and path.is_dir()
    except OSError as exc:  # a name too long for the file system, say
        raise CliError(f"database URL {shown}: {exc.strerror or exc}", status=ExitCode.USAGE) from exc
    if folder:
        raise CliError(
            f"database URL {shown} names a folder: give the database file in it (sqlite:///PATH/devassign.db)",
            status=ExitCode.USAGE,
        )
    if path is not None and not create and missing:
        raise CliError(  # exit 3, as a PostgreSQL database that does not exist
            f"no database at {path}: check --db (or DEVASSIGN_DB); `devassign db upgrade` creates one",
            status=ExitCode.UNREACHABLE,
        )
    if path is not None:
        try:
            create_private(path)  # what Database does first; here a failure is one line
        except OSError as exc:
            raise CliError(
                f"cannot create the SQLite database {path}: {exc.strerror or exc}; "
                "give a file in a folder you can write (--db sqlite:///PATH)"
            ) from exc
    return url


@contextlib.contextmanager
def _database_errors(url: str, interrupted: str | None = None) -> Iterator[None]:
    """A database that cannot be reached or used becomes one line naming it (no password).
    ``interrupted``: what to say when the database stopped a statement of a connection that
    worked (cancelled, the server shutting down): not "cannot connect"."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        state = getattr(getattr(exc, "orig", None), "sqlstate", None)
        if interrupted and isinstance(state, str) and not state.startswith("08"):  # 08: connection
            raise CliError(
                f"the database {_safe_url(url)} stopped it: {_driver_reason(exc)}; {interrupted}",
                status=ExitCode.UNREACHABLE,
            ) from exc
        raise CliError(
            f"cannot connect to the database {_safe_url(url)}: {_driver_reason(exc)}; check the URL "
            "(--db or DEVASSIGN_DB), that the database server runs and that the database exists",
            status=ExitCode.UNREACHABLE,
        ) from exc
    except DBAPIError as exc:
        if "file is not a database" in str(exc.orig):  # the wrong file named: a usage error
            raise CliError(
                f"{_safe_url(url)} is not an SQLite database file: check --db (or DEVASSIGN_DB)",
                status=ExitCode.USAGE,
            ) from exc
        raise CliError(f"the database {_safe_url(url)} refused: {_driver_reason(exc)}") from exc


def _driver_reason(exc: Any) -> str:
    """The driver's own words, its first line, less the preamble: ``database "x" does not exist``."""
    lines = [line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for marker in ("FATAL:", "failed:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1].strip()
            break
    return " ".join(text.split()).removesuffix(".") or type(exc).__name__


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Migrate the database to the newest schema."""
    from devassign.store import Database, SchemaError

    url = _check_db_url(db)
    database = Database(url)
    try:
        with _database_errors(url, "the upgrade was cut short: run `devassign db upgrade` again"):
            before, after = database.upgrade()
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    finally:
        database.dispose()
    typer.echo(
        f"schema at {after}" + (f" (was {before or 'empty'})" if before != after else ", nothing to do")
    )


@db_app.command("status")
def db_status(db: DbOpt = None) -> None:
    """Show the database's schema revision and the one this devassign needs (exit 1 for a
    schema a newer devassign wrote)."""
    from devassign.store import Database, SchemaError

    url = _check_db_url(db, create=False)
    database = Database(url)
    try:
        with _database_errors(url):
            current = database.current_revision()
        typer.echo(f"database: {_safe_url(database.url)}")
        typer.echo(f"current:  {current or 'empty'}")
        try:
            database.check_known(current)
        except SchemaError as exc:
            raise CliError(str(exc)) from exc
        typer.echo(f"needed:   {database.head_revision()}")
    finally:
        database.dispose()


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help="admin, agent, member or monitor (reads /metrics only)")],
    host: Annotated[str | None, typer.Option(help="The host an agent token speaks for")] = None,
    project: Annotated[str | None, typer.Option(help="The project of a member token")] = None,
    name: Annotated[str | None, typer.Option(help="A label for the token")] = None,
    db: DbOpt = None,
    via_api: Annotated[
        bool, typer.Option("--via-api", help="Ask the server (needs an admin token) instead of the database")
    ] = False,
) -> None:
    """Create a token and print it (it is shown only once).

    Through the server when a token to ask it with is given (DEVASSIGN_TOKEN or --token, an
    admin's) and no database is (--db, DEVASSIGN_DB), or with --via-api; else written straight
    to the database (so the first admin token can be made: run it where the server's database is).
    """
    from pydantic import ValidationError

    from devassign import schemas

    try:
        body = schemas.TokenCreate(role=role, host=host, project=project, name=name)
    except ValidationError as exc:
        raise CliError(_pydantic_message(exc), status=2) from exc
    root = ctx.find_root().obj or {}
    if via_api or (db is None and root.get("token")):  # --token or DEVASSIGN_TOKEN
        client = inventory_cli.client(ctx)
        created = client.post("/v1/tokens", body.model_dump(mode="json"))
        typer.echo(created["token"])
        return
    from devassign.store import Database, SchemaError, Store

    new_file = _new_sqlite_file(db or os.environ.get("DEVASSIGN_DB"))
    url = _check_db_url(db)
    database = Database(url)
    try:
        with _database_errors(url):
            # A new database is made ready here (the first admin token before the first server);
            # an existing one at an older schema is left for `db upgrade` or a server to migrate
            # (servers of the release before may still run on it).
            database.ensure_schema(migrate=database.current_revision() is None)
            made = Store(database).create_token(body, actor="cli")
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    finally:
        database.dispose()
    typer.echo(made.token)
    if new_file:  # a mistyped path makes a database that no server uses: say so
        typer.echo(f"(no database was at {_safe_url(url)}: a new one was created for this token)", err=True)
    # Where it went, on stderr (stdout is the secret alone, for scripts): with DEVASSIGN_URL
    # pointing at a server on another database, a token written here is one that server
    # refuses.
    typer.echo(
        f"(stored in the database {_safe_url(url)}; a server on another database does not know it: "
        "--via-api, or DEVASSIGN_TOKEN without --db, makes the token through the server)",
        err=True,
    )


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--revoked", help="Show revoked tokens too")] = False,
    fmt: inventory_cli.FormatOpt = Format.table,
) -> None:
    """Tokens (never their secrets): id, name, role, scope, created, revoked."""
    rows = inventory_cli.client(ctx).get("/v1/tokens", revoked=str(revoked).lower())
    columns = [
        ("id", lambda t: t["id"]),
        ("name", lambda t: t["name"]),
        ("role", lambda t: t["role"]),
        ("host", lambda t: t["host"]),
        ("project", lambda t: t["project"]),
        ("created", lambda t: when(t["created_at"])),
        ("revoked", lambda t: when(t["revoked_at"])),
    ]
    emit(rows, fmt, columns)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[int, typer.Argument(help="From `token list`")]
) -> None:
    """Revoke a token: its secret stops working (other server replicas within 10 s)."""
    gone = inventory_cli.client(ctx).delete(api_path("/v1/tokens/{}", token_id))
    typer.echo(f"revoked token {gone['id']} ({gone['name']})")


@token_app.command("login-link")
def token_login_link(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The token to sign in as (`token list`)")],
) -> None:
    """Print a one-time link that signs a browser in to the dashboard as a token (admin).

    The link works once, within 10 minutes; the dashboard session it starts lasts 12 hours.
    """
    made = inventory_cli.client(ctx).post(api_path("/v1/tokens/{}/login-link", token_id))
    typer.echo(made["url"])
    typer.echo(f"(works once, until {when(made['expires_at'])} UTC)", err=True)


def _new_sqlite_file(url: str | None) -> bool:
    """Whether ``url`` (given, not the default) names an SQLite file that does not exist yet."""
    from sqlalchemy.exc import ArgumentError

    from devassign.store.db import sqlite_file

    if not url or not url.startswith("sqlite"):
        return False
    try:
        path = sqlite_file(url)
        return path is not None and not path.exists()
    except (ArgumentError, ValueError, OSError):
        return False  # _check_db_url says what is wrong with it


def _pydantic_message(exc: Any) -> str:
    def said(e: Any) -> str:
        where = ".".join(str(p) for p in e["loc"])  # none: a rule between options
        what = e["msg"].removeprefix("Value error, ")
        return f"{where}: {what}" if where else what

    return "; ".join(said(e) for e in exc.errors())


@app.command()
def demo(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port for the demo server")] = 8470,
    hosts: Annotated[int, typer.Option(min=1, max=1000, help="How many simulated hosts (1 to 1000)")] = 3,
    keep_running: Annotated[
        bool, typer.Option("--keep-running/--exit", help="Keep the server up afterwards")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="A folder for the demo's files, kept afterwards: new, empty, or one an earlier demo "
            "made (default: a temporary folder, removed at the end)"
        ),
    ] = None,
) -> None:
    """A whole cloud on this machine: a server on SQLite, simulated hosts with real agents,
    claims, setup, a release and its cleanup.

    With --keep-running it stays up and prints a one-time sign-in link to the dashboard and an
    admin token for the CLI.
    """
    from devassign.cli.demo import run_demo

    run_demo(port=port, n_hosts=hosts, keep_running=keep_running, data_dir=data_dir)


def _mount_optional() -> None:
    """Subsystems that bring their own command groups."""
    try:
        from devassign.agent.cli import app as agent_app
    except ModuleNotFoundError as exc:  # the agent package is being built
        if not (exc.name or "").startswith("devassign.agent"):
            raise
    else:
        app.add_typer(agent_app, name="agent", help="The host agent: discover and report devices.")


_mount_optional()


def _plain_help() -> None:
    """Help as a shell user reads it: a flag takes no value (newer Typers show ``<bool>`` after
    it) and the usage line names arguments in capitals (``NAME``, ``[LIMIT]``), not ``{name}``.
    Typers without those methods already print it so and are left alone."""
    from typer import core

    option: Any = getattr(core, "TyperOption", None)
    if option is not None and callable(getattr(option, "display_type_rich", None)):
        typed = option.display_type_rich

        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if self.is_flag else typed(self, ctx)

        option.display_type_rich = display_type_rich
    argument: Any = getattr(core, "TyperArgument", None)
    if argument is not None and callable(getattr(argument, "_usage_display_name", None)):

        def usage_name(self: Any) -> str:
            name = str(self.metavar or self.name or "").upper()
            if not self.required:
                name = f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_name


_plain_help()


def run(args: Sequence[str] | None = None) -> int:
    """Run the program on ``args`` (default: the command line); returns the exit status.

    Typer is run outside its standalone mode so that :class:`CliError` is ours to print. Click's
    exceptions (usage errors, a group given no command) are recognised by what they do, ``show()``
    and ``exit_code``, not by class: Typer bundles its own copy of click, and another version may
    bring it back as a dependency.
    """
    try:
        result = app(args=args, prog_name="devassign", standalone_mode=False)
    except CliError as exc:
        said = printable(exc.message)  # it may quote what an agent or a tenant wrote
        typer.secho(f"error: {said}" + (f" [{exc.code}]" if exc.code else ""), fg="red", err=True)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if callable(getattr(exc, "show", None)) and isinstance(code, int):
            message = getattr(exc, "message", None)
            if isinstance(message, str):  # Typer's choice check words it as a pydantic error
                exc.message = message.removeprefix("Value error, ")  # type: ignore[attr-defined]
            exc.show()  # type: ignore[attr-defined]  # usage and one line (or the help, for a group)
            return code
        if isinstance(code, int):  # an Exit that got past Typer
            return code
        if type(exc).__name__ == "Abort":  # click's Abort: end of input at a prompt
            typer.echo("Aborted.", err=True)
            return ExitCode.ERROR
        if isinstance(exc, UnicodeEncodeError) and "surrogates" in str(exc):
            # Bytes of the command line that are not UTF-8 (Python keeps them as lone surrogates)
            # reached a request, a URL or a file name: the user's input, not a bug.
            bad = printable(exc.object[max(0, exc.start - 20) : exc.end + 20])
            typer.secho(
                f"error: a value given holds bytes that are not UTF-8 text (near {bad!r}): give names "
                "and values as UTF-8",
                fg="red",
                err=True,
            )
            return ExitCode.USAGE
        if os.environ.get("DEVASSIGN_DEBUG"):
            raise
        # An answer the command could not read (a server that is not devassign's, or broken),
        # or a bug: one line, as every other error; DEVASSIGN_DEBUG=1 shows the traceback.
        said = printable(f"{type(exc).__name__}: {exc}")[:300]
        typer.secho(
            f"error: unexpected {said} (an answer this command cannot read, or a bug; "
            "DEVASSIGN_DEBUG=1 shows where)",
            fg="red",
            err=True,
        )
        return ExitCode.ERROR
    # Outside standalone mode Typer returns the code of a ``typer.Exit(code)``, else what the
    # command returned (our commands return None).
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
