"""Engines, transactions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode and takes its write lock up front (``BEGIN IMMEDIATE``) so two
writers never deadlock upgrading a read lock; PostgreSQL runs at READ COMMITTED and relies
on conditional updates whose row counts are checked, plus unique indexes.

A database that is overloaded, unreachable or failing over is the client's to wait out, not a
bug: :func:`busy_error` names those failures (a refused connection, an exhausted pool, a
statement or lock timeout, a standby that refuses writes) and the server answers them with 503
``database_busy`` and ``Retry-After`` (docs/operations.md, "Overload" and "Database failover").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import psycopg.rows
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from platformdirs import user_data_dir

from devassign.errors import DATABASE_BUSY, DevassignError
from devassign.store.pgconn import UNANSWERED, BoundedConnection, answer_limit, effective_timeout

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = str(Path(__file__).parent / "migrations")
# How often a replica asks again for the migration lock another one holds (seconds).
_MIGRATION_LOCK_POLL = 0.2
# An arbitrary constant: PostgreSQL advisory lock taken while migrating, so replicas
# starting together do not race each other through the same migration.
_MIGRATION_LOCK = 0x6465_7661

# One server process's share of the database (``Settings`` and ``devassign server`` use these).
POOL_SIZE = 10
# Seconds a request waits for one of its process's pooled connections before it is answered
# 503 (every connection busy: more concurrent requests than the pool, or slow statements).
POOL_TIMEOUT = 10.0
# Seconds one statement may run (PostgreSQL ``statement_timeout``; on SQLite the busy timeout,
# how long a write waits for another process's write lock). Migrations run without it.
STATEMENT_TIMEOUT = 30.0
# Seconds a PostgreSQL statement may wait for a row or table lock (0: only the statement
# timeout bounds the wait).
LOCK_TIMEOUT = 0.0
# Seconds to open one connection to one host of the URL (libpq ``connect_timeout``), unless
# the URL says otherwise: a host that does not answer at all (not even a refusal) costs this.
CONNECT_TIMEOUT = 5


class ConcurrentChange(Exception):
    """A row this transaction read was changed or deleted by another that committed since:
    :meth:`Database.retrying` runs the work again in a fresh transaction."""


class SchemaError(RuntimeError):
    """The database schema is not the one this code expects; the message says what to run."""


def default_url() -> str:
    """An SQLite file in the user's data folder: no setup at all."""
    folder = Path(os.environ.get("DEVASSIGN_DATA_DIR") or user_data_dir("devassign"))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'devassign.db'}"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for both."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, or ``None`` for an in-memory database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 whatever the umask, unless it exists: the database
    holds token hashes and every tenant's allocations. An existing file keeps its mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask; this is not
    finally:
        os.close(fd)


def _private_journals(path: Path) -> None:
    """SQLite gives -wal and -shm the main file's mode; make sure of it for a private database
    (a umask or an older file could leave them readable to others)."""
    try:
        if path.stat().st_mode & 0o077:
            return  # the operator shares the database on purpose: leave its journals alone
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):  # absent yet, or another user's
            journal = path.with_name(path.name + suffix)
            if journal.stat().st_mode & 0o077:
                journal.chmod(0o600)


def _stat(path: Path) -> os.stat_result | None:
    """The file's status; None when it is not there. Another failure (EIO, ESTALE on a network
    file system, EACCES while a folder's mode changes) says nothing about the file: raised."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


class _FileWatch:
    """The SQLite file a server opened stays the one at its path: deleted or replaced under
    a running server, the open connections still write into the old file and every write
    acknowledged from then on is gone at the next start. A write (or a new connection) then
    is refused (503 ``file_gone``) until a restart, and the server says so once, loudly.
    Told by the file's identity (device, inode); connections open the file and never create
    it (``_before_connect``), so a deleted file is not replaced by an empty one of ours."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            st = _stat(path)
        except OSError:
            st = None
        self.identity = (st.st_dev, st.st_ino) if st else None
        self.gone = False
        self._lock = threading.Lock()

    def check(self) -> None:
        if self.identity is None:
            return
        with self._lock:
            self._check()

    def _check(self) -> None:
        if not self.gone:
            try:
                st = _stat(self.path)
            except OSError:
                return  # cannot tell now (see _stat): the next check will
            if st is not None and (st.st_dev, st.st_ino) == self.identity:
                return
            self.gone = True
            log.error(
                "the database file %s was deleted or replaced while this server runs: writes are "
                "refused from now on (they would be lost). Stop the server, put the database back "
                "(the file, or a backup: docs/operations.md) and start it again",
                self.path,
            )
        raise DevassignError(
            DATABASE_BUSY,
            f"the database file {self.path.name} was deleted or replaced under the server; an operator "
            "must restore it and restart the server",
            reason="file_gone",
        )


