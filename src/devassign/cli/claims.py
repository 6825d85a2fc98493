"""Client commands for requests: claim, explain, release, capacity, libvirt XML, quotas,
and clearing quarantined devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from devassign.cli.client import CliError
from devassign.cli.inventory import ALLOCATION_COLUMNS, DEVICE_COLUMNS, FormatOpt, client
from devassign.cli.output import Format, console, emit

SpecOpt = Annotated[
    list[str] | None,
    typer.Option("--spec", help="hardware_resource:TYPE=N (repeatable)"),
]
RequestOpt = Annotated[
    Path | None,
    typer.Option("--request", help="A JSON request file (SPEC.md, Requests)", exists=False),
]
HostOpt = Annotated[list[str] | None, typer.Option("--host", help="Only these hosts (repeatable)")]


def build_body(
    spec: list[str] | None, request: Path | None, hosts: list[str] | None, **top: Any
) -> dict[str, Any]:
    """The claim/explain body from ``--spec`` and/or ``--request`` (the server validates it)."""
    body: dict[str, Any] = {}
    if request is not None:
        try:
            body = json.loads(request.read_text())
        except OSError as exc:
            raise CliError(f"cannot read {request}: {exc.strerror}", status=2) from exc
        except json.JSONDecodeError as exc:
            raise CliError(f"{request} is not valid JSON: {exc}", status=2) from exc
        if not isinstance(body, dict):
            raise CliError(f"{request} must hold a JSON object", status=2)
    if spec:
        extra = dict(body.get("extra_specs") or {})
        for s in spec:
            key, sep, value = s.partition("=")
            if not sep:
                raise CliError(f"--spec {s!r}: expected hardware_resource:TYPE=N", status=2)
            extra[key.strip()] = value.strip()
        body["extra_specs"] = extra
    if not body:
        raise CliError(
            "say what to request: --spec hardware_resource:TYPE=N or --request FILE.json", status=2
        )
    if hosts:
        body["hosts"] = hosts
    body.update({k: v for k, v in top.items() if v is not None})
    return body


def print_explanation(exp: dict[str, Any]) -> None:
    """Why a request fits or not, for people."""
    console.print(f"[bold]{exp.get('summary', '')}[/bold]", highlight=False)
    funnel = exp.get("funnel") or {}
    if funnel:
        parts = [f"{k}={v}" for k, v in funnel.items()]
        console.print("before scheduling: " + ", ".join(parts), highlight=False)
    for code, n in (exp.get("removed") or {}).items():
        console.print(f"  {code}: {n} host(s) removed", highlight=False)
    for h in exp.get("hosts") or []:
        console.print(f"  {h['message']}", highlight=False)
    for h in exp.get("closest") or []:
        console.print(f"  closest: {h['message']}", highlight=False)


def register(app: typer.Typer, device_app: typer.Typer) -> None:
    quota_app = typer.Typer(help="Per-project limits per resource type.", no_args_is_help=True)
    app.add_typer(quota_app, name="quota")

    @app.command()
    def claim(
        ctx: typer.Context,
        consumer: Annotated[str, typer.Option(help="The instance UUID the devices are for")],
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        project: Annotated[str | None, typer.Option(help="The consumer's project")] = None,
        idempotency_key: Annotated[
            str | None, typer.Option(help="Send the same key to retry safely: you get the same allocation")
        ] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Place and claim; prints the allocation, or why it cannot be placed."""
        body = build_body(
            spec, request, host, consumer=consumer, project=project, idempotency_key=idempotency_key
        )
        try:
            allocation = client(ctx).post("/v1/claims", body)
        except CliError as exc:
            exp = (exc.body or {}).get("error", {}).get("explanation") if isinstance(exc.body, dict) else None
            if exp and fmt is Format.table:
                console.print("[red]cannot place this request[/red]")
                print_explanation(exp)
                raise CliError("no host can hold this request", code=exc.code) from exc
            raise
        emit(allocation, fmt, ALLOCATION_COLUMNS)

    @app.command()
    def explain(
        ctx: typer.Context,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Why a request can or cannot be placed, without claiming anything."""
        exp = client(ctx).post("/v1/explain", build_body(spec, request, host))
        if fmt is Format.json:
            emit(exp, fmt)
            return
        print_explanation(exp)
        for p in exp.get("placements") or []:
            devices = "; ".join(f"{name}: {len(d['ids'])} {d['type']}" for name, d in p["devices"].items())
            console.print(f"  fits on {p['host']} (score {p['score']}): {devices}", highlight=False)

    @app.command()
    def release(
        ctx: typer.Context,
        consumer: Annotated[str, typer.Option(help="The consumer whose devices to release")],
    ) -> None:
        """Release all of a consumer's devices (they are cleaned before anyone else gets them)."""
        client(ctx).delete(f"/v1/allocations/{consumer}")
        typer.echo(f"released {consumer}: its devices go to cleaning")

    @app.command()
    def capacity(
        ctx: typer.Context,
        spec: Annotated[list[str], typer.Option("--spec", help="hardware_resource:TYPE=N (repeatable)")],
        host: HostOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """How many more instances of this request the cloud can hold now."""
        found = client(ctx).get("/v1/capacity", spec=spec, host=host)
        if fmt is Format.json:
            emit(found, fmt)
            return
        rows = [{"host": h, "instances": n} for h, n in (found.get("per_host") or {}).items()]
        if rows:
            emit(rows, fmt)
        more = " or more" if found.get("truncated") else ""
        console.print(f"total: {found['total']}{more} instance(s)", highlight=False)

    @app.command("libvirt-xml")
    def libvirt_xml(
        ctx: typer.Context,
        consumer: Annotated[str, typer.Option(help="The consumer whose devices to describe")],
    ) -> None:
        """The libvirt <hostdev> / <interface type='hostdev'> elements for a consumer's devices."""
        c = client(ctx)
        try:
            response = c.http.get(f"/v1/allocations/{consumer}/libvirt")
        except Exception as exc:
            raise CliError(f"cannot reach the devassign server at {c.url}: {exc}") from exc
        if response.is_error:
            err = response.json().get("error", {})
            raise CliError(err.get("message", response.text), code=err.get("code"))
        typer.echo(response.text)

    @device_app.command("clear")
    def device_clear(
        ctx: typer.Context,
        address: Annotated[str, typer.Argument(help="The device's address (or id)")],
        host: Annotated[
            str | None, typer.Option(help="The device's host, when the address is on several")
        ] = None,
        reason: Annotated[str, typer.Option(help="Why it is safe now (kept in the event log)")] = "",
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Let a quarantined device go: back through cleaning (or available, for one-time-use types)."""
        c = client(ctx)
        found = c.get("/v1/devices", address=address, host=host, state="quarantined")
        if not found:
            raise CliError(f"no quarantined device {address!r}" + (f" on {host}" if host else ""))
        if len(found) > 1:
            hosts = ", ".join(d["host"] for d in found)
            raise CliError(
                f"{address} is quarantined on several hosts ({hosts}): say which with --host", status=2
            )
        emit(c.post(f"/v1/devices/{found[0]['id']}/clear", {"reason": reason}), fmt, DEVICE_COLUMNS)

    @quota_app.command("set")
    def quota_set(
        ctx: typer.Context,
        project: str,
        type_name: Annotated[str, typer.Argument(metavar="TYPE")],
        limit: Annotated[int | None, typer.Argument(help="Most devices; omit to remove the limit")] = None,
    ) -> None:
        """Limit how many devices of a type a project may hold (admin)."""
        client(ctx).put(f"/v1/quotas/{project}/{type_name}", {"limit": limit})
        typer.echo(f"quota of {project} for {type_name}: {limit if limit is not None else 'unlimited'}")

    @quota_app.command("list")
    def quota_list(
        ctx: typer.Context,
        project: Annotated[str | None, typer.Option(help="Only this project")] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        emit(client(ctx).get("/v1/quotas", project=project), fmt)
