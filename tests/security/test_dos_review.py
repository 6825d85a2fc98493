"""Review: denial of service by one authenticated but hostile caller (a member or an agent).

Each test is a way one token, within what it may do, makes the server slow or unavailable for
every other caller, or grows what the server keeps without bound. Each fails on the code it was
written against and passes once the hole is closed.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store, taint_marks
from tests.conftest import vf
from tests.unit.scheduler.helpers import count_view_devices

ONLY_SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _bearer(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _vfs(n: int) -> list[dict[str, Any]]:
    return [vf(f"0000:{3 + i // 2048:02x}:{(i // 8) % 256:02x}.{i % 8}") for i in range(n)]


@ONLY_SQLITE
def test_agent_taints_on_its_own_host_cost_no_more_than_taints_plus_devices(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent may taint its own host as often as it likes, and every taint, untaint, report
    and taint expiry recomputes the host's marks by checking every live taint against every
    device (``taint_marks.mark_tainted``: taints x devices calls of ``applies``), inside the
    write transaction. On SQLite that transaction holds the one writer lock of the whole cloud:
    measured with a real server, an agent of a host of 20,000 devices that had posted 105
    taints made the next taint take 7 s, and another tenant's claim on another host waited the
    same 7 s; each further taint adds ~60 ms, so a few hundred more make every writer in the
    cloud answer 503 ``database_busy``. Either the live taints of a host are capped (a 4xx
    past the cap) or one taint costs about taints + devices, not their product."""
    admin = _bearer(store, Role.ADMIN)
    agent = _bearer(store, Role.AGENT, host="h1")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    devices, taints = 300, 60
    r = secure_api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": _vfs(devices)}, headers=agent
    )
    assert r.status_code == 200 and r.json()["accepted"] == devices, r.text[:300]
    for k in range(taints):
        r = secure_api.post(
            "/v1/hosts/h1/taints", json={"effect": "NoSchedule", "reason": f"flap {k}"}, headers=agent
        )
        if 400 <= r.status_code < 500:
            return  # a cap on a host's taints: fixed that way
        assert r.status_code == 201, r.text

    calls = 0
    original = taint_marks.applies

    def counted(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        return original(*args)

    monkeypatch.setattr(taint_marks, "applies", counted)
    # The marks no longer ask ``applies``: count the taints every device's strongest is chosen
    # from too, so a loop over the host's taints per device fails here as well.
    chosen_from = taint_marks.strongest

    def counted_strongest(rows: Any) -> Any:
        def each() -> Any:
            nonlocal calls
            for t in rows:
                calls += 1
                yield t

        return chosen_from(each())

    monkeypatch.setattr(taint_marks, "strongest", counted_strongest)
    r = secure_api.post(
        "/v1/hosts/h1/taints", json={"effect": "NoSchedule", "reason": "one more"}, headers=agent
    )
    assert r.status_code in (201, 400, 409, 429), r.text
    assert calls <= 10 * (taints + devices), (
        f"one more taint of a host with {taints} taints and {devices} devices checked "
        f"{calls} taint-device pairs"
    )


@ONLY_SQLITE
def test_member_gang_explain_work_is_not_instances_times_devices(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member may ask for a gang of 1,000 instances of one device each (the documented most)
    and ``scheduler.gang`` places them one at a time, building a new view of the whole host for
    every instance (``HostView.with_held`` copies every device and ``__post_init__`` re-derives
    everything from them, the earlier instances' devices ``dataclasses.replace``d again each
    time): instances x devices work in one request, with no budget like capacity's 2,000,000
    search steps. Measured with a real server: one member's ``POST /v1/gangs/explain`` of 1,000
    instances over a host of 20,000 devices ran 118 s holding the GIL in a worker thread (and
    ``POST /v1/gangs`` plans the same way, up to 10 times after lost races). Either such a gang
    is refused up front (a 4xx naming a budget) or planning costs about instances + devices."""

    admin = _bearer(store, Role.ADMIN)
    agent = _bearer(store, Role.AGENT, host="h1")
    member = _bearer(store, Role.MEMBER, project="blue")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    devices, instances = 600, 300
    r = secure_api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": _vfs(devices)}, headers=agent
    )
    assert r.status_code == 200 and r.json()["accepted"] == devices, r.text[:300]

    seen_so_far = count_view_devices(monkeypatch)
    body = {
        "instances": [f"job-{i}" for i in range(instances)],
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 1}],
    }
    r = secure_api.post("/v1/gangs/explain", json=body, headers=member)
    if 400 <= r.status_code < 500:
        return  # refused as too costly: fixed that way
    assert r.status_code == 200, r.text
    assert seen_so_far() <= 10 * (instances + devices), (
        f"one gang explain of {instances} instances over a host of {devices} devices built "
        f"host views of {seen_so_far()} devices in all"
    )
