"""``devassign host load``: many hosts' inventory reports sent in batches (an admin's fleet load)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from devassign.cli.client import Client, CliError, ExitCode

# The server's limits on one batch (POST /v1/reports).
MAX_HOSTS = 1_000
MAX_DEVICES = 20_000


def read_reports(path: str) -> list[dict[str, Any]]:
    """``{host, report}`` items from a JSON array or JSON Lines (one item a line); ``-``: stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", status=ExitCode.USAGE) from exc
    try:
        stripped = text.lstrip()
        items = json.loads(stripped) if stripped.startswith("[") else _lines(stripped)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not JSON ({exc.msg}, line {exc.lineno}): give a JSON array of "
            '{"host": ..., "report": {...}} or one such object a line',
            status=ExitCode.USAGE,
        ) from exc
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("host"), str) or "report" not in item:
            raise CliError(
                f'{path}: item {n} is not {{"host": NAME, "report": {{...}}}}', status=ExitCode.USAGE
            )
    return items


def _lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def batches(items: list[dict[str, Any]], hosts: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most ``hosts`` hosts and the server's device limit."""
    batch: list[dict[str, Any]] = []
    devices = 0
    for item in items:
        n = len(item["report"].get("devices") or []) if isinstance(item["report"], dict) else 0
        if batch and (len(batch) >= hosts or devices + n > MAX_DEVICES):
            yield batch
            batch, devices = [], 0
        batch.append(item)
        devices += n
    if batch:
        yield batch


def register(app: typer.Typer) -> None:
    """Add ``host load`` to the ``host`` group."""
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    host_app = groups["host"]
    assert host_app is not None

    @host_app.command("load")
    def host_load(
        ctx: typer.Context,
        path: Annotated[
            str,
            typer.Argument(metavar="FILE", help="JSON array or JSON Lines of {host, report}; - for stdin"),
        ],
        batch: Annotated[int, typer.Option(min=1, max=MAX_HOSTS, help="Hosts per request")] = 500,
    ) -> None:
        """Send many hosts' inventory reports (admin), a batch per request; each host is applied
        as its agent's own report would be. Exits 1 if any host was refused (listed on stderr)."""
        items = read_reports(path)
        root = ctx.find_root().obj or {}
        api = Client(root.get("url"), root.get("token"))
        applied = failed = 0
        for part in batches(items, batch):
            answer = api.post("/v1/reports", {"reports": part})
            applied += answer["applied"]
            failed += answer["failed"]
            for outcome in answer["results"]:
                if outcome["error"] is not None:
                    err = outcome["error"]
                    typer.echo(f"{outcome['host']}: {err['code']}: {err['message']}", err=True)
                elif outcome["result"]["refused"]:
                    refused = outcome["result"]["refused"]
                    typer.echo(
                        f"{outcome['host']}: {len(refused)} device(s) refused, first "
                        f"{refused[0]['address']}: {refused[0]['reason']}",
                        err=True,
                    )
        typer.echo(f"{applied} hosts applied, {failed} refused, of {len(items)}")
        if failed:
            raise typer.Exit(ExitCode.ERROR)
