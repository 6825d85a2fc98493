"""SYNTHETIC sysfs trees for tests and the demo: a small builder of the kernel's documented layout.

Everything built here is SYNTHETIC: no public sample keeps SR-IOV links together with
mediated-device types, so these trees are modelled on the kernel's documentation
(Documentation/ABI/testing/sysfs-bus-pci, Documentation/PCI/pci-iov-howto.rst,
Documentation/driver-api/vfio-mediated-device.rst, Documentation/ABI/stable/sysfs-bus-usb)
with real symbolic links where the kernel has them::

    bus/pci/devices/<addr>        -> ../../../devices/pci0000:00/<addr>
    devices/pci0000:00/<addr>/driver       -> ../../../bus/pci/drivers/<driver>
    devices/pci0000:00/<addr>/iommu_group  -> ../../../kernel/iommu_groups/<n>
    kernel/iommu_groups/<n>/devices/<addr> -> ../../../../devices/pci0000:00/<addr>
    <pf>/virtfn<i> -> ../<vf>,  <vf>/physfn -> ../<pf>,  <pf>/net/<ifname>/operstate
    <gpu>/mdev_supported_types/<type>/{name,available_instances,device_api,devices/<uuid>}
    <addr>/{config,reset,reset_method,driver_override}    bus/pci/drivers_probe
    bus/usb/devices/<busid>       -> ../../../devices/platform/usb-host/usb<N>/<busid>

Use it as::

    h = host(tmp_path)                # host(tmp_path, vfio=True): vfio-pci loaded, for setups
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0")
    h.usb("1-2", "0529", "0620", serial="ABC123")
    Sysfs(h.root)

Values are written the way the kernel writes them: ids as ``0x8086\\n``, class as
``0x020000\\n``, ``numa_node`` ``-1`` when unknown. Every PCI function gets a ``reset`` file
(with ``reset_method`` ``flr``) unless built with ``reset=None``: the server refuses functions
the kernel cannot reset, so a tree without them would offer nothing. Generated trees only
become a live host with :class:`devassign.lifecycle.simulated.SimulatedSysfs`, which makes
bind/unbind/probe writes act like the kernel. A function built bound to a driver adds its
ids to that driver's ``.simulated-ids`` (what the module's id table holds on a real host),
so ``drivers_probe`` gives it back to that driver, as the kernel would.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PCI_ROOT = "devices/pci0000:00"
# In a driver's folder: "VENDOR DEVICE" lines, the ids the driver takes when probed.
SIMULATED_IDS = ".simulated-ids"
# In a function's folder: the reset methods it supports (see lifecycle/simulated.py).
SIMULATED_RESET_METHODS = ".simulated-reset-methods"
# In a function's folder: its next reset leaves it dead (config space reads 0xFF).
SIMULATED_DIES_ON_RESET = ".simulated-dies-on-reset"
# In a vGPU 17+ PF's folder: every vGPU type it offers when empty, with its max instances.
SIMULATED_VGPU_TYPES = ".simulated-vgpu-types"
USB_ROOT = "devices/platform/usb-host"


def _hex(value: str, width: int = 4) -> str:
    """Kernel style: ``0x`` and lowercase, zero-padded."""
    return "0x" + value.lower().removeprefix("0x").zfill(width)


def vf_addresses(pf: str, count: int, bus: int | None = None) -> list[str]:
    """Where the VFs of ``pf`` appear: slot 0x10 onwards on ``bus`` (default: the PF's bus).

    Real devices place VFs at PF routing id + offset + stride * i; slot 0x10 with stride 1
    is what igb and ixgbe show, and is enough for up to 128 VFs.
    """
    domain, pf_bus, _ = pf.split(":")
    b = int(pf_bus, 16) if bus is None else bus
    out = []
    for i in range(count):
        slot, fn = 0x10 + i // 8, i % 8
        out.append(f"{domain}:{b:02x}:{slot:02x}.{fn}")
    return out


@dataclass
class SyntheticHost:
    """A generated sysfs tree under ``root``; every method returns the device's path."""

    root: Path
    usb_buses: set[int] = field(default_factory=set)
    # PCI address -> its root complex (``pci0000:3a``) where it is not ``pci0000:00``.
    pcie_roots: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def write(self, rel: str, value: str) -> None:
        """Write an attribute file (relative to the root), creating folders on the way."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value if value.endswith("\n") else value + "\n")

    def link(self, rel: str, target: str) -> None:
        """Make ``rel`` a symbolic link to ``target`` (relative, as the kernel does)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(target, path)

    def dev(self, addr: str) -> str:
        """The real folder of PCI device ``addr``, relative to the root: under its root
        complex's folder (``devices/pci0000:00`` unless built with another ``pcie_root``)."""
        root = self.pcie_roots.get(addr)
        return f"devices/{root}/{addr}" if root else f"{PCI_ROOT}/{addr}"

    def set(self, addr: str, attr: str, value: str) -> None:
        """Change one attribute of PCI device ``addr`` (e.g. ``numa_node``)."""
        self.write(f"{self.dev(addr)}/{attr}", value)

    # ------------------------------------------------------------------ PCI
    def pci(
        self,
        addr: str,
        vendor: str,
        device: str,
        *,
        cls: str = "020000",
        numa: int | None = -1,
        iommu_group: int | None = None,
        driver: str | None = None,
        subsystem_vendor: str | None = None,
        subsystem_device: str | None = None,
        local_cpulist: str | None = "0-7",
        reset: str | None = "flr",
        extra: dict[str, str] | None = None,
        pcie_root: str | None = None,
    ) -> Path:
        """One PCI function; ``numa=None`` leaves the file out, ``-1`` is the kernel's unknown.

        ``reset`` is the ``reset_method`` text (``"flr bus"``); ``None`` leaves out the
        ``reset`` file, as on a function the kernel cannot reset. ``pcie_root``: the root
        complex it sits under (``pci0000:3a``; default ``pci0000:00``): its folder is
        ``devices/<pcie_root>/<addr>``, one level down as every function here (the root ports
        and switches between are not modelled), so ``bus/pci/devices/<addr>`` resolves as the
        kernel's does to a path that names its root complex.
        """
        if pcie_root is not None and pcie_root != PCI_ROOT.rpartition("/")[2]:
            self.pcie_roots[addr] = pcie_root
        d = self.dev(addr)
        self.write(f"{d}/vendor", _hex(vendor))
        self.write(f"{d}/device", _hex(device))
        self.write(f"{d}/class", _hex(cls, 6))
        self.write(f"{d}/subsystem_vendor", _hex(subsystem_vendor or vendor))
        self.write(f"{d}/subsystem_device", _hex(subsystem_device or "0000"))
        self.write(f"{d}/revision", "0x01")
        self.config_space(addr, vendor, device)
        if numa is not None:
            self.write(f"{d}/numa_node", str(numa))
        if local_cpulist is not None:
            self.write(f"{d}/local_cpulist", local_cpulist)
        self.write(f"{d}/driver_override", "(null)")  # the kernel's text for "none"
        self.write(f"{d}/remove", "")
        if reset is not None:
            self.write(f"{d}/reset", "")
            self.write(f"{d}/reset_method", reset)
            self.write(f"{d}/{SIMULATED_RESET_METHODS}", reset)  # what ``default`` restores
        for name, value in (extra or {}).items():
            self.write(f"{d}/{name}", value)
        self.link(f"bus/pci/devices/{addr}", f"../../../{d}")
        if driver:
            self.bind(addr, driver)
            self.native_ids(driver, vendor, device)
        if iommu_group is not None:
            self.group(addr, iommu_group)
        return self.root / d

    def config_space(self, addr: str, vendor: str, device: str, *, vf: bool = False) -> None:
        """The first 64 bytes of the function's config space (what an unprivileged read of
        ``config`` gives): vendor and device id, little-endian, then a revision, then zeros. A
        VF's vendor and device id read 0xFFFF, as on real hardware (sysfs shows the PF's)."""
        ids = int(vendor, 16).to_bytes(2, "little") + int(device, 16).to_bytes(2, "little")
        head = b"\xff" * 4 if vf else ids
        path = self.root / self.dev(addr) / "config"
        path.write_bytes(head + bytes(4) + b"\x01" + bytes(55))

    def fall_off_bus(self, addr: str) -> None:
        """What a dead function shows: every config read answers all ones (0xFF)."""
        (self.root / self.dev(addr) / "config").write_bytes(b"\xff" * 64)

    def dies_on_reset(self, addr: str) -> None:
        """Make the function's next reset kill it (its config space then reads 0xFF), as some
        GPUs do after a function-level reset."""
        self.write(f"{self.dev(addr)}/{SIMULATED_DIES_ON_RESET}", "1")

    def bind(self, addr: str, driver: str | None) -> None:
        """Bind ``addr`` to ``driver`` (or unbind it with ``None``)."""
        d = self.dev(addr)
        old = self.root / d / "driver"
        if old.is_symlink():
            stale = self.root / "bus/pci/drivers" / os.path.basename(os.readlink(old)) / addr
            if stale.is_symlink():
                stale.unlink()
            old.unlink()
        if driver:
            self.link(f"{d}/driver", f"../../../bus/pci/drivers/{driver}")
            self.link(f"bus/pci/drivers/{driver}/{addr}", f"../../../../{d}")

    def native_ids(self, driver: str, vendor: str, device: str) -> None:
        """Let ``driver`` take ``vendor:device`` functions when they are probed."""
        ids = self.root / "bus/pci/drivers" / driver / SIMULATED_IDS
        line = f"{vendor.lower().removeprefix('0x')} {device.lower().removeprefix('0x')}"
        have = ids.read_text().split("\n") if ids.exists() else []
        if line not in have:
            ids.parent.mkdir(parents=True, exist_ok=True)
            ids.write_text("\n".join([*[h for h in have if h], line]) + "\n")

    def group(self, addr: str, n: int) -> None:
        """Put ``addr`` in IOMMU group ``n`` (both the device's link and the group's member)."""
        d = self.dev(addr)
        self.link(f"{d}/iommu_group", f"../../../kernel/iommu_groups/{n}")
        self.link(f"kernel/iommu_groups/{n}/devices/{addr}", f"../../../../{d}")

    def netdev(self, addr: str, ifname: str, operstate: str = "up") -> None:
        """A network interface of ``addr`` (``net/<ifname>/operstate``)."""
        self.write(f"{self.dev(addr)}/net/{ifname}/operstate", operstate)

    # ------------------------------------------------------------------ SR-IOV
    def sriov_pf(
        self,
        addr: str,
        vendor: str,
        device: str,
        *,
        vfs: int = 0,
        total_vfs: int | None = None,
        vf_device: str | None = None,
        vf_driver: str | None = "iavf",
        vf_bus: int | None = None,
        ifname: str | None = None,
        operstate: str = "up",
        numa: int | None = -1,
        iommu_group: int | None = None,
        vf_iommu_group_start: int | None = None,
        driver: str | None = "ice",
        cls: str = "020000",
        reset: str | None = "flr",
        pcie_root: str | None = None,
    ) -> list[str]:
        """A PF with ``vfs`` VFs enabled; returns the VF addresses.

        Each VF gets ``physfn`` and the PF ``virtfn<i>``, as pci-iov-howto.rst describes;
        with ``vf_iommu_group_start`` VF ``i`` sits alone in group ``start + i`` (ACS). The
        VFs sit under the PF's root complex (``pcie_root``, see :meth:`pci`).
        """
        vf_device = vf_device or device
        common: dict[str, Any] = {"cls": cls, "numa": numa, "reset": reset, "pcie_root": pcie_root}
        self.pci(addr, vendor, device, iommu_group=iommu_group, driver=driver, **common)
        d = self.dev(addr)
        self.write(f"{d}/sriov_totalvfs", str(total_vfs if total_vfs is not None else max(vfs, 8)))
        self.write(f"{d}/sriov_numvfs", str(vfs))
        self.write(f"{d}/sriov_drivers_autoprobe", "1")
        self.write(f"{d}/sriov_vf_device", f"{int(vf_device, 16):x}")  # the kernel prints %x
        if vf_bus is None:
            # Where vf_addresses puts VF i (devfn 0x80 + i of the PF's bus), as the kernel
            # computes it: the PF's routing id + sriov_offset + sriov_stride * i.
            slot, fn = addr.rsplit(":", 1)[1].split(".")
            self.write(f"{d}/sriov_offset", str(0x80 - (int(slot, 16) << 3 | int(fn))))
            self.write(f"{d}/sriov_stride", "1")
        if ifname:
            self.netdev(addr, ifname, operstate)
        out = vf_addresses(addr, vfs, vf_bus)
        for i, vf in enumerate(out):
            group = None if vf_iommu_group_start is None else vf_iommu_group_start + i
            self.pci(vf, vendor, vf_device, iommu_group=group, driver=vf_driver, **common)
            (self.root / self.dev(vf) / "remove").unlink()  # the kernel gives VFs none
            self.config_space(vf, vendor, vf_device, vf=True)
            self.link(f"{self.dev(vf)}/physfn", f"../{addr}")
            self.link(f"{d}/virtfn{i}", f"../{vf}")
        return out

    def vgpu_gpu(
        self,
        addr: str,
        device: str = "2335",
        *,
        vfs: int = 4,
        types: dict[int, tuple[str, int]],
        **pf: Any,
    ) -> list[str]:
        """An NVIDIA GPU of vGPU 17 and later (H200 by default): a PF whose VFs list
        ``types`` (id -> (name, max instances on the GPU)) in ``nvidia/creatable_vgpu_types``
        and take one through ``nvidia/current_vgpu_type``; returns the VF addresses."""
        pf.setdefault("cls", "030200")
        pf.setdefault("driver", "nvidia")
        pf.setdefault("vf_driver", "nvidia")
        out = self.sriov_pf(addr, "10de", device, vfs=vfs, vf_device=device, **pf)
        listing = "".join(f"{tid} : {name}\n" for tid, (name, _) in sorted(types.items()))
        for vf in out:
            self.write(f"{self.dev(vf)}/nvidia/creatable_vgpu_types", listing)
            self.write(f"{self.dev(vf)}/nvidia/current_vgpu_type", "0")
        full = {str(tid): [name, most] for tid, (name, most) in types.items()}
        self.write(f"{self.dev(addr)}/{SIMULATED_VGPU_TYPES}", json.dumps(full, sort_keys=True))
        return out

    # ------------------------------------------------------------------ mdev
    def mdev_parent(
        self,
        addr: str,
        vendor: str = "10de",
        device: str = "1eb8",
        *,
        types: dict[str, dict[str, Any]],
        **pci: Any,
    ) -> Path:
        """A GPU with mediated-device types.

        ``types`` maps a type id to ``{"name": ..., "available": N, "instances": [uuid...],
        "device_api": "vfio-pci"}``; instances may be given as a count.
        """
        pci.setdefault("cls", "030200")
        pci.setdefault("driver", "nvidia")
        path = self.pci(addr, vendor, device, **pci)
        d = self.dev(addr)
        for type_id, spec in types.items():
            t = f"{d}/mdev_supported_types/{type_id}"
            self.write(f"{t}/name", str(spec.get("name", type_id)))
            self.write(f"{t}/available_instances", str(spec.get("available", 0)))
            self.write(f"{t}/device_api", str(spec.get("device_api", "vfio-pci")))
            self.write(f"{t}/description", str(spec.get("description", "")))
            (self.root / t / "devices").mkdir(parents=True, exist_ok=True)
            instances = spec.get("instances", [])
            if isinstance(instances, int):
                instances = [str(uuid.UUID(int=i + 1)) for i in range(instances)]
            for inst in instances:
                self.write(f"{d}/{inst}/uevent", "MDEV_TYPE=" + type_id)
                self.link(f"{d}/{inst}/mdev_type", f"../mdev_supported_types/{type_id}")
                self.link(f"{t}/devices/{inst}", f"../../../{inst}")
        self.link(f"class/mdev_bus/{addr}", f"../../{d}")
        return path

    # ------------------------------------------------------------------ USB
    def usb(
        self,
        busid: str,
        vendor: str,
        product: str,
        *,
        serial: str | None = None,
        manufacturer: str | None = "Synthetic",
        product_name: str | None = "Test device",
        speed: str = "480",
    ) -> Path:
        """A USB device at ``busid`` (e.g. ``1-2.3``), with its root hub and one interface."""
        bus = int(busid.split("-", maxsplit=1)[0])
        hub = f"{USB_ROOT}/usb{bus}"
        if bus not in self.usb_buses:
            self.usb_buses.add(bus)
            self.write(f"{hub}/idVendor", "1d6b")
            self.write(f"{hub}/idProduct", "0002")
            self.write(f"{hub}/busnum", str(bus))
            self.link(f"bus/usb/devices/usb{bus}", f"../../../{hub}")
        d = f"{hub}/{busid}"
        self.write(f"{d}/idVendor", vendor)
        self.write(f"{d}/idProduct", product)
        self.write(f"{d}/busnum", str(bus))
        self.write(f"{d}/devnum", str(len(list((self.root / hub).iterdir()))))
        self.write(f"{d}/speed", speed)
        self.write(f"{d}/authorized", "1")  # the kernel's default (authorized_default)
        if serial is not None:
            self.write(f"{d}/serial", serial)
        if manufacturer is not None:
            self.write(f"{d}/manufacturer", manufacturer)
        if product_name is not None:
            self.write(f"{d}/product", product_name)
        self.link(f"{d}/driver", "../../../../../bus/usb/drivers/usb")
        iface = f"{busid}:1.0"
        self.write(f"{d}/{iface}/bInterfaceClass", "0b")
        self.link(f"bus/usb/devices/{busid}", f"../../../{d}")
        self.link(f"bus/usb/devices/{iface}", f"../../../{d}/{iface}")
        return self.root / d

    # ------------------------------------------------------------------ removal
    def remove(self, addr: str) -> None:
        """Take a PCI device (or a USB bus id) out of the tree, links and all (hot-unplug)."""
        usb = self.root / "bus/usb/devices" / addr
        if usb.is_symlink():
            real = usb.resolve()
            for entry in list((self.root / "bus/usb/devices").iterdir()):
                if entry.name == addr or entry.name.startswith(addr + ":"):
                    entry.unlink()
            shutil.rmtree(real, ignore_errors=True)
            return
        d = self.root / self.dev(addr)
        self.bind(addr, None)
        for group in (self.root / "kernel/iommu_groups").glob(f"*/devices/{addr}"):
            group.unlink()
        for virtfn in (self.root / "devices").glob("pci*/*/virtfn*"):
            if os.path.basename(os.readlink(virtfn)) == addr:
                virtfn.unlink()
        link = self.root / "bus/pci/devices" / addr
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(d, ignore_errors=True)


def host(root: Path, *, vfio: bool = False) -> SyntheticHost:
    """A new, empty synthetic sysfs tree at ``root / "sys"``.

    ``vfio``: the ``vfio-pci`` driver is loaded (``bus/pci/drivers/vfio-pci``), which the
    lifecycle handlers need to set devices up.
    """
    sys_root = root / "sys"
    for rel in ("bus/pci/devices", "bus/pci/drivers", "bus/usb/devices", "kernel/iommu_groups"):
        (sys_root / rel).mkdir(parents=True, exist_ok=True)
    probe = sys_root / "bus/pci/drivers_probe"
    if not probe.exists():
        probe.write_text("")
    if vfio:
        (sys_root / "bus/pci/drivers/vfio-pci").mkdir(exist_ok=True)
    return SyntheticHost(sys_root)
