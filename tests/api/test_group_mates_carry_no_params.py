"""A request's params (a MAC, a VLAN) are for the devices it chose, not for the IOMMU group
mates that come along: VFs of a NIC without ACS share a group, and four VFs given one MAC on
one VLAN broke the guest's networking and the wire's (SQLite and PostgreSQL)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from lxml import etree

from tests.conftest import vf

MAC = "52:54:00:12:34:56"


def test_one_vf_asked_with_a_mac_gives_its_group_mates_no_params(api: TestClient) -> None:
    params = {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}}
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_X710", "params": params}).status_code == 201
    devices = [vf(f"0000:86:10.{i}", type="NIC_VF_X710", iommu_group=81) for i in range(4)]
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text
    body = {
        "consumer": "m1",
        "requests": [{"name": "nic", "type": "NIC_VF_X710", "params": {"mac": MAC, "vlan": 100}}],
    }
    claimed = api.post("/v1/claims", json=body)
    assert claimed.status_code == 201, claimed.text
    held = claimed.json()["devices"]
    assert len(held) == 4 and sorted(d["request"] or "-" for d in held) == ["-", "-", "-", "nic"], held
    chosen = next(d["address"] for d in held if d["request"] == "nic")
    work = {i["device"]["address"]: i["params"] for i in api.get("/v1/hosts/c1/work").json()["items"]}
    assert work == {d["address"]: ({"mac": MAC, "vlan": 100} if d["address"] == chosen else {}) for d in held}
    again = api.get("/v1/allocations/m1").json()["devices"]
    assert {d["address"]: d["request"] for d in again} == {d["address"]: d["request"] for d in held}
    xml = api.get("/v1/allocations/m1/libvirt")
    assert xml.status_code == 200, xml.text
    root = etree.fromstring(b"<devices>" + xml.content + b"</devices>")  # one element per device
    assert [m.get("address") for m in root.iter("mac")] == [MAC], xml.text
    assert len(list(root.iter("tag"))) == 1, xml.text
