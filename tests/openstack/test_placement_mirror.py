"""The Placement mirror against a real OpenStack Placement 16.0.0 (SQLite, auth off).

Placement runs from a venv of its own (``tests/openstack/placement_venv.sh``; its path from
``DEVASSIGN_PLACEMENT_VENV``, default ``.placement-venv``); these tests skip without it unless
``DEVASSIGN_REQUIRE_PLACEMENT=1``. Compute node providers are made as Nova makes them (a root
provider per host with VCPU and MEMORY_MB), and candidates are asked as Nova asks for a device
profile's groups: ``GET /allocation_candidates?resources1=CUSTOM_X:1&group_policy=none``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from devassign.openstack.placement_mirror import PlacementMirror, placement_client
from devassign.openstack.placement_state import MANAGED_TRAIT, desired_state, provider_uuid, resource_class
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from tests.conftest import vf
from tests.e2e.servers import DEVASSIGN, cli, running_server
from tests.openstack.conftest import ROOT, transport_of

VENV = Path(os.environ.get("DEVASSIGN_PLACEMENT_VENV", ROOT / ".placement-venv"))
REQUIRE = os.environ.get("DEVASSIGN_REQUIRE_PLACEMENT") == "1"
RC = "CUSTOM_NIC_VF_1G"

# Placement's WSGI app under a threaded stdlib server on 127.0.0.1, run by the venv's python.
SERVE = """
import os, socketserver, sys
from wsgiref import simple_server
os.environ["OS_PLACEMENT_CONFIG_DIR"] = sys.argv[1]
from placement.wsgi import api
class Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, *args): pass
class Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
simple_server.make_server("127.0.0.1", int(sys.argv[2]), api.application,
                          server_class=Server, handler_class=Quiet).serve_forever()
