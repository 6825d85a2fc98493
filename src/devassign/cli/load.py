"""``devassign host load``: many hosts' inventory reports sent in batches (an admin's fleet load)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from devassign.cli.client import Client, CliError, ExitCode, parse_json
from devassign.cli.output import printable

# The server's limits on one batch (POST /v1/reports), and a margin under its 16 MiB body.
MAX_HOSTS = 1_000
MAX_DEVICES = 20_000
MAX_BYTES = 12 * 1024 * 1024


def read_reports(path: str) -> list[dict[str, Any]]:
    """``{host, report}`` items from a JSON array or JSON Lines (one item a line); ``-``: stdin."""
    try:
        if path == "-" and sys.stdin is None:
            raise CliError(
                "cannot read stdin: it is closed (give a FILE, or pipe the reports in)", status=ExitCode.USAGE
            )
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", status=ExitCode.USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: not UTF-8 text (byte {exc.start}): give JSON in UTF-8", status=ExitCode.USAGE
        ) from exc
    stripped = text.lstrip()
    try:
        items = parse_json(text) if stripped.startswith("[") else _lines(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not JSON ({exc.msg}, line {exc.lineno}): give a JSON array of "
            '{"host": ..., "report": {...}} or one such object a line',
            status=ExitCode.USAGE,
        ) from exc
    except ValueError as exc:  # NaN, Infinity, a number past a float's range; nested too deep
        raise CliError(f"{path}: {exc}", status=ExitCode.USAGE) from exc
    if not isinstance(items, list):
        raise CliError(
            f"{path}: give a JSON array of {{host, report}} items, or JSON Lines", status=ExitCode.USAGE
        )
    if not items:
        raise CliError(f"{path}: no {{host, report}} items in it", status=ExitCode.USAGE)
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("host"), str) or "report" not in item:
            raise CliError(
                f'{path}: item {n} is not {{"host": NAME, "report": {{...}}}}', status=ExitCode.USAGE
            )
    return items


def _lines(text: str) -> list[Any]:
    """JSON Lines; a bad line's error names its line in the file."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(parse_json(line))
            except json.JSONDecodeError as exc:
                exc.lineno = number  # the file's line, not the line's own "line 1"
                raise
    return out


def invalid(item: dict[str, Any]) -> str | None:
    """Why the server would refuse this item alone (its own PUT would be a 400), or None."""
    from pydantic import ValidationError  # the models load with the first item, not the CLI

    from devassign import schemas

    try:
        schemas.HostReport.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return None


def batches(items: list[dict[str, Any]], hosts: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most ``hosts`` hosts, the server's device limit and
    :data:`MAX_BYTES`; a host already in the batch starts the next one (each host once)."""
    batch: list[dict[str, Any]] = []
    names: set[str] = set()
    devices = size = 0
    for item in items:
        n = len(item["report"].get("devices") or [])
        b = len(json.dumps(item))
        if batch and (
            len(batch) >= hosts or devices + n > MAX_DEVICES or size + b > MAX_BYTES or item["host"] in names
        ):
            yield batch
            batch, names, devices, size = [], set(), 0, 0
        batch.append(item)
        names.add(item["host"])
        devices += n
        size += b
    if batch:
        yield batch


def _say(line: str) -> None:
    """One line on stderr: host names come from the file, reasons quote them (and an agent's
    types), so what a terminal would act on is written out."""
    typer.echo(printable(line, one_line=True), err=True)


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
        good = []
        for item in items:
            why = invalid(item)
            if why is None:
                good.append(item)
            else:
                failed += 1
                _say(f"{item['host']}: invalid report, not sent: {why}")
        for part in batches(good, batch):
            try:
                answer = api.post("/v1/reports", {"reports": part})
            except CliError as exc:
                if exc.exit_status in (ExitCode.UNREACHABLE, ExitCode.DENIED):
                    typer.echo(f"{applied} hosts applied, {failed} refused, of {len(items)} (stopped)")
                    raise
                failed += len(part)
                _say(f"a batch of {len(part)} hosts ({part[0]['host']} ...) was refused: {exc.message}")
                continue
            applied += answer["applied"]
            failed += answer["failed"]
            for outcome in answer["results"]:
                if outcome["error"] is not None:
                    err = outcome["error"]
                    _say(f"{outcome['host']}: {err['code']}: {err['message']}")
                elif outcome["result"]["refused"]:
                    refused = outcome["result"]["refused"]
                    _say(
                        f"{outcome['host']}: {len(refused)} device(s) refused, first "
                        f"{refused[0]['address']}: {refused[0]['reason']}"
                    )
        typer.echo(f"{applied} hosts applied, {failed} refused, of {len(items)}")
        if failed:
            raise typer.Exit(ExitCode.ERROR)
