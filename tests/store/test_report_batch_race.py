"""Batches of reports racing each other and agents' own reports for the same new hosts: every
host is registered once, with its devices once, its counts right, and each report answered."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from devassign import errors, schemas
from devassign.store import Store
from tests.conftest import vf

HOSTS = 40
DEADLINE = 120.0


def _report(generation: int) -> schemas.InventoryReport:
    devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
    return schemas.InventoryReport.model_validate({"generation": generation, "devices": devices})


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_overlapping_batches_and_single_reports_register_each_host_once(store: Store) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    names = [f"race-{i:02d}" for i in range(HOSTS)]
    start = threading.Barrier(4)
    failures: list[BaseException] = []
    answers: list[schemas.ReportBatchResult] = []

    def batch(order: list[str]) -> None:
        try:
            start.wait(DEADLINE)
            answers.append(
                store.apply_reports([schemas.HostReport(host=n, report=_report(1)) for n in order], "a")
            )
        except BaseException as exc:
            failures.append(exc)

    def singles() -> None:
        try:
            start.wait(DEADLINE)
            for n in names[::3]:
                try:
                    store.apply_report(n, _report(1), "agent")
                except errors.DevassignError as exc:  # pragma: no cover - reported below
                    failures.append(exc)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=batch, args=(names,)),
        threading.Thread(target=batch, args=(names[::-1],)),
        threading.Thread(target=batch, args=(names[HOSTS // 2 :],)),
        threading.Thread(target=singles),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert all(a.failed == 0 for a in answers), [a for a in answers if a.failed]
    assert sorted(h.name for h in store.list_hosts()) == names
    devices = store.list_devices(limit=10_000)
    assert len(devices) == 4 * HOSTS and len({(d.host, d.address) for d in devices}) == 4 * HOSTS
    assert store.audit(down_for=timedelta(seconds=90)).findings == []
    registered = [e for e in store.list_events(limit=10_000) if e.action == "host_registered"]
    assert len(registered) == HOSTS
