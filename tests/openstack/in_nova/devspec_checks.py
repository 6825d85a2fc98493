"""``agent import-nova`` against Nova's own ``[pci] device_spec`` matching: run in the Nova venv
only (tests/openstack/test_nova.py runs it; the main test run does not collect it).

For each spec, the devices Nova's ``PciDeviceSpec`` whitelists on a generated host are the
devices the converted rules give a type on the same host. Nova asks sysfs whether a spec's
address is a PF; here it asks the generated tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nova.pci import devspec
from nova.pci import utils as nova_pci_utils

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FoundDevice
from devassign.agent.nova import convert
from devassign.domain import DeviceKind
from devassign.hostio import Sysfs
from devassign.testing.sysfs import SyntheticHost, host

SPECS: list[dict[str, Any]] = [
    {"address": "0000:5e:00.0", "physical_network": "physnet3"},
    {"address": "0:5e:0.0"},
    {"address": {"domain": "0000", "bus": "5e", "slot": "00", "function": "0"}},
    {"address": "0000:5e:00.0", "vendor_id": "8086", "product_id": "1889"},
    {"address": "0000:5e:00.1"},  # a PF whose VFs are disabled
    {"address": "0000:5e:00.*"},
    {"address": ":5e:10."},
    {"address": "*:5e:*.*"},
    {"address": "0000:3b:00.0"},  # not a PF
    {"vendor_id": "8086", "product_id": "1889"},
    {"vendor_id": "8086"},
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> SyntheticHost:
    h = host(tmp_path_factory.mktemp("h"))
    h.pci("0000:3b:00.0", "10de", "20b5", cls="030200", iommu_group=10, driver="nvidia")
    h.sriov_pf(
        "0000:5e:00.0", "8086", "159b", vfs=4, vf_device="1889", iommu_group=20, vf_iommu_group_start=30
    )
    h.sriov_pf("0000:5e:00.1", "8086", "159b", vfs=0, vf_device="1889", iommu_group=21)
    return h


def _functions(devices: list[FoundDevice]) -> list[FoundDevice]:
    """The PCI functions, what Nova tracks (not the A100's MIG placements)."""
    return [d for d in devices if d.kind in (DeviceKind.PCI, DeviceKind.SRIOV_PF, DeviceKind.SRIOV_VF)]


def _nova_whitelisted(h: SyntheticHost, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    def is_pf(domain: str, bus: str, slot: str, function: str) -> bool:
        total = h.root / "bus/pci/devices" / f"{domain}:{bus}:{slot}.{function}" / "sriov_totalvfs"
        return total.exists() and int(total.read_text()) > 0

    monkeypatch.setattr(nova_pci_utils, "is_physical_function", is_pf)
    nova_spec = devspec.PciDeviceSpec(dict(spec))
    out = set()
    for d in _functions(build_inventory(Sysfs(h.root), parse_config({}), None).devices):
        dev = {
            "vendor_id": d.vendor_id,
            "product_id": d.product_id,
            "address": d.address,
            "parent_addr": d.parent,
        }
        if nova_spec.match(dev):
            out.add(d.address)
    return out


@pytest.mark.parametrize("spec", SPECS, ids=[str(s) for s in SPECS])
def test_the_converted_rules_type_what_nova_whitelists(
    tree: SyntheticHost, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tomllib

    text, _notes = convert([dict(spec)], [])
    config = parse_config({"host": "h", **tomllib.loads(text)})
    typed = {d.address for d in _functions(build_inventory(Sysfs(tree.root), config, None).devices) if d.type}
    assert typed == _nova_whitelisted(tree, spec, monkeypatch)
