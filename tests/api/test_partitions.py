"""Partitionable devices through the API: pools, counters and modes, claim by claim.

Each case is a table: the host's devices as an agent reports them, then claims in order with
what each gets or why it is refused, and the counts ``types`` and ``capacity`` show after each.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from devassign.domain import mdev_address

GPU = "0000:3b:00.0"
T4_FB = 16384
# The NVIDIA vGPU manager's mdev types of a T4 (16 GB): framebuffer and max instances.
T4_TYPES = {"VGPU_T4_1B": ("GRID T4-1B", 1024, 16), "VGPU_T4_4Q": ("GRID T4-4Q", 4096, 4),
            "VGPU_T4_8Q": ("GRID T4-8Q", 8192, 2), "VGPU_T4_16Q": ("GRID T4-16Q", 16384, 1)}  # fmt: skip


def _types(api: TestClient, *names: str) -> None:
    for name in names:
        r = api.post("/v1/resource-types", json={"name": name, "description": name})
        assert r.status_code == 201, r.text


def _report(api: TestClient, host: str, devices: list[dict[str, Any]], generation: int = 1) -> dict[str, Any]:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def t4(gpu: str = GPU, whole: bool = True) -> list[dict[str, Any]]:
    """A T4 as the agent reports it: the GPU (passed through whole) and its vGPU slots."""
    out: list[dict[str, Any]] = []
    if whole:
        ids = {"vendor_id": "10de", "product_id": "1eb8"}
        whole_gpu = {"address": gpu, "kind": "pci", "type": "GPU_T4", **ids}
        out.append({**whole_gpu, "iommu_group": 12, "attributes": {}})
    for type_name, (mode, fb, n) in T4_TYPES.items():
        for i in range(n):
            out.append(
                {
                    "address": mdev_address(gpu, f"nvidia-{fb}", i),
                    "kind": "mdev_type",
                    "type": type_name,
                    "parent": gpu,
                    "pool_counters": {"framebuffer_mb": T4_FB},
                    "consumes": {"framebuffer_mb": fb},
                    "mode": mode,
                    "attributes": {"mdev_type": f"nvidia-{fb}"},
                }
            )
    return out


def _available(api: TestClient) -> dict[str, int]:
    return {t["name"]: t["counts"]["available"] for t in api.get("/v1/resource-types").json()}


def _specs(*specs: str) -> dict[str, str]:
    return dict(s.split("=") for s in specs)


def _claim(api: TestClient, consumer: str, *specs: str) -> Any:
    return api.post("/v1/claims", json={"consumer": consumer, "extra_specs": _specs(*specs)})


def _capacity(api: TestClient, spec: str) -> int:
    r = api.get("/v1/capacity", params={"spec": spec})
    assert r.status_code == 200, r.text
    total: int = r.json()["total"]
    return total


def test_a_time_sliced_gpu_runs_one_vgpu_type_and_never_overcommits(api: TestClient) -> None:
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    assert _available(api) == {
        "GPU_T4": 1,
        "VGPU_T4_1B": 16,
        "VGPU_T4_4Q": 4,
        "VGPU_T4_8Q": 2,
        "VGPU_T4_16Q": 1,
    }
    assert _capacity(api, "hardware_resource:VGPU_T4_4Q=1") == 4

    assert _claim(api, "vm-1", "hardware_resource:VGPU_T4_4Q=1").status_code == 201
    # One 4Q: three more 4Q fit, nothing of another type, and not the whole GPU.
    assert _available(api) == {
        "GPU_T4": 0,
        "VGPU_T4_1B": 0,
        "VGPU_T4_4Q": 3,
        "VGPU_T4_8Q": 0,
        "VGPU_T4_16Q": 0,
    }
    assert _capacity(api, "hardware_resource:VGPU_T4_4Q=1") == 3
    assert _capacity(api, "hardware_resource:VGPU_T4_1B=1") == 0
    refused = _claim(api, "vm-2", "hardware_resource:VGPU_T4_1B=1")
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert f"1 up host with too few free VGPU_T4_1B (1 of them {HELD_BACK})" in message, message
    # Asked of that host, the sentence names the GPU and its mode.
    on_host = api.post("/v1/explain", json={"extra_specs": _specs("hardware_resource:VGPU_T4_1B=1"),
                                            "hosts": ["h1"]}).json()  # fmt: skip
    sentence = on_host["hosts"][0]["message"]
    assert f"16 more held back: {GPU} runs GRID T4-4Q, and holds one mode at a time" in sentence, sentence
    whole = _claim(api, "vm-3", "hardware_resource:GPU_T4=1")
    assert whole.status_code == 409

    for i in range(3):
        assert _claim(api, f"vm-4q-{i}", "hardware_resource:VGPU_T4_4Q=1").status_code == 201
    assert _claim(api, "vm-5", "hardware_resource:VGPU_T4_4Q=1").status_code == 409
    assert _available(api)["VGPU_T4_4Q"] == 0


def test_the_whole_gpu_and_its_partitions_exclude_each_other(api: TestClient) -> None:
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    assert _claim(api, "vm-whole", "hardware_resource:GPU_T4=1").status_code == 201
    assert _available(api) == {
        "GPU_T4": 0,
        "VGPU_T4_1B": 0,
        "VGPU_T4_4Q": 0,
        "VGPU_T4_8Q": 0,
        "VGPU_T4_16Q": 0,
    }
    assert _claim(api, "vm-1", "hardware_resource:VGPU_T4_1B=1").status_code == 409
    # One request for the GPU and a slot of it together cannot be placed either.
    assert api.delete("/v1/allocations/vm-whole").status_code in (200, 204)


HELD_BACK = (
    "only because of what is held of their GPU or PF: it runs another mode, has too little left, "
    "or is held whole or in part"
)


def test_a_refusal_says_the_gpu_is_held_whole_or_in_part_not_that_it_runs_another_mode(
    api: TestClient,
) -> None:
    """The GPU held whole keeps its slots back; a slot held keeps the GPU back. Neither is a
    device "carved from" a GPU that "runs another mode": the sentence says what is held."""
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    _report(api, "h2", t4())
    for consumer, host, spec in (("vm-whole", "h1", "GPU_T4"), ("vm-1b", "h2", "VGPU_T4_1B")):
        body = {"consumer": consumer, "hosts": [host], "extra_specs": _specs(f"hardware_resource:{spec}=1")}
        assert api.post("/v1/claims", json=body).status_code == 201
    whole = _claim(api, "vm-2", "hardware_resource:GPU_T4=1")
    assert whole.status_code == 409
    # h1's GPU is held; h2's is free but one of its slots is held.
    assert f"2 up hosts with too few free GPU_T4 (1 of them {HELD_BACK})" in whole.json()["error"]["message"]
    slot = _claim(api, "vm-3", "hardware_resource:VGPU_T4_16Q=1")
    assert slot.status_code == 409
    message = slot.json()["error"]["message"]
    assert f"2 up hosts with too few free VGPU_T4_16Q (2 of them {HELD_BACK})" in message, message
    assert "carved from run another mode" not in message


def test_two_8q_and_a_4q_do_not_fit_one_t4(api: TestClient) -> None:
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    both = _claim(api, "vm-1", "hardware_resource:VGPU_T4_8Q=2")
    assert both.status_code == 201, both.text
    assert _available(api) == {
        "GPU_T4": 0,
        "VGPU_T4_1B": 0,
        "VGPU_T4_4Q": 0,
        "VGPU_T4_8Q": 0,
        "VGPU_T4_16Q": 0,
    }
    mixed = _claim(api, "vm-2", "hardware_resource:VGPU_T4_8Q=1", "hardware_resource:VGPU_T4_4Q=1")
    assert mixed.status_code == 409


def test_a_report_whose_partitions_disagree_on_their_pool_is_refused_per_device(api: TestClient) -> None:
    _types(api, "GPU_T4", *T4_TYPES)
    devices = t4(whole=False)
    devices[-1] = {**devices[-1], "pool_counters": {"framebuffer_mb": 32768}}
    body = _report(api, "h1", devices)
    assert [(r["address"], r["code"]) for r in body["refused"]] == [
        (devices[-1]["address"], "inconsistent_pool")
    ]
    bad = api.put("/v1/hosts/h2/inventory", json={"generation": 1, "devices": [
        {**t4(whole=False)[0], "consumes": {"framebuffer_mb": 99999}}]})  # fmt: skip
    assert bad.status_code == 400 and "pool_counters give 16384" in bad.json()["error"]["message"]


def _mig_a100(gpu: str = GPU) -> list[dict[str, Any]]:
    """An A100 80GB's MIG placements as the agent reports them (the built-in table)."""
    from devassign.agent import gpus
    from devassign.domain import mig_address

    model = gpus.lookup("10de", "20b2")
    assert model is not None
    return [
        {
            "address": mig_address(gpu, p.profile.name, p.start),
            "kind": "mig",
            "type": f"MIG_{p.profile.name.split('.')[0].upper()}",
            "parent": gpu,
            "pool_counters": gpus.counters(model),
            "consumes": gpus.consumes(p),
            "mode": "MIG",
            "attributes": {"mig_profile": p.profile.name},
        }
        for p in gpus.placements(model)
        if p.profile.name in ("1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
    ]


def test_capacity_is_what_a_loop_of_claims_gets(api: TestClient) -> None:
    """For each partition type alone on an empty host: ``capacity`` says N, and N claims in a row
    succeed where the next one is refused."""
    cases = [
        (t4(), [*T4_TYPES, "GPU_T4"]),
        (_mig_a100(), ["MIG_1G", "MIG_2G", "MIG_3G", "MIG_4G", "MIG_7G"]),
    ]
    _types(api, "GPU_T4", *T4_TYPES, "MIG_1G", "MIG_2G", "MIG_3G", "MIG_4G", "MIG_7G")
    n = 0
    for devices, type_names in cases:
        for type_name in type_names:
            n += 1
            host = f"h{n}"
            _report(api, host, devices)
            spec = f"hardware_resource:{type_name}=1"
            said = api.get("/v1/capacity", params={"spec": spec, "host": host}).json()["total"]
            got = 0
            while _claim_on(api, f"{host}-c{got}", spec, host) == 201:
                got += 1
            assert (type_name, got) == (type_name, said)
            assert got > 0


def _claim_on(api: TestClient, consumer: str, spec: str, host: str) -> int:
    body = {"consumer": consumer, "extra_specs": _specs(spec), "hosts": [host]}
    return api.post("/v1/claims", json=body).status_code


def _vfs(n: int = 4, bandwidth: int = 10_000) -> list[dict[str, Any]]:
    """VFs sharing their PF's 10 Gbit/s, as the agent reports them with ``pf_bandwidth_mbps``."""
    pf = "0000:5e:00.0"
    return [
        {
            "address": f"0000:5e:10.{i}",
            "kind": "sriov_vf",
            "type": "NIC_VF_BW",
            "parent": pf,
            "pool_counters": {"bandwidth_mbps": bandwidth},
            "attributes": {},
        }
        for i in range(n)
    ]


def _vf_claim(api: TestClient, consumer: str, rate: int, host: str = "h1") -> Any:
    request = {
        "name": "nic",
        "type": "NIC_VF_BW",
        "params": {"min_tx_rate_mbps": rate, "max_tx_rate_mbps": 9000},
    }
    return api.post("/v1/claims", json={"consumer": consumer, "requests": [request], "hosts": [host]})


def test_vfs_never_reserve_more_than_their_pfs_bandwidth(api: TestClient) -> None:
    rates = {"type": "integer", "min": 0, "max": 100000}
    body = {
        "name": "NIC_VF_BW",
        "description": "VF",
        "params": {"min_tx_rate_mbps": rates, "max_tx_rate_mbps": rates},
    }
    assert api.post("/v1/resource-types", json=body).status_code == 201
    _report(api, "h1", _vfs())
    assert _vf_claim(api, "vm-1", 4000).status_code == 201
    assert _vf_claim(api, "vm-2", 4000).status_code == 201
    refused = _vf_claim(api, "vm-3", 4000)  # 12 of 10 Gbit/s
    assert refused.status_code == 409, refused.text
    assert _vf_claim(api, "vm-4", 2000).status_code == 201  # exactly 10
    assert _vf_claim(api, "vm-5", 1).status_code == 409
    held = [d for d in api.get("/v1/devices").json() if d["consumer"]]
    assert sorted(d["consumer"] for d in held) == ["vm-1", "vm-2", "vm-4"]
    # Released and cleaned, its 4 Gbit/s are free again.
    assert api.delete("/v1/allocations/vm-1").status_code in (200, 204)
    freed = next(d["id"] for d in held if d["consumer"] == "vm-1")
    assert _vf_claim(api, "vm-6", 4000).status_code == 409  # still cleaning: still taken
    done = api.post(
        "/v1/hosts/h1/work", json={"results": [{"device_id": freed, "action": "cleanup", "ok": True}]}
    )
    assert done.status_code == 200, done.text
    assert _vf_claim(api, "vm-6", 4000).status_code == 201
    audit = api.get("/v1/audit").json()
    assert audit["findings"] == [], audit
