"""The claim's own check of pools, whatever the scheduler chose: a claim built on an older view
(the scheduler saw a free 1B slot before a 4Q was claimed on the same GPU) must lose the race,
never overdraw the GPU. The scheduler's choice is bypassed here on purpose."""

from __future__ import annotations

from datetime import timedelta

import pytest

from devassign import schemas
from devassign.domain import mdev_address
from devassign.store import Store
from devassign.store.claims import ClaimOrder, LostRace, Pick

GPU = "0000:3b:00.0"
SLOTS = {"VGPU_1B": (1024, 16), "VGPU_4Q": (4096, 4), "VGPU_8Q": (8192, 2)}


def _setup(store: Store) -> dict[str, list[str]]:
    for name in ("GPU_T4", *SLOTS):
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    devs = [schemas.ReportedDevice(address=GPU, kind="pci", type="GPU_T4")]
    for type_name, (fb, n) in SLOTS.items():
        devs += [
            schemas.ReportedDevice(
                address=mdev_address(GPU, f"nvidia-{fb}", i),
                kind="mdev_type",
                type=type_name,
                parent=GPU,
                pool_counters={"framebuffer_mb": 16384},
                consumes={"framebuffer_mb": fb},
                mode=type_name,
            )
            for i in range(n)
        ]
    store.apply_report("h1", schemas.InventoryReport(generation=1, devices=devs), "agent")
    out: dict[str, list[str]] = {}
    for d in store.list_devices(host="h1"):
        out.setdefault(d.type, []).append(d.id)
    return out


def _claim(store: Store, consumer: str, ids: list[str]) -> None:
    store.claim(
        ClaimOrder(
            host="h1",
            chosen=[Pick("r", tuple(ids))],
            consumer=consumer,
            project="p",
            key=None,
            request_doc={},
            actor="admin",
        )
    )


def test_a_stale_choice_never_overdraws_a_pool(store: Store) -> None:
    ids = _setup(store)
    _claim(store, "vm-1", ids["VGPU_4Q"][:1])
    with pytest.raises(LostRace, match="one mode at a time"):
        _claim(store, "vm-2", ids["VGPU_1B"][:1])
    with pytest.raises(LostRace, match="in use"):
        _claim(store, "vm-3", ids["GPU_T4"])
    _claim(store, "vm-4", ids["VGPU_4Q"][1:4])  # the same mode, within the framebuffer: fine
    assert store.audit(down_for=timedelta(seconds=600)).findings == []


def test_partitions_chosen_together_must_fit_together(store: Store) -> None:
    ids = _setup(store)
    with pytest.raises(LostRace, match="one mode at a time"):
        _claim(store, "vm-1", [*ids["VGPU_8Q"][:1], *ids["VGPU_4Q"][:1]])
    with pytest.raises(LostRace, match=r"in use|whole"):
        _claim(store, "vm-2", [ids["GPU_T4"][0], ids["VGPU_8Q"][0]])
    types = {t.name: t.counts for t in store.list_types()}
    assert (types["VGPU_1B"].available, types["VGPU_8Q"].available, types["GPU_T4"].available) == (16, 2, 1)
