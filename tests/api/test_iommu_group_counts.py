"""A device whose IOMMU group has a member that is not free (tainted, unhealthy, quarantined,
being cleaned) cannot be claimed, since a claim takes the whole group: the counts say so too,
as ``partitioned`` rather than ``available``, so ``devassign types`` and ``capacity`` never
promise a GPU that every claim is refused."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

GPU = {"address": "0000:e1:00.0", "kind": "pci", "type": "GPU_RTX", "iommu_group": 70}
AUDIO = {"address": "0000:e1:00.1", "kind": "pci", "type": "GPU_AUDIO", "iommu_group": 70}
OTHER = {"address": "0000:e2:00.0", "kind": "pci", "type": "GPU_RTX", "iommu_group": 71}
OTHER_AUDIO = {"address": "0000:e2:00.1", "kind": "pci", "type": "GPU_AUDIO", "iommu_group": 71}


def _setup(api: TestClient, audio: dict[str, Any]) -> None:
    for name in ("GPU_RTX", "GPU_AUDIO"):
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [GPU, audio, OTHER, OTHER_AUDIO]})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _counts(api: TestClient) -> dict[str, Any]:
    return {t["name"]: t["counts"] for t in api.get("/v1/resource-types").json()}


def _capacity(api: TestClient) -> int:
    r = api.get("/v1/capacity", params={"spec": "hardware_resource:GPU_RTX=1"})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def _claim(api: TestClient, consumer: str, n: int) -> Any:
    specs = {"hardware_resource:GPU_RTX": str(n)}
    return api.post("/v1/claims", json={"consumer": consumer, "extra_specs": specs})


def test_a_gpu_whose_audio_function_is_unhealthy_is_not_counted_available(api: TestClient) -> None:
    _setup(api, {**AUDIO, "healthy": False, "health_reason": "config space reads 0xff"})
    gpu = _counts(api)["GPU_RTX"]
    assert (gpu["available"], gpu["partitioned"], gpu["total"]) == (1, 1, 2)
    assert _capacity(api) == 1
    assert _claim(api, "vm-1", 2).status_code == 409
    assert _claim(api, "vm-1", 1).status_code == 201
    assert _counts(api)["GPU_RTX"]["available"] == 0
    # The audio function healthy again: its GPU is counted again.
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 2, "devices": [GPU, AUDIO, OTHER, OTHER_AUDIO]})
    assert r.status_code == 200, r.text
    assert (_counts(api)["GPU_RTX"]["available"], _counts(api)["GPU_RTX"]["partitioned"]) == (1, 0)
    assert _claim(api, "vm-2", 1).status_code == 201


def test_a_gpu_whose_audio_function_is_tainted_is_not_counted_available(api: TestClient) -> None:
    _setup(api, AUDIO)
    audio = next(d for d in api.get("/v1/devices").json() if d["address"] == AUDIO["address"])
    r = api.post(f"/v1/devices/{audio['id']}/taints", json={"effect": "NoSchedule", "reason": "fan"})
    assert r.status_code == 201, r.text
    gpu = _counts(api)["GPU_RTX"]
    assert (gpu["available"], gpu["partitioned"]) == (1, 1)
    assert _capacity(api) == 1
    assert api.delete(f"/v1/devices/{audio['id']}/taints").status_code == 200
    assert (_counts(api)["GPU_RTX"]["available"], _counts(api)["GPU_RTX"]["partitioned"]) == (2, 0)
    assert _capacity(api) == 2
