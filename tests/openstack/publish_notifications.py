"""Publish Nova's own notification samples through real oslo.messaging, as Nova does.

Runs in the Nova venv (tests/openstack/nova_venv.sh), never imported by devassign's tests:

    .nova-venv/bin/python tests/openstack/publish_notifications.py URL EXCHANGE TOPIC \
        SAMPLE:INSTANCE_UUID [SAMPLE:INSTANCE_UUID ...]

Each sample (``instance-delete-end`` ...) is read from tests/openstack/samples with its
``$ref`` resolved by Nova's own resolver, its instance uuid replaced, and sent with Nova's
notifier settings (driver ``messagingv2``, the sample's priority and publisher). The context
carries a fake token, as Nova's does, so tests can check that it never reaches a log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import oslo_messaging
from nova.tests.json_ref import resolve_refs
from oslo_config import cfg

SAMPLES = Path(__file__).parent / "samples"
FAKE_TOKEN = "gAAAAA-fake-keystone-token-never-logged"


def load(sample: str, instance: str) -> dict[str, object]:
    path = SAMPLES / f"{sample}.json"
    data = resolve_refs(json.loads(path.read_text()), str(SAMPLES))
    data["payload"]["nova_object.data"]["uuid"] = instance
    return data


def main(argv: list[str]) -> None:
    url, exchange, topic, *items = argv
    conf = cfg.ConfigOpts()
    conf([], project="nova-sample-publisher")
    oslo_messaging.set_transport_defaults(control_exchange=exchange)
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    context = {"auth_token": FAKE_TOKEN, "user_id": "u1", "project_id": "p1", "request_id": "req-1"}
    try:
        for item in items:
            sample, _, instance = item.partition(":")
            data = load(sample, instance)
            notifier = oslo_messaging.Notifier(
                transport, publisher_id=data["publisher_id"], driver="messagingv2", topics=[topic]
            )
            priority = str(data["priority"]).lower()
            getattr(notifier, priority)(context, data["event_type"], data["payload"])
    finally:
        transport.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
