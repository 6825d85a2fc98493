"""Where an agent keeps its state when its configuration does not say, and whose state it is.

Two agents on one machine (two configuration files) once shared the one default state file, so
they became one host id under two names. Now the default is per configuration file, the file
records its host name, and an agent refuses a state file of another host, saying what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devassign.agent.config import default_state_file, load_config, parse_config
from devassign.agent.state import StateError, StateFile
from tests.e2e.servers import running_server
from tests.fixtures.sysfs import host


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's state folder (``XDG_STATE_HOME``) moved into the test's folder."""
    home = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home / "devassign"


def _config(path: Path, host_name: str, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'host = "{host_name}"\nserver = "http://127.0.0.1:9"\n{extra}')
    return path


def test_each_configuration_file_gets_its_own_default_state_file(tmp_path: Path, state_home: Path) -> None:
    a = load_config(_config(tmp_path / "a" / "agent.toml", "compute-1"))
    b = load_config(_config(tmp_path / "b" / "agent.toml", "compute-2"))
    same_host = load_config(_config(tmp_path / "c" / "agent.toml", "compute-1"))
    assert len({a.state_file, b.state_file, same_host.state_file}) == 3
    assert all(c.state_file.parent == state_home for c in (a, b, same_host))
    assert a.state_file.name.startswith("agent-state-agent-") and a.state_file.suffix == ".json"
    # The same file, named another way, is the same configuration: the same state.
    again = load_config(tmp_path / "a" / ".." / "a" / "agent.toml")
    assert again.state_file == a.state_file == default_state_file(tmp_path / "a" / "agent.toml")
    assert a.legacy_state_file == state_home / "agent-state.json"


def test_a_state_file_named_in_the_configuration_is_used_as_it_is(tmp_path: Path, state_home: Path) -> None:
    cfg = load_config(_config(tmp_path / "agent.toml", "compute-1", 'state_file = "my-state.json"\n'))
    assert cfg.state_file == tmp_path / "my-state.json" and cfg.legacy_state_file is None
    # Without a file (a configuration given as a table): one per host name.
    assert parse_config({"host": "compute-9"}).state_file == state_home / "agent-state-compute-9.json"


def test_the_state_file_records_its_host_and_refuses_another(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    first = StateFile(path, host="compute-1", durable=False)
    host_id = first.state.host_id
    assert json.loads(path.read_text())["host"] == "compute-1"
    assert StateFile(path, host="compute-1").state.host_id == host_id

    with pytest.raises(StateError) as refused:
        _ = StateFile(path, host="compute-2").state
    message = str(refused.value)
    assert "state file of host 'compute-1'" in message and "host = 'compute-2'" in message
    assert "a state file of its own (state_file" in message  # a second agent on the machine
    assert "`devassign host rename compute-1 compute-2`" in message  # a renamed machine
    assert str(path) in message
    assert json.loads(path.read_text())["host"] == "compute-1"  # untouched


def test_a_state_file_of_an_earlier_version_is_taken_by_the_first_agent_that_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"host_id": "11111111-2222-4333-8444-555555555555", "generation": 7}))
    state = StateFile(path, host="compute-1", durable=False).state
    assert (state.host_id, state.generation, state.host) == (
        "11111111-2222-4333-8444-555555555555",
        7,
        "compute-1",
    )
    assert json.loads(path.read_text())["host"] == "compute-1"
    with pytest.raises(StateError):
        _ = StateFile(path, host="compute-2").state


def test_the_old_default_state_file_moves_to_the_new_default(tmp_path: Path, state_home: Path) -> None:
    """An upgrade keeps the machine's host id: the single default file of earlier versions is
    moved to the first configuration's own default, once."""
    state_home.mkdir(parents=True)
    old = state_home / "agent-state.json"
    old.write_text(json.dumps({"host_id": "old-id", "generation": 3}))
    a = load_config(_config(tmp_path / "a.toml", "compute-1"))
    b = load_config(_config(tmp_path / "b.toml", "compute-2"))

    state = StateFile(a.state_file, host=a.host, adopt=a.legacy_state_file, durable=False).state
    assert (state.host_id, state.generation) == ("old-id", 3)
    assert not old.exists() and json.loads(a.state_file.read_text())["host"] == "compute-1"
    other = StateFile(b.state_file, host=b.host, adopt=b.legacy_state_file, durable=False).state
    assert other.host_id != "old-id"  # the second configuration is a host of its own

    old.write_text(json.dumps({"host_id": "x", "generation": 1, "host": "compute-7"}))
    c = load_config(_config(tmp_path / "c.toml", "compute-3"))
    assert StateFile(c.state_file, host=c.host, adopt=c.legacy_state_file).state.host_id != "x"
    assert old.exists()  # another host's file stays where it is


