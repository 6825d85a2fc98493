"""Throw-away PostgreSQL clusters of our own: a primary, optionally with a streaming hot
standby under synchronous replication, on free loopback ports, with data folders and unix
sockets in one temporary directory.

Built with the PostgreSQL binaries (``pg_config --bindir`` or /usr/lib/postgresql/*/bin). initdb
refuses to run as root, so as root every binary runs as the ``postgres`` user (``runuser``) and
the temporary directory is made theirs. The machine's own cluster is never touched: nothing
here connects to a port it did not pick itself, and only processes it started are killed.
Everything waits on a condition with a deadline, never for a guessed time.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REQUIRE_PG_ENV = "DEVASSIGN_REQUIRE_PG"
TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
STANDBY_NAME = "standby1"


class Unavailable(Exception):
    """The PostgreSQL binaries (or a user to run them as) are not on this machine."""


def wait_for(
    what: str, condition: Callable[[], bool], *, timeout: float = 60.0, every: float = 0.05
) -> float:
    """Poll ``condition`` until it holds; the seconds that took. Fails naming ``what`` after
    ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def bindir() -> Path:
    """The folder of initdb, pg_ctl and pg_basebackup, or :class:`Unavailable` saying why."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
        candidates.append(Path(out.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in TOOLS):
            return folder
    raise Unavailable("PostgreSQL binaries (initdb, pg_ctl, pg_basebackup) not found")


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix and the uid/gid the binaries run as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no postgres user to run initdb as") from None
    if shutil.which("runuser") is None:
        raise Unavailable("running as root and runuser is missing")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One PostgreSQL server (postmaster) of ours."""

    name: str
    data: Path
    port: int
    pids: set[int] = field(default_factory=set)  # postmasters and backends we saw, for teardown

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=3"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def query(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        with psycopg.connect(self.conninfo(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def accepts(self) -> bool:
        try:
            self.query("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def remember_processes(self) -> None:
        """The postmaster and its children as they are now, so teardown can end them."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        self.pids.add(pid)
        self.pids.update(_children(pid))


def _children(parent: int) -> set[int]:
    found: set[int] = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.add(int(stat.split("/")[2]))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Cluster:
    """A primary and, after :meth:`add_standby`, a synchronous hot standby. Use as a context
    manager (``with Cluster() as c``): both are stopped and the folder removed on the way out,
    also when the test failed."""

    def __init__(self, *, max_connections: int = 50, extra_conf: dict[str, str] | None = None) -> None:
        self.bin = bindir()
        self.prefix, uid, gid = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="devassign-pg-"))
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        self.max_connections = max_connections
        self.extra_conf = extra_conf or {}
        self.primary = Node("primary", self.root / "primary", free_port())
        self.standby: Node | None = None
        self.nodes = [self.primary]
        self.synchronous = False

    # ------------------------------------------------------------- processes

    def _tool(self, tool: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self.prefix, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def _write_conf(self, node: Node, settings: dict[str, str]) -> None:
        # postgresql.auto.conf is read last: what we append there wins over postgresql.conf
        lines = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        with open(node.data / "postgresql.auto.conf", "a") as f:
            f.write(lines)

    def start(self, node: Node) -> None:
        self._tool(
            "pg_ctl",
            "-D",
            str(node.data),
            "-l",
            str(self.root / f"{node.name}.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        node.remember_processes()

    def log(self, node: Node) -> str:
        try:
            return (self.root / f"{node.name}.log").read_text()
        except OSError:
            return ""

    # ------------------------------------------------------------- building

    def init_primary(self, *, synchronous: bool) -> Node:
        node = self.primary
        self._tool(
            "initdb",
            "-D",
            str(node.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = {
            "port": str(node.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "max_connections": str(self.max_connections),
            "shared_buffers": "32MB",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            # These clusters die by SIGKILL of processes, never of the machine: the page cache
            # survives, so fsync only costs time here.
            "fsync": "off",
            "synchronous_commit": "on",
            **self.extra_conf,
        }
        self.synchronous = synchronous
        if synchronous:
            conf["synchronous_standby_names"] = STANDBY_NAME
        self._write_conf(node, conf)
        self.start(node)
        return node

    def add_standby(self) -> Node:
        """A streaming hot standby of the primary, named so the primary waits for it on every
        commit; returns once the primary reports it as its synchronous standby."""
        node = Node("standby", self.root / "standby", free_port())
        self._tool(
            "pg_basebackup",
            "-d",
            f"host=127.0.0.1 port={self.primary.port} user=postgres application_name={STANDBY_NAME}",
            "-D",
            str(node.data),
            "-X",
            "stream",
            "-R",
            "--no-sync",
        )
        self._write_conf(
            node,
            {
                "port": str(node.port),
                "primary_conninfo": f"host=127.0.0.1 port={self.primary.port} user=postgres "
                f"application_name={STANDBY_NAME}",
                # Once promoted it is alone: were it to wait for a synchronous standby (the
                # primary's setting, copied by pg_basebackup), every commit would hang.
                "synchronous_standby_names": "",
            },
        )
        self.standby = node
        self.nodes.append(node)
        self.start(node)
        wanted = "sync" if self.synchronous else "async"
        wait_for(
            f"the standby to stream ({wanted})",
            lambda: (
                self.primary.query(
                    f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
                )
                == [(wanted,)]
            ),
        )
        return node

    def create_database(self, name: str) -> None:
        self.primary.query(f'CREATE DATABASE "{name}"')

    # ------------------------------------------------------------- failover

    def kill_primary(self) -> float:
        """SIGKILL the primary's postmaster (its backends end when they notice); returns the
        monotonic time of the kill, once nothing answers on its port any more."""
        node = self.primary
        node.remember_processes()
        pid = node.postmaster_pid()
        assert pid is not None, "the primary is not running"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for("the killed postmaster to be gone", lambda: not _alive(pid))
        wait_for("the primary's port to refuse connections", lambda: not node.accepts())
        return killed

    def promote_standby(self) -> float:
        """``pg_ctl promote`` the standby and wait until it takes writes; the monotonic time
        it did."""
        assert self.standby is not None
        self._tool("pg_ctl", "-D", str(self.standby.data), "-w", "-t", "60", "promote")
        wait_for(
            "the promoted standby to leave recovery",
            lambda: (
                self.standby is not None and self.standby.query("SELECT pg_is_in_recovery()") == [(False,)]
            ),
        )
        self.standby.remember_processes()
        return time.monotonic()

    def multi_host_url(self, dbname: str) -> str:
        """An SQLAlchemy URL naming every node; libpq connects to the one that takes writes."""
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in self.nodes)
        return f"postgresql+psycopg://postgres@/{dbname}?{hosts}&target_session_attrs=read-write&connect_timeout=3"

    def url(self, node: Node, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{node.port}/{dbname}"

    # ------------------------------------------------------------- teardown

    def close(self) -> None:
        """Stop every node of ours (immediate), end any process of theirs still alive, and
        remove the folder."""
        for node in self.nodes:
            if node.postmaster_pid() is not None and node.data.exists():
                node.remember_processes()
                with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                    self._tool(
                        "pg_ctl",
                        "-D",
                        str(node.data),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "30",
                        "stop",
                        timeout=60,
                    )
        for node in self.nodes:
            for pid in node.pids:
                if _alive(pid) and _owned_by_cluster(pid, self.root):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            for pid in node.pids:
                with contextlib.suppress(AssertionError):
                    wait_for(f"process {pid} to end", lambda pid=pid: not _alive(pid), timeout=10)  # type: ignore[misc]
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _owned_by_cluster(pid: int, root: Path) -> bool:
    """Whether ``pid`` is still a PostgreSQL process of ours (its data folder or its parent
    postmaster is under ``root``) and not a new process that reused the number."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "postgres" in cmdline or str(root) in cmdline


@contextlib.contextmanager
def cluster_or_skip(**kwargs: object) -> Iterator[Cluster]:
    """A :class:`Cluster`, or a pytest skip (a failure under DEVASSIGN_REQUIRE_PG=1) when this
    machine has no PostgreSQL binaries to build one with."""
    import pytest

    try:
        cluster = Cluster(**kwargs)  # type: ignore[arg-type]
    except Unavailable as exc:
        if os.environ.get(REQUIRE_PG_ENV) == "1":
            pytest.fail(f"{REQUIRE_PG_ENV}=1 but a PostgreSQL cluster cannot be built here: {exc}")
        pytest.skip(f"cannot build a PostgreSQL cluster: {exc}")
    with cluster:
        yield cluster
