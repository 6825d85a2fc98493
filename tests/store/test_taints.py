"""Taints in the store: devices, parents and hosts taken out of service, on both databases.

A NoSchedule or Drain taint keeps a device from new claims and out of ``inventory.available``
in the same transaction; a Drain asks the holders to move and takes nothing away; a None
taint changes no scheduling; expired taints go with the sweeper's pass and are not shown
before it; bad input changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.inventory import recount
from devassign.store.schema import devices, events, inventory, taints
from tests.conftest import Clock, vf

ADMIN = Principal(name="admin", role=Role.ADMIN)
PF = "0000:3b:00.0"


def _report(store: Store, host: str, devs: list[dict[str, Any]], generation: int = 1) -> None:
    store.apply_report(
        host,
        schemas.InventoryReport(generation=generation, devices=[schemas.ReportedDevice(**d) for d in devs]),
        "agent",
    )


def _nic_host(store: Store, host: str, vfs: int = 2, generation: int = 1) -> None:
    pf = {"address": PF, "kind": "sriov_pf", "type": "NIC_PF"}
    _report(store, host, [pf, *(vf(f"0000:3b:02.{i}") for i in range(vfs))], generation)


@pytest.fixture
def fleet(store: Store) -> Store:
    for name in ("NIC_PF", "NIC_VF_1G"):
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    _nic_host(store, "c1")
    return store


def _id(store: Store, host: str, address: str) -> str:
    return store.list_devices(host=host, address=address)[0].id


def _available(store: Store, host: str, type_name: str) -> int:
    with store.db.read() as c:
        return int(
            c.execute(
                sa.text(
                    "SELECT i.available FROM inventory i JOIN hosts h ON h.id = i.host_id "
                    "JOIN resource_types t ON t.id = i.type_id WHERE h.name = :h AND t.name = :t"
                ),
                {"h": host, "t": type_name},
            ).scalar_one()
        )


def _claim(store: Store, consumer: str, **spec: int) -> schemas.Allocation:
    body = ClaimBody(
        consumer=consumer, extra_specs={f"hardware_resource:{t}": str(n) for t, n in spec.items()}
    )
    allocation, _ = Placer(store).claim(body, ADMIN)
    return allocation


def _clean(store: Store) -> None:
    with store.db.engine.begin() as c:
        c.execute(
            devices.update()
            .where(devices.c.state == "cleaning")
            .values(state="available", allocation_id=None)
        )
        for (host_id,) in c.execute(sa.select(devices.c.host_id).distinct()).all():
            recount(c, host_id)


def _audit_clean(store: Store) -> None:
    assert store.audit(down_for=timedelta(days=3650)).findings == []


def _actions(store: Store) -> list[str]:
    return [e.action for e in reversed(store.list_events(limit=1000))]


def _body(
    effect: str = "NoSchedule", reason: str = "maintenance: PSU swap", **kw: Any
) -> schemas.TaintCreate:
    return schemas.TaintCreate(effect=effect, reason=reason, **kw)  # type: ignore[arg-type]


def test_a_device_taint_keeps_that_device_from_claims_until_untainted(fleet: Store) -> None:
    target = _id(fleet, "c1", "0000:3b:02.0")
    made = fleet.add_taint(_body(), "admin", device_id=target)
    assert (made.host, made.device, made.effect, made.set_by) == ("c1", "0000:3b:02.0", "NoSchedule", "admin")
    assert _available(fleet, "c1", "NIC_VF_1G") == 1
    shown = fleet.get_device(target)
    assert [t.id for t in shown.taints] == [made.id]
    assert fleet.get_device(_id(fleet, "c1", "0000:3b:02.1")).taints == []
    counts = {t.name: t.counts for t in fleet.list_types()}["NIC_VF_1G"]
    assert (counts.available, counts.tainted) == (1, 1)
    got = _claim(fleet, "vm-1", NIC_VF_1G=1)
    assert [d.address for d in got.devices] == ["0000:3b:02.1"]
    with pytest.raises(errors.DevassignError) as refused:
        _claim(fleet, "vm-2", NIC_VF_1G=1)
    assert refused.value.code == errors.NO_VALID_HOST
    _audit_clean(fleet)
    removed = fleet.remove_taints("admin", device_id=target)
    assert [t.id for t in removed] == [made.id]
    assert fleet.remove_taints("admin", device_id=target) == []  # twice is harmless
    assert _available(fleet, "c1", "NIC_VF_1G") == 1
    assert [d.address for d in _claim(fleet, "vm-2", NIC_VF_1G=1).devices] == ["0000:3b:02.0"]
    actions = _actions(fleet)
    assert actions.count("device_tainted") == 1 and actions.count("device_untainted") == 1
    _audit_clean(fleet)


def test_explain_names_the_taint(fleet: Store) -> None:
    fleet.add_taint(
        _body(),
        "admin",
        host="c1",
    )
    found = Placer(fleet).explain(
        ClaimBody(consumer="x", hosts=["c1"], extra_specs={"hardware_resource:NIC_VF_1G": "1"}), ADMIN
    )
    assert not found["fits"]
    message = found["hosts"][0]["message"]
    assert "2 NIC_VF_1G devices are tainted NoSchedule (maintenance: PSU swap, by admin)" in message, message


def test_a_parent_taint_covers_the_parent_and_its_children_new_ones_too(fleet: Store) -> None:
    made = fleet.add_taint(_body("Drain", "firmware update", parent=PF), "admin", host="c1")
    assert made.parent == PF
    assert _available(fleet, "c1", "NIC_VF_1G") == 0
    assert _available(fleet, "c1", "NIC_PF") == 0
    _nic_host(fleet, "c1", vfs=3, generation=2)  # a new VF appears under the drained PF
    assert _available(fleet, "c1", "NIC_VF_1G") == 0
    new = fleet.get_device(_id(fleet, "c1", "0000:3b:02.2"))
    assert [t.id for t in new.taints] == [made.id]
    _audit_clean(fleet)
    assert [t.id for t in fleet.remove_taints("admin", host="c1", parent=PF)] == [made.id]
    assert _available(fleet, "c1", "NIC_VF_1G") == 3
    _audit_clean(fleet)


def test_a_host_drain_asks_holders_to_move_and_takes_nothing(fleet: Store) -> None:
    held = _claim(fleet, "vm-1", NIC_VF_1G=1)
    made = fleet.add_taint(_body("Drain", "rack move"), "admin", host="c1")
    allocation = fleet.get_allocation("vm-1")
    assert allocation.released_at is None and {d.id for d in allocation.devices} == {
        d.id for d in held.devices
    }
    asked = [e for e in fleet.list_events(consumer="vm-1") if e.action == "drain_requested"]
    assert len(asked) == 1 and "rack move" in asked[0].message
    assert asked[0].detail["taint"] == made.id
    assert _available(fleet, "c1", "NIC_VF_1G") == 0
    # Released and cleaned, the device is free but still drained: not offered.
    fleet.release("vm-1", "admin")
    _clean(fleet)
    assert _available(fleet, "c1", "NIC_VF_1G") == 0
    _audit_clean(fleet)
    assert {t.id for t in fleet.list_taints(host="c1")} == {made.id}
    assert fleet.get_host("c1").taints[0].effect == "Drain"
    fleet.remove_taints("admin", host="c1")
    assert _available(fleet, "c1", "NIC_VF_1G") == 2
    assert fleet.get_host("c1").taints == []


def test_a_none_taint_changes_no_scheduling(fleet: Store) -> None:
    made = fleet.add_taint(_body("None", "degraded fan"), "admin", host="c1")
    assert _available(fleet, "c1", "NIC_VF_1G") == 2
    assert {d.id for d in fleet.list_devices(host="c1") if d.taints} == {
        d.id for d in fleet.list_devices(host="c1")
    }
    assert len(_claim(fleet, "vm-1", NIC_VF_1G=2).devices) == 2
    assert [t.id for t in fleet.list_taints()] == [made.id]
    _audit_clean(fleet)


def test_taints_stack_and_the_strongest_names_the_device(fleet: Store) -> None:
    target = _id(fleet, "c1", "0000:3b:02.0")
    first = fleet.add_taint(_body("NoSchedule", "a"), "admin", device_id=target)
    second = fleet.add_taint(_body("Drain", "b"), "admin", host="c1")
    with fleet.db.read() as c:
        mark = c.execute(sa.select(devices.c.taint).where(devices.c.id == target)).scalar_one()
    assert mark == "Drain (b, by admin)"
    fleet.remove_taints("admin", host="c1", taint_id=second.id)
    with fleet.db.read() as c:
        mark = c.execute(sa.select(devices.c.taint).where(devices.c.id == target)).scalar_one()
    assert mark == "NoSchedule (a, by admin)"
    assert [t.id for t in fleet.list_taints()] == [first.id]
    assert _available(fleet, "c1", "NIC_VF_1G") == 1


def test_expired_taints_are_hidden_then_swept(fleet: Store, clock: Clock) -> None:
    target = _id(fleet, "c1", "0000:3b:02.0")
    fleet.add_taint(_body(expires_in=timedelta(hours=2)), "admin", device_id=target)
    fleet.add_taint(_body("Drain", "x", expires_at=clock() + timedelta(minutes=30)), "admin", host="c1")
    assert _available(fleet, "c1", "NIC_VF_1G") == 0
    clock.advance(31 * 60)
    assert [t.effect for t in fleet.list_taints()] == ["NoSchedule"]  # on read: gone already
    fleet.heartbeat("c1", "agent")
    fleet.sweep()
    assert _available(fleet, "c1", "NIC_VF_1G") == 1
    clock.advance(2 * 3600)
    fleet.heartbeat("c1", "agent")
    fleet.sweep()
    assert fleet.list_taints() == []
    assert _available(fleet, "c1", "NIC_VF_1G") == 2
    with fleet.db.read() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(taints)).scalar_one() == 0
    assert _actions(fleet).count("taint_expired") == 2
    _audit_clean(fleet)


def _rows(store: Store) -> tuple[Any, ...]:
    with store.db.read() as c:
        return (
            c.execute(sa.select(sa.func.count()).select_from(taints)).scalar_one(),
            c.execute(sa.select(sa.func.count()).select_from(events)).scalar_one(),
            sorted(c.execute(sa.select(inventory.c.type_id, inventory.c.available)).all()),
            sorted(c.execute(sa.select(devices.c.id, devices.c.taint)).all()),
        )


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda s, c: s.add_taint(_body(), "admin", device_id="no-such-device"), errors.DEVICE_NOT_FOUND),
        (lambda s, c: s.add_taint(_body(), "admin", host="nowhere"), errors.HOST_NOT_FOUND),
        (lambda s, c: s.add_taint(_body(parent="0000:99:00.0"), "admin", host="c1"), errors.DEVICE_NOT_FOUND),
        (
            lambda s, c: s.add_taint(_body(expires_at=c() - timedelta(seconds=1)), "admin", host="c1"),
            errors.INVALID_REQUEST,
        ),
        (lambda s, c: s.remove_taints("admin", host="c1", taint_id=424242), errors.NOT_FOUND),
        (lambda s, c: s.remove_taints("admin", device_id="no-such-device"), errors.DEVICE_NOT_FOUND),
    ],
    ids=[
        "unknown-device",
        "unknown-host",
        "unknown-parent",
        "past-expiry",
        "unknown-taint",
        "untaint-unknown",
    ],
)
def test_bad_input_changes_nothing(fleet: Store, clock: Clock, call: Any, code: str) -> None:
    fleet.add_taint(_body("None", "kept"), "admin", host="c1")
    before = _rows(fleet)
    with pytest.raises(errors.DevassignError) as exc:
        call(fleet, clock)
    assert exc.value.code == code
    assert _rows(fleet) == before


@pytest.mark.parametrize(
    "body",
    [
        {"effect": "Evict", "reason": "x"},
        {"effect": "NoSchedule", "reason": ""},
        {"effect": "NoSchedule", "reason": "   "},
        {"effect": "NoSchedule", "reason": "x", "expires_in": -5},
        {"effect": "NoSchedule", "reason": "x", "expires_in": 60, "expires_at": "2030-01-01T00:00:00Z"},
        {"effect": "NoSchedule", "reason": "x", "expires_at": "2030-01-01T00:00:00"},
    ],
)
def test_malformed_taints_are_refused_by_the_model(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        schemas.TaintCreate.model_validate(body)


def test_deleting_a_host_forgets_its_taints(fleet: Store) -> None:
    fleet.add_taint(_body(), "admin", host="c1")
    fleet.add_taint(_body(), "admin", device_id=_id(fleet, "c1", PF))
    fleet.delete_host("c1", "admin", force=True)
    assert fleet.list_taints() == []


GPU = "0000:3b:00.0"


def _gpu_host(store: Store) -> None:
    """A GPU whose VFs carry its vGPU slots two ways: a vGPU 17+ slot (parent its VF, pool
    the GPU) and an mdev slot on a VF of an SR-IOV GPU (parent the VF, the VF's parent the
    GPU), beside an untouched GPU."""
    for name in ("GPU_H200", "GPU_VF", "VGPU_70C", "VGPU_MDEV"):
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    slot = {"kind": "vgpu", "pool_counters": {"framebuffer_mb": 143360}}
    _report(
        store,
        "g1",
        [
            {"address": GPU, "kind": "pci", "type": "GPU_H200", "vendor_id": "10de", "product_id": "2335"},
            {"address": "0000:5e:00.0", "kind": "pci", "type": "GPU_H200"},
            {"address": "0000:3b:00.4", "kind": "sriov_vf", "type": "GPU_VF", "parent": GPU},
            {
                **slot,
                "address": "0000:3b:00.4/vgpu/1429",
                "type": "VGPU_70C",
                "parent": "0000:3b:00.4",
                "pool": GPU,
                "consumes": {"framebuffer_mb": 71680},
                "mode": "NVIDIA H200X-70C",
            },
            {
                "kind": "mdev_type",
                "address": "0000:3b:00.5/nvidia-700/0",
                "type": "VGPU_MDEV",
                "parent": "0000:3b:00.5",
            },
            {"address": "0000:3b:00.5", "kind": "sriov_vf", "type": "GPU_VF", "parent": GPU},
        ],
    )


def test_a_gpu_taint_covers_the_slots_carved_on_its_vfs(store: Store) -> None:
    _gpu_host(store)
    made = store.add_taint(_body("NoSchedule", "GPU firmware", parent=GPU), "admin", host="g1")
    shown = {d.address: [t.id for t in d.taints] for d in store.list_devices(host="g1")}
    assert shown == {
        GPU: [made.id],
        "0000:5e:00.0": [],
        "0000:3b:00.4": [made.id],
        "0000:3b:00.5": [made.id],
        "0000:3b:00.4/vgpu/1429": [made.id],
        "0000:3b:00.5/nvidia-700/0": [made.id],
    }
    for type_name in ("VGPU_70C", "VGPU_MDEV", "GPU_VF"):
        assert _available(store, "g1", type_name) == 0
        with pytest.raises(errors.DevassignError) as refused:
            _claim(store, f"vm-{type_name}", **{type_name: 1})
        assert refused.value.code == errors.NO_VALID_HOST
    assert [d.address for d in _claim(store, "vm-gpu", GPU_H200=1).devices] == ["0000:5e:00.0"]
    _audit_clean(store)
    store.remove_taints("admin", host="g1", parent=GPU)
    assert _available(store, "g1", "VGPU_70C") == 1 and _available(store, "g1", "VGPU_MDEV") == 1


def test_draining_a_gpu_asks_the_holders_of_its_vgpu_slots_to_move(store: Store) -> None:
    _gpu_host(store)
    _claim(store, "vm-1", VGPU_70C=1)
    _claim(store, "vm-2", VGPU_MDEV=1)
    store.add_taint(_body("Drain", "GPU swap"), "admin", host="g1", device_id=_id(store, "g1", GPU))
    assert not [e for e in store.list_events(limit=100) if e.action == "drain_requested"]  # device only
    store.add_taint(_body("Drain", "GPU swap", parent=GPU), "admin", host="g1")
    asked = sorted(e.consumer or "" for e in store.list_events(limit=100) if e.action == "drain_requested")
    assert asked == ["vm-1", "vm-2"]


def test_a_pool_with_no_device_under_it_by_parent_can_be_tainted(store: Store) -> None:
    """A GPU that only vGPU 17+ slots name, as their pool (its VFs not reported), is a parent
    an operator can taint."""
    for name in ("VGPU_70C",):
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    _report(
        store,
        "g2",
        [
            {
                "kind": "vgpu",
                "address": "0000:3b:00.4/vgpu/1429",
                "type": "VGPU_70C",
                "parent": "0000:3b:00.4",
                "pool": GPU,
                "pool_counters": {"framebuffer_mb": 143360},
                "consumes": {"framebuffer_mb": 71680},
            }
        ],
    )
    store.add_taint(_body(parent=GPU), "admin", host="g2")
    assert _available(store, "g2", "VGPU_70C") == 0


def test_a_host_holds_at_most_its_limit_of_live_taints(
    fleet: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each live taint is listed with every device it covers and recomputed under the host's
    lock: one more past the limit is a 409 that says what to do, and changes nothing."""
    from devassign.store import taints as taints_module

    monkeypatch.setattr(taints_module, "MAX_TAINTS_PER_HOST", 3)
    vf0 = _id(fleet, "c1", "0000:3b:02.0")
    fleet.add_taint(_body(reason="one"), "agent", host="c1")
    fleet.add_taint(_body(reason="two"), "agent", device_id=vf0)
    last = fleet.add_taint(_body(reason="three", expires_in=60, parent=PF), "agent", host="c1")
    before = _rows(fleet)
    with pytest.raises(errors.DevassignError) as refused:
        fleet.add_taint(_body(reason="four"), "agent", host="c1")
    assert refused.value.code == errors.TOO_MANY_TAINTS and refused.value.status == 409
    assert "host c1 has 3 live taints" in refused.value.message and "untaint" in refused.value.message
    assert _rows(fleet) == before
    clock.advance(61)  # an expired taint no longer counts
    assert fleet.add_taint(_body(reason="four"), "agent", host="c1").id > last.id
