"""``devassign nova-listener``: release the devices of instances Nova deletes (docs/openstack.md)."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from devassign.cli.client import DEFAULT_URL


def register(app: typer.Typer) -> None:
    """Adds the OpenStack commands to ``app``."""

    @app.command("nova-listener")
    def nova_listener(
        ctx: typer.Context,
        transport_url: Annotated[
            str,
            typer.Option(
                "--transport-url",
                envvar="DEVASSIGN_NOVA_TRANSPORT_URL",
                help="Nova's message bus, as its [DEFAULT] transport_url (rabbit://USER:PASS@HOST:5672/VHOST)",
            ),
        ] = "rabbit://guest:guest@127.0.0.1:5672/",
        exchange: Annotated[str, typer.Option(help="Nova's exchange ([DEFAULT] control_exchange)")] = "nova",
        topic: Annotated[
            str,
            typer.Option(
                help="Nova's versioned notification topic ([notifications] versioned_notifications_topics)"
            ),
        ] = "versioned_notifications",
        queue: Annotated[
            str, typer.Option(help="This listener's own durable queue")
        ] = "devassign-nova-listener",
        prefetch: Annotated[int, typer.Option(min=1, max=1000, help="Unacknowledged messages at most")] = 10,
        exchange_durable: Annotated[
            bool,
            typer.Option(
                help="Declare the exchange durable when it does not exist yet, as Nova does with "
                "[oslo_messaging_rabbit] amqp_durable_queues = true"
            ),
        ] = False,
        log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    ) -> None:
        """Release the devices of instances Nova deletes, or fails to build, from Nova's notifications."""
        from devassign.openstack.listener import ListenerConfig, NovaListener

        root = ctx.find_root().obj or {}
        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per release is ours
        config = ListenerConfig(
            broker_url=transport_url,
            exchange=exchange,
            topic=topic,
            queue=queue,
            prefetch=prefetch,
            exchange_durable=exchange_durable,
            devassign_url=root.get("url") or DEFAULT_URL,
            token=root.get("token"),
        )
        listener = NovaListener(config)

        def _stop(signum: int, frame: FrameType | None) -> None:
            listener.stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        listener.run()
