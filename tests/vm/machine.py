"""What QEMU is told to emulate, as data: the command line and what the guest must then show.

The host builds the QEMU command line from these constants and the guest checks discovery
against the same constants, so "what QEMU was told" is written once. Addresses are not fixed
here (the guest's firmware numbers the buses); devices are found by their ids and topology.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
CPUS = 2
MEMORY_MB = 1536
NUMA_NODES = 2  # one vCPU and half the memory each

# QEMU's NVMe controller (PCI 1b36:0010), SR-IOV capable; its VFs carry the same device id.
NVME_VENDOR, NVME_DEVICE, NVME_CLASS = "1b36", "0010", "010802"
NVME_MAX_VFS = 4
NVME_VFS = 2  # how many the checks enable through sriov_numvfs
# e1000e (82574L), as a standalone NIC on NUMA node 1 and as a two-function device.
E1000E_VENDOR, E1000E_DEVICE, NIC_CLASS = "8086", "10d3", "020000"
NIC_NUMA_NODE = 1
XHCI_VENDOR, XHCI_DEVICE = "1b36", "000d"
# USB devices behind qemu-xhci: QEMU's keyboard and a storage stick with a serial.
USB_KBD = ("0627", "0001")
USB_STICK = ("46f4", "0001")
STICK_SERIAL = "DEVASSIGN1"
STICK_MB = 8


@dataclass(frozen=True)
class Paths:
    """Host-side files of one run: the disk images and the 9p results share."""

    stick: Path
    nvme: Path
    out: Path


def _flat(options: list[str]) -> list[str]:
    """``["-m 1536", "-nographic"]`` -> ``["-m", "1536", "-nographic"]`` (values have no spaces)."""
    return [part for option in options for part in option.split(" ", 1)]


def qemu_argv(kernel: Path, initramfs: Path, paths: Paths) -> list[str]:
    """The full QEMU command line (TCG: this machine's KVM cannot run the guest)."""
    half = MEMORY_MB // NUMA_NODES
    nvme = (
        f"nvme,id=nvme0,bus=rp_nvme,serial=devassign-nvme,subsys=subsys0,sriov_max_vfs={NVME_MAX_VFS},"
        "sriov_vq_flexible=8,sriov_vi_flexible=4,max_ioqpairs=12,msix_qsize=8"
    )
    options = [
        "-machine q35,accel=tcg,kernel-irqchip=split",
        "-cpu max",
        f"-smp {CPUS}",
        f"-m {MEMORY_MB}",
        "-nographic",
        "-no-reboot",
        "-vga none",
        "-nic none",
        f"-kernel {kernel}",
        f"-initrd {initramfs}",
        "-device intel-iommu,intremap=on",
    ]
    for node in range(NUMA_NODES):
        options += [
            f"-object memory-backend-ram,id=mem{node},size={half}M",
            f"-numa node,nodeid={node},cpus={node},memdev=mem{node}",
        ]
    options += [
        # The NVMe SR-IOV PF and its namespace, behind its own root port.
        "-device pcie-root-port,id=rp_nvme,bus=pcie.0,chassis=1,addr=0x2",
        "-device nvme-subsys,id=subsys0",
        f"-device {nvme}",
        f"-drive if=none,id=nvm0,file={paths.nvme},format=raw",
        "-device nvme-ns,drive=nvm0,bus=nvme0,nsid=1",
        # Two functions of one device behind one root port: one IOMMU group, two members.
        # (No option ROMs: iPXE would only slow the boot.)
        "-device pcie-root-port,id=rp_mf,bus=pcie.0,chassis=2,addr=0x3",
        "-device e1000e,bus=rp_mf,addr=0x0.0x0,multifunction=on,mac=52:54:00:12:00:10,romfile=",
        "-device e1000e,bus=rp_mf,addr=0x0.0x1,mac=52:54:00:12:00:11,romfile=",
        # A NIC on NUMA node 1: behind a PCIe expander bridge that ACPI places there.
        f"-device pxb-pcie,id=pxb1,bus_nr=128,numa_node={NIC_NUMA_NODE},bus=pcie.0,addr=0x5",
        "-device pcie-root-port,id=rp_numa1,bus=pxb1,chassis=3,slot=0",
        "-device e1000e,bus=rp_numa1,mac=52:54:00:12:00:20,romfile=",
        # USB: a keyboard and a storage stick with a serial number.
        "-device pcie-root-port,id=rp_usb,bus=pcie.0,chassis=4,addr=0x4",
        "-device qemu-xhci,id=xhci,bus=rp_usb",
        "-device usb-kbd,bus=xhci.0",
        f"-drive if=none,id=stick,file={paths.stick},format=raw",
        f"-device usb-storage,bus=xhci.0,drive=stick,serial={STICK_SERIAL}",
        # The host's filesystem, read-only, and a writable folder for the results
        # (-fsdev and -device, not -virtfs: QEMU would plug them into the expander bridge).
        "-fsdev local,id=fs_host,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device virtio-9p-pci,fsdev=fs_host,mount_tag=hostfs,bus=pcie.0,addr=0x6",
        f"-fsdev local,id=fs_out,path={paths.out},security_model=none",
        "-device virtio-9p-pci,fsdev=fs_out,mount_tag=out,bus=pcie.0,addr=0x7",
    ]
    return [QEMU, *_flat(options), "-append", "console=ttyS0 intel_iommu=on panic=-1"]
