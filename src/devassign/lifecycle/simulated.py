"""A sysfs tree that answers writes the way the kernel does, for tests and the demo.

A generated tree is only files: writing ``bind`` or ``create`` would just store the value.
:class:`SimulatedSysfs` adds the kernel reactions the handlers rely on and keeps a log of
every write, so a test can assert what was done and in which order. Each reaction was held
against a real kernel (tests/vm, ``parity.py``):

- driver bind/unbind/``drivers_probe`` with ``driver_override``; a cleared override reads
  ``(null)``;
- ``reset_method``: only methods the function supports (else EINVAL), ``default`` restores
  them; ``reset`` with no method left fails (ENOTTY);
- ``sriov_numvfs`` creates and removes the VFs (``virtfn<i>``/``physfn``, own IOMMU groups,
  probed when ``sriov_drivers_autoprobe`` is 1); ERANGE above the total, EBUSY from one
  non-zero count to another;
- ``remove`` on a PCI function removes it (a PF's VFs stay, as nvme leaves them; a VF has no
  ``remove``: EACCES);
- USB ``authorized`` 0 removes the device's interfaces, 1 brings them back;
- VFIO: ``/dev/vfio/<group>`` exists while a member is on vfio-pci (here under
  ``.simulated-dev/vfio/``); a guest holding a group (:meth:`SimulatedSysfs.hold_group`) keeps
  host drivers off its members (``drivers_probe`` EINVAL, ``bind`` EBUSY) and loses its hold
  when the last member leaves vfio-pci; :meth:`SimulatedSysfs.vfio_users` tells handlers who
  holds what, as ``/proc`` does on a host. Where the kernel would block (unbinding a device a
  guest has open), the simulation fails with EDEADLK instead: a handler must never get there;
- mdev create/remove.

A write that resolves outside the root is refused before any of that, as
:class:`ConfinedSysfs` refuses it on a real host.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devassign.domain import ascii_digits, nvidia_vgpu
from devassign.hostio import HostIOError
from devassign.lifecycle.host import ConfinedSysfs, inside_root

# What devassign.testing.sysfs writes in a driver's folder: the "VENDOR DEVICE" ids it takes.
SIMULATED_IDS = ".simulated-ids"
# In a PCI function's folder: the reset methods it supports (what ``default`` restores).
SIMULATED_RESET_METHODS = ".simulated-reset-methods"
# In a PCI function's folder: its next reset leaves it dead (config space reads 0xFF).
SIMULATED_DIES_ON_RESET = ".simulated-dies-on-reset"
# In a vGPU 17+ PF's folder: every vGPU type it offers when empty, with its max instances.
SIMULATED_VGPU_TYPES = ".simulated-vgpu-types"
# In a USB device's folder: its interfaces while it is deauthorized.
SIMULATED_INTERFACES = ".simulated-interfaces"
# At the root: the device nodes the kernel would make (/dev/vfio/<group>) and who holds them.
SIMULATED_DEV = ".simulated-dev"
SIMULATED_VFIO_USERS = ".simulated-vfio-users.json"
VFIO = "vfio-pci"
NO_OVERRIDE = "(null)"


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
        folder = Path(self.root, *parts[:-1])
        is_pci = (folder / "vendor").exists() and (folder / "class").exists()
        if real == "bus/pci/drivers_probe":
            self._probe(arg)
        elif parts[-1] == "sriov_numvfs" and (folder / "sriov_totalvfs").exists():
            self._numvfs(folder, arg)
            return  # _numvfs writes the count itself
        elif parts[-1] == "reset" and is_pci:
            self._reset(folder, rel, arg)
        elif parts[-1] == "reset_method" and is_pci:
            (folder / "reset_method").write_text(self._reset_method(folder, arg) + "\n")
            return
        elif parts[-1] == "driver_override" and is_pci:
            (folder / "driver_override").write_text((arg or NO_OVERRIDE) + "\n")
            return
        elif parts[-1] == "remove" and is_pci:
            if not (folder / "remove").exists():  # a VF has none; sysfs makes no new files
                raise self._error(errno.EACCES, f"{rel}: no such attribute")
            if arg != "0":  # kstrtoul: any non-zero number removes
                self._remove_function(folder.name)
            return  # the folder holding ``remove`` is gone
        elif parts[-1] == "authorized" and (folder / "idVendor").exists():
            self._authorize(folder, arg)
        elif parts[:3] == ["bus", "pci", "drivers"] and len(parts) == 5 and parts[4] == "unbind":
            self._unbind(parts[3], arg)
        elif parts[:3] == ["bus", "pci", "drivers"] and len(parts) == 5 and parts[4] == "bind":
            self._bind(parts[3], arg)
        elif parts[-2:] == ["nvidia", "current_vgpu_type"] and (folder.parent / "physfn").exists():
            self._vgpu_type(folder.parent, arg)
            return  # _vgpu_type writes the files itself
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

    def _override(self, address: str) -> str:
        value = self.read(f"bus/pci/devices/{address}/driver_override") or ""
        return "" if value == NO_OVERRIDE else value

    def _unbind(self, driver: str, address: str) -> None:
        if self.link_name(f"bus/pci/devices/{address}/driver") != driver:
            raise self._error(errno.ENODEV, f"{address} is not bound to {driver}")
        group = self._group(address)
        if driver == VFIO and group is not None:
            use = self._vfio_use().get(group)
            if use and address in use.get("devices", []):
                raise self._error(
                    errno.EDEADLK,
                    f"{address} is open in {use['holder']}: the kernel blocks this unbind until "
                    "the guest closes it (the simulation refuses instead of hanging)",
                )
        os.unlink(self._dev(address) / "driver")
        link = self.path(f"bus/pci/drivers/{driver}/{address}")
        if os.path.lexists(link):
            os.unlink(link)
        if driver == VFIO:
            self._vfio_left(group)

    def _bind(self, driver: str, address: str) -> None:
        if not self._dev(address).exists():
            raise self._error(errno.ENODEV, f"no device {address}")
        if self.exists(f"bus/pci/devices/{address}/driver"):
            raise self._error(errno.EBUSY, f"{address} already has a driver")
        override = self._override(address)
        if override and override != driver:
            raise self._error(errno.ENODEV, f"{address} is overridden to {override}")
        # As the kernel's bind: without an override the driver must take the function's ids
        # (vfio-pci takes none, so binding it without driver_override fails).
        if not override and driver != self.native_drivers.get(address) and not self._takes(driver, address):
            raise self._error(errno.ENODEV, f"{driver} does not take {address}")
        drv = self.path(f"bus/pci/drivers/{driver}")
        if not drv.is_dir():
            raise self._error(errno.ENODEV, f"no driver {driver}")
        group = self._group(address)
        if driver != VFIO and group is not None and group in self._vfio_use():
            # The guest owns the group's DMA: the driver core refuses a host driver.
            raise self._error(errno.EBUSY, f"IOMMU group {group} of {address} is held by a guest")
        dev = os.path.realpath(self._dev(address))
        os.symlink(os.path.relpath(drv.resolve(), dev), os.path.join(dev, "driver"))
        os.symlink(os.path.relpath(dev, drv.resolve()), drv / address)
        if driver == VFIO and group is not None:
            node = self.dev_node(f"vfio/{group}")
            node.parent.mkdir(parents=True, exist_ok=True)
            node.touch()

    def _probe(self, address: str) -> None:
        if not self._dev(address).exists():
            raise self._error(errno.ENODEV, f"no device {address}")
        if self.exists(f"bus/pci/devices/{address}/driver"):
            return
        override = self._override(address)
        pf = self.link_name(f"bus/pci/devices/{address}/physfn")
        if not override and pf and self.read(f"bus/pci/devices/{pf}/sriov_drivers_autoprobe") == "0":
            return  # the PF keeps host drivers off its VFs; only an override binds them
        driver = override or self.native_drivers.get(address) or self._matching(address)
        if driver and self.is_dir(f"bus/pci/drivers/{driver}"):
            try:
                self._bind(driver, address)
            except HostIOError as exc:
                # drivers_probe answers EINVAL whatever made the probe fail.
                raise self._error(errno.EINVAL, f"probing {address}: {exc}") from exc

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

    # ------------------------------------------------------------------ reset
    def _supported_resets(self, dev: Path) -> list[str]:
        """What the function can do; the builder records it, else the methods it shows now."""
        saved = dev / SIMULATED_RESET_METHODS
        if not saved.exists():
            current = (dev / "reset_method").read_text() if (dev / "reset_method").exists() else ""
            saved.write_text(current.strip() + "\n")
        return saved.read_text().split()

    def _reset_method(self, dev: Path, value: str) -> str:
        """reset_method_store: ``default`` restores the supported methods, an empty write
        leaves none, any other list must name only supported methods (else EINVAL)."""
        supported = self._supported_resets(dev)
        if value == "default":
            return " ".join(supported)
        if not value:
            return ""
        chosen: list[str] = []
        for name in value.split():
            if name not in supported:
                raise self._error(errno.EINVAL, f"{dev.name} cannot reset by {name!r}")
            if name not in chosen:
                chosen.append(name)
        return " ".join(chosen)

    def _reset(self, dev: Path, rel: str, value: str) -> None:
        if value != "1":
            raise self._error(errno.EINVAL, f"{rel}: only 1 resets")
        methods = (dev / "reset_method").read_text().split() if (dev / "reset_method").exists() else ["flr"]
        if not methods:
            raise self._error(errno.ENOTTY, f"{dev.name} has no reset method left")
        if (dev / SIMULATED_DIES_ON_RESET).exists():  # the reset "works", the device is gone
            (dev / "config").write_bytes(b"\xff" * 64)

    # ------------------------------------------------------------------ SR-IOV
    def _numvfs(self, dev: Path, value: str) -> None:
        """sriov_numvfs_store: ERANGE above the total, ENOENT without a PF driver, EBUSY from
        one non-zero count to another; otherwise the VFs are created (or all removed)."""
        try:
            wanted = int(value, 0)
        except ValueError:
            wanted = -1
        if not 0 <= wanted <= 0xFFFF:
            raise self._error(errno.EINVAL, f"sriov_numvfs {value!r}")
        total, now = ((dev / name).read_text().strip() for name in ("sriov_totalvfs", "sriov_numvfs"))
        if wanted > int(total or 0):
            raise self._error(errno.ERANGE, f"{wanted} VFs, {dev.name} has {total}")
        current = int(now or 0)
        if wanted == current:
            return
        if not (dev / "driver").is_symlink():
            raise self._error(errno.ENOENT, f"no driver bound to {dev.name}")
        if wanted and current:
            raise self._error(errno.EBUSY, f"{now} VFs already enabled on {dev.name}")
        if wanted:
            self._enable_vfs(dev, wanted)
        else:
            self._disable_vfs(dev)
        (dev / "sriov_numvfs").write_text(f"{wanted}\n")

    def _vf_address(self, pf: str, dev: Path, index: int) -> str:
        """PF routing id + sriov_offset + sriov_stride * index (pci-iov-howto.rst)."""
        domain, bus, slot_fn = pf.split(":")
        slot, fn = slot_fn.split(".")
        offset = int(self._text(dev / "sriov_offset") or "128")
        stride = int(self._text(dev / "sriov_stride") or "1")
        rid = (int(bus, 16) << 8 | int(slot, 16) << 3 | int(fn)) + offset + stride * index
        return f"{domain}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"

    @staticmethod
    def _text(path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def _enable_vfs(self, dev: Path, count: int) -> None:
        pf = dev.name
        vendor = self._text(dev / "vendor") or "0x0000"
        vf_device = "0x" + (self._text(dev / "sriov_vf_device") or "0").zfill(4)
        groups = self.path("kernel/iommu_groups")
        pf_group = self._group(pf)
        next_group = max((int(g) for g in os.listdir(groups) if ascii_digits(g)), default=-1) + 1
        attrs = {
            "vendor": vendor,
            "device": vf_device,
            "class": self._text(dev / "class") or "0x000000",
            "subsystem_vendor": self._text(dev / "subsystem_vendor") or vendor,
            "subsystem_device": self._text(dev / "subsystem_device") or "0x0000",
            "revision": self._text(dev / "revision") or "0x00",
            "numa_node": self._text(dev / "numa_node") or "-1",
            "local_cpulist": self._text(dev / "local_cpulist") or "",
            "driver_override": NO_OVERRIDE,
            "reset": "",
            "reset_method": "flr",
            SIMULATED_RESET_METHODS: "flr",
        }
        parent = dev.parent
        for i in range(count):
            vf = self._vf_address(pf, dev, i)
            folder = parent / vf
            folder.mkdir()
            for name, text in attrs.items():
                (folder / name).write_text(text + "\n")
            os.symlink(f"../{pf}", folder / "physfn")
            os.symlink(f"../{vf}", dev / f"virtfn{i}")
            os.symlink(
                os.path.relpath(folder, self.path("bus/pci/devices")), self.path(f"bus/pci/devices/{vf}")
            )
            if pf_group is not None:
                # Each VF in a group of its own (ACS), numbered after the existing ones.
                gdir = groups / str(next_group)
                (gdir / "devices").mkdir(parents=True)
                os.symlink(os.path.relpath(gdir, folder), folder / "iommu_group")
                os.symlink(os.path.relpath(folder, gdir / "devices"), gdir / "devices" / vf)
                next_group += 1
        if self._text(dev / "sriov_drivers_autoprobe") != "0":
            for i in range(count):
                with contextlib.suppress(HostIOError):  # a VF no driver takes stays without one
                    self._probe(self._vf_address(pf, dev, i))

    def _disable_vfs(self, dev: Path) -> None:
        for link in sorted(dev.glob("virtfn*")):
            vf = os.path.basename(os.readlink(link))
            self._remove_function(vf)

    # ------------------------------------------------------------------ remove
    def _remove_function(self, address: str) -> None:
        """pci_stop_and_remove_bus_device: the function goes, its driver and group links with
        it. A PF's VFs stay unless its driver disables SR-IOV when removed (nvme does not: the
        kernel only warns "driver left SR-IOV enabled after remove"); their ``physfn`` dangles."""
        dev = Path(os.path.realpath(self._dev(address)))
        driver = self.link_name(f"bus/pci/devices/{address}/driver")
        group = self._group(address)
        if driver is not None:
            os.unlink(dev / "driver")
            link = self.path(f"bus/pci/drivers/{driver}/{address}")
            if os.path.lexists(link):
                os.unlink(link)
            if driver == VFIO:
                self._vfio_left(group)
        if group is not None:
            member = self.path(f"kernel/iommu_groups/{group}/devices/{address}")
            if os.path.lexists(member):
                os.unlink(member)
            gdir = self.path(f"kernel/iommu_groups/{group}")
            if not os.listdir(gdir / "devices"):
                shutil.rmtree(gdir)
        pf = self.link_name(f"bus/pci/devices/{address}/physfn")
        if pf is not None:
            pf_dir = self._dev(pf)
            for link in pf_dir.glob("virtfn*"):
                if os.path.basename(os.readlink(link)) == address:
                    os.unlink(link)
        os.unlink(self.path(f"bus/pci/devices/{address}"))
        shutil.rmtree(dev)

    # ------------------------------------------------------------------ USB
    def _authorize(self, dev: Path, value: str) -> None:
        """authorized 0 removes the device's interfaces (usb_deauthorize_device); 1 makes
        them again (usb_authorize_device configures the device)."""
        links = self.path("bus/usb/devices")
        kept = dev / SIMULATED_INTERFACES
        busid = dev.name
        if value == "0":
            for entry in sorted(os.listdir(dev)):
                if entry.startswith(busid + ":") and (dev / entry).is_dir():
                    kept.mkdir(exist_ok=True)
                    shutil.move(dev / entry, kept / entry)
                    if os.path.lexists(links / entry):
                        os.unlink(links / entry)
        elif kept.is_dir():
            for entry in sorted(os.listdir(kept)):
                shutil.move(kept / entry, dev / entry)
                os.symlink(os.path.relpath(dev / entry, links), links / entry)
            kept.rmdir()

    # ------------------------------------------------------------------ VFIO
    def _group(self, address: str) -> str | None:
        return self.link_name(f"bus/pci/devices/{address}/iommu_group")

    def dev_node(self, name: str) -> Path:
        """Where the simulation keeps the device node ``/dev/<name>`` (``vfio/12``)."""
        return self.path(f"{SIMULATED_DEV}/{name}")

    def _vfio_use(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path(SIMULATED_VFIO_USERS).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_vfio_use(self, use: dict[str, dict[str, Any]]) -> None:
        self.path(SIMULATED_VFIO_USERS).write_text(json.dumps(use, indent=1, sort_keys=True) + "\n")

    def _vfio_left(self, group: str | None) -> None:
        """A member left vfio-pci: with none left the group's node goes, and a guest holding
        the group loses it (the kernel revokes the container)."""
        if group is None:
            return
        members = self.listdir(f"kernel/iommu_groups/{group}/devices")
        if any(self.link_name(f"bus/pci/devices/{m}/driver") == VFIO for m in members):
            return
        node = self.dev_node(f"vfio/{group}")
        if node.exists():
            node.unlink()
        use = self._vfio_use()
        if use.pop(group, None) is not None:
            self._save_vfio_use(use)

    def hold_group(
        self, group: int | str, holder: str = "pid 4242 (qemu-system-x86)", *, devices: Sequence[str] = ()
    ) -> None:
        """A guest opens ``/dev/vfio/<group>`` and attaches it (and opens ``devices``), as
        QEMU does; the group's node must exist (a member on vfio-pci), as on a host."""
        key = str(group)
        if not self.dev_node(f"vfio/{key}").exists():
            raise self._error(errno.ENOENT, f"/dev/vfio/{key}: no member of group {key} is on {VFIO}")
        use = self._vfio_use()
        use[key] = {"holder": holder, "devices": sorted(devices)}
        self._save_vfio_use(use)

    def release_group(self, group: int | str) -> None:
        """The guest closes the group and its devices."""
        use = self._vfio_use()
        if use.pop(str(group), None) is not None:
            self._save_vfio_use(use)

    def vfio_users(self) -> SimulatedVfioUsers:
        """Who holds what, as :class:`devassign.lifecycle.host.VfioUsers` (for ``HostOps``)."""
        return SimulatedVfioUsers(self)

    # ------------------------------------------------------------------ vGPU 17 and later
    def _vgpu_type(self, vf: Path, value: str) -> None:
        """``current_vgpu_type`` of a VF: a type it lists (EINVAL otherwise), or 0 to clear it;
        EBUSY to change a type without clearing it first. Then every VF of the GPU lists what
        it can take now: all types while none runs, else only the running one while room is
        left (one type at a time, at most its max instances), nothing on a VF that runs one."""
        if not value.isdecimal():
            raise self._error(errno.EINVAL, f"{vf.name}: {value!r} is not a vGPU type id")
        tid = int(value)
        pf = (vf / "physfn").resolve()
        full = json.loads((pf / SIMULATED_VGPU_TYPES).read_text())
        current = vf / "nvidia" / "current_vgpu_type"
        now = int(current.read_text().strip() or "0")
        if tid:
            listed = (vf / "nvidia" / "creatable_vgpu_types").read_text().split("\n")
            if not any(line.split(":")[0].strip() == str(tid) for line in listed if ":" in line):
                raise self._error(errno.EINVAL, f"{vf.name} cannot take vGPU type {tid} now")
            if now and now != tid:
                raise self._error(errno.EBUSY, f"{vf.name} runs vGPU type {now}")
        current.write_text(f"{tid}\n")
        vfs = sorted(p.resolve() for p in pf.iterdir() if p.name.startswith("virtfn"))
        running = [int((v / "nvidia/current_vgpu_type").read_text().strip() or "0") for v in vfs]
        active = {t for t in running if t}
        for v, runs in zip(vfs, running, strict=True):
            if runs:
                offer: dict[str, list[Any]] = {}
            elif not active:
                offer = full
            else:
                (only,) = active  # one type at a time: the simulation never lets two in
                room = running.count(only) < int(full[str(only)][1])
                offer = {str(only): full[str(only)]} if room else {}
            text = "".join(
                f"{t} : {name}\n" for t, (name, _) in sorted(offer.items(), key=lambda x: int(x[0]))
            )
            (v / "nvidia" / "creatable_vgpu_types").write_text(text)

    # ------------------------------------------------------------------ NVIDIA mdev
    @staticmethod
    def _vgpu_types(type_dir: Path) -> dict[Path, int] | None:
        """The NVIDIA vGPU manager's types on this parent, with their max instances, or ``None``
        when the parent's types are not all the manager's (only those follow its rules)."""
        out: dict[Path, int] = {}
        for t in sorted(type_dir.parent.iterdir()):
            text = (t / "description").read_text() if (t / "description").exists() else ""
            found = nvidia_vgpu(text.strip())
            if found is None:
                return None
            out[t] = found[1]
        return out

    def _vgpu_rebalance(self, type_dir: Path) -> None:
        """A time-sliced NVIDIA GPU runs one vGPU type at a time: while any instance exists,
        every other type shows 0 ``available_instances`` and the running one its max minus
        those created; an empty GPU offers every type's max again."""
        types = self._vgpu_types(type_dir)
        if types is None or (type_dir.parent.parent / "physfn").exists():
            return  # not the manager's, or a VF of an SR-IOV GPU: one instance per VF
        running = {t: len(os.listdir(t / "devices")) if (t / "devices").exists() else 0 for t in types}
        busy = [t for t, n in running.items() if n]
        for t, most in types.items():
            left = 0 if busy and t not in busy else most - running[t]
            (t / "available_instances").write_text(f"{max(left, 0)}\n")

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
        self._vgpu_rebalance(type_dir)

    def _mdev_remove(self, mdev: Path) -> None:
        type_dir = (mdev / "mdev_type").resolve()
        uuid = mdev.name
        shutil.rmtree(mdev)
        for link in (type_dir / "devices" / uuid, self.path(f"bus/mdev/devices/{uuid}")):
            if os.path.lexists(link):
                os.unlink(link)
        available = int((type_dir / "available_instances").read_text().strip() or "0")
        (type_dir / "available_instances").write_text(f"{available + 1}\n")
        self._vgpu_rebalance(type_dir)


class SimulatedVfioUsers:
    """The guests :meth:`SimulatedSysfs.hold_group` recorded in the tree, by device node."""

    def __init__(self, sysfs: SimulatedSysfs) -> None:
        self.sysfs = sysfs

    def holders(self, nodes: Sequence[str]) -> list[str]:
        use = self.sysfs._vfio_use()
        found = []
        for node in nodes:
            group = node.removeprefix("/dev/vfio/")
            if group in use and use[group]["holder"] not in found:
                found.append(str(use[group]["holder"]))
        return found
