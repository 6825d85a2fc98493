"""IOMMU group mates of a limited type, taken by a claim's refit (the second try on a host
whose first choice was taken meanwhile).

docs/cli.md (quota set): "the IOMMU group mates a claim takes along count as their own type;
a host whose mates would pass the limit does not fit". The refit chooses the devices again
under the host's lock and may then take mates the first placement did not have: the store
checks the quota on the devices it actually took.
"""

from __future__ import annotations

from typing import Any

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store

ADMIN = Principal(name="admin", role=Role.ADMIN)


def _setup(store: Store) -> None:
    for t in ("GPU", "NVME"):
        store.create_type(schemas.ResourceTypeCreate(name=t), "admin")
    devs = [
        # a GPU in an IOMMU group of its own
        schemas.ReportedDevice(address="0000:10:00.0", kind="pci", type="GPU", iommu_group=1),
        # a GPU that shares its group with an NVMe drive: claiming it takes the drive along
        schemas.ReportedDevice(address="0000:20:00.0", kind="pci", type="GPU", iommu_group=2),
        schemas.ReportedDevice(address="0000:20:00.1", kind="pci", type="NVME", iommu_group=2),
    ]
    store.apply_report("h1", schemas.InventoryReport(generation=1, devices=devs), "agent")


def _gpu(consumer: str, project: str, selector: str | None = None) -> ClaimBody:
    request: dict[str, Any] = {"name": "g", "type": "GPU"}
    if selector:
        request["selector"] = selector
    return ClaimBody.model_validate({"consumer": consumer, "project": project, "requests": [request]})


def test_without_a_race_the_mate_is_counted_against_its_quota(store: Store) -> None:
    """The baseline the next test breaks: with only the grouped GPU left, project p (NVME
    limited to 0) is refused."""
    _setup(store)
    store.set_quota("p", "NVME", 0, "admin")
    placer = Placer(store)
    placer.claim(_gpu("q-vm", "q", 'device.address == "0000:10:00.0"'), ADMIN)
    try:
        placer.claim(_gpu("p-vm", "p"), ADMIN)
    except errors.DevassignError as exc:
        assert exc.code in (errors.QUOTA_EXCEEDED, errors.NO_VALID_HOST)
    used = {q["type"]: q["used"] for q in store.list_quotas("p")}
    assert used == {"NVME": 0}


def test_a_refit_does_not_take_group_mates_past_the_quota(store: Store, monkeypatch: Any) -> None:
    """User-visible: project p may hold no NVMe drive (limit 0). It asks for one GPU; the
    placer picks the GPU that is alone in its IOMMU group, but another project's claim takes
    that GPU just before p's claim writes. The refit then takes the other GPU *and its NVMe
    group mate* without any quota check: p ends up holding an NVMe drive over its limit of 0
    (sequentially the same claim is refused)."""
    _setup(store)
    store.set_quota("p", "NVME", 0, "admin")
    placer = Placer(store)
    real = store.prepare_claim
    raced: list[Any] = []

    def prepare_then_race(**kwargs: Any) -> Any:
        ctx = real(**kwargs)
        if kwargs["consumer"] == "p-vm" and not raced:
            raced.append(None)
            raced[0] = placer.claim(_gpu("q-vm", "q", 'device.address == "0000:10:00.0"'), ADMIN)[0]
        return ctx

    monkeypatch.setattr(store, "prepare_claim", prepare_then_race)
    try:
        placer.claim(_gpu("p-vm", "p"), ADMIN)
    except errors.DevassignError as exc:
        assert exc.code in (errors.QUOTA_EXCEEDED, errors.NO_VALID_HOST), exc.message
    assert raced and raced[0].devices[0].address == "0000:10:00.0"
    used = {q["type"]: q["used"] for q in store.list_quotas("p")}
    assert used["NVME"] <= 0, f"project p holds {used['NVME']} NVMe drive(s) with a limit of 0"