"""

CONF = """[DEFAULT]
log_file = {dir}/placement.log
[api]
auth_strategy = noauth2
[placement_database]
connection = sqlite:///{dir}/placement.sqlite
sync_on_startup = True
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def placement_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = VENV / "bin" / "python"
    if not python.exists():
        message = f"no Placement venv at {VENV}: build it with tests/openstack/placement_venv.sh"
        if REQUIRE:
            pytest.fail(f"DEVASSIGN_REQUIRE_PLACEMENT=1 but {message}")
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("placement")
    (workdir / "placement.conf").write_text(CONF.format(dir=workdir))
    port = _free_port()
    with open(workdir / "server.out", "w") as out:
        proc = subprocess.Popen(
            [str(python), "-c", SERVE, str(workdir), str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (workdir / "server.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "Placement did not start within 90 s"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def placement(placement_url: str) -> Iterator[httpx.Client]:
    with placement_client(placement_url, "admin") as client:
        yield client


def ok(r: httpx.Response, *status: int) -> Any:
    assert r.status_code in (status or (200,)), (
        f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    )
    return r.json() if r.content else None


def nova_compute_node(placement: httpx.Client, name: str) -> str:
    """A compute node provider as Nova's resource tracker makes it: a root with VCPU and RAM."""
    uid = str(uuid.uuid4())
    rp = ok(placement.post("/resource_providers", json={"name": name, "uuid": uid}))
    inventories = {"VCPU": {"total": 16}, "MEMORY_MB": {"total": 65536, "reserved": 512}}
    body = {"resource_provider_generation": rp["generation"], "inventories": inventories}
    ok(placement.put(f"/resource_providers/{uid}/inventories", json=body))
    traits = ok(placement.get(f"/resource_providers/{uid}/traits"))
    body = {
        "traits": ["COMPUTE_NET_ATTACH_INTERFACE"],
        "resource_provider_generation": traits["resource_provider_generation"],
    }
    ok(placement.put(f"/resource_providers/{uid}/traits", json=body))
    return uid


def snapshot(placement: httpx.Client, uid: str) -> tuple[Any, ...]:
    """A provider's generation, inventories and traits: what the mirror must leave alone."""
    rp = ok(placement.get(f"/resource_providers/{uid}"))
    inv = ok(placement.get(f"/resource_providers/{uid}/inventories"))["inventories"]
    traits = sorted(ok(placement.get(f"/resource_providers/{uid}/traits"))["traits"])
    return rp["generation"], inv, traits


def candidates(placement: httpx.Client, count: int = 1, trait: str | None = None) -> dict[str, int]:
    """Root provider name -> allocation requests Placement offers for ``count`` VFs in a group."""
    query = f"/allocation_candidates?resources1={RC}:{count}&group_policy=none"
    if trait:
        query += f"&required1={trait}"
    body = ok(placement.get(query))
    names = {u: ok(placement.get(f"/resource_providers/{u}"))["name"] for u in body["provider_summaries"]}
    roots = {u: names[s["root_provider_uuid"]] for u, s in body["provider_summaries"].items()}
    out: dict[str, int] = {}
    for request in body["allocation_requests"]:
        for u in request["allocations"]:
            out[roots[u]] = out.get(roots[u], 0) + 1
    return out


def free_units(placement: httpx.Client, uid: str) -> int:
    inv = ok(placement.get(f"/resource_providers/{uid}/inventories"))["inventories"][RC]
    used = ok(placement.get(f"/resource_providers/{uid}/usages"))["usages"].get(RC, 0)
    return int(inv["total"] - inv["reserved"] - used)


@pytest.fixture
def world(tmp_path: Path, placement: httpx.Client) -> Iterator[dict[str, Any]]:
    """devassign in-process with hosts A (4 VFs) and B (2 VFs) and Nova's compute nodes for
    both (unique names per test: the Placement server is shared by the module)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"compute-a-{tag}", f"compute-b-{tag}"
    db = Database(f"sqlite:///{tmp_path / 'devassign.db'}")
    db.upgrade()
    settings = Settings(db_url=db.url, auth=False, sweep_interval=0)
    with TestClient(create_app(settings, store=Store(db)), raise_server_exceptions=False) as api:
        ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
        for host, n in ((a, 4), (b, 2)):
            report(api, host, 1, n)
        roots = {a: nova_compute_node(placement, a), b: nova_compute_node(placement, b)}
        ok(placement.put(f"/resource_classes/{RC}"), 201, 204)  # so that a query before the mirror is valid
        with httpx.Client(base_url="http://testserver", transport=transport_of(api)) as da:
            yield {"api": api, "a": a, "b": b, "roots": roots, "mirror": PlacementMirror(da, placement)}
    db.dispose()


def nova_allocates(placement: httpx.Client, consumer: str, root: str, child: str) -> None:
    """What Nova's scheduler writes for an instance with one VF in a granular group."""
    body = {
        "allocations": {root: {"resources": {"VCPU": 1}}, child: {"resources": {RC: 1}}},
        "project_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "consumer_generation": None,
        "consumer_type": "INSTANCE",
    }
    ok(placement.put(f"/allocations/{consumer}", json=body), 204)


def report(api: TestClient, host: str, generation: int, n: int, **extra: Any) -> None:
    devices = [vf(f"0000:3b:02.{i}", **extra) for i in range(n)]
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def claim(api: TestClient, host: str, count: int = 1) -> str:
    consumer = str(uuid.uuid4())
    body = {"consumer": consumer, "hosts": [host], "extra_specs": {"hardware_resource:NIC_VF_1G": str(count)}}
    ok(api.post("/v1/claims", json=body), 201)
    return consumer


def mine(world: dict[str, Any], cands: dict[str, int]) -> dict[str, int]:
    return {h: n for h, n in cands.items() if h in (world["a"], world["b"])}


def test_mirror_follows_devassign_and_leaves_nova_alone(
    world: dict[str, Any], placement: httpx.Client
) -> None:
    api, a, b, mirror = world["api"], world["a"], world["b"], world["mirror"]
    before = {h: snapshot(placement, u) for h, u in world["roots"].items()}
    assert mine(world, candidates(placement)) == {}

    first = mirror.sync()
    assert len(first.created) == 2 and not first.errors
    assert mine(world, candidates(placement)) == {a: 1, b: 1}
    assert mine(world, candidates(placement, count=3)) == {a: 1}
    child = provider_uuid(a, "NIC_VF_1G")
    rp = ok(placement.get(f"/resource_providers/{child}"))
    assert rp["parent_provider_uuid"] == world["roots"][a] and rp["name"] == f"devassign:{a}:NIC_VF_1G"
    traits = set(ok(placement.get(f"/resource_providers/{child}/traits"))["traits"])
    assert {MANAGED_TRAIT, "CUSTOM_DEVASSIGN_VENDOR_8086", "CUSTOM_DEVASSIGN_NUMA_0"} <= traits
    assert mine(world, candidates(placement, trait="CUSTOM_DEVASSIGN_VENDOR_8086")) == {a: 1, b: 1}
    assert free_units(placement, child) == 4

    again = mirror.sync()  # nothing changed: nothing written
    assert again.writes == 0 and not again.changed

    # devassign claims: Placement's free units follow
    c1 = claim(api, a, 3)
    mirror.sync()
    assert free_units(placement, child) == 1
    assert mine(world, candidates(placement)) == {a: 1, b: 1}
    assert mine(world, candidates(placement, count=2)) == {b: 1}

    # a free device vanishes from B's report (it is removed): the inventory shrinks
    report(api, b, 2, 1)
    mirror.sync()
    child_b = provider_uuid(b, "NIC_VF_1G")
    assert ok(placement.get(f"/resource_providers/{child_b}/inventories"))["inventories"][RC]["total"] == 1
    assert mine(world, candidates(placement, count=2)) == {}

    # B's last device is claimed: no candidate there
    c2 = claim(api, b, 1)
    mirror.sync()
    assert mine(world, candidates(placement)) == {a: 1}

    # released devices go through cleaning: not free until cleaned
    ok(api.delete(f"/v1/allocations/{c1}"), 204)
    mirror.sync()
    states = sorted(d["state"] for d in ok(api.get("/v1/devices", params={"host": a})))
    assert states == ["available", "cleaning", "cleaning", "cleaning"]
    assert free_units(placement, child) == 1

    # a held device vanishes: devassign keeps it (missing), Placement keeps it reserved
    report(api, b, 3, 0)
    mirror.sync()
    assert sorted(d["state"] for d in ok(api.get("/v1/devices", params={"host": b}))) == [
        "missing",
        "removed",
    ]
    assert ok(placement.get(f"/resource_providers/{child_b}/inventories"))["inventories"][RC]["reserved"] == 1
    assert free_units(placement, child_b) == 0 and c2

    assert {h: snapshot(placement, u) for h, u in world["roots"].items()} == before


def test_provider_goes_when_every_device_of_its_type_vanishes(
    world: dict[str, Any], placement: httpx.Client
) -> None:
    api, b, mirror = world["api"], world["b"], world["mirror"]
    root_before = snapshot(placement, world["roots"][b])
    mirror.sync()
    report(api, b, 2, 0)  # free devices: removed
    gone = mirror.sync()
    assert f"devassign:{b}:NIC_VF_1G" in gone.deleted
    assert placement.get(f"/resource_providers/{provider_uuid(b, 'NIC_VF_1G')}").status_code == 404
    assert b not in candidates(placement)
    assert snapshot(placement, world["roots"][b]) == root_before
    # a host devassign forgets: its providers go, and Nova may then delete its compute node
    a = world["a"]
    ok(api.delete(f"/v1/hosts/{a}", params={"force": "true"}), 204)
    assert f"devassign:{a}:NIC_VF_1G" in mirror.sync().deleted
    ok(placement.delete(f"/resource_providers/{world['roots'][a]}"), 204)


def test_placement_allocation_of_a_devassign_consumer_is_not_counted_twice(
    world: dict[str, Any], placement: httpx.Client
) -> None:
    """A Nova instance allocated in Placement and claimed in devassign under the same UUID."""
    api, a, mirror = world["api"], world["a"], world["mirror"]
    mirror.sync()
    child = provider_uuid(a, "NIC_VF_1G")
    consumer = claim(api, a, 1)
    nova_allocates(placement, consumer, world["roots"][a], child)
    mirror.sync()
    inv = ok(placement.get(f"/resource_providers/{child}/inventories"))["inventories"][RC]
    assert inv["reserved"] == 0 and free_units(placement, child) == 3
    other = claim(api, a, 1)  # one Placement does not know
    mirror.sync()
    assert free_units(placement, child) == 2
    ok(api.delete(f"/v1/allocations/{other}"), 204)


def test_unavailable_devices_are_reserved(world: dict[str, Any], placement: httpx.Client) -> None:
    api, a, mirror = world["api"], world["a"], world["mirror"]
    devices = ok(api.get("/v1/devices", params={"host": a}))
    taint = {"effect": "NoSchedule", "reason": "maintenance"}
    ok(api.post(f"/v1/devices/{devices[0]['id']}/taints", json=taint), 201)
    mirror.sync()
    assert free_units(placement, provider_uuid(a, "NIC_VF_1G")) == 3
    # unhealthy: the agent says so in its report
    devs = [vf(f"0000:3b:02.{i}", healthy=i != 1) for i in range(4)]
    ok(api.put(f"/v1/hosts/{a}/inventory", json={"generation": 2, "devices": devs}))
    mirror.sync()
    assert free_units(placement, provider_uuid(a, "NIC_VF_1G")) == 2


def test_conflict_is_retried_and_converges(
    world: dict[str, Any], placement: httpx.Client, placement_url: str
) -> None:
    """Nova allocates between the mirror's read and its write: a 409, read again, converge."""
    api, a, mirror = world["api"], world["a"], world["mirror"]
    mirror.sync()
    child = provider_uuid(a, "NIC_VF_1G")
    claim(api, a, 2)
    real_request = placement.request
    bumped: list[bool] = []

    def racing(method: str, url: Any, **kwargs: Any) -> httpx.Response:
        if method == "PUT" and str(url).endswith(f"{child}/inventories") and not bumped:
            with placement_client(placement_url, "admin") as nova:  # the generation moves
                nova_allocates(nova, str(uuid.uuid4()), world["roots"][a], child)
            bumped.append(True)
        return real_request(method, url, **kwargs)

    placement.request = racing  # type: ignore[method-assign]
    try:
        result = mirror.sync()
    finally:
        placement.request = real_request  # type: ignore[method-assign]
    assert bumped and result.conflicts == 1 and not result.errors
    # 4 VFs: 2 held by devassign consumers Placement does not know (reserved), 1 Nova's
    assert free_units(placement, child) == 1
    assert mirror.sync().writes == 0


def test_a_provider_the_mirror_did_not_make_is_never_touched(
    world: dict[str, Any], placement: httpx.Client
) -> None:
    """Nova's own child providers (a PCI device in Placement, a vGPU) stay as they are."""
    a, mirror = world["a"], world["mirror"]
    foreign = str(uuid.uuid4())
    ok(
        placement.post(
            "/resource_providers",
            json={"name": f"{a}_0000:81:00.0", "uuid": foreign, "parent_provider_uuid": world["roots"][a]},
        )
    )
    ok(placement.put(f"/resource_classes/{RC}"), 201, 204)
    body = {"resource_provider_generation": 0, "inventories": {RC: {"total": 2}}}
    ok(placement.put(f"/resource_providers/{foreign}/inventories", json=body))
    before = snapshot(placement, foreign)
    mirror.sync()
    report(world["api"], a, 2, 0)
    mirror.sync()
    assert snapshot(placement, foreign) == before


def test_hosts_without_a_compute_node_are_skipped(world: dict[str, Any], placement: httpx.Client) -> None:
    api, mirror = world["api"], world["mirror"]
    lone = f"no-nova-{uuid.uuid4().hex[:6]}"
    report(api, lone, 1, 2)
    result = mirror.sync(only={lone})
    assert result.skipped_hosts == [lone] and not result.created


def test_the_command_mirrors_once_and_then_follows_events(
    tmp_path: Path, placement: httpx.Client, placement_url: str
) -> None:
    """``devassign placement-mirror`` against a real devassign server: ``--once``, then as a
    service whose full sync is an hour away, so only the event stream can bring a claim over."""
    host = f"compute-e-{uuid.uuid4().hex[:6]}"
    root = nova_compute_node(placement, host)
    child = provider_uuid(host, "NIC_VF_1G")
    db = f"sqlite:///{tmp_path / 'devassign.db'}"
    cli("db", "upgrade", "--db", db)
    with (
        running_server(db, auth=False, log=tmp_path / "server.log") as url,
        httpx.Client(base_url=url) as api,
    ):
        ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        ok(api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices}))
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_PLACEMENT_URL": placement_url}
        once = cli("placement-mirror", "--placement-token", "admin", "--once", env=env)
        assert "1 created" in once.stdout
        assert free_units(placement, child) == 4
        token = tmp_path / "placement-token"
        token.write_text("admin\n")
        args = [*DEVASSIGN, "placement-mirror", "--token-file", str(token), "--interval", "3600"]
        log = tmp_path / "mirror.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not all(m in log.read_text() for m in ("first full sync done", "following devassign")):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"did not start: {log.read_text()}"
                time.sleep(0.1)
            body = {"consumer": str(uuid.uuid4()), "extra_specs": {"hardware_resource:NIC_VF_1G": "3"}}
            ok(api.post("/v1/claims", json=body), 201)
            deadline = time.monotonic() + 60
            while free_units(placement, child) != 1:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"never mirrored: {log.read_text()}"
                time.sleep(0.2)
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0, log.read_text()
    assert ok(placement.get(f"/resource_providers/{child}"))["parent_provider_uuid"] == root


def test_desired_state_without_placement() -> None:
    """The arithmetic alone (runs without the Placement venv)."""
    held = "6B1E3A2C-0D3F-4B5E-9A8B-7C6D5E4F3A2B"
    devices = [
        {"host": "h", "type": "gpu_a100", "state": "available", "vendor_id": "10de", "numa_node": 0},
        {
            "host": "h",
            "type": "gpu_a100",
            "state": "available",
            "vendor_id": "10de",
            "numa_node": 1,
            "taints": [{"effect": "NoSchedule"}],
        },
        {
            "host": "h",
            "type": "gpu_a100",
            "state": "available",
            "vendor_id": "10de",
            "numa_node": 1,
            "taints": [{"effect": "None"}],
        },
        {"host": "h", "type": "gpu_a100", "state": "assigned", "consumer": held, "vendor_id": "10de"},
        {"host": "h", "type": "gpu_a100", "state": "removed", "vendor_id": "1002"},
        {"host": "down", "type": "gpu_a100", "state": "available", "vendor_id": "10de"},
    ]
    want = desired_state(devices, {"h": "up", "down": "down"})
    h = want[("h", "gpu_a100")]
    assert resource_class("gpu_a100") == "CUSTOM_GPU_A100"
    assert (h.total, h.free) == (4, 2)
    assert h.traits == {MANAGED_TRAIT, "CUSTOM_DEVASSIGN_VENDOR_10DE"}  # NUMA nodes differ
    assert h.reserved({}) == 2  # the tainted one and the one Placement does not know is held
    assert h.reserved({held.lower(): 1}) == 1
    assert want[("down", "gpu_a100")].reserved({}) == 1
