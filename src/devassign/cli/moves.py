"""Client commands for moves (live or cold migration): start, commit, abort, show, xml
(docs/requests.md, "Moving an allocation (migration)")."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from devassign.cli.claims import print_explanation, summary, text_of
from devassign.cli.client import CliError, api_path, not_empty
from devassign.cli.inventory import FormatOpt, client
from devassign.cli.output import Format, console, emit, when

ConsumerArg = Annotated[str, typer.Argument(metavar="CONSUMER", help="The consumer to move (its UUID)")]

PAIR_COLUMNS = [
    ("request", lambda p: p["request"] or "-"),
    ("source", lambda p: p["source_address"] or "-"),
    ("target", lambda p: p["target_address"] or "-"),
    ("type", lambda p: p["target_type"] or p["source_type"] or "-"),
]


def _say(move: dict[str, Any], fmt: Format) -> None:
    """The move: its device map as a table and a line saying where it stands."""
    if fmt is Format.json:
        emit(move, fmt)
        return
    emit(move["device_map"], fmt, PAIR_COLUMNS)
    line = f"{move['consumer']}: {move['source_host']} -> {move['target_host']}, {move['state']}"
    if move.get("reason"):
        line += f" ({move['reason']})"
    if move["state"] == "pending" and move.get("target_state"):
        line += f"; target devices {move['target_state']}"
        if move.get("expires_at"):
            line += f" until {when(move['expires_at'])}"
    console.print(line, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``move start/commit/abort/show/xml``."""
    move_app = typer.Typer(
        help="Move a consumer's devices to another host (live or cold migration): start holds "
        "devices there, commit switches to them, abort gives them up.",
        no_args_is_help=True,
    )
    app.add_typer(move_app, name="move")

    @move_app.command("start")
    def start(
        ctx: typer.Context,
        consumer: ConsumerArg,
        to: Annotated[str, typer.Option("--to", metavar="HOST", help="The host to move to")],
        idempotency_key: Annotated[
            str | None,
            typer.Option(
                metavar="KEY",
                help="Send the same key to retry safely: you get the same move (default: a new key "
                "per command, so the command's own retries never start two)",
            ),
        ] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Hold devices on HOST matching CONSUMER's request while it keeps its own; prints which
        device takes the place of which, or why HOST cannot hold them (exit 1)."""
        body = {
            "host": to,
            "idempotency_key": not_empty("--idempotency-key", idempotency_key) or f"cli-{uuid.uuid4()}",
        }
        try:
            move = client(ctx).post(api_path("/v1/allocations/{}/moves", consumer), body)
        except CliError as exc:
            err = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
            exp = err.get("explanation")
            if exp and fmt is Format.table:
                console.print(f"[red]{to} cannot hold {consumer}'s devices[/red]")
                print_explanation(exp)
                raise CliError(err.get("message") or summary(exp), code=exc.code) from exc
            raise
        _say(move, fmt)

    @move_app.command("commit")
    def commit(ctx: typer.Context, consumer: ConsumerArg, fmt: FormatOpt = Format.table) -> None:
        """Switch CONSUMER to the devices its move holds; those it leaves go to cleaning."""
        _say(client(ctx).post(api_path("/v1/allocations/{}/moves/commit", consumer)), fmt)

    @move_app.command("abort")
    def abort(ctx: typer.Context, consumer: ConsumerArg, fmt: FormatOpt = Format.table) -> None:
        """Give up the devices CONSUMER's move holds (they go to cleaning); it stays where it is."""
        _say(client(ctx).post(api_path("/v1/allocations/{}/moves/abort", consumer)), fmt)

    @move_app.command("show")
    def show(ctx: typer.Context, consumer: ConsumerArg, fmt: FormatOpt = Format.table) -> None:
        """CONSUMER's newest move (pending, committed or aborted); exit 1 when it never moved."""
        found = client(ctx).get(api_path("/v1/allocations/{}/moves", consumer))
        if not found:
            raise CliError(f"{consumer} has never moved: `devassign move start {consumer} --to HOST`")
        _say(found[0], fmt)

    @move_app.command("xml")
    def xml(ctx: typer.Context, consumer: ConsumerArg) -> None:
        """The libvirt <hostdev> / <interface type='hostdev'> elements of the devices CONSUMER's
        pending move holds on its target: the destination's domain XML, before the commit."""
        text = text_of(client(ctx), api_path("/v1/allocations/{}/moves/libvirt", consumer))
        typer.echo(text, nl=not text.endswith("\n"))