def _agent(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devassign.cli.main", "agent", "run", "--once", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def test_agent_run_refuses_a_state_file_of_another_host(tmp_path: Path) -> None:
    state = tmp_path / "shared-state.json"
    state.write_text(json.dumps({"host_id": "a-id", "generation": 4, "host": "compute-1"}))
    conf = _config(tmp_path / "second.toml", "compute-2", f'state_file = "{state}"\n')
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    result = _agent(["--config", str(conf), "--sysfs-root", str(h.root)], {})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "devassign host rename compute-1 compute-2" in line
    assert json.loads(state.read_text())["host"] == "compute-1"


def test_agent_run_refuses_a_state_file_another_agent_process_holds(tmp_path: Path) -> None:
    """Two `agent run` of one configuration (or `run --once` beside the daemon): the second
    would replay the first's journaled work from its own copy, as root. It stops at once,
    with one line, and sends nothing."""
    state = tmp_path / "state.json"
    conf = _config(tmp_path / "agent.toml", "compute-1", f'state_file = "{state}"\n')
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    live = StateFile(state)
    live.lock()  # the daemon, running
    _ = live.state
    result = _agent(["--config", str(conf), "--sysfs-root", str(h.root)], {})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "in use by another agent process" in line
    assert f"pid {os.getpid()}" in line
    live.close()  # the daemon stopped: the next one starts (and fails only to reach the server)
    again = _agent(["--config", str(conf), "--sysfs-root", str(h.root)], {})
    assert "in use by another agent process" not in again.stderr


@pytest.mark.slow
def test_two_agents_on_one_machine_are_two_hosts(tmp_path: Path) -> None:
    """Two configuration files without state_file, run by one user: two hosts, each keeping
    its host id from run to run (before, the second took the first one's id)."""
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    with running_server(f"sqlite:///{tmp_path / 'two.db'}", auth=False, log=tmp_path / "server.log") as url:
        confs = []
        for name in ("compute-1", "compute-2"):
            conf = tmp_path / name / "agent.toml"
            conf.parent.mkdir()
            conf.write_text(f'host = "{name}"\nserver = "{url}"\n')
            confs.append(conf)
        for _ in range(2):
            for conf in confs:
                run = _agent(["--config", str(conf), "--sysfs-root", str(h.root)], env)
                assert run.returncode == 0, run.stderr
        hosts = {x["name"]: x["host_id"] for x in httpx.get(f"{url}/v1/hosts").json()}
    assert set(hosts) == {"compute-1", "compute-2"}
    assert hosts["compute-1"] != hosts["compute-2"]
    files = sorted((tmp_path / "xdg-state" / "devassign").glob("agent-state-*.json"))
    assert len(files) == 2
    assert {json.loads(f.read_text())["host"] for f in files} == {"compute-1", "compute-2"}


@pytest.mark.slow
def test_a_renamed_hosts_agent_takes_its_state_file_when_the_server_confirms_the_rename(
    tmp_path: Path,
) -> None:
    """The documented rename (``devassign host rename``, then the new name and its token in
    agent.toml) starts the agent: the server's record of the new name has the state file's
    host id, so the agent updates the file. A name whose host has another id stays refused."""
    from tests.e2e.servers import cli

    db = f"sqlite:///{tmp_path / 'rename.db'}"
    admin = cli("token", "create", "--role", "admin", "--db", db).stdout.strip()
    state = tmp_path / "state.json"
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    with running_server(db, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        tokens = {
            name: cli("token", "create", "--role", "agent", "--host", name, "--db", db).stdout.strip()
            for name in ("compute-1", "compute-1b", "compute-9")
        }

        def agent(name: str) -> subprocess.CompletedProcess[str]:
            conf = _config(tmp_path / f"{name}.toml", name, f'state_file = "{state}"\n')
            conf.write_text(
                conf.read_text().replace("http://127.0.0.1:9", url) + f'token = "{tokens[name]}"\n'
            )
            return _agent(["--config", str(conf), "--sysfs-root", str(h.root)], {})

        assert agent("compute-1").returncode == 0
        host_id = json.loads(state.read_text())["host_id"]
        cli("host", "rename", "compute-1", "compute-1b", env=env)
        other = StateFile(tmp_path / "other-state.json", host="compute-9")
        _ = other.state  # compute-9 is another machine, with a host id of its own
        other_conf = _config(tmp_path / "c9.toml", "compute-9", f'state_file = "{other.path}"\n')
        other_conf.write_text(
            other_conf.read_text().replace("http://127.0.0.1:9", url) + f'token = "{tokens["compute-9"]}"\n'
        )
        assert _agent(["--config", str(other_conf), "--sysfs-root", str(h.root)], {}).returncode == 0

        refused = agent("compute-9")  # this machine's state file under another machine's name
        assert refused.returncode == 1 and "is the state file of host 'compute-1'" in refused.stderr
        assert json.loads(state.read_text())["host"] == "compute-1"

        renamed = agent("compute-1b")
        assert renamed.returncode == 0, renamed.stderr
        assert "renamed" in renamed.stderr
        assert json.loads(state.read_text()) | {} and json.loads(state.read_text())["host"] == "compute-1b"
        assert json.loads(state.read_text())["host_id"] == host_id
        hosts = {
            x["name"]: x["host_id"]
            for x in httpx.get(f"{url}/v1/hosts", headers={"Authorization": f"Bearer {admin}"}).json()
        }
        assert hosts["compute-1b"] == host_id and "compute-1" not in hosts
