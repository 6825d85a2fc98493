"""Client commands for taints: take devices and hosts out of service and back
(docs/operations.md, "Taking devices and hosts out of service")."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from devassign.cli.client import Client, CliError, api_path, one_device
from devassign.cli.inventory import DeviceArg, DeviceHostOpt, FormatOpt, HostNameArg, client
from devassign.cli.output import Format, emit, printable, when


class Effect(StrEnum):
    NoSchedule = "NoSchedule"
    Drain = "Drain"
    None_ = "None"


def target(t: dict[str, Any]) -> str:
    if t.get("device_id"):
        return f"device {t.get('device') or t['device_id']}"
    if t.get("parent"):
        return f"parent {t['parent']}"
    return "host"


TAINT_COLUMNS = [
    ("id", lambda t: t["id"]),
    ("host", lambda t: t["host"]),
    ("target", target),
    ("effect", lambda t: t["effect"]),
    ("reason", lambda t: t["reason"]),
    ("by", lambda t: t["set_by"]),
    ("since", lambda t: when(t["created_at"])),
    ("expires", lambda t: when(t["expires_at"]) if t.get("expires_at") else "-"),
]

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (required), e.g. 'maintenance: PSU swap'")]
ExpiresInOpt = Annotated[
    str | None,
    typer.Option("--expires-in", help="Removed by itself after this long: 90s, 30m, 2h, 1d, 1h30m"),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="Removed by itself at this time (ISO 8601; local time without a zone)"),
]

_DURATION = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """``2h``, ``90s``, ``1h30m``, or plain seconds, in seconds (a usage error otherwise)."""
    text = text.strip().lower()
    if text.isdigit() and int(text) > 0:
        return int(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text or not any(int(n) for n, _ in parts):
        raise CliError(f"--expires-in {text!r}: say how long, e.g. 90s, 30m, 2h, 1d or 1h30m", status=2)
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def taint_body(
    effect: str, reason: str, expires_in: str | None, until: str | None, **extra: Any
) -> dict[str, Any]:
    if expires_in and until:
        raise CliError("give --expires-in or --until, not both", status=2)
    body: dict[str, Any] = {"effect": effect, "reason": reason, **extra}
    if expires_in:
        body["expires_in"] = duration(expires_in)
    if until:
        try:
            at = datetime.fromisoformat(until)
        except ValueError as exc:
            raise CliError(
                f"--until {until!r} is not an ISO 8601 time, e.g. 2026-12-04T18:00", status=2
            ) from exc
        try:
            body["expires_at"] = (at if at.tzinfo else at.astimezone()).astimezone(UTC).isoformat()
        except (ValueError, OverflowError):
            raise CliError(f"--until {until!r} is out of range (years 1 to 9999)", status=2) from None
    return body


def _removed(found: list[dict[str, Any]], fmt: Format, what: str) -> None:
    if fmt is Format.json:
        emit(found, fmt, TAINT_COLUMNS)
        return
    if not found:
        typer.echo(f"{what} had no taint to remove")
        return
    for t in found:
        line = f"removed taint {t['id']} ({t['effect']}: {t['reason']}) of {t['host']} {target(t)}"
        typer.echo(printable(line, one_line=True))


def register(app: typer.Typer) -> None:
    """Add ``taints``, ``device taint/untaint`` and ``host taint/untaint/drain/undrain``."""
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    device_app, host_app = groups["device"], groups["host"]
    assert device_app is not None and host_app is not None

    @app.command()
    def taints(
        ctx: typer.Context,
        host: Annotated[str | None, typer.Option(help="Only this host's")] = None,
        device: Annotated[str | None, typer.Option(help="Only this device's own (its id)")] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Active taints: what is out of service, why, by whom and until when."""
        emit(client(ctx).get("/v1/taints", host=host, device_id=device), fmt, TAINT_COLUMNS)

    @device_app.command("taint")
    def device_taint(
        ctx: typer.Context,
        device: DeviceArg,
        effect: Annotated[
            Effect, typer.Option("--effect", help="NoSchedule: no new claims; Drain: and ask holders to move")
        ],
        reason: ReasonOpt,
        expires_in: ExpiresInOpt = None,
        until: UntilOpt = None,
        host: DeviceHostOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Taint one device (admin, or its host's agent)."""
        body = taint_body(effect.value, reason, expires_in, until)
        api = client(ctx)
        device_id = one_device(api, device, host)["id"]
        emit(api.post(api_path("/v1/devices/{}/taints", device_id), body), fmt, TAINT_COLUMNS)

    @device_app.command("untaint")
    def device_untaint(
        ctx: typer.Context,
        device: DeviceArg,
        taint: Annotated[int | None, typer.Option("--taint", help="Only this taint (its id)")] = None,
        host: DeviceHostOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Remove a device's own taints (or one); its host's and parent's stay."""
        api = client(ctx)
        device_id = one_device(api, device, host)["id"]
        if taint is not None:
            found = api.request(
                "DELETE", api_path("/v1/devices/{}/taints", device_id), params={"taint": taint}
            )
        else:
            own = [t for t in api.get("/v1/taints", device_id=device_id) if t.get("device_id") == device_id]
            found = _remove_each(api, api_path("/v1/devices/{}/taints", device_id), own)
        _removed(found, fmt, f"device {device}")

    @host_app.command("taint")
    def host_taint(
        ctx: typer.Context,
        name: HostNameArg,
        effect: Annotated[Effect, typer.Option("--effect", help="NoSchedule, Drain or None")],
        reason: ReasonOpt,
        parent: Annotated[
            str | None, typer.Option(help="Only this parent device and the devices under it (its address)")
        ] = None,
        expires_in: ExpiresInOpt = None,
        until: UntilOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Taint a whole host, or one parent (a PF, a GPU) with everything under it."""
        extra = {"parent": parent} if parent else {}
        body = taint_body(effect.value, reason, expires_in, until, **extra)
        emit(client(ctx).post(api_path("/v1/hosts/{}/taints", name), body), fmt, TAINT_COLUMNS)

    @host_app.command("untaint")
    def host_untaint(
        ctx: typer.Context,
        name: HostNameArg,
        taint: Annotated[int | None, typer.Option("--taint", help="Only this taint (its id)")] = None,
        parent: Annotated[str | None, typer.Option(help="Only this parent's taints")] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Remove a host's taints: all of them (its devices' and parents' too), or one."""
        api = client(ctx)
        if taint is not None:
            params = {"taint": taint, **({"parent": parent} if parent else {})}
            found = api.request("DELETE", api_path("/v1/hosts/{}/taints", name), params=params)
        else:
            listed = [
                t for t in api.get("/v1/taints", host=name) if parent is None or t.get("parent") == parent
            ]
            if not listed:
                _must_exist(api, name, parent)
            found = _remove_each(api, api_path("/v1/hosts/{}/taints", name), listed)
        _removed(found, fmt, f"host {name}")

    @host_app.command("drain")
    def host_drain(
        ctx: typer.Context,
        name: HostNameArg,
        reason: ReasonOpt,
        expires_in: ExpiresInOpt = None,
        until: UntilOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """No new claims on the host, and every consumer holding its devices is asked to move
        (event drain_requested); nothing is taken away."""
        body = taint_body("Drain", reason, expires_in, until)
        emit(client(ctx).post(api_path("/v1/hosts/{}/taints", name), body), fmt, TAINT_COLUMNS)

    @host_app.command("undrain")
    def host_undrain(ctx: typer.Context, name: HostNameArg, fmt: FormatOpt = Format.table) -> None:
        """Remove the host's whole-host Drain taints (others stay): it takes claims again."""
        api = client(ctx)
        mine = [
            t
            for t in api.get("/v1/taints", host=name)
            if t["effect"] == "Drain" and not t.get("device_id") and not t.get("parent")
        ]
        if not mine:
            _must_exist(api, name)
        _removed(_remove_each(api, api_path("/v1/hosts/{}/taints", name), mine), fmt, f"host {name}")


def _must_exist(api: Client, host: str, parent: str | None = None) -> None:
    """Fail (not found, exit 1) when the host, or the parent device on it, does not exist: a
    mistyped name must not read as "had no taint to remove" while the real one stays drained."""
    api.get(api_path("/v1/hosts/{}", host))
    if parent is not None and not api.get("/v1/devices", host=host, address=parent):
        raise CliError(f"host {host} has no device {parent}", code="not_found")


def _remove_each(api: Client, path: str, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Remove the taints just listed, each by its id: a retried request (the CLI retries after a
    lost answer) then never removes a taint someone added in between, as "remove all" would.
    One already gone (removed by an earlier try, or by someone else) is skipped; one the caller
    may not lift (an agent's token and an admin's taint) stays, said on stderr, as the API's
    "remove all" leaves it."""
    out: list[dict[str, Any]] = []
    for t in listed:
        try:
            out.extend(api.request("DELETE", path, params={"taint": t["id"]}))
        except CliError as exc:
            if exc.code == "forbidden":
                note = f"not removed: {exc.message}"
                typer.echo(printable(note, one_line=True), err=True)
            elif exc.code != "not_found":
                raise
    return out
