"""Messages on Nova's notification topic that the listener cannot use must never stop it.

The listener promises that "one bad message never blocks the queue". Anyone who can publish on
the notification exchange (or a buggy Nova extension) can send an instance "uuid" or a host with
a lone surrogate or 70,000 characters, or JSON nested 100,000 levels deep: each is logged and
acknowledged. Whatever else goes wrong while handling one message is logged with the message's
identity and the message is rejected without requeue, so a consumer never dies on a message and
a restarted one never meets it again; only "devassign could not answer" keeps a message.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from devassign.openstack.listener import (
    ListenerConfig,
    NovaListener,
    Outcome,
    PoisonMessage,
    Releaser,
    parse_notification,
)
from tests.openstack.conftest import Bus, claim, holds, transport_of
from tests.openstack.test_listener import envelope, wait_until


def _wrapped(event_type: str, data: dict[str, Any]) -> bytes:
    message = {"event_type": event_type, "payload": {"nova_object.data": data}}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def _listener() -> tuple[NovaListener, list[str]]:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(404, json={"error": {"code": "allocation_not_found", "message": "x"}})

    config = ListenerConfig(devassign_url="http://devassign.test")
    releaser = Releaser(config, transport=httpx.MockTransport(answer))
    return NovaListener(config, releaser=releaser), seen


POISON = {
    # JSON allows "\ud800": a lone surrogate, which cannot be encoded into the URL.
    "surrogate_uuid": _wrapped("instance.delete.end", {"uuid": "\ud800"}),
    "surrogate_host": _wrapped("instance.create.error", {"uuid": "vm-1", "host": "\udc00"}),
    # httpx refuses URLs over 64 KiB with InvalidURL, which is not an httpx.HTTPError.
    "long_uuid": _wrapped("instance.delete.end", {"uuid": "a" * 70_000}),
    "long_host": _wrapped("instance.create.error", {"uuid": "vm-1", "host": "h" * 70_000}),
    # json.loads raises RecursionError (not ValueError) on deep nesting: outer and inner.
    "deep_outer": b"[" * 100_000,
    "deep_inner": json.dumps({"oslo.version": "2.0", "oslo.message": "[" * 100_000}).encode(),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_message_is_acknowledged_not_raised(name: str) -> None:
    """A message the listener cannot use is logged and acknowledged (Outcome.ACK), without a
    request to devassign; handle() raising UnicodeEncodeError / httpx.InvalidURL /
    RecursionError would kill the consumer and leave the message at the head of the queue."""
    listener, seen = _listener()
    assert listener.handle(POISON[name]) is Outcome.ACK
    assert seen == []


@pytest.mark.parametrize(
    "data",
    [
        {"uuid": "vm-1"},
        {"uuid": "../" + str(uuid.uuid4())},
        {"uuid": str(uuid.uuid4()) + "\n"},
        {"uuid": str(uuid.uuid4()), "host": "compute 1"},
        {"uuid": str(uuid.uuid4()), "host": "compute-1\x00"},
        {"uuid": str(uuid.uuid4()), "host": "compute-1\u202e"},
        {"uuid": str(uuid.uuid4()), "host": "h" * 256},
    ],
    ids=["not-a-uuid", "path", "newline", "space", "nul", "rtl-override", "long-host"],
)
def test_an_instance_that_is_not_a_uuid_or_a_host_that_is_not_a_name_is_poison(
    data: dict[str, Any],
) -> None:
    with pytest.raises(PoisonMessage):
        parse_notification(_wrapped("instance.create.error", data))


@pytest.mark.parametrize("event_type", ["e" * 256, "instance.delete.end\r\nforged log line", "\udfff"])
def test_an_event_type_that_is_not_a_name_is_poison(event_type: str) -> None:
    """An event type is named in log lines: never a huge or control-character one."""
    with pytest.raises(PoisonMessage):
        parse_notification(_wrapped(event_type, {"uuid": str(uuid.uuid4())}))


def test_what_nova_sends_still_parses() -> None:
    uid = uuid.uuid4()
    for form in (str(uid), str(uid).upper(), uid.hex):
        notification = parse_notification(
            _wrapped("instance.create.error", {"uuid": form, "host": "cn-1.a_b"})
        )
        assert (notification.instance, notification.host) == (form, "cn-1.a_b")
    assert parse_notification(_wrapped("instance.delete.end", {"host": None, "uuid": str(uid)})).host is None


def test_the_log_line_of_a_poison_message_is_short_and_ascii(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="devassign.openstack")
    listener, _ = _listener()
    for body in POISON.values():
        assert listener.handle(body) is Outcome.ACK
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(POISON)
    assert all(line.isascii() and len(line) < 300 for line in lines), lines


class FakeMessage:
    """What kombu hands ``on_message``: a body, the broker's identity of it, and the verbs."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.delivery_tag = 7
        self.delivery_info = {"routing_key": "versioned_notifications.info", "redelivered": True}
        self.properties = {"message_id": "m-1"}
        self.done: list[str] = []

    def ack(self) -> None:
        self.done.append("ack")

    def requeue(self) -> None:
        self.done.append("requeue")

    def reject(self, requeue: bool = False) -> None:
        self.done.append(f"reject(requeue={requeue})")


