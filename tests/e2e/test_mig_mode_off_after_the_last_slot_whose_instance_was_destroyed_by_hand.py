"""An operator destroys a held MIG slot's GPU instance by hand (or the host reboots, which
destroys every instance). When its holder releases it, the cleanup finds nothing at the
placement; the GPU has no instance left, so MIG mode goes off as after any last instance:
the GPU goes out whole (or for time-sliced vGPUs) as it came in, not in MIG mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.lifecycle.host import HostOps, RecordingNetlink
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"


def test_the_last_slot_cleaned_turns_mig_mode_off_even_when_its_instance_was_gone(
    tmp_path: Path, api: TestClient
) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})
    for name in ("GPU_A100", "MIG_1G"):
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [
        {"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}},
        {"type": "GPU_A100", "match": {"vendor_id": "10de", "product_id": "20b2"}},
    ]
    config = parse_config({"host": "a100-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(
        config, h.root, api, clock, ops=HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    )
    assert not agent.step().errors
    spec = {"hardware_resource:MIG_1G": "1"}
    assert api.post("/v1/claims", json={"consumer": "job-1", "extra_specs": spec}).status_code == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    (inst,) = smi.instances(GPU)
    assert smi.mig_enabled(GPU)

    # By hand, behind devassign's back.
    for args in (["-dci", "-gi", str(inst.gpu_instance)], ["-dgi", "-gi", str(inst.gpu_instance)]):
        assert smi.run(["nvidia-smi", "mig", "-i", GPU, *args], env={}, timeout=5).returncode == 0

    assert api.delete("/v1/allocations/job-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    assert smi.instances(GPU) == []
    assert not smi.mig_enabled(GPU), "the GPU is left in MIG mode with no instance"
