"""A handler command outlives an agent killed with ``kill -9`` (it runs in a session of its
own); the next agent process on the same state file kills it before doing any work, so a slow
setup cannot finish on a device that was cleaned and handed to someone else meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from devassign.lifecycle.host import SubprocessRunner
from devassign.lifecycle.ledger import CommandLedger

# An "agent" that runs one slow handler command through the runner, with a ledger.
AGENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from devassign.lifecycle.host import SubprocessRunner
    from devassign.lifecycle.ledger import CommandLedger
    runner = SubprocessRunner(CommandLedger(Path(sys.argv[1])))
    runner.run(["sh", "-c", sys.argv[2]], env={}, timeout=60)
    """
)


def _wait_for(check: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _killed_agent(tmp_path: Path, marker: Path) -> Path:
    """Start the agent, let its command start, kill the agent with SIGKILL; the ledger folder."""
    ledger = tmp_path / "state.json.commands"
    script = f"echo started > {tmp_path / 'started'}; sleep 2; echo dirty > {marker}"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(ledger), script])
    try:
        assert _wait_for(lambda: (tmp_path / "started").exists() and any(ledger.glob("[0-9]*")))
    finally:
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
    return ledger


def test_a_killed_agents_command_goes_on_without_the_next_agent(tmp_path: Path) -> None:
    """What the ledger is for: the command finishes on its own after its agent died."""
    marker = tmp_path / "setup-finished"
    _killed_agent(tmp_path, marker)
    assert _wait_for(marker.exists, 6.0)


def test_the_next_agent_kills_what_the_killed_one_left_running(tmp_path: Path) -> None:
    marker = tmp_path / "setup-finished"
    ledger = _killed_agent(tmp_path, marker)
    killed = CommandLedger(ledger).reap()
    assert len(killed) == 1 and "sleep 2" in killed[0], killed
    time.sleep(3)
    assert not marker.exists()
    assert list(ledger.iterdir()) == []  # nothing left to reap next time
    assert CommandLedger(ledger).reap() == []


def test_a_finished_command_leaves_no_entry_and_a_reused_id_is_not_killed(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "commands")
    assert SubprocessRunner(ledger).run(["true"], env={}, timeout=10).returncode == 0
    assert list((tmp_path / "commands").iterdir()) == []
    # An entry whose process group id now belongs to another process (its own group leader,
    # started later): not the command written down, left alone.
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (tmp_path / "commands" / str(other.pid)).write_text('{"start": 1, "argv": ["x"]}')
        assert ledger.reap() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_agent_run_ends_the_leftovers_of_its_state_file_before_any_work(tmp_path: Path) -> None:
    """``agent run`` (the CLI) reaps the ledger beside its state file, then keeps its own."""
    from devassign.agent.cli import _end_leftovers
    from devassign.lifecycle.host import HostOps
    from devassign.lifecycle.ledger import _start_time

    state = tmp_path / "agent-state.json"
    folder = tmp_path / "agent-state.json.commands"
    folder.mkdir()
    left = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (folder / str(left.pid)).write_text(
            f'{{"start": {_start_time(Path("/proc"), left.pid)}, "argv": ["x"]}}'
        )
        ops = HostOps.for_host(tmp_path)
        _end_leftovers(ops, state)
        assert _wait_for(lambda: left.poll() is not None, 5.0)
        assert isinstance(ops.runner, SubprocessRunner) and ops.runner.ledger is not None
        assert ops.runner.ledger.folder == folder
    finally:
        left.kill()
        left.wait()
