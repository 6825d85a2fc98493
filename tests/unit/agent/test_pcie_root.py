"""``attributes.pcie_root`` (the constraint alias ``pcie_root``) is the PCI root complex a
function sits under, from the path its ``bus/pci/devices`` entry links to; before, nothing set
it, and a request asking for a GPU and a NIC under one PCIe root never fitted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from devassign.agent.config import parse_config
from devassign.agent.discovery import scan_pci
from devassign.agent.inventory import build_inventory
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host


def test_each_function_names_its_root_complex(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", pcie_root="pci0000:3a", iommu_group=1)
    vfs = h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", pcie_root="pci0000:5d")
    h.pci("10000:01:00.0", "8086", "0a54", cls="010802", pcie_root="pci10000:00")  # behind Intel VMD
    h.pci("0000:00:1f.0", "8086", "a1c8", cls="060100")
    roots = {d.address: d.attributes.get("pcie_root") for d in scan_pci(Sysfs(h.root), pci_ids=None).devices}
    assert roots == {
        "0000:3b:00.0": "pci0000:3a",
        "0000:5e:00.0": "pci0000:5d",
        vfs[0]: "pci0000:5d",
        vfs[1]: "pci0000:5d",
        "10000:01:00.0": "pci10000:00",
        "0000:00:1f.0": "pci0000:00",
    }
    assert os.path.realpath(h.root / "bus/pci/devices/0000:3b:00.0").endswith(
        "devices/pci0000:3a/0000:3b:00.0"
    )


def test_a_path_through_root_ports_and_switches_names_the_root_complex(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200")
    # As the kernel nests it: root port, switch ports, then the function.
    nested = "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/0000:3c:08.0/0000:3d:00.0"
    (h.root / nested).parent.mkdir(parents=True)
    shutil.move(h.root / h.dev("0000:3b:00.0"), h.root / nested)
    link = h.root / "bus/pci/devices/0000:3b:00.0"
    link.unlink()
    os.symlink(f"../../../{nested}", link)
    (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert dev.attributes["pcie_root"] == "pci0000:3a"


def test_a_copied_folder_has_no_root(tmp_path: Path) -> None:
    h = host(tmp_path)
    (h.root / "bus/pci/devices/0000:3b:00.0").mkdir()
    (h.root / "bus/pci/devices/0000:3b:00.0/vendor").write_text("0x10de\n")
    (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert "pcie_root" not in dev.attributes


def test_it_reaches_the_report(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", pcie_root="pci0000:3a", iommu_group=1)
    cfg = parse_config({"device": [{"type": "GPU_T4", "match": {"vendor_id": "10de"}}]})
    (reported,) = build_inventory(Sysfs(h.root), cfg, pci_ids=None).reported()
    assert reported.attributes["pcie_root"] == "pci0000:3a"
