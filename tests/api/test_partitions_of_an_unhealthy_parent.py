"""A device carved from or hanging under an unhealthy device is unhealthy with it: a vGPU slot
or MIG instance of a GPU whose health check fails, a VF of a PF whose check fails. The agent
checks each device on its own; the server, which sees the whole report, carries the parent's
verdict down, so no claim gets a slice of a broken GPU and every count says so."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_partitions import GPU, T4_TYPES, _available, _capacity, _claim, _report, _types, t4


def _with_gpu(devices: list[dict[str, Any]], **health: Any) -> list[dict[str, Any]]:
    return [{**d, **health} if d["address"] == GPU else d for d in devices]


def _states(api: TestClient) -> dict[str, tuple[str, str | None]]:
    return {d["address"]: (d["state"], d["health_reason"]) for d in api.get("/v1/devices").json()}


def test_the_slots_of_a_failing_gpu_are_unhealthy_with_it_and_come_back_with_it(api: TestClient) -> None:
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    held = _claim(api, "vm-1", "hardware_resource:VGPU_T4_4Q=1")
    assert held.status_code == 201, held.text
    slot = held.json()["devices"][0]["address"]
    failing = _with_gpu(t4(), healthy=False, health_reason="Xid 79: fallen off the bus")
    _report(api, "h1", failing, generation=2)
    states = _states(api)
    assert states[GPU] == ("unhealthy", "Xid 79: fallen off the bus")
    for address, (state, reason) in states.items():
        if address not in (GPU, slot):
            assert state == "unhealthy", address
            assert reason == f"{GPU} above it is unhealthy: Xid 79: fallen off the bus"
    assert _available(api) == {name: 0 for name in ["GPU_T4", *T4_TYPES]}
    assert _capacity(api, "hardware_resource:VGPU_T4_1B=1") == 0
    assert _claim(api, "vm-2", "hardware_resource:VGPU_T4_4Q=1").status_code == 409
    # The holder of the slot hears of it.
    told = api.get("/v1/events", params={"device": slot}).json()
    assert any(e["action"] == "device_unhealthy" and GPU in e["message"] for e in told)

    # The GPU's checks pass again, not yet enough of them: its slots stay out with it.
    recovering = _with_gpu(t4(), healthy=False, health_reason="Xid 79", health_recovering=True)
    _report(api, "h1", recovering, generation=3)
    assert {s for a, (s, _) in _states(api).items() if a != slot} == {"unhealthy"}
    # Healthy again: so are the slots, and they are handed out again.
    _report(api, "h1", t4(), generation=4)
    assert {s for a, (s, _) in _states(api).items() if a != slot} == {"available"}
    assert _claim(api, "vm-2", "hardware_resource:VGPU_T4_4Q=1").status_code == 201


def test_a_slot_below_a_vf_of_a_failing_pf_is_unhealthy_too(api: TestClient) -> None:
    """However deep: a PF, its VF, a vGPU slot carved on the VF."""
    _types(api, "PF", "VF", "SLOT")
    pf = {"address": "0000:5e:00.0", "kind": "pci", "type": "PF"}
    pf |= {"healthy": False, "health_reason": "link down"}
    vf = {"address": "0000:5e:00.2", "kind": "pci", "type": "VF", "parent": pf["address"]}
    slot = {"address": "0000:5e:00.2/x/0", "kind": "mdev_type", "type": "SLOT", "parent": vf["address"]}
    other = {"address": "0000:5e:00.3", "kind": "pci", "type": "VF"}
    _report(api, "h1", [pf, vf, slot, other])
    states = _states(api)
    assert states[vf["address"]] == ("unhealthy", f"{pf['address']} above it is unhealthy: link down")
    assert states[slot["address"]] == ("unhealthy", f"{pf['address']} above it is unhealthy: link down")
    assert states[other["address"]] == ("available", None)


def test_a_slot_cleaned_or_cleared_while_its_gpu_fails_stays_unhealthy(api: TestClient) -> None:
    """Between two reports: a released slot whose own check passes after its cleanup is not
    free while its GPU fails, and an operator cannot vouch for it alone."""
    _types(api, "GPU_T4", *T4_TYPES)
    _report(api, "h1", t4())
    held = _claim(api, "vm-1", "hardware_resource:VGPU_T4_4Q=1").json()["devices"][0]
    setup = {"device_id": held["id"], "action": "setup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [setup]}).status_code == 200
    _report(api, "h1", _with_gpu(t4(), healthy=False, health_reason="Xid 79"), generation=2)
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    cleaned = {"device_id": held["id"], "action": "cleanup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [cleaned]}).status_code == 200
    assert _states(api)[held["address"]] == ("unhealthy", f"{GPU} above it is unhealthy: Xid 79")
    assert _claim(api, "vm-2", "hardware_resource:VGPU_T4_4Q=1").status_code == 409
    refused = api.post(f"/v1/devices/{held['id']}/clear", json={"reason": "looks fine"})
    assert refused.status_code == 409 and "clear that device first" in refused.json()["error"]["message"]
    gpu = next(d for d in api.get("/v1/devices").json() if d["address"] == GPU)
    assert api.post(f"/v1/devices/{gpu['id']}/clear", json={}).status_code == 200
    assert api.post(f"/v1/devices/{held['id']}/clear", json={}).status_code == 200
    assert _claim(api, "vm-2", "hardware_resource:VGPU_T4_4Q=1").status_code == 201


def test_a_long_chain_below_an_unhealthy_device_is_walked_once() -> None:
    """A report of one long chain of devices (each the parent of the next) whose top fails was
    walked up from every device in turn: quadratic, some ten seconds for 3,000 devices and
    minutes for the 20,000 a report may hold, under SQLite's write lock for a hostile agent.
    Every device of the chain inherits the top's failure, each link is read a bounded number
    of times, and links that loop end the walk."""

    from devassign.schemas import ReportedDevice
    from devassign.store.inherited_health import with_inherited_health

    reads = [0]

    class Counted(ReportedDevice):
        def __getattribute__(self, name: str) -> Any:
            if name in ("parent", "pool"):
                reads[0] += 1
            return super().__getattribute__(name)

    def pci(i: int) -> str:
        return f"0000:{0x80 + i // 256:02x}:{(i // 8) % 32:02x}.{i % 8}"

    n = 1_000
    chain = [
        Counted(address=pci(i), kind="pci", type="GPU", parent=pci(i - 1) if i else None) for i in range(n)
    ]
    chain[0] = Counted(address=pci(0), kind="pci", type="GPU", healthy=False, health_reason="bad")
    loop = [  # two devices each the other's parent, below nothing that fails
        Counted(address="0000:f0:00.0", kind="pci", type="GPU", parent="0000:f0:00.1"),
        Counted(address="0000:f0:00.1", kind="pci", type="GPU", parent="0000:f0:00.0"),
    ]
    out = with_inherited_health([*chain, *loop])
    assert reads[0] <= 10 * (n + len(loop)), reads[0]  # the walk up from each: some n * n / 2
    assert out[0].health_reason == "bad"
    assert all(not d.healthy and d.health_reason == f"{pci(0)} above it is unhealthy: bad" for d in out[1:n])
    assert all(d.healthy for d in out[n:])


def test_a_cleanup_deep_below_a_failing_device_stays_unhealthy(api: TestClient) -> None:
    """The stored walk up from a cleaned device, past the levels it reads one statement each."""
    _types(api, "LINK", "SLOT")
    top = "0000:5e:00.0"
    links = [{"address": top, "kind": "pci", "type": "LINK"}]
    for i in range(1, 10):
        links.append(
            {"address": f"0000:5e:{i:02x}.0", "kind": "pci", "type": "LINK", "parent": links[-1]["address"]}
        )
    bottom = links[-1]["address"]
    slot = {"address": f"{bottom}/x-1/0", "kind": "mdev_type", "type": "SLOT", "parent": bottom}
    _report(api, "h1", [*links, slot])
    held = _claim(api, "vm-1", "hardware_resource:SLOT=1").json()["devices"][0]
    setup = {"device_id": held["id"], "action": "setup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [setup]}).status_code == 200
    failing = [{**links[0], "healthy": False, "health_reason": "link down"}, *links[1:], slot]
    _report(api, "h1", failing, generation=2)
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    cleaned = {"device_id": held["id"], "action": "cleanup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [cleaned]}).status_code == 200
    assert _states(api)[slot["address"]] == ("unhealthy", f"{top} above it is unhealthy: link down")
