"""``devassign nova-listener``: give an instance's devices back when Nova deletes it.

Nova announces what happens to instances as versioned notifications on its message bus
(exchange ``nova``, routing key ``versioned_notifications.info`` and ``.error``), each an
oslo.messaging envelope ``{"oslo.version": "2.0", "oslo.message": "<JSON text>"}``. On
``instance.delete.end``, and on ``instance.create.error`` (a build that failed after devassign
claimed), the listener releases the instance's allocation (``DELETE /v1/allocations/{uuid}``),
so devices are cleaned and handed out again without waiting for an operator. Nova may retry a
failed build on another host under the same uuid: that release is conditional (``?host=`` the
compute service that sent it, as its payload names none), so it never takes the retry's
devices.

No release is lost: the listener's queue is durable and its own, a message is acknowledged only
once devassign answered the release (404, nothing held, counts: a release is idempotent), and
an unacknowledged message goes back to the queue when devassign or the broker is away. A
message that is not a Nova notification is logged once, with the reason, and acknowledged:
one bad message never blocks the queue. That includes a notification whose instance is not a
UUID or whose host is not a host name (too long, control characters, lone surrogates), and a
body nested too deep to parse. As a last line of defence, a message whose handling raises
anything else is logged with its identity and rejected without requeue (dead-lettered where the
queue has a dead-letter exchange): only "devassign could not answer" keeps a message. Message
contexts carry users' tokens (``_context_*`` keys): no part of a message is ever logged, only
the event type and the instance.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import kombu as _kombu

from devassign.domain import HOST_RE, UUID_RE

# kombu's API is mostly untyped: its calls are checked by the tests against a real broker.
kombu: Any = _kombu

LOG = logging.getLogger(__name__)

RELEASE_EVENTS = frozenset({"instance.delete.end", "instance.create.error"})
PRIORITIES = ("info", "error")
EVENT_TYPE_MAX = 255  # Nova's are like instance.delete.end
HOST_MAX = 255  # Nova's compute host (instances.host is a String(255))
BROKER_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})  # after rabbit:// became amqp://


class PoisonMessage(ValueError):
    """A message that is not a Nova notification: acknowledged and logged, never retried."""


class Outcome(Enum):
    ACK = "ack"  # done with it: released, nothing to release, or a message to drop
    RETRY = "retry"  # devassign could not answer: give the message back and try again later


@dataclass(frozen=True)
class Notification:
    event_type: str
    instance: str | None
    host: str | None = None  # the instance's compute host, where the payload names one
    # The compute service that sent it (``publisher_id`` ``nova-compute:HOST``): a failed
    # build's payload names no host (Nova unsets it before it notifies), its sender does.
    sender: str | None = None


def _shown(value: str) -> str:
    """A value from a message as a log line may show it: ASCII, at most 40 characters of it."""
    return ascii(value[:40]) + (f"... ({len(value)} characters)" if len(value) > 40 else "")


def text_problem(value: str, limit: int) -> str | None:
    """What makes ``value`` unusable as a name (a host, an event type), or ``None``: longer than
    ``limit``, or a character that is not printable or is a space (control and format
    characters, lone surrogates, which cannot even be encoded)."""
    if len(value) > limit:
        return f"{len(value)} characters, at most {limit}"
    bad = next((i for i, c in enumerate(value) if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        return f"U+{ord(value[bad]):04X} at position {bad}, not a printable character"
    return None


def parse_notification(body: bytes | str) -> Notification:
    """The event type and instance uuid of an oslo.messaging message (enveloped or not).

    What cannot be used is a :class:`PoisonMessage`: not JSON (or nested too deep for the
    parser), a broken envelope, no event type, an instance that is not a UUID, a host that is
    not a host name. A notification that names no instance has ``instance`` ``None``."""
    try:
        outer = json.loads(body)
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise PoisonMessage(f"not JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})") from None
    except RecursionError:
        raise PoisonMessage("JSON nested too deep to parse") from None
    if not isinstance(outer, dict):
        raise PoisonMessage(f"a JSON {type(outer).__name__}, not an object")
    message: Any = outer
    if "oslo.message" in outer:
        if outer.get("oslo.version") != "2.0":
            raise PoisonMessage("an oslo.messaging envelope of a version other than 2.0")
        inner = outer["oslo.message"]
        if not isinstance(inner, str):
            raise PoisonMessage("oslo.message is not a JSON string")
        try:
            message = json.loads(inner)
        except ValueError:
            raise PoisonMessage("oslo.message is not valid JSON") from None
        except RecursionError:
            raise PoisonMessage("oslo.message is JSON nested too deep to parse") from None
        if not isinstance(message, dict):
            raise PoisonMessage("oslo.message is not a JSON object")
    event_type = message.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise PoisonMessage("no event_type")
    if problem := text_problem(event_type, EVENT_TYPE_MAX):
        raise PoisonMessage(f"event_type {_shown(event_type)} is not an event type: {problem}")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise PoisonMessage(f"{event_type} without a payload object")
    data = payload.get("nova_object.data", payload)  # versioned, or a legacy flat payload
    if not isinstance(data, dict):
        raise PoisonMessage(f"{event_type} with a payload whose nova_object.data is not an object")
    instance = data.get("uuid", data.get("instance_id"))
    instance = instance if isinstance(instance, str) and instance else None
    if instance is not None and not UUID_RE.fullmatch(instance):
        raise PoisonMessage(f"{event_type} for instance {_shown(instance)}, which is not a UUID")
    host = data.get("host")
    host = host if isinstance(host, str) and host else None
    if host is not None and (problem := text_problem(host, HOST_MAX)):
        raise PoisonMessage(f"{event_type} on host {_shown(host)}, which is not a host name: {problem}")
    return Notification(event_type, instance, host, _sender(message.get("publisher_id")))


def _sender(publisher: Any) -> str | None:
    """The host of a ``nova-compute:HOST`` publisher, or ``None`` (another service, or not a
    host name: then no host is known, which never makes a release wider)."""
    if not isinstance(publisher, str) or not publisher.startswith("nova-compute:"):
        return None
    host = publisher[len("nova-compute:") :]
    return host if host and text_problem(host, HOST_MAX) is None else None


@dataclass(frozen=True)
class ListenerConfig:
    """Where the notifications come from and where releases go."""

    broker_url: str = field(default="amqp://guest:guest@127.0.0.1:5672//", repr=False)
    exchange: str = "nova"
    topic: str = "versioned_notifications"
    queue: str = "devassign-nova-listener"
    prefetch: int = 10
    # Used only when the exchange does not exist yet; must match how Nova declares it
    # ([oslo_messaging_rabbit] amqp_durable_queues).
    exchange_durable: bool = False
    devassign_url: str = "http://127.0.0.1:8470"
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    # devassign's host name for Nova's compute host (as the scheduler filter's options)
    host_prefix: str = ""
    host_suffix: str = ""


def broker_url(url: str) -> str:
    """Nova's ``transport_url`` (``rabbit://user:pass@host:5672/vhost``) as kombu takes it."""
    if url.startswith("rabbit://"):
        return "amqp://" + url.removeprefix("rabbit://")
    return url


