"""Time agent discovery on a generated host with ~1,000 PCI functions (run by hand).

    .venv/bin/python bench/discovery.py [--runs 7]

The host: 8 PFs with 120 VFs each (960 VFs, each in its own IOMMU group), 8 GPUs with
mdev types, 16 plain PCI devices, 8 USB devices. Prints the median of several discoveries
(full build_inventory: PCI, SR-IOV, mdev, USB, IOMMU groups, matching rules).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.sysfs import host

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.hostio import Sysfs


def build(root: Path) -> Path:
    h = host(root)
    group = 1
    for pf in range(8):
        addr = f"0000:{0x20 + pf:02x}:00.0"
        h.sriov_pf(
            addr,
            "8086",
            "1592",
            vfs=120,
            total_vfs=128,
            vf_device="1889",
            ifname=f"ens{pf}f0",
            numa=pf % 2,
            iommu_group=group,
            vf_iommu_group_start=group + 1,
        )
        group += 121
    for gpu in range(8):
        h.mdev_parent(
            f"0000:{0x80 + gpu:02x}:00.0",
            numa=gpu % 2,
            iommu_group=group,
            types={"nvidia-230": {"available": 4}, "nvidia-231": {"available": 2}},
        )
        group += 1
    for i in range(16):
        h.pci(f"0000:00:{i + 1:02x}.0", "8086", "a1c8", cls="060400", iommu_group=group)
        group += 1
    for i in range(8):
        h.usb(f"1-{i + 1}", "0529", "0620", serial=f"TOKEN{i}")
    return h.root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    config = parse_config(
        {
            "device": [
                {"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "1889"}},
                {"type": "VGPU_4Q", "match": {"kind": "mdev_type", "mdev_type": "nvidia-230"}},
                {"type": "USB_TOKEN", "match": {"vendor_id": "0529"}},
            ]
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = build(Path(tmp))
        sysfs = Sysfs(root)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            inv = build_inventory(sysfs, config, pci_ids=None)
            times.append(time.perf_counter() - start)
        pci = sum(1 for d in inv.devices if d.kind.value in ("pci", "sriov_pf", "sriov_vf"))
        print(f"{pci} PCI functions, {len(inv.devices)} devices, {len(inv.reported())} reported")
        print(
            f"discovery: median {statistics.median(times) * 1000:.1f} ms, "
            f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {args.runs} runs"
        )


if __name__ == "__main__":
    main()
