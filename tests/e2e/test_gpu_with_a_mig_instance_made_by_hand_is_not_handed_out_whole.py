"""An operator turns MIG on and makes a GPU instance by hand on a GPU whose whole device is a
type of its own. The MIG slots it overlaps fail their checks; the GPU must too: handed out
whole, its setup would bind it to vfio-pci under the host's instance. Once the instance is
gone, the GPU comes back after its passing checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.agents import A100 as GPU
from tests.e2e.agents import Clock, a100_host

WHOLE = {"hardware_resource:GPU_A100": "1"}


def _devices(api: TestClient) -> dict[str, dict[str, Any]]:
    return {d["address"]: d for d in api.get("/v1/devices", params={"host": "a100-1"}).json()}


def test_a_gpu_with_an_instance_made_by_hand_is_not_handed_out_whole(tmp_path: Path, api: TestClient) -> None:
    rules: list[dict[str, Any]] = [
        {"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}},
        {"type": "MIG_3G", "match": {"mig_profile": "3g.40gb"}},
        {"type": "GPU_A100", "match": {"kind": "pci", "vendor_id": "10de", "product_id": "20b2"}},
    ]
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, rules, clock)
    assert not agent.step().errors
    assert _devices(api)[GPU]["state"] == "available"

    # The operator, by hand: MIG on, a 3g.40gb at slice 0.
    by_hand = (["nvidia-smi", "-i", GPU, "-mig", "1"], ["nvidia-smi", "mig", "-i", GPU, "-cgi", "9:0", "-C"])
    for argv in by_hand:
        assert smi.run(argv, env={}, timeout=5).returncode == 0
    for _ in range(3):
        clock.now += 61
        assert not agent.step().errors
    gpu = _devices(api)[GPU]
    assert gpu["state"] == "unhealthy", gpu
    assert "in use outside devassign" in gpu["health_reason"] and "made by hand" in gpu["health_reason"]
    refused = api.post("/v1/claims", json={"consumer": "vm-whole", "extra_specs": WHOLE})
    assert refused.status_code == 409, refused.text
    assert smi.mig_enabled(GPU) and len(smi.instances(GPU)) == 1  # nothing touched the host's instance

    # The operator destroys it: the GPU comes back after its passing checks.
    gi = smi.instances(GPU)[0].gpu_instance
    for argv in (["-dci", "-gi", str(gi)], ["-dgi", "-gi", str(gi)]):
        assert smi.run(["nvidia-smi", "mig", "-i", GPU, *argv], env={}, timeout=5).returncode == 0
    for _ in range(4):
        clock.now += 61
        assert not agent.step().errors
    assert _devices(api)[GPU]["state"] == "available"
    claimed = api.post("/v1/claims", json={"consumer": "vm-whole", "extra_specs": WHOLE})
    assert claimed.status_code == 201, claimed.text
