"""A SYNTHETIC host for the lifecycle tests: the shared tree builder plus kernel reactions.

``fixtures.sysfs`` builds the kernel's layout (bus/pci/devices links, driver and
iommu_group links, physfn/virtfn, mdev_supported_types, bus/usb/devices);
:class:`SimulatedSysfs` makes bind/unbind/drivers_probe and mdev create/remove act as the
kernel would, and logs every write for the assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devassign.domain import DeviceKind
from devassign.lifecycle.base import LifecycleDevice
from devassign.lifecycle.host import HostOps, RecordingNetlink, RecordingRunner
from devassign.lifecycle.simulated import SimulatedSysfs
from tests.fixtures.sysfs import SyntheticHost, host

GPU = "0000:3b:00.0"
GPU_AUDIO = "0000:3b:00.1"
PF = "0000:5e:00.0"
CONSUMER = "6f1c0b4e-0000-4000-8000-000000000001"


@dataclass
class Machine:
    h: SyntheticHost
    sysfs: SimulatedSysfs
    netlink: RecordingNetlink
    runner: RecordingRunner

    @property
    def ops(self) -> HostOps:
        return HostOps(self.sysfs, self.netlink, self.runner)

    def driver(self, address: str) -> str | None:
        return self.sysfs.link_name(f"bus/pci/devices/{address}/driver")

    def read(self, rel: str) -> str | None:
        return self.sysfs.read(rel)

    def pci(
        self,
        address: str,
        *,
        driver: str | None,
        group: int | None,
        reset: str | None = "flr bus",
        cls: str = "030200",
    ) -> None:
        """A function bound to ``driver`` (also what probing picks); ``reset=None``: no reset
        file, else the ``reset_method`` text."""
        self.h.pci(address, "10de", "1eb8", cls=cls, iommu_group=group, driver=driver, reset=reset)
        self.mark(address, driver, reset)

    def mark(self, address: str, driver: str | None, reset: str | None = "flr") -> None:
        self.h.set(address, "driver_override", "(null)")
        if reset is not None:
            self.h.set(address, "reset", "")
            self.h.set(address, "reset_method", reset)
        if driver:
            self.sysfs.native_drivers[address] = driver

    def writes_to(self, suffix: str) -> list[str]:
        return [value for rel, value in self.sysfs.writes if rel.endswith(suffix)]


def new_machine(root: Path) -> Machine:
    h = host(root)
    (h.root / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    (h.root / "bus/pci/drivers_probe").write_text("")
    return Machine(h, SimulatedSysfs(h.root), RecordingNetlink(), RecordingRunner())


def device(address: str, kind: DeviceKind, **kw: Any) -> LifecycleDevice:
    """A device as the agent would hand it to a handler."""
    kw.setdefault("type", "T")
    kw.setdefault("consumer", CONSUMER)
    return LifecycleDevice(address=address, kind=kind, **kw)
