"""A batch answers as the same reports sent one by one, in the batch's order: a host id named
by two reports goes to the first of them, whichever path each would take."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from devassign import errors, schemas
from devassign.store import Database, Store
from tests.conftest import Clock


def _gpu(i: int, type: str = "GPU") -> schemas.ReportedDevice:
    return schemas.ReportedDevice(address=f"0000:{0x10 + i:02x}:00.0", kind="pci", type=type)  # type: ignore[arg-type]


def _item(
    host: str, generation: int, host_id: str, devices: list[schemas.ReportedDevice]
) -> schemas.HostReport:
    return schemas.HostReport(
        host=host, report=schemas.InventoryReport(generation=generation, host_id=host_id, devices=devices)
    )


def _one_by_one(
    tmp_path: Path, clock: Clock, items: list[schemas.HostReport], setup: Callable[[Store], None]
) -> tuple[list[tuple[str, int]], dict[str, str | None]]:
    other = Store(
        Database(f"sqlite:///{tmp_path / 'single.db'}"), down_after=timedelta(seconds=90), clock=clock
    )
    other.db.upgrade()
    setup(other)
    out = []
    for b in items:
        try:
            other.apply_report(b.host, b.report, "admin")
            out.append((b.host, 200))
        except errors.DevassignError as exc:
            out.append((b.host, exc.status))
    owners = {h.name: h.host_id for h in other.list_hosts()}
    other.db.dispose()
    return out, owners


def _gpu_type(s: Store) -> None:
    s.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")


def test_a_host_id_goes_to_the_first_report_that_names_it(store: Store, clock: Clock, tmp_path: Path) -> None:
    _gpu_type(store)
    items = [
        # Not plain (an unknown type in it): the one-report path, which registers host id H-1 ...
        _item("a-first", 1, "H-1", [_gpu(0), _gpu(1, "FPGA")]),
        # ... so this new, plain host with the same id is refused, as one by one.
        _item("b-second", 1, "H-1", [_gpu(0)]),
    ]
    got = store.apply_reports(items, "admin")
    expected, owners = _one_by_one(tmp_path, clock, items, _gpu_type)
    assert expected == [("a-first", 200), ("b-second", 409)]
    assert [(o.host, o.status) for o in got.results] == expected
    assert {h.name: h.host_id for h in store.list_hosts()} == owners


def test_an_existing_host_taking_its_id_in_the_batch_keeps_it(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    def setup(s: Store) -> None:
        _gpu_type(s)
        s.apply_report("old", schemas.InventoryReport(generation=1, devices=[_gpu(0)]), "agent")

    setup(store)
    items = [_item("old", 2, "H-2", [_gpu(0)]), _item("new", 1, "H-2", [_gpu(0)])]
    got = store.apply_reports(items, "admin")
    expected, owners = _one_by_one(tmp_path, clock, items, setup)
    assert expected == [("old", 200), ("new", 409)]
    assert [(o.host, o.status) for o in got.results] == expected
    assert {h.name: h.host_id for h in store.list_hosts()} == owners
