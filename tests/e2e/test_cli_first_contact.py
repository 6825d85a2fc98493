"""The command line as a new operator meets it, run as a process the way a user runs it.

Usage errors are the usage and one line, exit 2 (whatever click Typer brings); every failure
exits non-zero with the documented code (docs/cli.md): 1 failed, 2 usage, 3 unreachable,
4 denied; a database URL that cannot be used is one line without its password; the demo never
deletes what it did not write; the agent says when a sysfs root is not one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import devassign
from devassign.agent.pciids import PCI_IDS_PATHS, find_pci_ids
from devassign.testing.sysfs import host
from tests.conftest import PG_ADMIN_URL, _pg_reachable
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # every test runs devassign as a process


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one ``error: ...`` line."""
    no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["release"], "Missing option '--consumer'"),
        (["devices", "--format", "xml"], "'xml' is not one of 'table', 'json'"),
        (["nope"], "No such command 'nope'"),
        (["agent", "run"], "Missing option '--config'"),
        (["db", "status", "--bogus"], "No such option: --bogus"),
        (["events", "--limit", "10001"], "'--limit'"),  # the server's most, checked before asking
        (["devices", "--limit", "0"], "'--limit'"),
    ],
)
def test_usage_errors_are_the_usage_and_one_line(args: list[str], says: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"Usage: devassign {args[0] if args[0] != 'nope' else ''}".rstrip())
    assert len(lines) <= 4, result.stderr
    assert lines[-1].startswith("Error: ") and says in lines[-1], result.stderr
    assert "Value error" not in result.stderr  # Typer's wording for a bad choice, tidied


@pytest.mark.parametrize("args", [[], ["db"], ["agent"], ["token"]])
def test_no_command_prints_the_help_and_exits_2(args: list[str]) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    both = result.stdout + result.stderr  # Typer's Rich help goes to stdout, click's to stderr
    assert f"Usage: devassign {' '.join(args)}".rstrip() in both and "Commands" in both


def test_version() -> None:
    result = cli("--version")
    assert result.stdout == f"devassign {devassign.__version__}\n"
    assert devassign.__version__ == version("devassign")


def test_help_lists_the_exit_codes() -> None:
    text = " ".join(cli("--help").stdout.replace("│", " ").split())
    assert "Exit codes: 0 done; 1 failed" in text
    for code in ("2 usage", "3 the server or the database could not be reached", "4 the server refused"):
        assert code in text


