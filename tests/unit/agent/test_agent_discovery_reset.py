"""Discovery reports whether a PCI function can be reset, and the server refuses those that cannot."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.discovery import scan_pci
from devassign.agent.inventory import build_inventory
from devassign.hostio import Sysfs
from devassign.testing.sysfs import host


def test_reset_attributes(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", reset="flr bus")
    h.pci("0000:3c:00.0", "10de", "1eb8", cls="030200", reset=None)
    h.write(f"{h.dev('0000:3d:00.0')}/reset", "")
    h.pci("0000:3d:00.0", "10de", "1eb8", cls="030200", reset=None)  # reset but no reset_method
    devs = {d.address: d for d in scan_pci(Sysfs(h.root), pci_ids=None).devices}
    assert devs["0000:3b:00.0"].attributes["resettable"] is True
    assert devs["0000:3b:00.0"].attributes["reset_methods"] == ["flr", "bus"]
    assert devs["0000:3c:00.0"].attributes["resettable"] is False
    assert "reset_methods" not in devs["0000:3c:00.0"].attributes
    assert devs["0000:3d:00.0"].attributes["resettable"] is True
    assert "reset_methods" not in devs["0000:3d:00.0"].attributes


def test_vfs_carry_reset_attributes(tmp_path: Path) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", reset=None)
    devs = {d.address: d for d in scan_pci(Sysfs(h.root), pci_ids=None).devices}
    assert all(devs[v].attributes["resettable"] is False for v in vfs)


def test_server_refuses_functions_without_reset_unless_the_type_accepts(
    tmp_path: Path, api: TestClient
) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", iommu_group=1, reset="flr")
    h.pci("0000:3c:00.0", "10de", "1eb8", cls="030200", iommu_group=2, reset=None)
    h.pci("0000:3d:00.0", "10de", "1eb9", cls="030200", iommu_group=3, reset=None)
    config = parse_config(
        {
            "host": "h1",
            "device": [
                {"type": "GPU", "match": {"product_id": "1eb8"}},
                {"type": "GPU_NORESET", "match": {"product_id": "1eb9"}},
            ],
        }
    )
    reported = build_inventory(Sysfs(h.root), config, pci_ids=None).reported()
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    body = {"name": "GPU_NORESET", "config": {"reset": "none-ok"}}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    resp = api.put(
        "/v1/hosts/h1/inventory",
        json={"generation": 1, "devices": [d.model_dump(mode="json") for d in reported]},
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [(r["address"], r["code"]) for r in out["refused"]] == [("0000:3c:00.0", "no_reset")]
    assert out["accepted"] == 2
