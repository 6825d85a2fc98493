"""The warning for a device not offered because of its IOMMU group is logged once per device
and reason (it was repeated at every report), and names every mate that is not offered."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FLAG_IOMMU_SHARED
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host

PF = "0000:5e:00.0"
CONFIG = parse_config({"device": [{"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}]})


def test_each_vf_is_logged_once_with_all_its_mates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=4, vf_device="154c", iommu_group=82)
    for vf in vfs:
        h.group(vf, 82)  # no ACS: the PF and its VFs in one group
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three reports
            inv = build_inventory(Sysfs(h.root), CONFIG, pci_ids=None, warned=warned)
    assert all(FLAG_IOMMU_SHARED in d.flags for d in inv.devices if d.address in vfs)
    lines = [r.getMessage() for r in caplog.records if "IOMMU group 82" in r.getMessage()]
    assert len(lines) == 4, lines  # one per VF
    (second,) = [line for line in lines if line.startswith(vfs[1])]
    assert f"{PF} (no rule takes it)" in second
    for mate in (vfs[0], vfs[2], vfs[3]):
        assert f"{mate} (not offered: {FLAG_IOMMU_SHARED})" in second
    assert f"{vfs[2]} (not offered: {FLAG_IOMMU_SHARED}) and {vfs[3]}" in second
    assert "stays with the host" not in second


def test_a_changed_reason_is_logged_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "8086", "154c", iommu_group=5)
    h.pci("0000:3b:00.1", "8086", "0001", iommu_group=5)
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING):
        build_inventory(Sysfs(h.root), CONFIG, pci_ids=None, warned=warned)
        build_inventory(Sysfs(h.root), CONFIG, pci_ids=None, warned=warned)
        h.pci("0000:3b:00.2", "8086", "0002", iommu_group=5)
        build_inventory(Sysfs(h.root), CONFIG, pci_ids=None, warned=warned)
    lines = [r.getMessage() for r in caplog.records if "IOMMU group 5" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[1].endswith(
        "0000:3b:00.2 (no rule takes it); VFIO gives a guest the whole group, so every "
        "member must be offered for any to be"
    )
