"""A sysfs tree that answers writes the way the kernel does, for tests and the demo.

A generated tree is only files: writing ``bind`` or ``create`` would just store the value.
:class:`SimulatedSysfs` adds the few kernel reactions the handlers rely on (driver
bind/unbind/probe with ``driver_override``, mdev create/remove) and keeps a log of every
write, so a test can assert what was done and in which order. A write that resolves outside
the root is refused before any of that, as :class:`ConfinedSysfs` refuses it on a real host.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from devassign.hostio import HostIOError
from devassign.lifecycle.host import ConfinedSysfs, inside_root

# What devassign.testing.sysfs writes in a driver's folder: the "VENDOR DEVICE" ids it takes.
SIMULATED_IDS = ".simulated-ids"


class SimulatedSysfs(ConfinedSysfs):
    """``native_drivers`` maps a PCI address to the driver ``drivers_probe`` picks without an
    override (what the module alias match would pick on a real host); otherwise a driver
    whose ``.simulated-ids`` lists the function's ids takes it."""

    def __init__(self, root: str | os.PathLike[str], native_drivers: Mapping[str, str] | None = None) -> None:
        super().__init__(root)
        self.native_drivers = dict(native_drivers or {})
        self.writes: list[tuple[str, str]] = []
        self.failures: dict[str, int] = {}

    def fail(self, pattern: str, err: int = errno.EIO) -> None:
        """Make writes to paths matching the glob ``pattern`` (relative to the root) fail."""
        self.failures[pattern] = err

    def _real(self, rel: str) -> str:
        base = os.path.realpath(self.root)
        return os.path.relpath(os.path.realpath(self.path(rel)), base)

    def write(self, rel: str, value: str) -> None:
        inside_root(self, rel)  # before the log and the kernel reactions: nothing happens
        real = self._real(rel)
        self.writes.append((rel, value))
        for pattern, err in self.failures.items():
            if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(real, pattern):
                raise HostIOError(err, f"cannot write {value!r} to {rel}: {os.strerror(err)}")
        parts = real.split("/")
        arg = value.strip()
        if real == "bus/pci/drivers_probe":
            self._probe(arg)
        elif parts[-1] == "sriov_numvfs":
            self._numvfs(Path(self.root, *parts[:-1]), arg)
        elif parts[-1] == "reset" and (Path(self.root, *parts[:-1]) / "vendor").exists() and arg != "1":
            raise self._error(errno.EINVAL, f"{rel}: only 1 resets")
        elif parts[:3] == ["bus", "pci", "drivers"] and len(parts) == 5 and parts[4] == "unbind":
            self._unbind(parts[3], arg)
        elif parts[:3] == ["bus", "pci", "drivers"] and len(parts) == 5 and parts[4] == "bind":
            self._bind(parts[3], arg)
        elif len(parts) >= 3 and parts[-3] == "mdev_supported_types" and parts[-1] == "create":
            self._mdev_create(Path(self.root, *parts[:-1]), arg)
        elif parts[-1] == "remove" and (Path(self.root, *parts[:-1]) / "mdev_type").exists():
            self._mdev_remove(Path(self.root, *parts[:-1]))
            return  # the folder holding ``remove`` is gone
        # Through the resolved path: an unbind has just removed the ``driver`` link in ``rel``.
        super().write(real, value)

    def _dev(self, address: str) -> Path:
        return self.path(f"bus/pci/devices/{address}")

    def _error(self, err: int, what: str) -> HostIOError:
        return HostIOError(err, f"{what}: {os.strerror(err)}")

    def _unbind(self, driver: str, address: str) -> None:
        if self.link_name(f"bus/pci/devices/{address}/driver") != driver:
            raise self._error(errno.ENODEV, f"{address} is not bound to {driver}")
        os.unlink(self._dev(address) / "driver")
        link = self.path(f"bus/pci/drivers/{driver}/{address}")
        if os.path.lexists(link):
            os.unlink(link)

    def _bind(self, driver: str, address: str) -> None:
        if not self._dev(address).exists():
            raise self._error(errno.ENODEV, f"no device {address}")
        if self.exists(f"bus/pci/devices/{address}/driver"):
            raise self._error(errno.EBUSY, f"{address} already has a driver")
        override = self.read(f"bus/pci/devices/{address}/driver_override") or ""
        if override and override != driver:
            raise self._error(errno.ENODEV, f"{address} is overridden to {override}")
        # As the kernel's bind: without an override the driver must take the function's ids
        # (vfio-pci takes none, so binding it without driver_override fails).
        if not override and driver != self.native_drivers.get(address) and not self._takes(driver, address):
            raise self._error(errno.ENODEV, f"{driver} does not take {address}")
        drv = self.path(f"bus/pci/drivers/{driver}")
        if not drv.is_dir():
            raise self._error(errno.ENODEV, f"no driver {driver}")
        dev = os.path.realpath(self._dev(address))
        os.symlink(os.path.relpath(drv.resolve(), dev), os.path.join(dev, "driver"))
        os.symlink(os.path.relpath(dev, drv.resolve()), drv / address)

    def _probe(self, address: str) -> None:
        if not self._dev(address).exists():
            raise self._error(errno.ENODEV, f"no device {address}")
        if self.exists(f"bus/pci/devices/{address}/driver"):
            return
        override = self.read(f"bus/pci/devices/{address}/driver_override") or ""
        pf = self.link_name(f"bus/pci/devices/{address}/physfn")
        if not override and pf and self.read(f"bus/pci/devices/{pf}/sriov_drivers_autoprobe") == "0":
            return  # the PF keeps host drivers off its VFs; only an override binds them
        driver = override or self.native_drivers.get(address) or self._matching(address)
        if driver and self.is_dir(f"bus/pci/drivers/{driver}"):
            self._bind(driver, address)

    def _ids(self, address: str) -> str:
        return " ".join(
            (self.read(f"bus/pci/devices/{address}/{name}") or "").lower().removeprefix("0x")
            for name in ("vendor", "device")
        )

    def _takes(self, driver: str, address: str) -> bool:
        table = self.read(f"bus/pci/drivers/{driver}/{SIMULATED_IDS}") or ""
        return self._ids(address) in table.splitlines()

    def _matching(self, address: str) -> str | None:
        """The first driver whose id table takes the function (vfio-pci takes none by itself)."""
        for driver in self.listdir("bus/pci/drivers"):
            if self._takes(driver, address):
                return driver
        return None

    def _numvfs(self, dev: Path, value: str) -> None:
        """The kernel's answers to ``sriov_numvfs`` (sriov_numvfs_store); the VFs themselves
        are not created or removed here: tests build them with ``SyntheticHost.sriov_pf``."""
        if not (dev / "sriov_totalvfs").exists():
            return
        try:
            wanted = int(value, 0)
        except ValueError:
            wanted = -1
        if not 0 <= wanted <= 0xFFFF:
            raise self._error(errno.EINVAL, f"sriov_numvfs {value!r}")
        total, now = ((dev / name).read_text().strip() for name in ("sriov_totalvfs", "sriov_numvfs"))
        if wanted > int(total or 0):
            raise self._error(errno.ERANGE, f"{wanted} VFs, {dev.name} has {total}")
        if wanted == int(now or 0):
            return
        if not (dev / "driver").is_symlink():
            raise self._error(errno.ENOENT, f"no driver bound to {dev.name}")
        if wanted and int(now or 0):
            raise self._error(errno.EBUSY, f"{now} VFs already enabled on {dev.name}")

    def _mdev_create(self, type_dir: Path, uuid: str) -> None:
        available = int((type_dir / "available_instances").read_text().strip() or "0")
        if available <= 0:
            raise self._error(errno.ENOSPC, f"no instances left of {type_dir.name}")
        link = self.path(f"bus/mdev/devices/{uuid}")
        if os.path.lexists(link):
            raise self._error(errno.EEXIST, f"mdev {uuid} exists")
        mdev = type_dir.parent.parent / uuid
        mdev.mkdir()
        (mdev / "remove").write_text("")
        os.symlink(f"../mdev_supported_types/{type_dir.name}", mdev / "mdev_type")
        (type_dir / "devices").mkdir(exist_ok=True)
        os.symlink(f"../../../{uuid}", type_dir / "devices" / uuid)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(mdev, link.parent), link)
        (type_dir / "available_instances").write_text(f"{available - 1}\n")

    def _mdev_remove(self, mdev: Path) -> None:
        type_dir = (mdev / "mdev_type").resolve()
        uuid = mdev.name
        shutil.rmtree(mdev)
        for link in (type_dir / "devices" / uuid, self.path(f"bus/mdev/devices/{uuid}")):
            if os.path.lexists(link):
                os.unlink(link)
        available = int((type_dir / "available_instances").read_text().strip() or "0")
        (type_dir / "available_instances").write_text(f"{available + 1}\n")
