"""Mistaken or hostile input to the CLI is a usage error (exit 2) that says what to fix, never
"unexpected ..." (exit 1), and changes nothing: bytes that are not UTF-8, values too long for a
URL, a closed stdin, an empty key that would make a retry claim again, infinite numbers,
database URLs that do not parse or name what cannot hold a database, agent configurations
nested too deeply or naming a folder for the state file, server URLs with a bad port or a
query, a server that is not devassign's answering 501, a demo folder already in use."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devassign.cli.client import CliError, ExitCode
from devassign.cli.demo import _prepare_data_dir
from devassign.cli.main import run

NOWHERE = "http://127.0.0.1:9"  # nothing is sent: each refusal comes before a connection


@pytest.fixture(autouse=True)
def _no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVASSIGN_URL", NOWHERE)
    monkeypatch.delenv("DEVASSIGN_TOKEN", raising=False)
    monkeypatch.setenv("DEVASSIGN_RETRY_SECONDS", "0")


def _usage(args: list[str], capsys: pytest.CaptureFixture[str], said: str) -> None:
    assert run(args) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert said in err and "unexpected" not in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["release", "--consumer", "\udcff"],
        ["hosts", "--after", "\udcffx"],
        ["devices", "--type", "\udcff"],
        ["events", "--host", "a\udcff"],
    ],
)
def test_bytes_that_are_not_utf8(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _usage(args, capsys, "not UTF-8 text")


@pytest.mark.parametrize(
    "args",
    [["hosts", "--after", "a" * 100_000], ["release", "--consumer", "a" * 100_000]],
)
def test_values_too_long_for_a_url(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _usage(args, capsys, "does not fit in a request's URL")


def test_host_load_from_a_closed_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    _usage(["host", "load", "-"], capsys, "stdin: it is closed")


def test_host_load_refuses_a_file_without_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    _usage(["host", "load", str(empty)], capsys, "no {host, report} items")


@pytest.mark.parametrize(
    "args",
    [
        ["gang", "claim", "--spec", "hardware_resource:NIC=1", "--instances", "2", "--idempotency-key", ""],
        ["gang", "claim", "--spec", "hardware_resource:NIC=1", "--instances", "2", "--gang", " "],
        ["gang", "claim", "--spec", "hardware_resource:NIC=1", "--instances", "2", "--same", ""],
        ["move", "start", "vm-1", "--to", "h2", "--idempotency-key", ""],
    ],
)
def test_an_empty_key_is_refused_not_dropped(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _usage(args, capsys, "is empty")


def test_infinite_numbers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["types", "--watch", "--interval", "inf"]) == ExitCode.USAGE
    assert "unexpected" not in capsys.readouterr().err
    db = f"sqlite:///{tmp_path / 'x.db'}"
    _usage(["server", "--db", db, "--balance-weight", "inf"], capsys, "--balance-weight is a finite number")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://u@[::1/x", "does not parse"),
        ("sqlite://", "in-memory database"),
        ("sqlite:///:memory:", "in-memory database"),
        ("sqlite:////tmp", "names a folder"),
        ("sqlite:////tmp/" + "a" * 5000, "File name too long"),
    ],
)
def test_database_urls_that_cannot_hold_a_database(
    url: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _usage(["token", "create", "--role", "admin", "--db", url], capsys, said)


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("not a database, but a file of some length " * 100)
    _usage(["db", "status", "--db", f"sqlite:///{other}"], capsys, "is not an SQLite database file")
    assert other.read_text().startswith("not a database")


def test_agent_configurations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 10_000 + "]" * 10_000 + "\n")
    _usage(["agent", "discover", "--config", str(deep)], capsys, "nested too deeply")
    folder = tmp_path / "state"
    folder.mkdir()
    conf = tmp_path / "agent.toml"
    conf.write_text(f'host = "h1"\nserver = "{NOWHERE}"\nstate_file = "{folder}"\n')
    _usage(["agent", "discover", "--config", str(conf)], capsys, "is a folder: name a file")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:99999", "the port must be 1 to 65535"),
        ("http://127.0.0.1:0", "the port must be 1 to 65535"),
        ("http://127.0.0.1:8470?x=1", "holds a query or fragment"),
    ],
)
def test_server_urls(url: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    _usage(["--url", url, "types"], capsys, said)


@pytest.fixture
def not_devassign() -> Iterator[str]:
    """An HTTP server that is not devassign's (Python's own: 501 for a POST)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_claim_sent_to_another_server_is_not_a_claim_that_may_have_been_made(
    not_devassign: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--url", not_devassign, "claim", "--consumer", "vm-1", "--spec", "hardware_resource:GPU=1"]
    assert run(args) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "is not a devassign server" in err and "may have been made" not in err, err


def test_a_demo_folder_in_use_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    with _prepare_data_dir(folder, 2):
        (folder / "demo.db").write_text("the running demo's")
        with pytest.raises(CliError) as refused:
            _prepare_data_dir(folder, 2)
        assert refused.value.exit_status == ExitCode.USAGE and "is running in it" in refused.value.message
        assert (folder / "demo.db").read_text() == "the running demo's"
    with _prepare_data_dir(folder, 2):  # free again once that demo ended
        assert not (folder / "demo.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["devices", "--host", ""],
        ["devices", "--type", " "],
        ["allocations", "--consumer", ""],
        ["allocations", "--host", ""],
        ["events", "--device", ""],
    ],
)
def test_an_empty_filter_is_refused_not_taken_as_none(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset shell variable (``--host "$H"``) listed everything, as if no filter were given."""
    _usage(args, capsys, "is empty")
