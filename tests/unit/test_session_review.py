"""Review of 45cf9db (agent work handling), d259718 (gangs), 4d77bbc (event stream).

Each test fails on the code it was written against and names the defect in its docstring.
"""

from __future__ import annotations

import pytest

from devassign.scheduler import gang as gang_module
from devassign.scheduler.gang import Layout, plan
from devassign.server import stream
from tests.api.test_stream_positions import _Log
from tests.unit.agent.test_agent_worker import SimulatedCrash, World, world  # noqa: F401
from tests.unit.scheduler.helpers import count_view_devices, host, one, req, snapshot, vfs

# ----------------------------------------------------------------- event stream (4d77bbc)


def test_a_large_transaction_committed_late_is_streamed_whole() -> None:
    """``Cursor.read`` now clips every gap to ``MAX_GAP_SPAN`` (10,000) ids below the last id
    sent. One inventory report of a large host writes one event per new device in ONE
    transaction (``record_many``; hosts of 20,000 devices are supported): on PostgreSQL its
    12,000 ids are allocated at insert time and become visible only at commit. Any event with
    a later id committed meanwhile (another host's heartbeat, a claim) is streamed first and
    opens a gap over the whole batch; at the next poll the gap is cut to its top 10,000 ids,
    so when the report commits (seconds later, well inside ``LATE_COMMIT_WINDOW``) its first
    2,000 events are never sent to the dashboard or ``devassign events --follow``. Before
    4d77bbc the whole gap was watched and every event was delivered."""
    log = _Log({12_001})  # ids 1..12,000: the report's, in flight; 12,001 committed first
    cursor = stream.Cursor(0)
    assert [e.id for e, _ in cursor.read(log.fetch)] == [12_001]
    cursor.read(log.fetch)  # a poll while the report is still in flight
    log.visible |= set(range(1, 12_001))  # the report commits
    sent = [e.id for e, _ in cursor.read(log.fetch)]
    missing = sorted(set(range(1, 12_001)) - set(sent))
    assert not missing, f"{len(missing)} committed events never streamed (ids {missing[0]}..{missing[-1]})"
    assert cursor.token() == "12001"


# ----------------------------------------------------------------- gangs (d259718)


def test_a_shared_search_hosts_reason_is_not_the_plans_view_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module says instances of single-alternative requests on hosts without pools share
    one search and "build at most two views a host"; ``MAX_VIEW_DEVICES`` "bounds the others".
    Yet the one view such a host builds to say why it takes no more is charged to the plan's
    budget, so once earlier hosts' explanations used it up, a later full host is reported as
    ``search_budget_exhausted`` ("ask for fewer instances, or max_per_host") instead of
    ``not_enough_free``: the gang's 409 message differs from dfca3a1's and gives the wrong
    advice. At the real constant: e.g. 600 full hosts of 1,000 devices (600k view devices):
    the last 100 hosts' reasons are wrong. Scaled down here as the project's own test does."""
    monkeypatch.setattr(gang_module, "MAX_VIEW_DEVICES", 5)
    h1, h2 = host("h1", vfs(4)), host("h2", vfs(4))
    found = plan(req(one("NIC_VF_1G", 1, name="nic")), 9, snapshot(h1, h2))
    assert found.placed == 8
    assert "search_budget_exhausted" not in found.message, found.message
    assert found.message.endswith("not_enough_free: 2"), found.message


def test_the_view_budget_bounds_a_whole_plan_not_each_same_value_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MAX_VIEW_DEVICES`` is "a bound on a plan's work, whatever the gang's size and its
    hosts'", but its counter (``steps[1]``) is created per ``_fill``, and ``plan`` calls
    ``_fill`` once per value of ``same`` that a gang does not fit in whole. A member's gang
    with ``same="rack"`` and a ``first_available`` alternative (no shared search) on a fleet
    of R racks builds R x MAX_VIEW_DEVICES devices of host views: with 40 racks of one
    20,000-device host, 20 M devices, the two-minute plan the commit set out to bound. Scaled
    down: 6 racks, a budget of 5,000 view devices, 30,000 built."""
    budget = 50 * 100
    monkeypatch.setattr(gang_module, "MAX_VIEW_DEVICES", budget)
    snap = snapshot(*(host(f"h{r}", vfs(100, rack=f"r{r}")) for r in range(6)))
    built_so_far = count_view_devices(monkeypatch)
    request = req({"name": "nic", "type": "NIC_VF_1G", "count": 1, "first_available": [{"type": "OTHER"}]})
    found = plan(request, 1000, snap, layout=Layout(same="rack"))
    assert not found.fits
    built = built_so_far()
    assert built <= budget + 2 * 100, f"{built:,} devices of host views for a plan bounded at {budget:,}"


# ----------------------------------------------------------------- agent work (45cf9db)


def test_a_refused_cleanup_replayed_after_a_crash_runs_as_this_agent_prepared_it(
    world: World,  # noqa: F811
) -> None:
    """(Fixed by journaling no intent for a refused item; the assertions on the journal
    follow the fix.) ``_run`` journaled a work item it refuses (here: a cleanup of a device missing from
    the agent's last inventory) WITHOUT ``_prepared``. If the agent dies after that journal
    write (crash point ``intent``) and the device is back when it restarts, ``recover``
    re-runs the journaled, unprepared item as the server sent it: not with the handler (and
    config) that set the device up (``_as_set_up``), nor the agent's own facts and host
    driver. With the type's handler changed to ``noop`` while the VF was held, the replayed
    cleanup runs ``noop`` and reports success: the VF stays on vfio-pci with the tenant's
    MAC and VLAN and is handed out as available. At dfca3a1 the journaled item was always
    the prepared one, and the replay ran sriov_vf's cleanup."""

    def crash() -> None:
        raise SimulatedCrash("intent")

    world.server.claim("d0")
    world.make().work()
    assert world.driver(world.vfs[0]) == "vfio-pci"
    world.server.release()
    world.server.devices["d0"].handler = "noop"  # the type's handler changed while it was held
    crashing = world.make(crash_at="intent:cleanup", on_crash=crash)
    crashing._reported = {}  # its last inventory lacked the VF (e.g. VFs briefly gone): refused
    with pytest.raises(SimulatedCrash):
        crashing.work()
    assert "d0" not in world.journal()  # a refused item journals no intent to run
    done = world.make().work()  # restarted; the VF is discovered again, the item fetched again
    assert [(d.action, d.ok) for d in done] == [("cleanup", True)]
    vf = world.netlink.vfs[("ens1f0", 0)]
    assert (vf.mac, vf.vlan) == ("00:00:00:00:00:00", 0), vf
    assert world.driver(world.vfs[0]) == "iavf", "cleaned by the server's handler, not the one that set it up"