def _consumer(answer: Any) -> NovaListener:
    config = ListenerConfig(devassign_url="http://devassign.test")
    releaser = Releaser(config, transport=httpx.MockTransport(answer))
    return NovaListener(config, releaser=releaser, sleep=lambda _: None)


def test_a_message_whose_handling_fails_is_rejected_not_requeued(caplog: pytest.LogCaptureFixture) -> None:
    """The last line of defence: an exception nobody foresaw (here from the HTTP client) is logged
    with the message's identity, never its content, and the message is rejected without requeue;
    the consumer goes on."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO, logger="devassign.openstack")
    listener = _consumer(answer)
    message = FakeMessage(_wrapped("instance.delete.end", {"uuid": str(uuid.uuid4()), "secret": "tok-1"}))
    listener._on_message(message)
    assert message.done == ["reject(requeue=False)"]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "delivery tag 7" in record.getMessage() and "message id 'm-1'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "tok-1" not in caplog.text


@pytest.mark.parametrize("down", ["refused", "503", "500"])
def test_devassign_away_still_keeps_the_message(down: str) -> None:
    """The distinction stays: when devassign cannot answer the message is given back (requeued),
    neither acknowledged nor rejected, so the release is tried again."""

    def answer(request: httpx.Request) -> httpx.Response:
        if down == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(int(down), json={"error": {"code": "unavailable", "message": "x"}})

    listener = _consumer(answer)
    message = FakeMessage(_wrapped("instance.delete.end", {"uuid": str(uuid.uuid4())}))
    listener._on_message(message)
    listener._on_message(message)
    assert message.done == ["requeue", "requeue"]


def test_a_poison_message_is_acknowledged_by_the_consumer() -> None:
    listener = _consumer(lambda request: httpx.Response(204))
    for body in POISON.values():
        message = FakeMessage(body)
        listener._on_message(message)
        assert message.done == ["ack"]


class FailsOnce(httpx.BaseTransport):
    """devassign behind a transport whose first request raises what no one foresaw."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in handling one message")
        return self.inner.handle_request(request)


@pytest.mark.parametrize("first", ["poison", "bug"])
def test_a_poison_message_does_not_stop_later_releases(
    bus: Bus, devassign_api: TestClient, first: str
) -> None:
    """End to end on RabbitMQ: a surrogate uuid (poison: acknowledged), or a deletion whose
    handling raises (bug: rejected), published before a real deletion. The deletion behind it
    still releases the instance's devices, the listener keeps running and the queue is empty (a
    consumer thread dying on the first message would leave the instance its devices)."""
    config = ListenerConfig(
        broker_url=bus.url,
        exchange=bus.exchange,
        topic=bus.topic,
        queue=bus.queue,
        prefetch=1,
        devassign_url="http://testserver",
        backoff_first=0.05,
        backoff_max=0.2,
    )
    transport = FailsOnce(transport_of(devassign_api)) if first == "bug" else transport_of(devassign_api)
    listener = NovaListener(config, releaser=Releaser(config, transport=transport))
    died: list[BaseException] = []

    def run() -> None:
        try:
            listener.run()
        except BaseException as exc:  # the test reports it
            died.append(exc)

    thread = threading.Thread(target=run, name="nova-listener", daemon=True)
    thread.start()
    try:
        wait_until(listener.connected.is_set, "connected")
        uid = str(uuid.uuid4())
        claim(devassign_api, uid)
        if first == "poison":
            bus.publish_raw(POISON["surrogate_uuid"])
        else:
            bus.publish_raw(envelope("instance-delete-end", str(uuid.uuid4())))
        bus.publish_raw(envelope("instance-delete-end", uid))
        wait_until(lambda: not holds(devassign_api, uid) or bool(died), "released or dead", within=20)
        assert not died, f"the listener died: {died[0]!r}"
        assert not holds(devassign_api, uid)
        wait_until(lambda: bus.depth() == (0, 1), "drained, the listener still consuming", within=20)
        assert thread.is_alive()
    finally:
        listener.stop()
        thread.join(timeout=30)
        # leave nothing behind for the bus fixture's clean-up
        with bus.connection() as conn:
            conn.default_channel.queue_purge(bus.queue)


@pytest.mark.parametrize("host", ["h" * 254, "compute 1", "-compute"])
def test_a_nova_host_that_cannot_be_a_devassign_host_releases_nothing_and_asks_nothing(host: str) -> None:
    """A Nova host name devassign cannot hold (longer than 253, a space, a leading dash) names
    no devassign host: the conditional release has nothing to take there, so the message is
    acknowledged without a call (never a release without ``?host=``, which could take the
    retry's devices elsewhere)."""
    listener, seen = _listener()
    body = _wrapped("instance.create.error", {"uuid": str(uuid.uuid4()), "host": host})
    assert listener.handle(body) is Outcome.ACK
    assert seen == []