def broker_url_problem(url: str) -> str | None:
    """Why kombu cannot use Nova's ``transport_url`` ``url``, or ``None``. The reason never
    quotes the URL (it holds the broker's password)."""
    kombu_url = broker_url(url)
    scheme, sep, _ = kombu_url.partition("://")
    if not sep:
        return "not a URL (rabbit://USER:PASS@HOST:5672/VHOST)"
    if scheme.lower() not in BROKER_SCHEMES:
        return f"scheme {_shown(scheme)} is not RabbitMQ's: give rabbit:// (or amqp://, amqps://)"
    if len(url) > 4096 or not url.isprintable():
        return "longer than 4096 characters, or holds a character that is not printable"
    try:
        urlsplit(kombu_url).port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "its HOST:PORT does not parse (the port is a number up to 65535; an IPv6 address in [ ])"
    try:
        kombu.Connection(kombu_url).release()  # parses, resolves the transport; connects to nothing
    except Exception as exc:  # any: its message may quote the password, so only its type is shown
        return f"kombu cannot use it ({type(exc).__name__})"
    return None


class Releaser:
    """Releases allocations through devassign's API."""

    def __init__(self, config: ListenerConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.url = config.devassign_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers=headers, timeout=config.timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def release(self, instance: str, host: str | None = None) -> tuple[Outcome, str]:
        """Release ``instance``'s devices (only on devassign host ``host`` when given): what to
        do with the message, and what happened."""
        params = {"host": host} if host else None
        try:
            response = self.http.delete(f"/v1/allocations/{quote(instance, safe='')}", params=params)
        except httpx.HTTPError as exc:
            return Outcome.RETRY, f"devassign at {self.url} did not answer: {type(exc).__name__}: {exc}"
        code = _error_code(response)
        if response.is_success:
            return Outcome.ACK, "released (or released before: a redelivery)"
        if response.status_code == 404:
            return Outcome.ACK, f"nothing to release ({code or 'not found'})"
        if host and response.status_code == 409 and code == "invalid_state":
            return Outcome.ACK, f"nothing to release on {host}: the instance holds devices elsewhere"
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            return (
                Outcome.RETRY,
                f"devassign at {self.url} answered HTTP {response.status_code} {code}".rstrip(),
            )
        return Outcome.ACK, f"devassign refused the release: HTTP {response.status_code} {code}".rstrip()


def _identity(message: Any) -> str:
    """Which message it was, from what the broker says of it (never its content)."""
    info = getattr(message, "delivery_info", None) or {}
    properties = getattr(message, "properties", None) or {}
    parts = [
        f"delivery tag {getattr(message, 'delivery_tag', '?')}",
        f"routing key {_shown(str(info.get('routing_key', '?')))}",
    ]
    if properties.get("message_id"):
        parts.append(f"message id {_shown(str(properties['message_id']))}")
    if info.get("redelivered"):
        parts.append("redelivered")
    return ", ".join(parts)


def _error_code(response: httpx.Response) -> str:
    try:
        err = response.json().get("error") or {}
        return str(err.get("code", ""))
    except (ValueError, AttributeError):
        return ""


class NovaListener:
    """Consumes Nova's notifications and releases the devices of deleted instances."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        releaser: Releaser | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.config = config
        self.releaser = releaser or Releaser(config)
        self.stop_event = threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self._failures = 0  # releases in a row that devassign could not answer
        self._broker_down = False
        self.connected = threading.Event()  # set while consuming (tests wait on it)

    # ------------------------------------------------------------------ one message

    def handle(self, body: bytes | str) -> Outcome:
        """What to do with one message; releases the instance's devices when it says so."""
        try:
            notification = parse_notification(body)
        except PoisonMessage as exc:
            LOG.warning("dropped a message that is not a Nova notification: %s", exc)
            return Outcome.ACK
        if notification.event_type not in RELEASE_EVENTS:
            return Outcome.ACK
        if notification.instance is None:
            LOG.warning("dropped %s: it names no instance uuid", notification.event_type)
            return Outcome.ACK
        host = None
        if notification.event_type == "instance.create.error":
            # Only on the host where the build failed: Nova may have retried it elsewhere
            # under the same uuid. The payload's host, else its sender's (Nova unsets the
            # instance's host before it sends this); neither: nothing is released (the
            # instance's delete releases it wherever it is).
            failed_on = notification.host or notification.sender
            if failed_on is None:
                LOG.info(
                    "instance %s (%s): nothing released: the notification names no compute host",
                    notification.instance,
                    notification.event_type,
                )
                return Outcome.ACK
            host = f"{self.config.host_prefix}{failed_on}{self.config.host_suffix}"
            if not HOST_RE.fullmatch(host):  # no devassign host has that name: nothing of it there
                LOG.info(
                    "instance %s (%s): nothing to release on %s: not a devassign host name",
                    notification.instance,
                    notification.event_type,
                    _shown(host),
                )
                return Outcome.ACK
        outcome, what = self.releaser.release(notification.instance, host)
        if outcome is Outcome.RETRY:
            if self._failures == 0:
                LOG.error(
                    "cannot release instance %s after %s: %s; keeping the message and retrying",
                    notification.instance,
                    notification.event_type,
                    what,
                )
            self._failures += 1
            return outcome
        if self._failures:
            LOG.info("devassign answers again after %d failed tries", self._failures)
            self._failures = 0
        level = logging.INFO if what == "released" or what.startswith("nothing") else logging.WARNING
        LOG.log(level, "instance %s (%s): %s", notification.instance, notification.event_type, what)
        return outcome

    def backoff(self) -> float:
        """Seconds to wait before the next try: doubling with the failures in a row, half random."""
        step = min(self.config.backoff_max, self.config.backoff_first * 2.0 ** max(0, self._failures - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _on_message(self, message: Any) -> None:
        try:
            outcome = self.handle(message.body)
        except Exception:
            # A bug, or a message nobody foresaw: retrying it would fail the same way and block
            # every release behind it. Dead-lettered where the queue has a dead-letter exchange.
            LOG.error(
                "dropped a message whose handling failed (%s); rejected without requeue",
                _identity(message),
                exc_info=True,
            )
            message.reject(requeue=False)
            return
        if outcome is Outcome.ACK:
            message.ack()
            return
        self._sleep(self.backoff())
        message.requeue()  # back to the queue, unacknowledged: delivered again

    # ------------------------------------------------------------------ the broker

    def declare(self, connection: Any) -> Any:
        """The listener's durable queue, bound to Nova's notification topics (the exchange is
        declared only when missing, as Nova would declare it)."""
        channel = connection.channel()
        try:
            kombu.Exchange(self.config.exchange, type="topic", passive=True)(channel).declare()
        except connection.channel_errors:
            channel = connection.channel()  # the broker closed the channel that asked
            kombu.Exchange(self.config.exchange, type="topic", durable=self.config.exchange_durable)(
                channel
            ).declare()
        exchange = kombu.Exchange(self.config.exchange, type="topic", durable=self.config.exchange_durable)
        queue = kombu.Queue(
            self.config.queue,
            bindings=[kombu.binding(exchange, routing_key=f"{self.config.topic}.{p}") for p in PRIORITIES],
            durable=True,
            auto_delete=False,
        )
        queue(channel).declare()
        channel.close()
        return queue

    def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting to the broker whenever the connection drops."""
        attempt = 0
        while not self.stop_event.is_set():
            connection = kombu.Connection(broker_url(self.config.broker_url), connect_timeout=5)
            where = connection.as_uri()  # the password masked
            try:
                connection.connect()
                queue = self.declare(connection)
                channel = connection.channel()
                channel.basic_qos(0, self.config.prefetch, False)
                with kombu.Consumer(channel, queues=[queue], on_message=self._on_message, no_ack=False):
                    if self._broker_down or attempt:
                        LOG.info("connected to the broker at %s again", where)
                    else:
                        LOG.info(
                            "consuming %s from %s (queue %s)", self.config.topic, where, self.config.queue
                        )
                    self._broker_down, attempt = False, 0
                    self.connected.set()
                    while not self.stop_event.is_set():
                        try:
                            connection.drain_events(timeout=1)
                        except TimeoutError:
                            connection.heartbeat_check()
            except (
                *connection.connection_errors,
                *connection.channel_errors,
                OSError,
                kombu.exceptions.KombuError,
            ) as exc:
                self.connected.clear()
                attempt += 1
                if not self._broker_down:
                    LOG.error("broker at %s: %s: %s; reconnecting", where, type(exc).__name__, exc)
                    self._broker_down = True
                step = min(self.config.backoff_max, self.config.backoff_first * 2.0 ** min(attempt - 1, 16))
                self.stop_event.wait(step / 2 + random.uniform(0, step / 2))
            finally:
                self.connected.clear()
                connection.release()

    def stop(self) -> None:
        self.stop_event.set()
