"""A MIG-capable GPU given whole goes out, and comes back, with MIG mode off.

MIG mode outlives resets and reboots. A tenant that switched it on in its guest gave the GPU
back "cleaned" with MIG on, and the next whole-GPU tenant got a GPU that runs no CUDA until
MIG is off; so did the first whole-GPU claim after an operator (or a slot's cleanup that
could not switch it off) left MIG on with no instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.agents import A100 as GPU
from tests.e2e.agents import Clock, a100_host

WHOLE = {"hardware_resource:GPU_A100": "1"}
RULES: list[dict[str, Any]] = [
    {"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}},
    {"type": "GPU_A100", "match": {"kind": "pci", "vendor_id": "10de", "product_id": "20b2"}},
]


def _gpu(api: TestClient) -> tuple[str, Any]:
    (dev,) = [d for d in api.get("/v1/devices").json() if d["address"] == GPU]
    return dev["state"], dev.get("consumer")


def _claim(api: TestClient, consumer: str) -> None:
    assert api.post("/v1/claims", json={"consumer": consumer, "extra_specs": WHOLE}).status_code == 201


def test_a_tenant_that_switched_mig_on_gives_the_gpu_back_with_it_off(
    tmp_path: Path, api: TestClient
) -> None:
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, RULES, clock)
    assert not agent.step().errors
    _claim(api, "t1")
    clock.now += 2
    assert [(w.address, w.ok) for w in agent.step().work] == [(GPU, True)]
    assert smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5).returncode == 0  # the guest
    assert api.delete("/v1/allocations/t1").status_code == 204
    clock.now += 2
    assert [(w.address, w.action, w.ok) for w in agent.step().work] == [(GPU, "cleanup", True)]
    assert not smi.mig_enabled(GPU), "the cleanup left MIG mode on for the next tenant"
    assert _gpu(api) == ("available", None)


def test_a_whole_gpu_left_in_mig_mode_is_set_up_with_it_off(tmp_path: Path, api: TestClient) -> None:
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, RULES, clock)
    assert not agent.step().errors
    assert smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5).returncode == 0  # by hand
    _claim(api, "t1")
    clock.now += 2
    assert [(w.address, w.action, w.ok) for w in agent.step().work] == [(GPU, "setup", True)]
    assert not smi.mig_enabled(GPU), "the GPU went out whole in MIG mode"
    assert _gpu(api) == ("assigned", "t1")


def test_mig_mode_that_will_not_go_off_quarantines_the_gpu(tmp_path: Path, api: TestClient) -> None:
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, RULES, clock)
    assert not agent.step().errors
    _claim(api, "t1")
    clock.now += 2
    agent.step()
    assert smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5).returncode == 0
    smi.set_flag(GPU, "busy")  # a process on the host holds the GPU: nvidia-smi refuses -mig 0
    assert api.delete("/v1/allocations/t1").status_code == 204
    clock.now += 2
    (work,) = agent.step().work
    assert (work.action, work.ok) == ("cleanup", False)
    assert "MIG mode on" in (work.error or ""), work.error
    assert _gpu(api)[0] == "quarantined"
