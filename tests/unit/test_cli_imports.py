"""Every ``devassign`` command starts a fresh Python: what the CLI imports before it parses its
command line is paid by each one (a script calling ``devassign`` in a loop, the agent's
``run --once`` from a timer). The server's stack, the scheduler's CEL library, the pydantic
models and the agent's discovery load only with the commands that use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Loaded by some commands, never by the CLI's start.
NOT_AT_START = (
    "cel",
    "fastapi",
    "kombu",
    "lxml",
    "pydantic",
    "pyroute2",
    "sqlalchemy",
    "uvicorn",
    "devassign.agent.discovery",
    "devassign.agent.worker",
    "devassign.schemas",
    "devassign.scheduler.request",
    "devassign.server",
    "devassign.store",
)


def _loaded(code: str) -> list[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_the_cli_starts_without_the_server_the_scheduler_or_the_agents_discovery() -> None:
    loaded = _loaded("import devassign.cli.main")
    assert [m for m in NOT_AT_START if m in loaded] == []


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("ClaimBody", "devassign.scheduler.request"),
        ("schedule", "devassign.scheduler.pipeline"),
        ("Snapshot", "devassign.scheduler.view"),
    ],
)
def test_the_schedulers_names_load_with_their_first_use(name: str, module: str) -> None:
    from devassign import scheduler

    value = getattr(scheduler, name)
    assert value is getattr(sys.modules[module], name)


def test_an_unknown_scheduler_name_is_an_attribute_error() -> None:
    from devassign import scheduler

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = scheduler.nothing_here
