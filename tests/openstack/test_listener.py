"""The Nova notification listener: parsing, and releases driven through a real RabbitMQ.

Messages come from Nova's own notification samples, published by real oslo.messaging from the
Nova venv; malformed ones are published raw. devassign runs in-process, behind a transport the
test can switch off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign.openstack.listener import (
    ListenerConfig,
    NovaListener,
    Outcome,
    PoisonMessage,
    Releaser,
    broker_url,
    parse_notification,
)
from tests.openstack.conftest import Bus, Switch, claim, holds, transport_of

SAMPLES = Path(__file__).parent / "samples"
FAKE_TOKEN = "gAAAAA-fake-keystone-token-never-logged"  # as publish_notifications.py sends it


def resolve(obj: Any, base: Path) -> Any:
    """Nova's ``$ref`` rule (nova/tests/json_ref.py): the ref, overridden by its siblings."""
    if isinstance(obj, list):
        return [resolve(i, base) for i in obj]
    if not isinstance(obj, dict):
        return obj
    if "$ref" in obj:
        path = base / obj["$ref"].partition("#")[0]
        out = resolve(json.loads(path.read_text()), path.parent)
        _merge(out, resolve({k: v for k, v in obj.items() if k != "$ref"}, base))
        return out
    return {k: resolve(v, base) for k, v in obj.items()}


def _merge(d: dict[str, Any], update: dict[str, Any]) -> None:
    for k, v in update.items():
        if isinstance(d.get(k), dict) and isinstance(v, dict):
            _merge(d[k], v)
        else:
            d[k] = v