def test_usage_errors_without_the_click_package() -> None:
    """Typer bundles its own click; the handler must not need (or trust) the separate one."""
    program = (
        "import sys; sys.modules['click'] = None; "
        "from devassign.cli.main import run; sys.exit(run(sys.argv[1:]))"
    )
    for args, code in ((["nope"], 2), (["claim"], 2), ([], 2), (["--version"], 0)):
        result = subprocess.run(
            [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == code, result.stderr
        no_traceback(result)


# ---------------------------------------------------------------------------- exit codes


def test_server_unreachable_exits_3() -> None:
    result = cli("types", env={"DEVASSIGN_URL": "http://127.0.0.1:9"}, check=False)
    assert result.returncode == 3
    assert "cannot reach the devassign server" in one_line_error(result)


@pytest.mark.parametrize(
    ("url", "token", "says"),
    [
        ("http://[::1", None, "is not a URL"),
        ("ftp://127.0.0.1:9", None, "give http://HOST:PORT"),
        ("localhost:8470", None, "give http://HOST:PORT"),
        ("http://127.0.0.1:9", "ab\ncd", "DEVASSIGN_TOKEN holds spaces, newlines"),
        ("http://127.0.0.1:9", "tok én", "DEVASSIGN_TOKEN holds spaces, newlines"),
    ],
)
def test_a_malformed_url_or_token_is_a_usage_error_at_once(url: str, token: str | None, says: str) -> None:
    """Not a traceback, and not half a minute of retries of a request that cannot be sent."""
    env = {
        "DEVASSIGN_URL": url,
        **({"DEVASSIGN_TOKEN": token} if token else {}),
        "DEVASSIGN_RETRY_SECONDS": "30",
    }
    result = cli("types", env=env, check=False)
    assert result.returncode == 2, result.stderr
    assert says in one_line_error(result)


def _agent_config(tmp_path: Path, name: str, *, host: str, server: str, token: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'host = "{host}"\nserver = "{server}"\ntoken = "{token}"\nstate_file = "{tmp_path / name}.state"\n'
    )
    return path


@pytest.mark.slow
def test_refusals_exit_non_zero_with_their_code(tmp_path: Path) -> None:
    """Client and agent against a real server: 4 for credentials, 1 for other refusals."""
    db = f"sqlite:///{tmp_path / 'devassign.db'}"
    admin = cli("token", "create", "--role", "admin", "--db", db).stdout.strip()
    agent = cli("token", "create", "--role", "agent", "--host", "compute-1", "--db", db).stdout.strip()
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    with running_server(db, log=tmp_path / "server.log") as url:
        bad = cli("types", env={"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": "da_wrong"}, check=False)
        assert bad.returncode == 4 and "[unauthenticated]" in one_line_error(bad)
        none = cli("types", env={"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": ""}, check=False)
        assert none.returncode == 4, none.stderr
        missing = cli(
            "type", "show", "NOPE", env={"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}, check=False
        )
        assert missing.returncode == 1 and "[type_not_found]" in one_line_error(missing)

        def agent_run(name: str, **kw: str) -> subprocess.CompletedProcess[str]:
            conf = _agent_config(tmp_path, name, **{"host": "compute-1", "server": url, "token": agent, **kw})
            return cli("agent", "run", "--once", "-c", str(conf), "--sysfs-root", str(h.root), check=False)

        wrong_token = agent_run("wrong-token", token="da_wrong")
        assert wrong_token.returncode == 4 and "401" in one_line_error(wrong_token)
        other_host = agent_run("other-host", host="compute-2")
        assert other_host.returncode == 4 and "403" in one_line_error(other_host)
        not_found = agent_run("not-found", server=f"{url}/not-devassign")
        assert not_found.returncode == 1 and "404" in one_line_error(not_found)
        ok = agent_run("ok")
        assert ok.returncode == 0 and "reported 0 devices for host compute-1" in ok.stdout


@pytest.mark.slow
def test_agent_run_once_exits_3_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    """After its retries (about 15 s of backoff)."""
    h = host(tmp_path)
    conf = _agent_config(tmp_path, "down", host="h1", server="http://127.0.0.1:9", token="da_x")
    result = cli("agent", "run", "--once", "-c", str(conf), "--sysfs-root", str(h.root), check=False)
    assert result.returncode == 3, result.stderr
    no_traceback(result)
    assert result.stderr.strip().splitlines()[-1].startswith("error: server unavailable: http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("host = [", "not valid TOML"),
        ('host = "no spaces allowed"', "not a host name"),
    ],
)
def test_agent_with_a_missing_or_invalid_config_exits_2(
    tmp_path: Path, content: str | None, says: str
) -> None:
    conf = tmp_path / "agent.toml"
    if content is not None:
        conf.write_text(content + "\n")
    h = host(tmp_path)
    for command in ("discover", "run"):
        result = cli("agent", command, "-c", str(conf), "--sysfs-root", str(h.root), check=False)
        assert result.returncode == 2, result.stderr
        assert says in one_line_error(result)


# ---------------------------------------------------------------------------- database URLs


def _missing_pg_database() -> str:
    return (
        make_url(PG_ADMIN_URL)
        .set(database=f"devassign_absent_{uuid.uuid4().hex[:8]}")
        .render_as_string(hide_password=False)
    )


@pytest.mark.parametrize(
    "command",
    [
        ["db", "status"],
        ["db", "upgrade"],
        ["token", "create", "--role", "admin"],
        ["server", "--port", "0"],
    ],
)
def test_a_database_that_does_not_exist_is_one_line(command: list[str]) -> None:
    url = _missing_pg_database()
    name = make_url(url).database
    result = cli(*command, "--db", url, check=False)
    assert result.returncode == 3, result.stderr
    line = one_line_error(result)
    assert make_url(url).render_as_string(hide_password=True) in line and "DEVASSIGN_DB" in line
    if _pg_reachable() is None:
        assert f'database "{name}" does not exist' in line


def test_database_url_without_its_password() -> None:
    url = "postgresql://devassign:s3cret@127.0.0.1:9/devassign"
    result = cli("db", "status", env={"DEVASSIGN_DB": url}, check=False)
    assert result.returncode == 3
    line = one_line_error(result)
    assert "s3cret" not in line and "devassign:***@127.0.0.1:9/devassign" in line


@pytest.mark.parametrize(
    "url", ["nonsense://", "not a url", "mysql://user:s3cret@127.0.0.1/devassign", "sqlite:////proc/x/y.db"]
)
def test_a_database_url_devassign_cannot_use(url: str) -> None:
    result = cli("db", "status", "--db", url, check=False)
    # A SQLite file that is not there is a database that does not exist: 3, as on PostgreSQL.
    assert result.returncode == (3 if url.startswith("sqlite") else 2), result.stderr
    line = one_line_error(result)
    assert "s3cret" not in line
    assert "sqlite:///PATH" in line or "cannot create the SQLite database" in line or "no database at" in line


# ---------------------------------------------------------------------------- demo


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    result = cli("demo", "--data-dir", str(mine), check=False)
    assert result.returncode == 2
    assert ".devassign-demo" in one_line_error(result)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]

    a_file = tmp_path / "file"
    a_file.write_text("x\n")
    result = cli("demo", "--data-dir", str(a_file), check=False)
    assert result.returncode == 2 and "not a folder" in one_line_error(result)
    assert a_file.read_text() == "x\n"


def _time_wait_port() -> int:
    """A loopback port whose last connection is in TIME_WAIT, as after a server stopped."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server's side closes first, so its port is the one left in TIME_WAIT
        client.recv(1)
        client.close()
    return port


@pytest.mark.slow
def test_demo_cleans_up_its_temporary_folder_and_keeps_a_recently_used_port(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = _time_wait_port()
    result = cli("demo", "--hosts", "1", "--port", str(port), env={"TMPDIR": str(tmp)}, check=False)
    assert result.returncode == 0, result.stderr
    assert f"server on http://127.0.0.1:{port} " in result.stdout
    assert "in use" not in result.stdout
    # Its server stopped before it ended: the dashboard's address only as where --keep-running
    # serves it, never as one to visit now.
    assert "dashboard:" not in result.stdout
    [line] = [ln for ln in result.stdout.splitlines() if f":{port}/ui/" in ln]
    assert "--keep-running" in line, line
    assert list(tmp.iterdir()) == []


@pytest.mark.slow
def test_demo_moves_off_a_busy_port_and_reuses_its_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    (folder / "compute-1").mkdir(parents=True)
    (folder / "compute-1" / "leftover").write_text("from an earlier demo\n")
    (folder / "demo.db").write_text("not a database: deleted, or the demo could not start\n")
    (folder / "notes.txt").write_text("the user's, not listed in the marker\n")
    (folder / ".devassign-demo").write_text(json.dumps({"wrote": ["demo.db", "compute-1", "../outside"]}))
    (tmp_path / "outside").write_text("never touched\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = int(busy.getsockname()[1])
        result = cli("demo", "--hosts", "1", "--port", str(port), "--data-dir", str(folder), check=False)
    assert result.returncode == 0, result.stderr
    moved = [line for line in result.stdout.splitlines() if "in use" in line]
    assert len(moved) == 1 and f"port {port} is in use" in moved[0], result.stdout
    assert (folder / "notes.txt").is_file() and (tmp_path / "outside").is_file()
    assert not (folder / "compute-1" / "leftover").exists()
    assert (folder / "demo.db").stat().st_size > 1000  # a new SQLite database, kept
    assert "demo.db" in json.loads((folder / ".devassign-demo").read_text())["wrote"]


# ---------------------------------------------------------------------------- agent discover


def test_discover_on_a_folder_that_is_not_sysfs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("agent", "discover", "--sysfs-root", str(empty), check=False)
    assert result.returncode == 2
    assert "bus/pci" in one_line_error(result) and "bus/usb" in result.stderr


def test_discover_warns_about_a_missing_pci_bus(tmp_path: Path) -> None:
    usb_only = tmp_path / "sys"
    (usb_only / "bus/usb/devices").mkdir(parents=True)
    result = cli("agent", "discover", "--sysfs-root", str(usb_only), "-f", "json")
    assert json.loads(result.stdout) == []
    assert f"{usb_only}/bus/pci: no such folder" in result.stderr and "WARNING" in result.stderr

    # Declared units are devices too: a root without buses is then no mistake, only warned about.
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[resource]]\ntype = "TOKEN"\ninformation = "USB: 0529:0620"\ncount = 1\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("agent", "discover", "-c", str(conf), "--sysfs-root", str(empty), "-f", "json")
    assert [d["type"] for d in json.loads(result.stdout)] == ["TOKEN"]
    assert "bus/pci: no such folder" in result.stderr


def test_a_function_with_reset_method_but_no_reset_file_is_resettable(tmp_path: Path) -> None:
    """Capture tools drop the write-only ``reset``; the kernel shows both or neither."""
    h = host(tmp_path)
    captured = h.pci("0000:3b:00.0", "10de", "20b5", cls="030200", reset="flr bus")
    (captured / "reset").unlink()
    h.pci("0000:3c:00.0", "10de", "20b5", cls="030200", reset=None)
    h.pci("0000:3d:00.0", "10de", "20b5", cls="030200", reset="flr")
    result = cli("agent", "discover", "--sysfs-root", str(h.root), "-f", "json")
    attrs = {d["address"]: d["attributes"] for d in json.loads(result.stdout)}
    assert attrs["0000:3b:00.0"]["resettable"] is True
    assert attrs["0000:3b:00.0"]["reset_methods"] == ["flr", "bus"]
    assert attrs["0000:3c:00.0"]["resettable"] is False
    assert attrs["0000:3d:00.0"]["resettable"] is True


def test_pci_ids_is_looked_for_where_distributions_put_it(tmp_path: Path) -> None:
    assert {str(p) for p in PCI_IDS_PATHS} >= {
        "/usr/share/hwdata/pci.ids",
        "/usr/share/misc/pci.ids",
        "/usr/share/pci.ids",
        "/usr/share/pciids/pci.ids",
    }
    candidates = tuple(tmp_path / d / "pci.ids" for d in ("hwdata", "misc", "share", "pciids"))
    assert find_pci_ids(candidates) is None
    for later in candidates[::-1]:
        later.parent.mkdir()
        later.write_text("10de  NVIDIA Corporation\n")
        assert find_pci_ids(candidates) == later  # the first that exists wins
