"""``devassign host load`` on its own: a report the server would refuse alone is listed and
not sent, the others are; a host twice goes into two batches; JSON Lines errors name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign.cli import load
from devassign.cli.client import CliError
from devassign.cli.main import app


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_bad_report_is_that_hosts_refusal_and_the_load_goes_on(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201

    class Local(load.Client):
        def __init__(self, *_: Any, **__: Any) -> None:
            super().__init__("http://testserver", retry_for=0)
            self.http = api  # type: ignore[assignment]

    monkeypatch.setattr(load, "Client", Local)
    gpu = {"address": "0000:10:00.0", "kind": "pci", "type": "GPU"}
    items: list[dict[str, Any]] = [
        {"host": f"h{i}", "report": {"generation": 1, "devices": [gpu]}} for i in range(6)
    ]
    items[3]["report"]["devices"] = [{**gpu, "address": "not-pci"}]  # its own PUT would be a 400
    items.append({"host": "h5", "report": {"generation": 2, "devices": [gpu]}})  # h5 again, newer
    fleet = tmp_path / "fleet.jsonl"
    fleet.write_text("".join(json.dumps(i) + "\n" for i in items))
    res = CliRunner().invoke(app, ["host", "load", str(fleet), "--batch", "2"])
    assert res.exit_code == 1, res.output
    assert "h3: invalid report, not sent" in res.output
    assert "6 hosts applied, 1 refused, of 7" in res.output
    assert sorted(h["name"] for h in api.get("/v1/hosts").json()) == ["h0", "h1", "h2", "h4", "h5"]
    assert api.get("/v1/hosts/h5").json()["generation"] == 2


def test_one_host_twice_goes_into_two_batches() -> None:
    items = [{"host": "h", "report": {"generation": g, "devices": []}} for g in (1, 2)]
    assert [len(b) for b in load.batches(items, 500)] == [1, 1]


def test_a_bad_json_line_is_named_by_its_line(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.jsonl"
    good = json.dumps({"host": "h", "report": {"generation": 1, "devices": []}})
    fleet.write_text(f"{good}\n{good}\n{{not json\n")
    res = CliRunner().invoke(app, ["host", "load", str(fleet)])
    # The program's entry point prints a CliError as one line with its exit status.
    assert isinstance(res.exception, CliError) and res.exception.exit_status == 2
    assert "line 3" in res.exception.message


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_names_and_reasons_from_the_file_and_the_server_print_as_escapes(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A host name or a type from the file, and the server's refusal quoting them, reach the
    terminal written out (``\\x1b``), never as sequences it would act on; a type that is not a
    type name gets no command to paste into a shell."""

    class Local(load.Client):
        def __init__(self, *_: Any, **__: Any) -> None:
            super().__init__("http://testserver", retry_for=0)
            self.http = api  # type: ignore[assignment]

    monkeypatch.setattr(load, "Client", Local)
    esc = "\x1b"
    odd_type = f"T{esc}[2J{esc}]0;pwned{esc}\\$(touch x)"
    items = [
        {
            "host": "h4",
            "report": {
                "generation": 1,
                "devices": [{"address": "0000:05:00.0", "kind": "pci", "type": odd_type}],
            },
        },
        {"host": f"bad{esc}[31mRED", "report": {"generation": 1, "devices": []}},
        {
            "host": "h5",
            "report": {
                "generation": 1,
                "devices": [{"address": "0000:06:00.0", "kind": "pci", "type": "GPU_X"}],
            },
        },
    ]
    fleet = tmp_path / "fleet.jsonl"
    fleet.write_text("".join(json.dumps(i) + "\n" for i in items))
    res = CliRunner().invoke(app, ["host", "load", str(fleet)])
    assert res.exit_code == 1, res.output
    assert esc not in res.output, repr(res.output)
    assert "bad\\x1b[31mRED: invalid report" in res.output, res.output
    assert "is not a type name" in res.output and "devassign type create T" not in res.output, res.output
    assert "`devassign type create GPU_X`" in res.output, res.output


def test_a_file_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    """Not the "unexpected ... or a bug" line: the file is the user's to fix."""
    from devassign.cli.main import run

    fleet = tmp_path / "fleet.json"
    fleet.write_bytes(b'[{"host": "h\xff"}]')
    assert run(["host", "load", str(fleet)]) == 2
    assert run(["type", "create", "T", "--params", f"@{fleet}"]) == 2