# SQLite's primary result codes (``sqlite_errorcode & 0xff``) of a database that cannot serve
# now: the reason and message of the 503. READONLY, IOERR and CANTOPEN may be a connection
# opened while the file could not be written: such a connection is dropped (``_on_error``).
_SQLITE_BUSY_CODES: dict[int, tuple[str, str]] = {
    5: ("locked", "another process holds the database's write lock"),  # SQLITE_BUSY
    6: ("locked", "another process holds the database's write lock"),  # SQLITE_LOCKED
    8: ("read_only", "the database file cannot be written (a read-only file or file system?)"),
    10: ("io_error", "the database file could not be read or written (a disk I/O error)"),
    13: ("disk_full", "the disk holding the database is full"),  # SQLITE_FULL
    14: ("cannot_open", "the database file cannot be opened"),  # SQLITE_CANTOPEN
}
_SQLITE_STALE_CODES = frozenset({8, 10, 14})
_SQLITE_TEXTS: tuple[tuple[str, int], ...] = (
    ("locked", 5),
    ("busy", 5),
    ("readonly database", 8),
    ("disk i/o error", 10),
    ("database or disk is full", 13),
    ("unable to open database", 14),
)


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    """The primary result code of an SQLite error (from its text where Python gives none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    return next((c for needle, c in _SQLITE_TEXTS if needle in text), None)


def _sqlite_setup(engine: sa.Engine, path: Path | None, busy_timeout_ms: int) -> None:
    watch = _FileWatch(path) if path is not None else None

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(ctx: sa.engine.ExceptionContext) -> None:
        # A connection opened while the file could not be written stays read-only for good:
        # drop it (and the pool's others) so that the next try opens the file afresh.
        orig = ctx.original_exception
        if isinstance(orig, sqlite3.Error) and _sqlite_code(orig) in _SQLITE_STALE_CODES:
            ctx.is_disconnect = True

    @sa.event.listens_for(engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        # The file exists (``create_private``): a connection opens it and never creates one, so
        # a deleted file is refused, not replaced by an empty database (and the pool's new
        # connections never reach a file put in the old one's place).
        if watch is None:
            return
        watch.check()
        if cargs and not cparams.get("uri"):
            cargs[0] = f"file:{quote(str(cargs[0]), safe='/')}?mode=rw"
            cparams["uri"] = True

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        cur.close()
        if path is not None:
            _private_journals(path)

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("devassign_write", False)
        if write and watch is not None:
            watch.check()
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """One database: its engine, its transactions and its schema version.

    ``pool_size`` connections are kept per process, ``max_overflow`` more are opened in bursts
    (PostgreSQL: half the pool by default); a request waits ``pool_timeout`` seconds for one,
    a statement runs at most ``statement_timeout`` seconds and waits at most ``lock_timeout``
    for a lock (0: no limit of its own). A PostgreSQL URL may name several hosts, the primary
    and its standbys (``?host=h1:5432&host=h2:5432&target_session_attrs=read-write`` or libpq's
    ``?host=h1,h2&port=5432,5432&...``): libpq connects to the one that takes writes.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        echo: bool = False,
        pool_size: int = POOL_SIZE,
        max_overflow: int | None = None,
        pool_timeout: float = POOL_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.url = normalize_url(url or default_url())
        self.is_sqlite = self.url.startswith("sqlite")
        for name, value in (
            ("pool_timeout", pool_timeout),
            ("statement_timeout", statement_timeout),
            ("lock_timeout", lock_timeout),
        ):
            if not 0 <= value < float("inf"):  # NaN too
                raise ValueError(f"{name} must be a number of seconds, 0 or more, not {value!r}")
        if pool_size < 1 or (max_overflow is not None and max_overflow < 0):
            raise ValueError("the pool needs at least one connection and no negative overflow")
        self.pool_timeout = pool_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "pool_timeout": pool_timeout}
        sqlite_path = sqlite_file(self.url) if self.is_sqlite else None
        if self.is_sqlite:
            if sqlite_path is not None:
                create_private(sqlite_path)
            # A write waits this long for another process's write lock (the busy handler);
            # 0 would mean "fail at once", so the statement timeout's 0 (none) is a day here.
            busy = statement_timeout or 86_400.0
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy}
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = 10 if max_overflow is None else max_overflow
            kwargs["poolclass"] = sa.pool.QueuePool
        else:
            # Several replicas share PostgreSQL's max_connections (100 by default): keep each
            # process's share small; requests wait briefly for a connection instead.
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size // 2 if max_overflow is None else max_overflow
            # No pre-ping: it costs a round trip per transaction (two per claim). A connection
            # that died (server restart, failover) fails its statement instead; SQLAlchemy then
            # drops the whole pool (``_postgresql_setup`` also counts a standby's refusal to
            # write as such a death), and ``retrying`` (writes) or ``reading`` (reads) runs the
            # work once more on a fresh connection, which libpq opens to the URL's primary.
            kwargs["pool_recycle"] = 3600
            kwargs["connect_args"] = _postgresql_connect_args(self.url, statement_timeout, lock_timeout)
            # psycopg prepares repeated statements and PostgreSQL reuses their generic plans
            # (plan_cache_mode=auto): forcing a fresh plan per execution cost 0.8 ms of database
            # CPU per claim (read from /proc, as bench/workers.py does). The candidate query keeps
            # its LIMIT literal so its generic plan is the ordered index scan, and the sweeper's ANALYZE
            # (Store.refresh_statistics) keeps the statistics those plans rest on fresh.
        self.engine = sa.create_engine(self.url, **kwargs)
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        # Reads on PostgreSQL run in autocommit: at READ COMMITTED every statement has its own
        # snapshot anyway, and BEGIN/COMMIT would be two more round trips per read. SQLite keeps
        # a transaction, which gives its reads one snapshot.
        self._reader = (
            self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        if self.is_sqlite:
            _sqlite_setup(self.engine, sqlite_path, round(kwargs["connect_args"]["timeout"] * 1000))
        else:
            options = sa.engine.make_url(self.url).query.get("options")
            given = " ".join([options] if isinstance(options, str) else list(options or ()))
            _postgresql_setup(self.engine, answer_limit(effective_timeout(statement_timeout, given)))

    def dispose(self) -> None:
        self.engine.dispose()

    def close(self) -> None:
        """At a server's stop. SQLite: move the write-ahead log into the database file first,
        so that a stopped server leaves one self-contained file (a backup restored over it is
        not undone by an old ``-wal`` replayed on top). Busy (another process writing): the
        log stays, as it would have."""
        try:
            if self.is_sqlite:
                self._checkpoint()
        except Exception as exc:  # the stop goes on: the log stays, as after a kill
            log.warning("could not move the write-ahead log into the database at stop: %s", exc)
        finally:
            self.engine.dispose()

    def _checkpoint(self) -> None:
        raw = self.engine.raw_connection()  # no BEGIN: a checkpoint runs outside a transaction
        try:
            cur = raw.cursor()
            # Another process reading (an operator's sqlite3 shell, a backup) makes the checkpoint
            # wait: briefly, not the statement timeout (a stop must end well within systemd's).
            cur.execute("PRAGMA busy_timeout = 2000")
            busy, _, _ = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("the write-ahead log stays beside the database: another process holds it")
        finally:
            raw.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for reads (a transaction on SQLite, autocommit on PostgreSQL)."""
        with self._reader.connect() as conn, conn.begin():
            yield conn

    def reading(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` in :meth:`read`, once more on a fresh connection if the pooled one had
        died (a database restart: without a pre-ping the pool finds out on first use)."""
        for attempt in (1, 2):
            try:
                with self.read() as conn:
                    return fn(conn)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue
                busy = busy_error(exc)
                if busy is None:
                    raise
                raise busy from exc
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on success, rolled back on any exception.

        On SQLite the threads of this process queue on a lock first: SQLite lets one writer
        in at a time anyway, and its busy handler makes waiters sleep up to 100 ms between
        tries, which gave concurrent claims a tail of seconds.
        """
        with (
            self._write_lock,
            self.engine.connect().execution_options(devassign_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    def retrying(self, fn: Callable[[sa.Connection], T], *, attempts: int = 5) -> T:
        """Run ``fn`` in a fresh write transaction, retrying on serialization failures and on
        integrity violations caused by a concurrent commit.

        Each attempt starts a new transaction: a retry never sees its own uncommitted rows
        (the cause of Placement 16.0.0's over-allocation).
        """
        for attempt in range(attempts):
            try:
                with self.write() as conn:
                    return fn(conn)
            except ConcurrentChange as exc:
                if attempt == attempts - 1:
                    raise DevassignError(
                        DATABASE_BUSY, f"{exc}; retry the request", reason="contention"
                    ) from exc
                time.sleep(0.01 * (2**attempt))
            except sa.exc.IntegrityError:
                # At READ COMMITTED a concurrent transaction can commit between our check and
                # our write (a type deleted while a report inserts its devices, a device
                # allocated while its host is deleted): a fresh attempt reads the new state and
                # gives the domain's answer (unknown type, type in use, ...). A violation that
                # persists is a bug and is raised.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (2**attempt))
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated and attempt < attempts - 1:
                    # A pooled connection died (server restart, failover) or reached a standby:
                    # the pool was dropped, the next attempt opens a fresh connection.
                    continue
                if _is_contention(exc) and attempt < attempts - 1:
                    time.sleep(0.01 * (2**attempt))
                    continue
                busy = busy_error(exc)
                if busy is None:
                    raise
                raise busy from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- schema

    def _alembic_config(self, conn: sa.Connection | None = None) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["connection"] = conn
        return cfg

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def clock_skew(self) -> float | None:
        """Seconds this process's clock is ahead of PostgreSQL's (negative: behind); ``None``
        on SQLite, which has no clock of its own. Replicas judge hosts' liveness by their own
        clocks against times other replicas wrote: one far off flaps every host."""
        if self.is_sqlite:
            return None
        with self.engine.connect() as conn:
            before = time.time()
            theirs = float(conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
            after = time.time()
        return (before + after) / 2 - theirs

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self) -> tuple[str | None, str | None]:
        """Migrate to the newest schema; returns (before, after) revisions."""
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            bounded = raw.answer_within if isinstance(raw, BoundedConnection) else None
            if not self.is_sqlite:
                # A migration (an index on a large table) and the wait for another replica's
                # migration may take longer than a request's statement: no timeouts here.
                if isinstance(raw, BoundedConnection):
                    raw.answer_within = None
                conn.execute(sa.text("SET statement_timeout = 0"))
                conn.execute(sa.text("SET lock_timeout = 0"))
                conn.commit()
                # Wait outside any transaction: a replica blocked in pg_advisory_lock holds a
                # snapshot, which the holder's CREATE INDEX CONCURRENTLY waits for (a deadlock).
                try_lock = sa.text("SELECT pg_try_advisory_lock(:k)")
                while not conn.execute(try_lock, {"k": _MIGRATION_LOCK}).scalar_one():
                    conn.commit()
                    time.sleep(_MIGRATION_LOCK_POLL)
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                self.check_known(before)
                # Alembic opens a transaction per migration on a connection outside one (a
                # migration that builds an index CONCURRENTLY commits what came before it).
                conn.commit()
                command.upgrade(self._alembic_config(conn), "head")
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
            finally:
                if not self.is_sqlite:
                    conn.rollback()
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                    # Back to the connection's own timeouts (its startup options) for the pool.
                    conn.execute(sa.text("RESET statement_timeout"))
                    conn.execute(sa.text("RESET lock_timeout"))
                    conn.commit()
                    if isinstance(raw, BoundedConnection):
                        raw.answer_within = bounded
        return before, after

    def check_known(self, revision: str | None) -> None:
        """Refuse a revision this code does not know: a newer version wrote the database."""
        script = ScriptDirectory.from_config(self._alembic_config())
        if revision is None:
            return
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
        if not known:
            raise SchemaError(
                f"the database is at schema revision {revision}, which this devassign does "
                "not know: it was written by a newer version; upgrade devassign"
            )

    def ensure_schema(self, *, migrate: bool) -> None:
        """Migrate on start (``migrate``) or refuse with a message that says what to run."""
        if migrate:
            before, after = self.upgrade()
            if before != after:
                log.info("database schema migrated from %s to %s", before, after)
            return
        current, head = self.current_revision(), self.head_revision()
        self.check_known(current)
        if current != head:
            raise SchemaError(
                f"the database schema is at {current or 'nothing'} but this devassign needs "
                f"{head}: run `devassign db upgrade --db URL` first"
            )


def _postgresql_connect_args(url: str, statement_timeout: float, lock_timeout: float) -> dict[str, Any]:
    """Timeouts as libpq startup options (no round trip per connection); what the URL's own
    ``options`` and ``connect_timeout`` say comes last and wins."""
    query = sa.engine.make_url(url).query
    options = [
        f"-c statement_timeout={round(statement_timeout * 1000)}",
        f"-c lock_timeout={round(lock_timeout * 1000)}",
    ]
    given = query.get("options")
    options.extend([given] if isinstance(given, str) else list(given or ()))
    args: dict[str, Any] = {"options": " ".join(options)}
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT
    # A database host that drops off the network (not refusing: gone) would hold a request's
    # connection for as long as the kernel's TCP retries last (some 15 minutes): the kernel
    # gives up on unanswered probes and unacknowledged data after these, and the request is a
    # 503. (A server process that is alive but stopped still acknowledges: ``pgconn`` bounds
    # the wait for its answers instead.)
    for key, value in _TCP_GIVE_UP.items():
        if key not in query:
            args[key] = value
    return args


# libpq's TCP settings: probe an idle connection after 10 s, every 5 s, 3 times; data unacknowledged
# for 30 s (a statement's timeout beside it) closes the connection.
_TCP_GIVE_UP = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _postgresql_setup(engine: sa.Engine, answer_within: float | None) -> None:
    @sa.event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> BoundedConnection:
        conn = BoundedConnection.connect(*cargs, **cparams)
        conn.answer_within = answer_within
        return conn

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(context: sa.engine.ExceptionContext) -> None:
        if _standby(context.original_exception):
            context.is_disconnect = True


def _standby(exc: BaseException) -> bool:
    """A standby (the old primary after a failover, or a host libpq picked without
    target_session_attrs=read-write) refuses writes on a healthy connection: count it as a
    lost one, so the pool is dropped and fresh connections go to the primary."""
    return isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)


def _lost(conn: sa.Connection, exc: psycopg.Error, cursor: Any) -> bool:
    """Whether ``exc`` means the connection is no good any more (as SQLAlchemy judges its own
    statements' errors, with :func:`_standby`)."""
    if _standby(exc):
        return True
    return bool(conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor))  # type: ignore[arg-type]


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


def driver_rows(conn: sa.Connection, sql: str, params: dict[str, Any], *, named: bool = True) -> list[Any]:
    """Run ``sql`` (psycopg's ``%(name)s`` parameters) on the PostgreSQL connection under
    ``conn``, in its transaction; its rows as named tuples (plain tuples with ``named=False``,
    for a caller that reads many rows by position).

    For the claim's few fixed statements, run thousands of times a minute: SQLAlchemy's
    execution and result objects cost some 80 µs a statement on top of psycopg's 40
    (docs/benchmarks.md). A failure is raised as ``conn.execute`` raises it (the SQLAlchemy
    exception of the driver's, a lost connection invalidated), so retries and the 503 of a
    busy database treat it alike.
    """
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    cursor = raw.cursor(row_factory=psycopg.rows.namedtuple_row if named else psycopg.rows.tuple_row)
    try:
        cursor.execute(sql, params, prepare=True)
        # The result's status, not ``cursor.description``: that builds a Column per field.
        result = cursor.pgresult
        return cursor.fetchall() if result is not None and result.status == _TUPLES_OK else []
    except psycopg.Error as exc:
        lost = _lost(conn, exc, cursor)
        if lost:
            # As SQLAlchemy does for its own statements: every pooled connection older than
            # this one is discarded too (a restarted database dropped them all), then this one.
            conn.engine.pool._invalidate(conn.connection, exc)
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, params, exc, psycopg.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


def _is_contention(exc: sa.exc.DBAPIError) -> bool:
    """Lost to a concurrent transaction (PostgreSQL deadlock or serialization failure): a
    fresh attempt a moment later usually succeeds. SQLite's "database is locked" is not one:
    its busy handler already waited the whole statement timeout for the lock."""
    return isinstance(exc.orig, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure)


# SQLSTATEs of a database that cannot serve now but will: (reason, what to say).
_BUSY_STATES: dict[str, tuple[str, str]] = {
    "53300": ("too_many_connections", "the database refuses more connections (too many clients)"),
    "53100": ("disk_full", "the database's disk is full"),
    "53200": ("out_of_memory", "the database is out of memory"),
    "57014": ("statement_timeout", "a database statement ran longer than the statement timeout"),
    "55P03": ("lock_timeout", "a database statement waited longer than the lock timeout"),
    "57P01": ("shutting_down", "the database is shutting down or was restarted"),
    "57P02": ("shutting_down", "the database crashed and is restarting"),
    "57P03": ("starting_up", "the database is starting up or recovering"),
    "25006": ("read_only", "the database is read-only (a standby: failing over?)"),
    "40001": ("contention", "the database aborted the transaction for a concurrent one"),
    "40P01": ("contention", "the database aborted the transaction for a concurrent one"),
}
# Text of connection failures, which libpq reports without a SQLSTATE.
_BUSY_TEXTS: tuple[tuple[str, str, str], ...] = (
    ("too many clients", "too_many_connections", "the database refuses more connections (too many clients)"),
    ("too many connections", "too_many_connections", "the database refuses more connections"),
    ("remaining connection slots", "too_many_connections", "the database refuses more connections"),
    ("read-only", "read_only", "the database is read-only (a standby: failing over?)"),
    ("hot standby", "read_only", "the database is read-only (a standby: failing over?)"),
    ("starting up", "starting_up", "the database is starting up or recovering"),
    ("recovery mode", "starting_up", "the database is starting up or recovering"),
    ("shutting down", "shutting_down", "the database is shutting down"),
    (UNANSWERED, "unanswered", "the database did not answer in time (stopped or wedged?)"),
)


def busy_error(exc: BaseException) -> DevassignError | None:
    """:data:`DATABASE_BUSY` (503) for a failure that says the database cannot serve now but
    will: unreachable or failing over, refusing connections, an exhausted connection pool, a
    statement or lock timeout, a standby refusing writes, SQLite's write lock held too long.
    ``None`` for anything else (a bug or a bad request, as before).

    The error's ``reason`` says which (``pool_exhausted``, ``too_many_connections``,
    ``statement_timeout``, ``lock_timeout``, ``read_only``, ``unreachable``, ...)."""
    if isinstance(exc, sa.exc.TimeoutError):  # QueuePool: no connection came free in time
        return _busy("pool_exhausted", "every database connection of this server is in use")
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = _sqlite_code(orig)
        return _busy(*_SQLITE_BUSY_CODES[code]) if code in _SQLITE_BUSY_CODES else None
    if isinstance(orig, psycopg.Error):
        state = orig.sqlstate or ""
        if state in _BUSY_STATES:
            return _busy(*_BUSY_STATES[state])
        if isinstance(orig, psycopg.OperationalError) and not state:
            text = str(orig).lower()
            for needle, reason, message in _BUSY_TEXTS:
                if needle in text:
                    return _busy(reason, message)
        if exc.connection_invalidated:
            return _busy("connection_lost", "the database connection was lost (restart or failover?)")
        if isinstance(orig, psycopg.OperationalError) and not state.startswith("54"):
            # connection refused or reset, host unreachable (08...), resources (53...),
            # system errors (58...); 54 (a statement too complex) is the request's problem.
            return _busy("unreachable", "the database cannot be reached or cannot serve now")
        return None
    if exc.connection_invalidated:
        return _busy("connection_lost", "the database connection was lost (restart or failover?)")
    return None


def busy_now(exc: BaseException) -> DevassignError | None:
    """:func:`busy_error`, or ``exc`` itself where the store has already said so: what a
    background task logs as one line while the database cannot serve (a traceback a second
    through an outage was noise, not news)."""
    if isinstance(exc, DevassignError):
        return exc if exc.code == DATABASE_BUSY else None
    return busy_error(exc)


def _busy(reason: str, message: str) -> DevassignError:
    return DevassignError(DATABASE_BUSY, f"{message}; retry the request later", reason=reason)
