"""``devassign nova-listener``: release the devices of instances Nova deletes; ``devassign
placement-mirror``: report devassign's devices to Placement (docs/openstack.md)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from devassign.cli.client import DEFAULT_URL, CliError, ExitCode


def _start_logging(level: str) -> None:
    """Log to stderr at ``level`` (``--log-level``); a name logging does not know is a usage error."""
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise CliError(
            f"--log-level {level[:40]!a}: give one of debug, info, warning, error", status=ExitCode.USAGE
        )
    logging.basicConfig(level=number, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per release or sync is ours


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
        host_prefix: Annotated[
            str, typer.Option(help="devassign's host name is this + Nova's compute host + --host-suffix")
        ] = "",
        host_suffix: Annotated[str, typer.Option(help="See --host-prefix")] = "",
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ) -> None:
        """Release the devices of instances Nova deletes, or fails to build, from Nova's notifications."""
        from devassign.openstack.listener import (
            HOST_MAX,
            ListenerConfig,
            NovaListener,
            broker_url_problem,
            text_problem,
        )

        root = ctx.find_root().obj or {}
        if problem := broker_url_problem(transport_url):
            raise CliError(
                f"--transport-url / DEVASSIGN_NOVA_TRANSPORT_URL: {problem}", status=ExitCode.USAGE
            )
        for option, value in (("--host-prefix", host_prefix), ("--host-suffix", host_suffix)):
            if problem := text_problem(value, HOST_MAX):
                raise CliError(f"{option}: {problem}", status=ExitCode.USAGE)
        _start_logging(log_level)
        config = ListenerConfig(
            broker_url=transport_url,
            exchange=exchange,
            topic=topic,
            queue=queue,
            prefetch=prefetch,
            exchange_durable=exchange_durable,
            devassign_url=root.get("url") or DEFAULT_URL,
            token=root.get("token"),
            host_prefix=host_prefix,
            host_suffix=host_suffix,
        )
        listener = NovaListener(config)

        def _stop(signum: int, frame: FrameType | None) -> None:
            listener.stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        listener.run()

    @app.command("placement-mirror")
    def placement_mirror(
        ctx: typer.Context,
        placement_url: Annotated[
            str,
            typer.Option(
                "--placement-url",
                envvar="DEVASSIGN_PLACEMENT_URL",
                help="OpenStack Placement's endpoint (e.g. http://controller:8778 or .../placement)",
            ),
        ],
        placement_token: Annotated[
            str | None,
            typer.Option(
                "--placement-token",
                envvar="DEVASSIGN_PLACEMENT_TOKEN",
                help="Placement's X-Auth-Token: a Keystone token with the admin role, or `admin` where "
                "Placement's auth_strategy is noauth2",
            ),
        ] = None,
        token_file: Annotated[
            Path | None,
            typer.Option(
                "--token-file",
                "--placement-token-file",
                help="A file holding Placement's token, read again before each sync (so a Keystone "
                "token can be renewed by another process)",
            ),
        ] = None,
        once: Annotated[
            bool, typer.Option("--once", help="One full sync, then exit (1 when it failed)")
        ] = False,
        interval: Annotated[
            float,
            typer.Option(min=1.0, help="Seconds between full syncs (a safety net for the event stream)"),
        ] = 30.0,
        follow: Annotated[
            bool, typer.Option(help="Sync a host within a second of its events (devassign's event stream)")
        ] = True,
        host_prefix: Annotated[
            str, typer.Option(help="devassign's host name is this + Nova's hypervisor hostname + suffix")
        ] = "",
        host_suffix: Annotated[
            str, typer.Option(help="devassign's host name is prefix + Nova's hypervisor hostname + this")
        ] = "",
        log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    ) -> None:
        """Mirror devassign's devices into OpenStack Placement, as child providers of Nova's compute nodes."""
        import httpx

        from devassign.openstack.placement_mirror import MirrorError, PlacementMirror, placement_client
        from devassign.openstack.placement_service import MirrorService

        root = ctx.find_root().obj or {}
        _start_logging(log_level)
        if (placement_token is None) == (token_file is None):
            raise typer.BadParameter(
                "give Placement's token: --placement-token or --token-file (one of them)"
            )

        def read_token() -> str:
            if token_file is None:
                return str(placement_token)
            try:
                return token_file.read_text().strip()
            except OSError as exc:
                raise MirrorError(f"cannot read --token-file {token_file}: {exc.strerror}") from None

        try:
            first_token = read_token()
        except MirrorError as exc:
            raise typer.BadParameter(str(exc)) from None

        token = root.get("token")
        devassign = httpx.Client(
            base_url=(root.get("url") or DEFAULT_URL).rstrip("/"),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=30.0,
        )
        mirror = PlacementMirror(
            devassign,
            placement_client(placement_url, first_token),
            host_prefix=host_prefix,
            host_suffix=host_suffix,
        )
        service = MirrorService(
            mirror, interval=interval, follow=follow and not once, placement_token=read_token
        )
        if once:
            result = service.sync()
            if result is None or result.errors:
                raise typer.Exit(1)
            typer.echo(
                f"{len(result.created)} created, {len(result.updated)} updated, "
                f"{len(result.deleted)} deleted, "
                f"{len(result.skipped_hosts)} hosts without a compute node provider"
            )
            return

        def _stop(signum: int, frame: FrameType | None) -> None:
            service.stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        service.run()
