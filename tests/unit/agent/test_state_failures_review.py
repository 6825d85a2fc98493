"""Review: the agent's own storage failing (the state file shared, malformed, or unwritable).

What holds (checked, not tested here): a truncated, non-JSON or wrongly shaped state file, a
missing host_id or a negative generation is a StateError naming the file; an older layout
(missing maps or generation) loads; a failed save at intent, result or after the post raises
out of ``work()`` (the agent stops loudly) and a restart converges without posting a cleanup
that did not run (the state directory removed is made again from memory); a journaled
device that vanished is refused and quarantined, not run; every timer (reports, heartbeats,
health interval, backoff) runs on the monotonic clock, health hysteresis counts checks, not
time, and the agent sends no timestamps, so a wall clock jump changes nothing.

What does not hold is below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.state import StateError, StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from tests.unit.agent.test_agent_worker import World, world  # noqa: F401


def _refused_as_second_agent(request: httpx.Request) -> httpx.Response:
    """The server's answer to a second live agent process of the host (docs/operations.md,
    "One live agent per host")."""
    error = {"code": "agent_conflict", "message": "another agent of this host is live", "retry_after": 30}
    return httpx.Response(409, json={"error": error})


def _second_agent(w: World) -> Agent | None:
    """A second ``agent run`` process with the same configuration (so the same state file),
    which the server refuses as long as the first one is live; ``None`` when it is refused
    the state file itself (what a lock on the file would do)."""
    try:
        state = StateFile(w.config.state_file, durable=False)
        state.lock()  # as `agent run` does
        _ = state.state
    except StateError:
        return None
    client = httpx.Client(transport=httpx.MockTransport(_refused_as_second_agent))
    return Agent(w.config, w.h.root, HostOps.simulated(w.h.root), client, state=state, pci_ids=None)


def test_a_second_agent_refused_by_the_server_runs_no_cleanup_from_the_shared_journal(world: World) -> None:  # noqa: F811
    """A second agent process on the same state file (a second ``agent run`` of the same
    configuration) is refused by the server with 409 ``agent_conflict``, and the docs say
    such an agent "asks for no lifecycle work". It must not act on the live agent's journal.

    Today nothing locks the state file and ``work()`` runs ``recover()`` before any request:
    the refused process re-runs every "started" entry of the snapshot it read at its start,
    as root, although the live agent owns them. Here it starts while the live agent's cleanup
    of d0 is journaled; its first report is slow to be refused, and meanwhile the live agent
    finishes the cleanup and sets d0 up for a new tenant. The refused process then "recovers"
    the old cleanup: the new tenant's VF is taken off vfio-pci while the server says it is
    assigned (the result, if it ever reaches the server, carries the old ticket and is
    ignored). A tenant's device is cleaned while still held. The server's agent_conflict
    cannot tell a restart (old process dead: recovering is right) from a live second process;
    a lock on the state file can.
    """
    world.server.claim("d0")
    live = world.make()
    live.state.lock()  # the live `agent run` holds the state file
    live.work()
    world.server.release()
    second: list[Agent | None] = []

    def second_agent_starts() -> None:  # while the live agent's cleanup of d0 is journaled
        second.append(_second_agent(world))

    live.crash_at, live.on_crash = "intent:cleanup", second_agent_starts
    live.work()
    live.crash_at = None
    dev = world.server.devices["d0"]
    assert dev.state == "available" and world.driver(world.vfs[0]) == "iavf"
    dev.state, dev.consumer = "reserved", "tenant-2"  # claimed again
    live.work()
    assert dev.state == "assigned" and world.driver(world.vfs[0]) == "vfio-pci"

    (other,) = second
    if other is not None:
        out = other.step()  # its first step: refused by the server
        assert any("agent_conflict" in e for e in out.errors)
    assert world.driver(world.vfs[0]) == "vfio-pci", "tenant-2's VF was cleaned by the refused agent"
    assert dev.state == "assigned"


def test_a_second_agent_refused_by_the_server_does_not_erase_the_live_agents_intent(world: World) -> None:  # noqa: F811
    """The refused second process keeps writing the shared state file: every health check
    saves it and every report attempt (retried with backoff, forever) persists the next
    generation, each time from the snapshot it read at its start. That erases what the
    live agent journaled since: here the intent of a setup whose handler is running (and the
    host driver the device had before it). If the live agent dies now, its restart does not
    know the setup was interrupted, which is exactly what the journal exists for (intent on
    disk before the handler runs, kubernetes #115902). No journaled work may be lost to
    another process's write; the second process must be refused the file (StateError) or
    leave it alone.
    """
    live = world.make()
    live.state.lock()  # the live `agent run` holds the state file
    live.step()
    other = _second_agent(world)
    if other is not None:
        other.step()  # refused by the server, retries later
    world.server.claim("d0")
    journaled: dict[str, Any] = {}

    def handler_running() -> None:
        if other is not None:
            other.step()  # its retry, while the live agent's setup of d0 runs
        state = StateFile(world.config.state_file, durable=False).state
        journaled.update(journal=state.journal, host_drivers=state.host_drivers)

    live.crash_at, live.on_crash = "handler:setup", handler_running
    live.work()
    assert journaled["journal"].get("d0", {}).get("phase") == "started", "the live agent's intent was erased"
    assert journaled["host_drivers"].get("d0", {}).get("driver") == "iavf"


MALFORMED: dict[str, dict[str, Any]] = {
    "health passes not a number": {"health": {"0000:5e:10.0": {"reason": "link down", "passes": "two"}}},
    "journaled result without ok": {"journal": {"d0": {"action": "cleanup", "phase": "done", "item": {}}}},
    "journaled intent without an item": {"journal": {"d0": {"action": "setup", "phase": "started"}}},
    "journaled intent with an unreadable item": {
        "journal": {"d0": {"action": "setup", "phase": "started", "item": {"action": "setup"}}}
    },
    "assigned entry that is not a work item": {"assigned": {"d0": {"device": "0000:5e:10.0"}}},
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_entry_is_a_state_error_not_a_crash_on_every_start(world: World, case: str) -> None:  # noqa: F811
    """A state file whose maps hold entries of the wrong shape (corruption, a hand edit, a
    file of another version) must be refused as a :class:`StateError` naming the file (what
    ``agent run`` turns into one line and exit 1: "fix or remove the file"), or tolerated.

    ``StateFile._load`` checks only that each map's values are objects. Anything deeper
    escapes as a bare ``ValueError`` / ``KeyError`` / ``ValidationError`` out of ``step()``
    (``int('two')``, ``entry['ok']``, ``entry['item']``, ``WorkItem.model_validate``): the
    agent dies with a traceback that does not name the state file, on every start, since
    nothing ever repairs the entry (a restart loop under systemd, which restarts on 1).
    """
    doc = {
        "host_id": "11111111-2222-4333-8444-555555555555",
        "generation": 3,
        "host": "w1",
        **MALFORMED[case],
    }
    Path(world.config.state_file).write_text(json.dumps(doc))
    try:
        agent = world.make()
        agent.step()
    except StateError as exc:
        assert str(world.config.state_file) in str(exc)


def test_a_state_file_that_cannot_be_written_stops_the_agent_with_one_clear_error(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk (or a read-only folder) under the state file: the agent must not act on a
    device it cannot journal, and says why instead of an unexpected OSError."""
    import errno

    import devassign.agent.state as state_module

    agent = world.make()
    agent.report()
    world.server.claim("d0")

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module.os, "replace", full)
    with pytest.raises(StateError) as stopped:
        agent.work()
    message = str(stopped.value)
    assert "cannot write the agent state (No space left on device)" in message
    assert str(world.config.state_file) in message
    assert world.driver(world.vfs[0]) == "iavf"  # the setup never ran unjournaled
    assert not [p for p in world.config.state_file.parent.iterdir() if p.name.startswith(".agent-state.")]