def envelope(sample: str, instance: str, **context: str) -> bytes:
    """A sample as oslo.messaging's messagingv2 driver wraps it, with a context."""
    message = resolve(json.loads((SAMPLES / f"{sample}.json").read_text()), SAMPLES)
    message["payload"]["nova_object.data"]["uuid"] = instance
    message.update({f"_context_{k}": v for k, v in context.items()})
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def wait_until(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    """Poll until ``check`` holds; a generous bound only so a broken test ends."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {within:.0f} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- parsing


def test_parses_nova_samples_in_their_envelope() -> None:
    uid = str(uuid.uuid4())
    assert parse_notification(envelope("instance-delete-end", uid)).event_type == "instance.delete.end"
    assert parse_notification(envelope("instance-delete-end", uid)).instance == uid
    assert parse_notification(envelope("instance-create-error", uid)).event_type == "instance.create.error"
    assert parse_notification(envelope("instance-update", uid)).instance == uid


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"oslo.version": "2.0", "oslo.message": "{broken"}).encode(),
        json.dumps({"oslo.version": "2.0", "oslo.message": {"event_type": "x"}}).encode(),
        json.dumps({"oslo.version": "1.0", "oslo.message": "{}"}).encode(),
        json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({"payload": {}})}).encode(),
        json.dumps(
            {"oslo.version": "2.0", "oslo.message": json.dumps({"event_type": "a.b", "payload": 3})}
        ).encode(),
    ],
)
def test_what_is_not_a_notification_is_poison(body: bytes) -> None:
    with pytest.raises(PoisonMessage):
        parse_notification(body)


def test_transport_url_of_nova_becomes_amqp() -> None:
    assert broker_url("rabbit://u:p@h:5672/vh") == "amqp://u:p@h:5672/vh"
    assert broker_url("amqp://u:p@h//") == "amqp://u:p@h//"


def test_handle_releases_once_and_acks_what_it_cannot_use(
    devassign_api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devassign.openstack")
    releaser = Releaser(
        ListenerConfig(devassign_url="http://testserver"), transport=transport_of(devassign_api)
    )
    listener = NovaListener(ListenerConfig(), releaser=releaser)
    uid = str(uuid.uuid4())
    claim(devassign_api, uid)
    assert listener.handle(envelope("instance-update", uid, auth_token=FAKE_TOKEN)) is Outcome.ACK
    assert holds(devassign_api, uid)  # an update releases nothing
    assert listener.handle(envelope("instance-delete-end", uid, auth_token=FAKE_TOKEN)) is Outcome.ACK
    assert not holds(devassign_api, uid)
    # again (a redelivery), and an instance devassign never knew: nothing to release, acked
    assert listener.handle(envelope("instance-delete-end", uid)) is Outcome.ACK
    assert listener.handle(envelope("instance-delete-end", str(uuid.uuid4()))) is Outcome.ACK
    # a uuid devassign cannot take as a consumer: refused, logged, acked
    assert listener.handle(envelope("instance-delete-end", "bad/../uuid")) is Outcome.ACK
    assert FAKE_TOKEN not in caplog.text and "_context_" not in caplog.text


def test_handle_retries_while_devassign_is_down(
    devassign_api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    switch = Switch(transport_of(devassign_api))
    listener = NovaListener(
        ListenerConfig(),
        releaser=Releaser(ListenerConfig(devassign_url="http://testserver"), transport=switch),
    )
    uid = str(uuid.uuid4())
    claim(devassign_api, uid)
    switch.up = False
    body = envelope("instance-delete-end", uid)
    assert [listener.handle(body) for _ in range(3)] == [Outcome.RETRY] * 3
    assert len([r for r in caplog.records if "cannot release" in r.getMessage()]) == 1  # once per outage
    switch.up = True
    assert listener.handle(body) is Outcome.ACK
    assert not holds(devassign_api, uid)


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture
def running(bus: Bus, devassign_api: TestClient) -> Iterator[tuple[NovaListener, Switch]]:
    """A listener consuming the test's exchange in a thread, releasing into the in-process devassign."""
    switch = Switch(transport_of(devassign_api))
    config = ListenerConfig(
        broker_url=bus.url,
        exchange=bus.exchange,
        topic=bus.topic,
        queue=bus.queue,
        prefetch=2,
        devassign_url="http://testserver",
        backoff_first=0.05,
        backoff_max=0.2,
        host_suffix="-1",  # Nova's samples come from host "compute": devassign's compute-1
    )
    listener = NovaListener(config, releaser=Releaser(config, transport=switch))
    thread = threading.Thread(target=listener.run, name="nova-listener", daemon=True)
    thread.start()
    wait_until(listener.connected.is_set, "connected")
    yield listener, switch
    listener.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    # an unacknowledged message would be back in the queue once the listener is gone
    assert bus.depth() == (0, 0)


def _drained(bus: Bus) -> bool:
    return bus.depth()[0] == 0


def test_oslo_published_deletes_and_failed_builds_release_devices(
    bus: Bus,
    devassign_api: TestClient,
    running: tuple[NovaListener, Switch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    deleted, failed, updated, unknown = (str(uuid.uuid4()) for _ in range(4))
    for uid in (deleted, failed, updated):
        claim(devassign_api, uid)
    bus.publish_samples(
        f"instance-update:{updated}",
        f"instance-delete-end:{deleted}",
        f"instance-create-error:{failed}",
        f"instance-delete-end:{unknown}",
    )
    wait_until(lambda: not holds(devassign_api, deleted) and not holds(devassign_api, failed), "released")
    wait_until(lambda: f"instance {unknown}" in caplog.text, "handled the unknown instance")
    wait_until(lambda: _drained(bus), "drained")
    assert holds(devassign_api, updated)
    assert f"instance {unknown} (instance.delete.end): nothing to release" in caplog.text
    assert FAKE_TOKEN not in caplog.text and "_context_" not in caplog.text


def test_malformed_envelope_is_acked_and_logged_once(
    bus: Bus,
    devassign_api: TestClient,
    running: tuple[NovaListener, Switch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="devassign.openstack")
    uid = str(uuid.uuid4())
    claim(devassign_api, uid)
    bus.publish_raw(
        json.dumps(
            {"oslo.version": "2.0", "oslo.message": "{not json", "_context_auth_token": FAKE_TOKEN}
        ).encode()
    )
    bus.publish_raw(envelope("instance-delete-end", uid), priority="info")  # behind it: not blocked
    wait_until(lambda: not holds(devassign_api, uid), "released behind the poison message")
    wait_until(lambda: _drained(bus), "drained")
    poison = [r for r in caplog.records if "not a Nova notification" in r.getMessage()]
    assert len(poison) == 1 and "oslo.message is not valid JSON" in poison[0].getMessage()
    assert FAKE_TOKEN not in caplog.text


def test_devassign_down_keeps_the_message_until_it_is_released(
    bus: Bus, devassign_api: TestClient, running: tuple[NovaListener, Switch]
) -> None:
    _, switch = running
    uid = str(uuid.uuid4())
    claim(devassign_api, uid)
    switch.up = False
    bus.publish_samples(f"instance-delete-end:{uid}")
    wait_until(lambda: switch.calls >= 3, "retried")  # tried, given back, delivered again
    assert holds(devassign_api, uid)
    switch.up = True
    wait_until(lambda: not holds(devassign_api, uid), "released once devassign is back")
    wait_until(lambda: _drained(bus), "drained")


class Proxy:
    """A TCP proxy to the broker whose connections the test can cut, as a broker restart does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepting = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.accepting:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_reconnects_after_the_broker_goes_away_without_losing_a_message(
    bus: Bus, devassign_api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devassign.openstack")
    proxy = Proxy(("127.0.0.1", 5672))
    host_part = bus.url.split("@", 1)[1].split("/", 1)
    proxied = bus.url.replace(f"@{host_part[0]}/", f"@127.0.0.1:{proxy.port}/")
    config = ListenerConfig(
        broker_url=proxied,
        exchange=bus.exchange,
        topic=bus.topic,
        queue=bus.queue,
        prefetch=1,
        devassign_url="http://testserver",
        backoff_first=0.05,
        backoff_max=0.2,
    )
    listener = NovaListener(config, releaser=Releaser(config, transport=transport_of(devassign_api)))
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        wait_until(listener.connected.is_set, "connected")
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        claim(devassign_api, first)
        claim(devassign_api, second)
        proxy.accepting = False
        proxy.cut()  # the broker is gone for the listener
        wait_until(lambda: not listener.connected.is_set(), "disconnected")
        bus.publish_samples(f"instance-delete-end:{first}")  # lands in the durable queue meanwhile
        bus.publish_raw(envelope("instance-delete-end", second))
        assert holds(devassign_api, first) and holds(devassign_api, second)
        proxy.accepting = True
        wait_until(lambda: not holds(devassign_api, first) and not holds(devassign_api, second), "released")
        wait_until(lambda: _drained(bus), "drained")
        assert "again" in caplog.text  # said it reconnected
        assert "guest:guest" not in caplog.text  # the broker's password is masked
    finally:
        listener.stop()
        thread.join(timeout=30)
        proxy.close()
    assert bus.depth() == (0, 0)  # every message acknowledged


def test_the_command_releases_and_stops_on_sigterm(bus: Bus, tmp_path: Path) -> None:
    """``devassign nova-listener`` as an operator runs it, against a real server process."""
    import signal
    import subprocess

    import httpx

    from tests.conftest import vf
    from tests.e2e.servers import DEVASSIGN, running_server

    with running_server(f"sqlite:///{tmp_path / 'd.db'}", auth=False) as url:
        assert httpx.post(f"{url}/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1")]}
        )
        assert r.status_code == 200, r.text
        uid = str(uuid.uuid4())
        body = {"consumer": uid, "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
        assert httpx.post(f"{url}/v1/claims", json=body).status_code == 201
        log = tmp_path / "listener.log"
        rabbit = "rabbit://" + bus.url.removeprefix("amqp://").removesuffix("/")
        args = [*DEVASSIGN, "--url", url, "nova-listener", "--transport-url", rabbit]
        args += ["--exchange", bus.exchange, "--topic", bus.topic, "--queue", bus.queue]
        with open(log, "w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "consuming" in log.read_text(), "consuming")
            bus.publish_raw(envelope("instance-delete-end", uid, auth_token=FAKE_TOKEN))
            wait_until(
                lambda: not httpx.get(f"{url}/v1/allocations", params={"consumer": uid}).json(), "released"
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        text = log.read_text()
        assert f"instance {uid} (instance.delete.end): released" in text
        assert FAKE_TOKEN not in text and "guest:guest" not in text


def test_a_failed_build_releases_only_on_its_own_host(devassign_api: TestClient) -> None:
    """Nova may retry a failed build on another host under the same uuid: the failure on the
    first host must not release what the retry holds; a delete releases wherever it is."""
    listener = NovaListener(
        ListenerConfig(host_prefix="", host_suffix=""),
        releaser=Releaser(
            ListenerConfig(devassign_url="http://testserver"), transport=transport_of(devassign_api)
        ),
    )

    def failed_on(host: str, uid: str) -> bytes:
        message = json.loads(json.loads(envelope("instance-create-error", uid))["oslo.message"])
        message["payload"]["nova_object.data"]["host"] = host
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()

    uid = str(uuid.uuid4())
    claim(devassign_api, uid)  # on compute-1, the only host
    assert parse_notification(failed_on("compute-9", uid)).host == "compute-9"
    assert listener.handle(failed_on("compute-9", uid)) is Outcome.ACK
    assert holds(devassign_api, uid)  # the build failed elsewhere: this host's devices stay
    assert listener.handle(failed_on("compute-1", uid)) is Outcome.ACK
    assert not holds(devassign_api, uid)
    twice = devassign_api.delete(f"/v1/allocations/{uid}", params={"host": "compute-1"})
    assert twice.status_code == 204  # released already: harmless

    again = str(uuid.uuid4())
    claim(devassign_api, again)
    elsewhere = devassign_api.delete(f"/v1/allocations/{again}", params={"host": "compute-2"})
    assert elsewhere.status_code == 409 and elsewhere.json()["error"]["code"] == "invalid_state"
    assert "compute-1, not compute-2" in elsewhere.json()["error"]["message"]
    assert holds(devassign_api, again)


def test_a_failed_build_whose_payload_names_no_host_releases_only_on_its_sender(
    devassign_api: TestClient,
) -> None:
    """Nova unsets the instance's host before it sends ``instance.create.error`` (its own
    sample has ``"host": null``): the host where the build failed is the sender's
    (``publisher_id`` ``nova-compute:HOST``). A late notification of the failure on compute-9
    must not release what the retry holds on compute-1; one that names no host at all releases
    nothing."""
    listener = NovaListener(
        ListenerConfig(),
        releaser=Releaser(
            ListenerConfig(devassign_url="http://testserver"), transport=transport_of(devassign_api)
        ),
    )

    def failed(uid: str, publisher: str | None) -> bytes:
        message = json.loads(json.loads(envelope("instance-create-error", uid))["oslo.message"])
        assert message["payload"]["nova_object.data"]["host"] is None  # as Nova sends it
        if publisher is None:
            del message["publisher_id"]
        else:
            message["publisher_id"] = publisher
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()

    uid = str(uuid.uuid4())
    claim(devassign_api, uid)  # the retry, on compute-1
    for publisher in ("nova-compute:compute-9", None, "nova-conductor:compute-1", "nova-compute:"):
        assert listener.handle(failed(uid, publisher)) is Outcome.ACK
        assert holds(devassign_api, uid), publisher
    assert listener.handle(failed(uid, "nova-compute:compute-1")) is Outcome.ACK
    assert not holds(devassign_api, uid)
