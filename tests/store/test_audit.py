"""The audit: a consistent database has no finding; each kind of damage is found and named,
and ``fix`` repairs only what is safe (counts, overdue reservations), each repair an event."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.schema import allocations, devices, inventory
from tests.conftest import Clock, vf

HOUR = timedelta(hours=1)


def _world(store: Store) -> schemas.Allocation:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    for host in ("c1", "c2"):
        devs = [schemas.ReportedDevice(**vf(f"0000:3b:02.{i}")) for i in range(1, 4)]
        store.apply_report(host, schemas.InventoryReport(generation=1, devices=devs), "agent")
    body = ClaimBody(
        consumer="vm-1", project="p", hosts=["c1"], requests=[{"name": "n", "type": "NIC_VF_1G"}]
    )
    allocation, _ = Placer(store).claim(body, Principal(name="admin", role=Role.ADMIN))
    return allocation


def _checks(store: Store) -> list[str]:
    return sorted(f.check for f in store.audit(down_for=HOUR).findings)


def test_a_consistent_database_has_no_finding(store: Store) -> None:
    _world(store)
    report = store.audit(down_for=HOUR)
    assert report.findings == [] and "counts_mismatch" in report.checks


def test_wrong_counts_are_found_and_repaired_with_an_event(store: Store) -> None:
    _world(store)
    with store.db.write() as c:
        c.execute(inventory.update().values(available=99))
    report = store.audit(down_for=HOUR)
    assert [f.check for f in report.findings] == ["counts_mismatch", "counts_mismatch"]
    assert all(f.fixable and not f.repaired for f in report.findings)
    assert "inventory says 3 (99 available)" in report.findings[0].message
    fixed = store.audit(down_for=HOUR, repair=True, actor="ops")
    assert all(f.repaired for f in fixed.findings)
    assert _checks(store) == []
    repairs = [e for e in store.list_events(limit=50) if e.action == "audit_repaired"]
    assert len(repairs) == 2 and repairs[0].actor == "ops"


def test_a_held_device_without_allocation_is_found_not_touched(store: Store) -> None:
    _world(store)
    free = store.list_devices(host="c2")[0]
    with store.db.write() as c:
        c.execute(devices.update().where(devices.c.id == free.id).values(state="assigned"))
    found = store.audit(down_for=HOUR, repair=True).findings
    checks = sorted(f.check for f in found)
    assert "held_without_allocation" in checks
    held = next(f for f in found if f.check == "held_without_allocation")
    assert held.device == free.id and not held.fixable and not held.repaired
    assert store.get_device(free.id).state == "assigned"  # a person decides


def test_an_allocation_whose_device_went_free_is_found(store: Store) -> None:
    allocation = _world(store)
    device = allocation.devices[0].id
    with store.db.write() as c:
        c.execute(devices.update().where(devices.c.id == device).values(state="available"))
    assert {"item_device_mismatch", "free_device_with_allocation"} <= set(_checks(store))


def test_an_overdue_reservation_is_found_and_given_up(store: Store, clock: Clock) -> None:
    _world(store)
    clock.advance(store.reservation_ttl.total_seconds() + 120)
    found = store.audit(down_for=timedelta(days=1)).findings
    assert [f.check for f in found] == ["reservation_overdue"] and found[0].consumer == "vm-1"
    store.audit(down_for=timedelta(days=1), repair=True)
    with store.db.read() as c:
        state = c.execute(sa.select(allocations.c.state).where(allocations.c.consumer == "vm-1")).scalar_one()
    assert state == "released"
    assert _checks(store) == []  # its devices wait for a cleanup, but c1 was silent for minutes only


def test_devices_on_a_long_silent_host_are_named(store: Store, clock: Clock) -> None:
    allocation = _world(store)
    with store.db.write() as c:  # confirmed: assigned, no expiry
        c.execute(devices.update().where(devices.c.allocation_id.is_not(None)).values(state="assigned"))
        c.execute(allocations.update().values(state="assigned", expires_at=None))
    clock.advance(2 * HOUR.total_seconds())
    found = store.audit(down_for=HOUR).findings
    assert [(f.check, f.host) for f in found] == [("held_on_down_host", allocation.host)]
    store.release("vm-1", "admin")  # its devices now wait for a cleanup nobody will run
    assert [f.check for f in store.audit(down_for=HOUR).findings] == ["stranded_work"]


def test_the_audit_over_http_is_for_admins(secure_api: TestClient, store: Store) -> None:
    _world(store)
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "t").token
    r = secure_api.get("/v1/audit", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["findings"] == []
    assert secure_api.get("/v1/audit", headers={"Authorization": f"Bearer {member}"}).status_code == 403
    with store.db.write() as c:
        c.execute(inventory.update().values(total=7))
    r = secure_api.post("/v1/audit/fix", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and {f["repaired"] for f in r.json()["findings"]} == {True}
    assert secure_api.get("/v1/audit", headers={"Authorization": f"Bearer {admin}"}).json()["findings"] == []
    assert (
        secure_api.get("/v1/audit?down_for=-1", headers={"Authorization": f"Bearer {admin}"}).status_code
        == 400
    )
