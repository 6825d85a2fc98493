"""The program's help and tables as a user sees them in an 80-column terminal.

Every command says what it does; a flag is not shown as taking ``<bool>``; usage lines name
arguments in capitals, not ``{name}``; no raw reStructuredText (````--via-api````) reaches the
help. Tables fit 80 columns without cutting a word in two: columns are at least as wide as
their longest word and the least telling ones are left out (said on stderr) when they cannot
all fit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import typer

from devassign.cli.main import app
from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # runs devassign (and a server) as processes

NARROW = {"COLUMNS": "80"}


def _commands() -> list[list[str]]:
    def walk(cmd: object, path: list[str]) -> list[list[str]]:
        subs: dict[str, object] = getattr(cmd, "commands", None) or {}
        return [path] + [p for name, sub in subs.items() for p in walk(sub, [*path, name])]

    return walk(typer.main.get_command(app), [])


COMMANDS = _commands()


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "devassign")
def test_help_at_80_columns(path: list[str]) -> None:
    result = cli(*path, "--help", env=NARROW)
    out = result.stdout
    assert "Traceback" not in result.stderr
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(line for line in lines if len(line) > 80)
    assert "<bool>" not in out, out
    assert "``" not in out and "SPEC.md" not in out, out
    usage = next(line for line in lines if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    # What the command does: text between the usage line and the first panel.
    start = lines.index(usage)
    end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    assert any(line.strip() for line in lines[start + 1 : end]), out
    # A group's commands each say what they do, on their first line.
    subs = [p[-1] for p in COMMANDS if p[:-1] == path and len(p) == len(path) + 1]
    for name in subs:
        row = next(line for line in lines if re.match(rf"│ {re.escape(name)}\s", line))
        assert row.strip("│ ").removeprefix(name).strip(), f"{' '.join(path)} {name} has no help:\n{out}"


def test_arguments_are_named_in_capitals_in_the_usage() -> None:
    usage = {
        ("type", "show"): "devassign type show [OPTIONS] NAME",
        ("quota", "set"): "devassign quota set [OPTIONS] PROJECT TYPE [LIMIT]",
        ("token", "login-link"): "devassign token login-link [OPTIONS] ID",
        ("device", "show"): "devassign device show [OPTIONS] ADDRESS|ID",
    }
    for path, line in usage.items():
        assert line in cli(*path, "--help", env=NARROW).stdout


def _values(rows: list[dict[str, object]], *keys: str) -> set[str]:
    return {str(r[k]) for r in rows for k in keys if r.get(k) is not None}


def test_tables_fit_80_columns_without_breaking_words(tmp_path: Path) -> None:
    with running_server(
        f"sqlite:///{tmp_path / 'db.sqlite'}", auth=False, log=tmp_path / "server.log"
    ) as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", "--description", "1G virtual function of an Intel E810", env=env)
        cli("type", "create", "VGPU_T4_4Q", "--description", "NVIDIA T4 vGPU slot, profile T4-4Q", env=env)
        slots = [
            {
                "address": f"0000:5e:00.0/nvidia-230/{i}",
                "kind": "mdev_type",
                "type": "VGPU_T4_4Q",
                "vendor_id": "10de",
                "product_id": "1eb8",
                "numa_node": 0,
                "parent": "0000:5e:00.0",
                "attributes": {"mdev_type": "nvidia-230"},
            }
            for i in range(2)
        ]
        for host in ("compute-1", "compute-22"):
            devices = [vf(f"0000:3b:10.{i}", numa_node=i % 2, parent="0000:3b:00.0") for i in range(3)]
            r = httpx.put(
                f"{url}/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices + slots}
            )
            assert r.status_code == 200, r.text
        cli("claim", "--consumer", "vm-1", "--spec", "hardware_resource:NIC_VF_1G=2", env=env)

        devices = json.loads(cli("devices", "-f", "json", env=env).stdout)
        expected = {
            ("devices",): _values(devices, "host", "address", "type", "state", "consumer"),
            ("types",): {"NIC_VF_1G", "VGPU_T4_4Q", "available", "unhealthy"},
            ("hosts",): {"compute-1", "compute-22", "generation"},
            ("events",): {"device_added", "allocation_created"}
            & {e["action"] for e in json.loads(cli("events", "-f", "json", env=env).stdout)},
            ("allocations",): {"vm-1", "default"},
            ("type", "show", "NIC_VF_1G"): {"1G virtual function of an Intel E810"},
        }
        for args, values in expected.items():
            narrow = cli(*args, env={**env, **NARROW})
            lines = narrow.stdout.splitlines()
            assert all(len(line) <= 80 for line in lines), "\n" + narrow.stdout
            words = set(narrow.stdout.split())
            for value in values:
                # Each value whole: a word on its own, or (a sentence) its words in order.
                if " " in value:
                    assert " ".join(narrow.stdout.split()).find(value) >= 0, (args, value, narrow.stdout)
                else:
                    assert value in words, (args, value, narrow.stdout)
        # What did not fit is said, on stderr; a wide terminal shows it all.
        narrow = cli("devices", env={**env, **NARROW})
        assert "not shown" in narrow.stderr and "iommu" in narrow.stderr, narrow.stderr
        wide = cli("devices", env={**env, "COLUMNS": "200"})
        assert {"numa", "iommu", "parent"} <= set(wide.stdout.split()) and wide.stderr == ""


def test_agent_discover_fits_80_columns(tmp_path: Path) -> None:
    from devassign.cli.demo import build_host

    root = build_host(tmp_path / "host", 0).root
    result = cli("agent", "discover", "--sysfs-root", str(root), env=NARROW)
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    words = set(result.stdout.split())
    assert {"0000:3b:10.0", "0000:5e:00.0/nvidia-230/0", "sriov_vf", "mdev_type", "iavf", "nvidia"} <= words
    assert {"address", "kind", "driver"} <= words, result.stdout


def test_python_dash_m_devassign_is_the_devassign_command() -> None:
    """Where the console script is not on PATH (a venv not activated, a unit naming the
    interpreter), ``python -m devassign`` runs the same program."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "devassign", "types", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: devassign types" in done.stdout


@pytest.mark.parametrize(
    ("command", "port"), [("server", "99999"), ("server", "-1"), ("demo", "70000"), ("demo", "0")]
)
def test_a_port_that_cannot_exist_is_a_usage_error(command: str, port: str) -> None:
    """It was taken modulo 65536: the server said it listened on :99999 and listened on
    :34463."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "devassign", command, "--port", port],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--port" in done.stderr and "Traceback" not in done.stderr
