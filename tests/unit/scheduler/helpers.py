"""Builders for scheduling cases: ``host("c1", vfs(8, numa=0, pf="0000:3b:00.0"), gpus(2))``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from devassign.scheduler import DeviceView, HostView, Snapshot
from devassign.scheduler.request import Request, parse_claim

_bus = itertools.count(0x10)


def _next_bus() -> int:
    return next(_bus) % 0xF0 + 0x10


def vfs(
    n: int,
    *,
    numa: int | None = 0,
    pf: str | None = None,
    type: str = "NIC_VF_1G",
    with_pf: bool = False,
    used: int = 0,
    groups: bool = True,
    **attributes: Any,
) -> list[DeviceView]:
    """``n`` VFs of one PF (each in its own IOMMU group); ``used`` of them already assigned."""
    pf = pf or f"0000:{_next_bus():02x}:00.0"
    domain_bus = pf.rsplit(":", 1)[0]
    out = []
    if with_pf:
        out.append(
            DeviceView(
                id=pf,
                address=pf,
                kind="sriov_pf",
                type=f"{type}_PF",
                numa_node=numa,
                iommu_group=None,
                attributes=dict(attributes),
            )
        )
    for i in range(n):
        address = f"{domain_bus}:{2 + i // 8:02x}.{i % 8}"
        out.append(
            DeviceView(
                id=f"{pf}/vf{i}",
                address=address,
                kind="sriov_vf",
                type=type,
                numa_node=numa,
                iommu_group=(1000 + _next_bus() * 64 + i) if groups else None,
                parent=pf,
                vendor_id="8086",
                product_id="154c",
                driver="vfio-pci",
                attributes=dict(attributes),
                state="assigned" if i < used else "available",
            )
        )
    return out


def gpus(
    n: int,
    *,
    numa: int | None = 0,
    type: str = "GPU_A100",
    memory_mib: int = 81920,
    state: str = "available",
    healthy: bool = True,
    group: int | None = None,
    **attributes: Any,
) -> list[DeviceView]:
    """``n`` whole GPUs, each in its own IOMMU group unless ``group`` puts them in one."""
    out = []
    for _ in range(n):
        bus = _next_bus()
        address = f"0000:{bus:02x}:00.0"
        out.append(
            DeviceView(
                id=address,
                address=address,
                kind="pci",
                type=type,
                numa_node=numa,
                iommu_group=group if group is not None else bus,
                vendor_id="10de",
                product_id="20b2",
                driver="vfio-pci",
                attributes={"memory_mib": memory_mib, **attributes},
                state=state,
                healthy=healthy,
            )
        )
    return out


def device(address: str, type: str, **fields: Any) -> DeviceView:
    fields.setdefault("kind", "pci")
    return DeviceView(id=address, address=address, type=type, **fields)


def vgpus(n: int, *, parent: str, numa: int = 0, type: str = "VGPU_T4_4Q", used: int = 0) -> list[DeviceView]:
    return [
        DeviceView(
            id=f"{parent}/nvidia-230/{i}",
            address=f"{parent}/nvidia-230/{i}",
            kind="mdev_type",
            type=type,
            numa_node=numa,
            iommu_group=None,
            parent=parent,
            state="assigned" if i < used else "available",
        )
        for i in range(n)
    ]


def host(name: str, *groups: Iterable[DeviceView], up: bool = True) -> HostView:
    return HostView(name, tuple(d for g in groups for d in g), up)


def snapshot(*hosts: HostView) -> Snapshot:
    return Snapshot(tuple(hosts))


def req(*requests: dict[str, Any], **body: Any) -> Request:
    """The JSON form; ``req({"name": "gpu", "type": "GPU_A100", "count": 2})``."""
    return parse_claim({"consumer": "c-1", "project": "demo", "requests": list(requests), **body})


def one(type: str, count: int = 1, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name or type.lower(), "type": type, "count": count, **extra}


def count_view_devices(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the devices of every host view built from now on (what a plan's views cost);
    the returned function says how many so far."""
    seen = [0]
    original = HostView.__post_init__

    def counted(self: HostView) -> None:
        seen[0] += len(self.devices)
        original(self)

    monkeypatch.setattr(HostView, "__post_init__", counted)
    return lambda: seen[0]
