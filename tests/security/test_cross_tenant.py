"""Cross-tenant and cross-host channels: what a member of one project or the agent of one host
can learn about, or do to, what belongs to another, through indirect channels (error bodies,
404s, explanations, streams, dashboards).

Reuses the two-project, two-host cloud of ``tests/api/test_hostile_review.py``: compute-a holds
tenant-blue's blue-vm, compute-b tenant-red's red-vm; each host has its agent token.
"""

from __future__ import annotations

import re

from tests.api.test_hostile_review import HOST_A, World, _cookie, world  # noqa: F401 (fixture)

UNKNOWN_DEVICE = "00000000-0000-4000-8000-000000000000"


def _body(text: str, *names: str) -> str:
    """An answer with the names asked for put back as one placeholder: two answers that differ
    only in the id the caller sent are the same answer."""
    for name in names:
        text = text.replace(name, "NAME")
    return re.sub(r"\s+", " ", text)


def test_an_agent_cannot_tell_another_hosts_allocation_or_device_from_a_made_up_one(world: World) -> None:  # noqa: F811
    """docs/api.md: "naming something outside the scope by id answers 404, as if it did not
    exist". compute-b's agent asking for blue-vm (on compute-a) got "no live allocation for
    consumer 'blue-vm'", and for a consumer that never existed "consumer 'x' holds no
    allocation": a probe for which consumer ids (instance UUIDs) exist elsewhere in the cloud,
    and likewise for device ids of other hosts."""
    blue_device = world.blue_vm["devices"][0]["id"]
    pairs = [
        ("/v1/allocations/blue-vm", "/v1/allocations/nobody-vm", "blue-vm", "nobody-vm"),
        ("/v1/allocations/blue-vm/libvirt", "/v1/allocations/nobody-vm/libvirt", "blue-vm", "nobody-vm"),
        (f"/v1/devices/{blue_device}", f"/v1/devices/{UNKNOWN_DEVICE}", blue_device, UNKNOWN_DEVICE),
    ]
    for other, made_up, other_id, made_up_id in pairs:
        seen = world.call("agent_b", "GET", other)
        never = world.call("agent_b", "GET", made_up)
        assert seen.status_code == never.status_code == 404, (other, seen.text, never.text)
        assert _body(seen.text, other_id) == _body(never.text, made_up_id), (seen.text, never.text)
    # the dashboard's device page answers the same way
    _cookie(world.api, world.who["agent_b"])
    seen = world.api.get(f"/ui/devices/{blue_device}")
    never = world.api.get(f"/ui/devices/{UNKNOWN_DEVICE}")
    assert seen.status_code == never.status_code == 404
    assert _body(seen.text, blue_device) == _body(never.text, UNKNOWN_DEVICE)
    assert HOST_A not in seen.text


def test_a_member_counts_capacity_for_its_own_project_only(world: World) -> None:  # noqa: F811
    """Claims and explanations answer a member naming another project 403; capacity took the
    name and ignored it (a 200), so a member could not tell what it may do there."""
    body = {"project": "tenant-red", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    r = world.call("blue", "POST", "/v1/capacity", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "cannot claim for project 'tenant-red'" in r.json()["error"]["message"]
    own = world.call("blue", "POST", "/v1/capacity", json={**body, "project": "tenant-blue"})
    assert own.status_code == 200 and "per_host" not in own.json(), own.text
    assert world.call("admin", "POST", "/v1/capacity", json=body).status_code == 200
