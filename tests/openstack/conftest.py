"""Fixtures for the OpenStack tests: an in-process devassign, RabbitMQ, the Nova venv.

RabbitMQ tests skip where 127.0.0.1:5672 is unreachable (``DEVASSIGN_TEST_AMQP_URL`` moves it),
unless ``DEVASSIGN_REQUIRE_RABBITMQ=1``, where they fail instead. Each test declares its own
exchange and queues under unique names and deletes them afterwards. Tests that run inside
Nova or publish with oslo.messaging need ``.nova-venv`` (tests/openstack/nova_venv.sh) and skip
without it, unless ``DEVASSIGN_REQUIRE_NOVA=1``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kombu
import pytest
from fastapi.testclient import TestClient

from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from tests.conftest import vf

ROOT = Path(__file__).resolve().parents[2]
NOVA_VENV = Path(os.environ.get("DEVASSIGN_NOVA_VENV", ROOT / ".nova-venv"))
NOVA_PYTHON = NOVA_VENV / "bin" / "python"
AMQP_URL = os.environ.get("DEVASSIGN_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REQUIRE_RABBITMQ = os.environ.get("DEVASSIGN_REQUIRE_RABBITMQ") == "1"
REQUIRE_NOVA = os.environ.get("DEVASSIGN_REQUIRE_NOVA") == "1"
HERE = Path(__file__).parent


def need_nova_venv() -> Path:
    """The Nova venv's python, or a skip (a failure under DEVASSIGN_REQUIRE_NOVA=1)."""
    if not NOVA_PYTHON.exists():
        message = f"no Nova venv at {NOVA_VENV}: build it with tests/openstack/nova_venv.sh"
        if REQUIRE_NOVA:
            pytest.fail(f"DEVASSIGN_REQUIRE_NOVA=1 but {message}")
        pytest.skip(message)
    return NOVA_PYTHON


def run_in_nova(checks: str) -> None:
    """Run ``in_nova/<checks>`` with pytest in the Nova venv; every check must pass, none skip."""
    python = need_nova_venv()
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:warnings",  # Nova's imports warn (eventlet); the main run's -W error is not for them
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            str(HERE / "in_nova" / checks),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


@pytest.fixture
def devassign_api(tmp_path: Path) -> Iterator[TestClient]:
    """devassign in-process on SQLite, auth off, with type NIC_VF_1G and host compute-1 (4 VFs)."""
    db = Database(f"sqlite:///{tmp_path / 'devassign.db'}")
    db.upgrade()
    store = Store(db)
    settings = Settings(db_url=db.url, auth=False, sweep_interval=0)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as api:
        assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200 and not r.json()["refused"], r.text
        yield api
    db.dispose()


def claim(api: TestClient, consumer: str, count: int = 1) -> None:
    r = api.post(
        "/v1/claims", json={"consumer": consumer, "extra_specs": {"hardware_resource:NIC_VF_1G": str(count)}}
    )
    assert r.status_code == 201, r.text


def holds(api: TestClient, consumer: str) -> bool:
    """Whether ``consumer`` holds devices now."""
    r = api.get("/v1/allocations", params={"consumer": consumer})
    assert r.status_code == 200, r.text
    return bool(r.json())


class Switch(httpx.BaseTransport):
    """A transport to the in-process server that can be switched off (connection refused)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.up = True
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if not self.up:
            raise httpx.ConnectError("connection refused (switched off by the test)", request=request)
        return self.inner.handle_request(request)


def transport_of(api: TestClient) -> httpx.BaseTransport:
    transport: httpx.BaseTransport = api._transport  # the in-process ASGI transport
    return transport


@dataclass
class Bus:
    """Unique exchange, topic and queue names on the test broker, deleted afterwards."""

    url: str
    exchange: str
    topic: str
    queue: str

    def connection(self) -> Any:
        return kombu.Connection(self.url, connect_timeout=5)

    def publish_raw(self, body: bytes, priority: str = "info") -> None:
        """A message as any publisher could send it, not through oslo.messaging."""
        with self.connection() as conn:
            producer = conn.Producer()
            producer.publish(
                body,
                exchange=kombu.Exchange(self.exchange, type="topic"),
                routing_key=f"{self.topic}.{priority}",
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )

    def publish_samples(self, *items: str) -> None:
        """Nova's samples (``SAMPLE:UUID``) through real oslo.messaging, from the Nova venv."""
        python = need_nova_venv()
        rabbit = "rabbit://" + self.url.removeprefix("amqp://").removesuffix("/")
        result = subprocess.run(
            [
                str(python),
                "-W",
                "ignore",
                str(HERE / "publish_notifications.py"),
                rabbit,
                self.exchange,
                self.topic,
                *items,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    def depth(self) -> tuple[int, int]:
        """(messages ready, consumers) of the listener's queue, as a passive declare reports them:
        a message given back unacknowledged counts as ready again."""
        with self.connection() as conn:
            _, ready, consumers = conn.default_channel.queue_declare(self.queue, passive=True)
            return int(ready), int(consumers)


@pytest.fixture
def bus() -> Iterator[Bus]:
    try:
        with kombu.Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        if REQUIRE_RABBITMQ:
            pytest.fail(f"DEVASSIGN_REQUIRE_RABBITMQ=1 but RabbitMQ at {AMQP_URL} is unreachable: {exc}")
        pytest.skip(f"RabbitMQ unreachable at {AMQP_URL}: {exc}")
    tag = uuid.uuid4().hex[:10]
    b = Bus(
        AMQP_URL, f"devassign-test-{tag}", f"devassign-test-{tag}-notifications", f"devassign-test-{tag}-q"
    )
    yield b
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        # the listener's queue, the queues oslo.messaging declares for the topic, the exchange
        for name in (b.queue, f"{b.topic}.info", f"{b.topic}.error"):
            channel = conn.channel()
            channel.queue_delete(name)
            channel.close()
        channel = conn.channel()
        channel.exchange_delete(b.exchange)
        channel.close()
