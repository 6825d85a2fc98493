"""devassign's Cyborg API driven by Nova's own Cyborg client: run in the Nova venv only.

tests/openstack/test_cyborg_api.py runs this file with ``.nova-venv/bin/python -m pytest``.
Nova's ``nova.accelerator.cyborg`` client (openstacksdk and keystoneauth underneath, with
``[cyborg] endpoint_override`` and the context's token, so no catalog) talks to a real
devassign server process; the conductor's own ``_create_and_bind_arqs`` makes the bindings,
``compute.utils.delete_arqs_if_needed`` deletes them, and the libvirt driver's own code turns
the attach handles into guest XML. The ``accelerator-request-bound`` events devassign sends go
to a small recording HTTP server and are checked against Nova's API schema (v2.82).
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import nova.conf
import pytest
from nova import context as nova_context
from nova import exception, objects
from nova.accelerator import cyborg
from nova.api.openstack.compute.schemas import server_external_events
from nova.compute import utils as compute_utils
from nova.conductor import manager as conductor_manager

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

objects.register_all()
CONF = nova.conf.CONF
PROFILE = {
    "name": "nic2",
    "groups": [{"resources:CUSTOM_NIC_VF_1G": "2", "trait:CUSTOM_DEVASSIGN_MANAGED": "required"}],
}
SERVER_LOG: dict[str, Path] = {}
RP = str(uuid.uuid4())  # the resource provider Placement would have chosen (the mirror's)


class Recorder(http.server.BaseHTTPRequestHandler):
    """Nova's ``POST /v2.1/os-server-external-events``: keeps each request, answers 200."""

    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        out = json.dumps({"events": [{**e, "code": 200} for e in body.get("events", [])]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def nova_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2.1"
    server.shutdown()


@pytest.fixture(scope="module")
def devassign(tmp_path_factory: pytest.TempPathFactory, nova_api: str) -> Iterator[tuple[str, str]]:
    """A real devassign server, auth on, telling the recorder of bound ARQs; (url, admin token).
    compute-1 has 4 NIC_VF_1G VFs; the device profile ``nic2`` asks for two."""
    db = f"sqlite:///{tmp_path_factory.mktemp('devassign') / 'd.db'}"
    cli("db", "upgrade", "--db", db, check=False)
    token = cli("token", "create", "--role", "admin", "--db", db).stdout.strip()
    old = {k: os.environ.get(k) for k in ("DEVASSIGN_NOVA_URL", "DEVASSIGN_NOVA_TOKEN")}
    os.environ.update(DEVASSIGN_NOVA_URL=nova_api, DEVASSIGN_NOVA_TOKEN="nova-service-token")
    log = SERVER_LOG["path"] = tmp_path_factory.mktemp("log") / "server.log"
    try:
        with running_server(db, log=log) as url:
            admin = {"Authorization": f"Bearer {token}"}
            assert (
                httpx.post(f"{url}/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code
                == 201
            )
            devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
            r = httpx.put(
                f"{url}/v1/hosts/compute-1/inventory",
                json={"generation": 1, "devices": devices},
                headers=admin,
            )
            assert r.status_code == 200 and not r.json()["refused"], r.text
            # as an operator would, with the token Nova sends
            r = httpx.post(
                f"{url}/accelerator/v2/device_profiles", json=[PROFILE], headers={"X-Auth-Token": token}
            )
            assert r.status_code == 201, r.text
            yield url, token
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        print(Path(log).read_text()[-4000:])


@pytest.fixture(scope="module")
def ctx(devassign: tuple[str, str]) -> Any:
    url, token = devassign
    CONF([], project="nova", default_config_files=[])
    CONF.set_override("endpoint_override", f"{url}/accelerator/v2", group="cyborg")
    # The request context's token is what Nova sends in X-Auth-Token (a devassign admin token).
    return nova_context.RequestContext(user_id="u", project_id="p", auth_token=token, is_admin=True)


def allocation(devassign: tuple[str, str], instance: str) -> dict[str, Any] | None:
    url, token = devassign
    r = httpx.get(
        f"{url}/v1/allocations", params={"consumer": instance}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text
    found = r.json()
    return found[0] if found else None


def agent_sets_up(devassign: tuple[str, str], instance: str) -> None:
    url, token = devassign
    alloc = allocation(devassign, instance)
    assert alloc is not None
    results = [
        {"device_id": d["id"], "action": "setup", "ok": True, "consumer": instance} for d in alloc["devices"]
    ]
    r = httpx.post(
        f"{url}/v1/hosts/{alloc['host']}/work",
        json={"results": results},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text


def eventually(what: str, check: Any, seconds: float = 30) -> Any:
    """Poll ``check`` until it returns something true (the server's loop runs every second)."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.2)


def instance_of(instance: str, profile: str = "nic2") -> Any:
    flavor = objects.Flavor(name="f", extra_specs={"accel:device_profile": profile})
    return objects.Instance(uuid=instance, flavor=flavor)


def test_nova_creates_binds_reads_and_deletes_arqs(ctx: Any, devassign: tuple[str, str]) -> None:
    client = cyborg.get_client(ctx)
    # the scheduler: the profile's groups become Placement request groups
    (group,) = cyborg.get_device_profile_request_groups(ctx, "nic2")
    assert group.requester_id == "device_profile_0"
    assert group.resources == {"CUSTOM_NIC_VF_1G": 2}
    assert group.required_traits == {"CUSTOM_DEVASSIGN_MANAGED"}

    # the conductor: create the ARQs, match them to the provider, bind (its own code)
    instance = str(uuid.uuid4())
    bindings = conductor_manager.ComputeTaskManager._create_and_bind_arqs(
        None, client, instance, {"accel:device_profile": "nic2"}, "compute-1", {"device_profile_0": [RP]}
    )
    assert len(bindings) == 2
    assert all(
        b == {"hostname": "compute-1", "device_rp_uuid": RP, "instance_uuid": instance}
        for b in bindings.values()
    )
    Recorder.seen.clear()
    client.bind_arqs(bindings)
    alloc = allocation(devassign, instance)
    assert alloc is not None and alloc["host"] == "compute-1" and len(alloc["devices"]) == 2
    assert client.get_arqs_for_instance(instance, only_resolved=True) == []  # not set up yet

    # the agent sets the devices up; the compute then finds them bound, and Nova is told
    agent_sets_up(devassign, instance)
    arqs = eventually("bound", lambda: client.get_arqs_for_instance(instance, only_resolved=True))
    assert sorted(a["uuid"] for a in arqs) == sorted(bindings)
    assert {(a["state"], a["attach_handle_type"], a["device_rp_uuid"]) for a in arqs} == {
        ("Bound", "PCI", RP)
    }
    assert sorted(client.get_arq_uuids_for_instance(instance_of(instance))) == sorted(bindings)
    assert client.get_arq_by_uuid(arqs[0]["uuid"])["instance_uuid"] == instance
    addresses = sorted(d["address"] for d in alloc["devices"])
    assert sorted(cyborg.get_arq_pci_device_profile(a)["pci_slot"] for a in arqs) == addresses

    path, headers, body = eventually("the event", lambda: Recorder.seen and Recorder.seen[0])
    assert path == "/v2.1/os-server-external-events"
    assert headers["X-Auth-Token"] == "nova-service-token"
    assert headers["OpenStack-API-Version"] == "compute 2.82"
    jsonschema.validate(body, server_external_events.create_v282)
    with pytest.raises(jsonschema.ValidationError):  # 2.82 is needed: older versions refuse it
        jsonschema.validate(body, server_external_events.create_v276)
    assert sorted((e["name"], e["server_uuid"], e["tag"], e["status"]) for e in body["events"]) == [
        ("accelerator-request-bound", instance, u, "completed") for u in sorted(bindings)
    ]

    # the libvirt driver's own code makes the guest's PCI devices of the attach handles
    from nova.virt.libvirt import config as vconfig
    from nova.virt.libvirt import driver as libvirt_driver

    guest = vconfig.LibvirtConfigGuest()
    driver = libvirt_driver.LibvirtDriver.__new__(libvirt_driver.LibvirtDriver)
    driver._guest_add_accel_pci_devices(guest, arqs)
    xml = "".join(d.to_xml() for d in guest.devices)
    for address in addresses:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        assert f'domain="0x{domain}" bus="0x{bus}" slot="0x{slot}" function="0x{function}"' in xml, xml

    # deleting the instance: its ARQs go, its devices are released
    compute_utils.delete_arqs_if_needed(ctx, instance_of(instance))
    assert allocation(devassign, instance) is None
    with pytest.raises(exception.AcceleratorRequestOpFailed):
        client.get_arqs_for_instance(instance)  # none left: Nova's client says so


def test_a_bind_devassign_refuses_fails_in_nova_and_nova_cleans_up(
    ctx: Any, devassign: tuple[str, str]
) -> None:
    client = cyborg.get_client(ctx)
    instance = str(uuid.uuid4())
    arqs = client.create_arqs_and_match_resource_providers("nic2", {"device_profile_0": [RP]})
    bindings = {
        a["uuid"]: {"hostname": "compute-9", "device_rp_uuid": RP, "instance_uuid": instance} for a in arqs
    }
    with pytest.raises(exception.AcceleratorRequestBindingFailed) as caught:
        client.bind_arqs(bindings)
    # Nova logs the status only; devassign's log says why, once
    assert "<Response [404]>" in str(caught.value)
    said = SERVER_LOG["path"].read_text()
    assert said.count("host 'compute-9' is not known to devassign") == 1, said[-3000:]
    assert allocation(devassign, instance) is None
    assert {client.get_arq_by_uuid(u)["state"] for u in bindings} == {"Initial"}
    client.delete_arqs_by_uuid(bindings.keys())  # what the conductor does next
    url, token = devassign
    r = httpx.get(f"{url}/accelerator/v2/accelerator_requests", headers={"X-Auth-Token": token})
    assert not set(bindings) & {a["uuid"] for a in r.json()["arqs"]}


def test_an_unknown_device_profile_is_nova_s_device_profile_error(ctx: Any) -> None:
    with pytest.raises(exception.DeviceProfileError, match="Expected 1 device profile but got nothing"):
        cyborg.get_device_profile_request_groups(ctx, "no-such-profile")
    with pytest.raises(exception.AcceleratorRequestOpFailed):
        cyborg.get_client(ctx).create_arqs("no-such-profile")


class _Spec:
    """What the conductor reads of a RequestSpec here: the request groups' providers."""

    def __init__(self, mapping: dict[str, list[str]]) -> None:
        self.mapping = mapping

    def get_request_group_mapping(self) -> dict[str, list[str]]:
        return self.mapping


def test_evacuation_and_unshelve_move_the_devices_with_nova_s_own_calls(
    ctx: Any, devassign: tuple[str, str]
) -> None:
    """An evacuation (the source host is dead) and an unshelve onto another host: Nova's
    conductor deletes the instance's ARQs and creates and binds new ones on the destination
    (``rebuild_instance`` with ``evacuate``; ``unshelve_instance``), its compute deletes them on
    shelve offload. devassign releases the devices on the old host (cleaned when its agent
    is back) and claims them on the new one."""
    url, token = devassign
    admin = {"Authorization": f"Bearer {token}"}
    devices = [vf(f"0000:5e:02.{i}") for i in range(2)]
    r = httpx.put(
        f"{url}/v1/hosts/compute-2/inventory", json={"generation": 1, "devices": devices}, headers=admin
    )
    assert r.status_code == 200 and not r.json()["refused"], r.text
    client = cyborg.get_client(ctx)
    conductor = conductor_manager.ComputeTaskManager.__new__(conductor_manager.ComputeTaskManager)
    instance = instance_of(str(uuid.uuid4()))
    spec = _Spec({"device_profile_0": [RP]})

    # boot on compute-1 (the conductor's own create-and-bind), set up by compute-1's agent
    first = conductor._create_and_bind_arq_for_instance(ctx, instance, "compute-1", spec)
    assert len(first) == 2
    agent_sets_up(devassign, instance.uuid)
    before = allocation(devassign, instance.uuid)
    assert before is not None and before["host"] == "compute-1"

    # compute-1 dies; evacuate to compute-2: delete the instance's ARQs, create and bind anew
    client.delete_arqs_for_instance(instance.uuid)
    second = conductor._create_and_bind_arq_for_instance(ctx, instance, "compute-2", spec)
    assert len(second) == 2 and not set(first) & set(second)
    after = allocation(devassign, instance.uuid)
    assert after is not None and after["host"] == "compute-2", after
    assert sorted(d["address"] for d in after["devices"]) == ["0000:5e:02.0", "0000:5e:02.1"]
    # the old host's devices wait for its agent to clean them; none is handed out meanwhile
    r = httpx.get(f"{url}/v1/devices", params={"host": "compute-1"}, headers=admin)
    old = {d["id"]: d["state"] for d in r.json()}
    assert {old[d["id"]] for d in before["devices"]} == {"cleaning"}
    agent_sets_up(devassign, instance.uuid)
    bound = eventually("bound", lambda: client.get_arqs_for_instance(instance.uuid, only_resolved=True))
    assert sorted(a["uuid"] for a in bound) == sorted(second)
    assert {a["hostname"] for a in bound} == {"compute-2"}

    # shelve offload (the compute deletes the ARQs); compute-2's agent cleans the devices;
    # unshelve onto compute-2 again
    client.delete_arqs_for_instance(instance.uuid)
    assert allocation(devassign, instance.uuid) is None
    r = httpx.get(f"{url}/v1/devices", params={"host": "compute-2"}, headers=admin)
    cleaned = [{"device_id": d["id"], "action": "cleanup", "ok": True} for d in r.json()]
    assert {d["state"] for d in r.json()} == {"cleaning"}
    r = httpx.post(f"{url}/v1/hosts/compute-2/work", json={"results": cleaned}, headers=admin)
    assert r.status_code == 200, r.text
    third = conductor._create_and_bind_arq_for_instance(ctx, instance, "compute-2", spec)
    assert len(third) == 2
    again = allocation(devassign, instance.uuid)
    assert again is not None and again["host"] == "compute-2"
    compute_utils.delete_arqs_if_needed(ctx, instance)
    assert allocation(devassign, instance.uuid) is None
