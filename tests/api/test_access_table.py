"""Every route of the application, API and dashboard, called by every kind of caller.

One table says what each caller gets from each route; a route the application serves that is
not in the table fails ``test_every_route_is_in_the_table``, so a new route cannot ship without
a decision about who may call it. The callers: no token, a made-up token, a revoked token, a
member of project ``p`` (whose consumer ``cons-p`` sits on host ``compute-a``), a member of
project ``q``, the agent of ``compute-a``, the agent of ``compute-b``, an admin, and a monitor
(a token that reads only ``/metrics``). API calls send
the token as ``Authorization: Bearer``; dashboard pages as the login cookie, as a browser does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.server.access import POLICY, route_keys
from devassign.store import Store
from tests.conftest import vf

CALLERS = ("anonymous", "bad", "revoked", "member_p", "member_q", "agent_a", "agent_b", "admin", "monitor")
# O: allowed (not 401/403/404, never 5xx; GETs answer 2xx or 3xx)   L: must sign in (401, or the
# dashboard's redirect to its login form)   D: refused (403)   H: not visible (404, as if absent)
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "OOOOOOOOO",
    ("GET", "/metrics"): "LLLDDDDOO",
    ("GET", "/openapi.json"): "OOOOOOOOO",
    ("GET", "/docs"): "OOOOOOOOO",
    ("GET", "/redoc"): "OOOOOOOOO",
    ("GET", "/v1/resource-types"): "LLLOOOOOD",
    ("POST", "/v1/resource-types"): "LLLDDDDOD",
    ("GET", "/v1/resource-types/{name}"): "LLLOOOOOD",
    ("PATCH", "/v1/resource-types/{name}"): "LLLDDDDOD",
    ("DELETE", "/v1/resource-types/{name}"): "LLLDDDDOD",
    ("GET", "/v1/hosts"): "LLLDDOOOD",
    ("GET", "/v1/hosts/{host}"): "LLLDDODOD",
    ("DELETE", "/v1/hosts/{host}"): "LLLDDDDOD",
    ("POST", "/v1/hosts/{host}/rename"): "LLLDDDDOD",
    ("PUT", "/v1/hosts/{host}/inventory"): "LLLDDODOD",
    ("POST", "/v1/reports"): "LLLDDDDOD",
    ("POST", "/v1/hosts/{host}/heartbeat"): "LLLDDODOD",
    ("GET", "/v1/hosts/{host}/work"): "LLLDDODOD",
    ("POST", "/v1/hosts/{host}/work"): "LLLDDODOD",
    ("GET", "/v1/devices"): "LLLDDOOOD",
    ("GET", "/v1/devices/{device_id}"): "LLLDDOHOD",
    ("POST", "/v1/devices/{device_id}/clear"): "LLLDDDDOD",
    ("GET", "/v1/taints"): "LLLDDOOOD",
    ("POST", "/v1/devices/{device_id}/taints"): "LLLDDOHOD",
    ("DELETE", "/v1/devices/{device_id}/taints"): "LLLDDOHOD",
    ("POST", "/v1/hosts/{host}/taints"): "LLLDDODOD",
    ("DELETE", "/v1/hosts/{host}/taints"): "LLLDDODOD",
    ("POST", "/v1/claims"): "LLLOODDOD",
    ("POST", "/v1/explain"): "LLLOODDOD",
    ("GET", "/v1/capacity"): "LLLOODDOD",
    ("POST", "/v1/capacity"): "LLLOODDOD",
    ("POST", "/v1/gangs"): "LLLOODDOD",
    ("POST", "/v1/gangs/explain"): "LLLOODDOD",
    ("DELETE", "/v1/gangs/{gang}"): "LLLHHDDHD",
    ("GET", "/v1/allocations"): "LLLOOOOOD",
    ("GET", "/v1/allocations/{consumer}"): "LLLOHOHOD",
    ("DELETE", "/v1/allocations/{consumer}"): "LLLOHDDOD",
    ("GET", "/v1/allocations/{consumer}/libvirt"): "LLLOHOHOD",
    ("POST", "/v1/allocations/{consumer}/moves"): "LLLOHDDOD",
    ("GET", "/v1/allocations/{consumer}/moves"): "LLLOHDDOD",
    ("GET", "/v1/allocations/{consumer}/moves/libvirt"): "LLLOHDDOD",
    ("POST", "/v1/allocations/{consumer}/moves/commit"): "LLLOHDDOD",
    ("POST", "/v1/allocations/{consumer}/moves/abort"): "LLLOHDDOD",
    ("GET", "/v1/events"): "LLLOOOOOD",
    ("GET", "/v1/events/stream"): "LLLOOOOOD",
    ("GET", "/v1/quotas"): "LLLOODDOD",
    ("PUT", "/v1/quotas/{project}/{type_name}"): "LLLDDDDOD",
    ("GET", "/accelerator/v2"): "OOOOOOOOO",
    ("GET", "/accelerator/v2/device_profiles"): "LLLOOOOOD",
    ("POST", "/accelerator/v2/device_profiles"): "LLLDDDDOD",
    ("GET", "/accelerator/v2/device_profiles/{profile}"): "LLLHHHHHD",
    ("DELETE", "/accelerator/v2/device_profiles/{profile}"): "LLLDDDDHD",
    ("GET", "/accelerator/v2/accelerator_requests"): "LLLDDDDOD",
    ("POST", "/accelerator/v2/accelerator_requests"): "LLLDDDDHD",
    ("PATCH", "/accelerator/v2/accelerator_requests"): "LLLDDDDHD",
    ("DELETE", "/accelerator/v2/accelerator_requests"): "LLLDDDDOD",
    ("GET", "/accelerator/v2/accelerator_requests/{arq}"): "LLLDDDDHD",
    ("GET", "/v1/audit"): "LLLDDDDOD",
    ("POST", "/v1/audit/fix"): "LLLDDDDOD",
    ("POST", "/v1/tokens"): "LLLDDDDOD",
    ("GET", "/v1/tokens"): "LLLDDDDOD",
    ("DELETE", "/v1/tokens/{token_id}"): "LLLDDDDOD",
    ("POST", "/v1/tokens/{token_id}/login-link"): "LLLDDDDOD",
    ("GET", "/"): "OOOOOOOOO",
    ("GET", "/ui/login"): "OOOOOOOOO",
    ("POST", "/ui/login"): "LLLOOOOOD",
    ("GET", "/ui/login/once"): "OOOOOOOOO",
    ("POST", "/ui/login/once"): "OOOOOOOOO",
    ("POST", "/ui/logout"): "OOOOOOOOO",
    ("GET", "/ui/"): "LLLOOOOOD",
    ("GET", "/ui/hosts"): "LLLDDOOOD",
    ("GET", "/ui/hosts/{host}"): "LLLDDODOD",
    ("GET", "/ui/devices"): "LLLDDOOOD",
    ("GET", "/ui/devices/{device_id}"): "LLLDDOHOD",
    ("GET", "/ui/allocations"): "LLLOOOOOD",
    ("GET", "/ui/events"): "LLLOOOOOD",
    ("GET", "/ui/explain"): "LLLOODDOD",
    ("GET", "/ui/events/stream"): "LLLOOOOOD",
    ("GET", "/ui/fragments/overview"): "LLLOOOOOD",
    ("GET", "/ui/fragments/hosts"): "LLLDDOOOD",
    ("GET", "/ui/fragments/hosts/{host}"): "LLLDDODOD",
    ("GET", "/ui/fragments/devices/{device_id}"): "LLLDDOHOD",
    ("GET", "/ui/fragments/events"): "LLLOOOOOD",
    ("GET", "/ui/static/live.js"): "OOOOOOOOO",
}

_CLAIM = {"consumer": "cons-new", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
# Bodies and queries that are valid for the callers allowed to send them.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/resource-types"): {"name": "NEW_TYPE"},
    ("PATCH", "/v1/resource-types/{name}"): {"description": "changed"},
    ("POST", "/v1/hosts/{host}/rename"): {"new_name": "compute-z"},
    ("PUT", "/v1/hosts/{host}/inventory"): {"generation": 7, "devices": [vf("0000:3b:02.1")]},
    ("POST", "/v1/reports"): {
        "reports": [{"host": "compute-new", "report": {"generation": 1, "devices": []}}]
    },
    ("POST", "/v1/hosts/{host}/work"): {"results": []},
    ("POST", "/v1/devices/{device_id}/clear"): {"reason": "checked"},
    ("POST", "/v1/devices/{device_id}/taints"): {"effect": "None", "reason": "access table"},
    ("POST", "/v1/hosts/{host}/taints"): {"effect": "None", "reason": "access table"},
    ("POST", "/v1/claims"): _CLAIM,
    ("POST", "/v1/allocations/{consumer}/moves"): {"host": "compute-b"},
    ("POST", "/v1/explain"): _CLAIM,
    ("POST", "/v1/capacity"): {
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 2}],
        "constraints": [{"requests": ["nic"], "match": "numa_node"}],
    },
    ("POST", "/v1/gangs"): {"instances": ["gang-new-1"], "requests": [{"name": "nic", "type": "NIC_VF_1G"}]},
    ("POST", "/v1/gangs/explain"): {
        "instances": ["gang-new-1"],
        "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
    },
    ("PUT", "/v1/quotas/{project}/{type_name}"): {"limit": 5},
    ("POST", "/v1/tokens"): {"role": "member", "project": "p"},
    ("POST", "/accelerator/v2/device_profiles"): {
        "name": "nic",
        "groups": [{"resources:CUSTOM_NIC_VF_1G": "1"}],
    },
    # no such profile or ARQ (none is made for this table): found only by those who may look
    ("POST", "/accelerator/v2/accelerator_requests"): {"device_profile_name": "nope"},
    ("PATCH", "/accelerator/v2/accelerator_requests"): {"nope": [{"op": "remove", "path": "/hostname"}]},
}
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/v1/capacity"): {"spec": "hardware_resource:NIC_VF_1G=1"},
    ("DELETE", "/accelerator/v2/accelerator_requests"): {"instance": "3f1c2e4a-0000-4000-8000-000000000001"},
    ("GET", "/ui/explain"): {"specs": "hardware_resource:NIC_VF_1G=1"},
    # A code that was never made: the sign-in page with a message, for every caller.
    ("GET", "/ui/login/once"): {"code": "not-a-real-code"},
    # A stream follows the log until the client goes; ``once`` sends what there is and ends.
    ("GET", "/v1/events/stream"): {"after": "0", "once": "true"},
    ("GET", "/ui/events/stream"): {"after": "0", "once": "true"},
}


@dataclass
class World:
    client: TestClient
    secrets: dict[str, str | None]
    params: dict[str, str]


def _build(client: TestClient, store: Store) -> World:
    def token(role: Role, **scope: str) -> str:
        return store.create_token(schemas.TokenCreate(role=role, **scope), "test").token

    admin = token(Role.ADMIN)
    revoked = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "test")
    store.revoke_token(revoked.id, "test")
    spare = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="q"), "test")
    secrets: dict[str, str | None] = {
        "anonymous": None,
        "bad": "da_not_a_real_token",
        "revoked": revoked.token,
        "member_p": token(Role.MEMBER, project="p"),
        "member_q": token(Role.MEMBER, project="q"),
        "agent_a": token(Role.AGENT, host="compute-a"),
        "agent_b": token(Role.AGENT, host="compute-b"),
        "admin": admin,
        "monitor": token(Role.MONITOR),
    }
    as_admin = {"Authorization": f"Bearer {admin}"}
    r = client.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=as_admin)
    assert r.status_code == 201, r.text
    for host, agent in (("compute-a", "agent_a"), ("compute-b", "agent_b")):
        r = client.put(
            f"/v1/hosts/{host}/inventory",
            json={"generation": 1, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")]},
            headers={"Authorization": f"Bearer {secrets[agent]}"},
        )
        assert r.status_code == 200, r.text
    r = client.post(
        "/v1/claims",
        json={
            "consumer": "cons-p",
            "project": "p",
            "hosts": ["compute-a"],
            "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
        },
        headers=as_admin,
    )
    assert r.status_code == 201, r.text
    device = r.json()["devices"][0]["id"]
    return World(
        client,
        secrets,
        {
            "host": "compute-a",
            "name": "NIC_VF_1G",
            "device_id": device,
            "consumer": "cons-p",
            "project": "p",
            "type_name": "NIC_VF_1G",
            "token_id": str(spare.id),
            "gang": "no-such-gang",
            "profile": "no-such-profile",
            "arq": "no-such-arq",
        },
    )


def _call(world: World, method: str, path: str, caller: str) -> tuple[int, str]:
    url = re.sub(r"\{(\w+)\}", lambda m: world.params[m.group(1)], path)
    secret = world.secrets[caller]
    page = path == "/" or path.startswith("/ui")
    headers: dict[str, str] = {}
    world.client.cookies.clear()
    if secret and page:
        world.client.cookies.set("devassign_token", secret)
    elif secret:
        headers["Authorization"] = f"Bearer {secret}"
    key = (method, path)
    kwargs: dict[str, Any] = {"headers": headers, "params": QUERIES.get(key), "follow_redirects": False}
    if key == ("POST", "/ui/login"):
        kwargs["data"] = {"token": secret or ""}
        world.client.cookies.clear()
    elif key in BODIES:
        kwargs["json"] = BODIES[key]
    r = world.client.request(method, url, **kwargs)
    return r.status_code, r.headers.get("location", "")


def _outcome(method: str, status: int, location: str) -> str:
    if status == 401 or (status == 303 and location.startswith("/ui/login") and method == "GET"):
        return "L"
    if status == 403:
        return "D"
    if status == 404:
        return "H"
    if status >= 500 or (method == "GET" and status >= 400):
        return f"!{status}"
    return "O"


def test_every_route_is_in_the_table(secure_api: TestClient) -> None:
    served = set(route_keys(secure_api.app.routes))  # type: ignore[attr-defined]
    assert served == set(EXPECTED), (
        f"routes without an expectation here: {sorted(served - set(EXPECTED))}; "
        f"expectations for routes not served: {sorted(set(EXPECTED) - served)}"
    )
    assert set(POLICY) == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]} {k[1]}")
def test_route_answers_each_caller_as_the_table_says(
    secure_api: TestClient, store: Store, key: tuple[str, str]
) -> None:
    world = _build(secure_api, store)
    method, path = key
    if key == ("GET", "/v1/allocations/{consumer}/moves/libvirt"):
        # the XML of a pending move's target: start one
        admin = {"Authorization": f"Bearer {world.secrets['admin']}"}
        r = world.client.post("/v1/allocations/cons-p/moves", json={"host": "compute-b"}, headers=admin)
        assert r.status_code == 201, r.text
    got = "".join(_outcome(method, *_call(world, method, path, c)) for c in CALLERS)
    want = EXPECTED[key]
    # A write allowed to several callers may find the first one's change (e.g. a release done
    # twice is harmless; a rename leaves nothing to rename): the later ones then answer 404.
    if method != "GET":
        got = "".join(
            "O" if g == "H" and w == "O" and "O" in got[:i] else g
            for i, (g, w) in enumerate(zip(got, want, strict=True))
        )
    assert got == want, dict(zip(CALLERS, got, strict=True))


def test_the_api_ignores_the_dashboard_cookie(secure_api: TestClient, store: Store) -> None:
    """A cookie is sent by the browser on any request, so the API reads only the header."""
    world = _build(secure_api, store)
    secure_api.cookies.set("devassign_token", str(world.secrets["admin"]))
    assert secure_api.get("/v1/hosts").status_code == 401


def test_the_docs_table_is_the_access_table() -> None:
    """docs/api.md lists who may call each route; it must say what the server enforces."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    rows = re.findall(r"^\|\s*(GET|POST|PUT|PATCH|DELETE)\s*\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|", text, re.M)
    documented = {(m, p): need for m, p, need in rows}
    assert documented == {k: v.value for k, v in POLICY.items()}
