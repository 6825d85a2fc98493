"""A ``command`` cleanup that hangs past its timeout: the agent fails the cleanup (the device is
quarantined, and the event says it timed out), and stops the whole program, what it started
included. A helper it forked must not go on changing the device behind the quarantine, when
the operator clears it and the cleanup runs again, or after the next tenant got it."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.lifecycle.host import HostOps, RecordingNetlink, SubprocessRunner
from devassign.lifecycle.simulated import SimulatedSysfs
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

FPGA = "0000:af:00.0"


def test_a_cleanup_past_its_timeout_is_quarantined_and_leaves_nothing_running(
    tmp_path: Path, api: TestClient
) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.pci(FPGA, "1172", "5052", cls="120000", numa=0, iommu_group=30)
    late = tmp_path / "wiped-late"
    script = tmp_path / "wipe.sh"
    # The real work runs in a helper the script waits for; it outlives a kill of the script alone.
    script.write_text(f"(sleep 2; touch {late}) &\nwait\n")
    body = {
        "name": "FPGA",
        "handler": "command",
        "config": {"cleanup": ["/bin/sh", str(script)], "timeout": 0.5},
    }
    assert api.post("/v1/resource-types", json=body).status_code == 201
    config = parse_config(
        {
            "host": "fpga-1",
            "state_file": str(tmp_path / "state.json"),
            "device": [{"type": "FPGA", "match": {"vendor_id": "1172", "product_id": "5052"}}],
            "lifecycle": {"handlers": ["command"], "commands": ["/bin/sh"]},
        }
    )
    clock = Clock()
    ops = HostOps(SimulatedSysfs(h.root), RecordingNetlink(), SubprocessRunner())
    agent = in_process_agent(config, h.root, api, clock, ops=ops)
    assert not agent.step().errors
    made = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:FPGA": "1"}})
    assert made.status_code == 201, made.text
    assert [w.ok for w in agent.step().work] == [True]

    assert api.delete("/v1/allocations/vm-1").status_code == 204
    clock.now += 2
    started = time.monotonic()
    done = agent.step().work
    assert time.monotonic() - started < 1.8  # the agent did not wait for the helper
    assert [(w.action, w.ok) for w in done] == [("cleanup", False)]
    (dev,) = api.get("/v1/devices", params={"host": "fpga-1"}).json()
    assert dev["state"] == "quarantined" and "timed out" in dev["quarantine_reason"]

    time.sleep(2.5)
    assert not late.exists(), "the timed-out cleanup's helper went on running"
