"""Client commands for the inventory: types, hosts, devices, allocations, events."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from devassign.cli.client import Client, CliError, ExitCode, api_path, not_empty, one_device, parse_json
from devassign.cli.follow import follow_events, watch_table
from devassign.cli.output import Format, emit, when
from devassign.domain import EVENTS_PAGE_MAX, DeviceState

FormatOpt = Annotated[Format, typer.Option("-f", "--format", help="table or json")]
TypeNameArg = Annotated[str, typer.Argument(metavar="NAME", help="The type's name, e.g. GPU_A100")]
HostNameArg = Annotated[str, typer.Argument(metavar="NAME", help="The host's name, e.g. compute-1")]
ParamsOpt = Annotated[
    str | None,
    typer.Option(
        help="The request params the type accepts, as JSON or @FILE with JSON, e.g. "
        '\'{"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}}\'; '
        "replaces the whole declaration ('{}': none)"
    ),
]


def client(ctx: typer.Context) -> Client:
    root = ctx.find_root().obj or {}
    return Client(root.get("url"), root.get("token"))


def _counts(key: str) -> Any:
    return lambda t: t["counts"][key]


def _count_or_zero(key: str) -> Any:
    """A count an older server may not send (0 then)."""
    return lambda t: t["counts"].get(key, 0)


TYPE_COLUMNS = [
    ("name", lambda t: t["name"]),
    ("description", lambda t: t["description"]),
    ("total", _counts("total")),
    ("available", _counts("available")),
    ("down", lambda t: t["counts"].get("down", 0)),
    ("reserved", _counts("reserved")),
    ("assigned", _counts("assigned")),
    ("cleaning", _counts("cleaning")),
    ("unhealthy", _counts("unhealthy")),
]
# States shown only when some type has devices in them (``type_columns``): free devices that a
# taint or their pool holds back (after ``available``), and devices out of service other than
# the unhealthy (at the end).
_HELD_BACK = ("tainted", "partitioned")
_OUT_OF_SERVICE = ("quarantined", "missing")


def type_columns(types: list[dict[str, Any]], *, every: bool = False) -> list[tuple[str, Any]]:
    """The types table's columns: ``tainted`` (free devices a taint holds back) and
    ``partitioned`` (free devices their GPU or PF cannot give now: another mode runs on it, or
    too little is left), neither in ``available``, and ``quarantined`` and ``missing``, only
    when some type has any (``every``: always, for a table refreshed in place, whose devices
    may enter those states later), so the usual table fits 80 columns. Each column counts the
    one state it names, as ``devassign devices --state`` and ``/metrics`` do: they add up to
    the total."""

    def shown(names: tuple[str, ...]) -> list[tuple[str, Any]]:
        return [
            (name, _count_or_zero(name))
            for name in names
            if every or any(t["counts"].get(name) for t in types)
        ]

    return [*TYPE_COLUMNS[:4], *shown(_HELD_BACK), *TYPE_COLUMNS[4:], *shown(_OUT_OF_SERVICE)]


def describe_param(spec: dict[str, Any]) -> str:
    """``integer 1..4094, allowed 100 101; demo: 100``: one declared param in a table cell."""
    words = [str(spec.get("type"))]
    if spec.get("min") is not None or spec.get("max") is not None:
        low, high = spec.get("min"), spec.get("max")
        words.append(f"{'' if low is None else low}..{'' if high is None else high}")
    if spec.get("type") == "string":
        words.append(f"max {spec.get('max_length')}")
    if spec.get("pattern"):
        words.append(f"matching {spec['pattern']}")
    text = " ".join(words)
    if spec.get("allowed") is not None:
        text += ", allowed " + (" ".join(json.dumps(v) for v in spec["allowed"]) or "none")
    for project, values in (spec.get("allowed_by_project") or {}).items():
        text += f"; {project}: " + (" ".join(json.dumps(v) for v in values) or "none")
    return text


TYPE_SHOW_COLUMNS = [
    *TYPE_COLUMNS[:2],
    ("handler", lambda t: t.get("handler") or "-"),
    (
        "params",
        lambda t: (
            "\n".join(f"{n}: {describe_param(s)}" for n, s in (t.get("params") or {}).items()) or "none"
        ),
    ),
    *TYPE_COLUMNS[2:4],
    *((name, _count_or_zero(name)) for name in _HELD_BACK),
    *TYPE_COLUMNS[4:],
    *((name, _count_or_zero(name)) for name in _OUT_OF_SERVICE),
]
DeviceArg = Annotated[
    str, typer.Argument(metavar="ADDRESS|ID", help="The device's address (as `devices` shows it) or its id")
]
DeviceHostOpt = Annotated[
    str | None, typer.Option(metavar="HOST", help="The device's host, when the address is on several")
]

HOST_COLUMNS = [
    ("name", lambda h: h["name"]),
    ("status", lambda h: h["status"]),
    ("devices", lambda h: h["device_count"]),
    ("last report", lambda h: when(h["last_report_at"])),
    ("last seen", lambda h: when(h["last_seen_at"])),
    ("generation", lambda h: h["generation"]),
]
DEVICE_COLUMNS = [
    ("host", lambda d: d["host"]),
    ("address", lambda d: d["address"]),
    ("type", lambda d: d["type"]),
    ("kind", lambda d: d["kind"]),
    ("state", lambda d: d["state"] + ("" if d["healthy"] or d["state"] == "unhealthy" else " (unhealthy)")),
    ("numa", lambda d: d["numa_node"]),
    ("iommu", lambda d: d["iommu_group"]),
    ("parent", lambda d: d["parent"]),
    ("consumer", lambda d: d["consumer"]),
]
ALLOCATION_COLUMNS = [
    ("consumer", lambda a: a["consumer"]),
    ("project", lambda a: a["project"]),
    ("host", lambda a: a["host"]),
    ("state", lambda a: a["state"] + (f" ({a['release_reason']})" if a.get("release_reason") else "")),
    ("devices", lambda a: [f"{d['type']}:{d['address']}" for d in a["devices"]]),
    ("created", lambda a: when(a["created_at"])),
]
EVENT_COLUMNS = [
    ("id", lambda e: e["id"]),
    ("at", lambda e: when(e["at"])),
    ("actor", lambda e: e["actor"]),
    ("action", lambda e: e["action"]),
    ("host", lambda e: e.get("host") or ""),
    ("message", lambda e: e["message"]),
]


def register(app: typer.Typer) -> typer.Typer:
    """Add the inventory commands; returns the ``device`` group for others to extend."""
    type_app = typer.Typer(
        help="One resource type: create, show, update, delete (all but show: admin).", no_args_is_help=True
    )
    host_app = typer.Typer(help="One host: show, delete or rename it.", no_args_is_help=True)
    device_app = typer.Typer(help="One device: show it, or clear its quarantine.", no_args_is_help=True)
    app.add_typer(type_app, name="type")
    app.add_typer(host_app, name="host")
    app.add_typer(device_app, name="device")

    @app.command()
    def types(
        ctx: typer.Context,
        fmt: FormatOpt = Format.table,
        watch: Annotated[
            bool, typer.Option("--watch", help="Keep the table on screen, refreshed in place; Ctrl-C ends")
        ] = False,
        interval: Annotated[
            float,
            typer.Option(min=0.5, max=3600, help="Seconds between two refreshes of --watch (0.5 to 3600)"),
        ] = 2.0,
    ) -> None:
        """Each resource type: description and how many devices are in each state."""
        api = client(ctx)
        found = api.get("/v1/resource-types")
        if watch:
            with contextlib.suppress(KeyboardInterrupt):
                watch_table(
                    lambda: api.get("/v1/resource-types"),
                    type_columns(found, every=True),
                    interval=interval,
                    fmt=fmt,
                )
            return
        if fmt is Format.json:
            # The table's columns, at the top of each type as the table shows them (the
            # API's ``counts`` stay too): ``jq '.[].available'`` reads what the table says.
            found = [{**t, **(t.get("counts") or {})} for t in found]
        emit(found, fmt, type_columns(found))

    @type_app.command("create")
    def type_create(
        ctx: typer.Context,
        name: TypeNameArg,
        description: Annotated[str, typer.Option(help="What the type is")] = "",
        handler: Annotated[
            str | None, typer.Option(help="Lifecycle handler; default: picked from the device kind")
        ] = None,
        config: Annotated[
            str | None, typer.Option(help='Handler options as JSON, e.g. \'{"reset": "none-ok"}\'')
        ] = None,
        params: ParamsOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Add a type to the catalog."""
        body: dict[str, Any] = {"name": name, "description": description, "handler": handler}
        if config:
            body["config"] = _json_option("--config", config)
        if params is not None:
            body["params"] = _params_option(params)
        emit(client(ctx).post("/v1/resource-types", body), fmt, TYPE_SHOW_COLUMNS)

    @type_app.command("show")
    def type_show(ctx: typer.Context, name: TypeNameArg, fmt: FormatOpt = Format.table) -> None:
        """One type: its description, handler, the request params it accepts, and how many of
        its devices are in each state."""
        emit(client(ctx).get(api_path("/v1/resource-types/{}", name)), fmt, TYPE_SHOW_COLUMNS)

    @type_app.command("update")
    def type_update(
        ctx: typer.Context,
        name: TypeNameArg,
        description: Annotated[str | None, typer.Option(help="A new description")] = None,
        config: Annotated[
            str | None, typer.Option(help="Handler options as JSON; replaces the whole config")
        ] = None,
        params: ParamsOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Change a type's description, handler config or request params (admin); what is not
        given stays as it is."""
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if config is not None:
            body["config"] = _json_option("--config", config)
        if params is not None:
            body["params"] = _params_option(params)
        emit(client(ctx).patch(api_path("/v1/resource-types/{}", name), body), fmt, TYPE_SHOW_COLUMNS)

    @type_app.command("delete")
    def type_delete(ctx: typer.Context, name: TypeNameArg) -> None:
        """Delete a type that no device uses."""
        client(ctx).delete(api_path("/v1/resource-types/{}", name))
        typer.echo(f"deleted {name}")

    @app.command()
    def hosts(
        ctx: typer.Context,
        limit: Annotated[
            int, typer.Option(min=1, max=HOSTS_PAGE_MAX, help="At most this many hosts, by name")
        ] = HOSTS_PAGE,
        after: Annotated[str | None, typer.Option(help="Hosts named after this one (the next page)")] = None,
        every: Annotated[bool, typer.Option("--all", help="Every host, read a page at a time")] = False,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Hosts by name, up or down, with their last report: the first 1000 unless --limit or --all."""
        api = client(ctx)
        if every:
            emit(all_hosts(api, after), fmt, HOST_COLUMNS)
            return
        # One more than shown tells whether more follow (the server's page ends at the CLI's maximum).
        found = api.get("/v1/hosts", limit=min(limit + 1, HOSTS_PAGE_MAX), after=after)
        emit(found[:limit], fmt, HOST_COLUMNS)
        if len(found) > limit or len(found) == HOSTS_PAGE_MAX:
            more = "more hosts follow" if len(found) > limit else "more hosts may follow"
            typer.echo(
                f"{more}: `devassign hosts --after {found[limit - 1]['name']}` for the next "
                f"{limit}, or --all for every one",
                err=True,
            )

    @host_app.command("show")
    def host_show(ctx: typer.Context, name: HostNameArg, fmt: FormatOpt = Format.table) -> None:
        """One host: up or down, its device count, its last report and when it was last heard from."""
        emit(client(ctx).get(api_path("/v1/hosts/{}", name)), fmt, HOST_COLUMNS)

    @host_app.command("delete")
    def host_delete(
        ctx: typer.Context,
        name: HostNameArg,
        force: Annotated[
            bool,
            typer.Option(
                "--force",
                help="Also while its agent is heard from (a reinstalled machine reporting under a new "
                "host id); a running agent registers the host again",
            ),
        ] = False,
    ) -> None:
        """Forget a host whose devices are all free; stop its agent and revoke its token first."""
        path = api_path("/v1/hosts/{}", name)
        client(ctx).request("DELETE", path, params={"force": "true"} if force else None)
        typer.echo(f"deleted {name}")

    @host_app.command("rename")
    def host_rename(ctx: typer.Context, old: str, new: str) -> None:
        """The same machine under a new name (admin); its agent then needs a token for NEW."""
        client(ctx).post(api_path("/v1/hosts/{}/rename", old), {"new_name": new})
        typer.echo(
            f"renamed {old} to {new}; its agent needs a token for {new} "
            f'(`devassign token create --role agent --host {new}`) and host = "{new}" in agent.toml'
        )

    @app.command()
    def devices(
        ctx: typer.Context,
        host: Annotated[str | None, typer.Option(help="Only this host")] = None,
        type: Annotated[str | None, typer.Option("--type", help="Only this type")] = None,
        state: Annotated[str | None, typer.Option(help="Only this state")] = None,
        limit: Annotated[
            int,
            typer.Option(min=1, max=DEVICES_PAGE_MAX, help="At most this many devices, by host and address"),
        ] = DEVICES_PAGE,
        after: Annotated[
            str | None,
            typer.Option(help="Devices after HOST/ADDRESS (the next page)", metavar="HOST/ADDRESS"),
        ] = None,
        every: Annotated[bool, typer.Option("--all", help="Every device, read a page at a time")] = False,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Devices with their state, filterable by host, type and state: the first 1000 unless
        --limit or --all."""
        states = [s.value for s in DeviceState]
        if state is not None and state not in states:
            raise CliError(f"--state {state!r}: one of {', '.join(states)}", status=ExitCode.USAGE)
        api = client(ctx)
        filters = {"host": not_empty("--host", host), "type": not_empty("--type", type), "state": state}
        if every:
            emit(
                all_pages(api, "/v1/devices", DEVICES_PAGE_MAX, after, device_key, **filters),
                fmt,
                DEVICE_COLUMNS,
            )
            return
        found = api.get("/v1/devices", **filters, limit=limit + 1, after=after)
        emit(found[:limit], fmt, DEVICE_COLUMNS)
        if len(found) > limit:
            typer.echo(
                f"more devices follow: `devassign devices --after {device_key(found[limit - 1])}` "
                f"(with the same filters) for the next {limit}, or --all for every one",
                err=True,
            )

    @device_app.command("show")
    def device_show(
        ctx: typer.Context,
        device: DeviceArg,
        host: DeviceHostOpt = None,
        fmt: FormatOpt = Format.json,
    ) -> None:
        """One device, with everything known about it (JSON unless -f table)."""
        emit(one_device(client(ctx), device, host), fmt, DEVICE_COLUMNS)

    @app.command()
    def allocations(
        ctx: typer.Context,
        consumer: Annotated[str | None, typer.Option(help="Only this consumer")] = None,
        host: Annotated[str | None, typer.Option(help="Only this host")] = None,
        released: Annotated[bool, typer.Option("--released", help="Include released ones")] = False,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Who holds what."""
        found = client(ctx).get(
            "/v1/allocations",
            consumer=not_empty("--consumer", consumer),
            host=not_empty("--host", host),
            include_released=released or None,
        )
        emit(found, fmt, ALLOCATION_COLUMNS)

    @app.command()
    def events(
        ctx: typer.Context,
        host: Annotated[str | None, typer.Option(help="Only this host's events")] = None,
        device: Annotated[str | None, typer.Option(help="Only this device's (its id or address)")] = None,
        consumer: Annotated[str | None, typer.Option(help="Only this consumer's")] = None,
        limit: Annotated[
            int,
            typer.Option(
                min=1, max=EVENTS_PAGE_MAX, help="At most this many (with --follow: the last ones first)"
            ),
        ] = 50,
        follow: Annotated[
            bool,
            typer.Option(
                "--follow",
                help="Then print new events as they come, one a line (JSON Lines with -f json); "
                "reconnects by itself; Ctrl-C ends",
            ),
        ] = False,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """The event log, newest first; with --follow, oldest first and as it grows."""
        host, device, consumer = (
            not_empty("--host", host),
            not_empty("--device", device),
            not_empty("--consumer", consumer),
        )
        if follow:
            filters = {"host": host, "device": device, "consumer": consumer}
            with contextlib.suppress(KeyboardInterrupt):
                follow_events(client(ctx), filters, history=limit, fmt=fmt)
            return
        found = client(ctx).get("/v1/events", host=host, device=device, consumer=consumer, limit=limit)
        emit(found, fmt, EVENT_COLUMNS)

    return device_app


HOSTS_PAGE = 1000
DEVICES_PAGE = 1000
DEVICES_PAGE_MAX = 10_000
HOSTS_PAGE_MAX = 100_000


def all_pages(
    api: Client, path: str, page: int, after: str | None, key: Callable[[dict[str, Any]], str], **filters: Any
) -> list[dict[str, Any]]:
    """Every item of a keyset-paged listing after ``after``, read ``page`` at a time; ``key``
    gives an item's ``after=`` for the next page."""
    out: list[dict[str, Any]] = []
    while True:
        found = api.get(path, **filters, limit=page, after=after)
        out += found
        if len(found) < page:
            return out
        after = key(found[-1])


def all_hosts(api: Client, after: str | None = None) -> list[dict[str, Any]]:
    """Every host after ``after``, read ``HOSTS_PAGE_MAX`` at a time (keyset pages by name)."""
    return all_pages(api, "/v1/hosts", HOSTS_PAGE_MAX, after, lambda h: str(h["name"]))


def device_key(d: dict[str, Any]) -> str:
    """A device's place in the devices listing: ``HOST/ADDRESS``, what ``after=`` takes."""
    return f"{d['host']}/{d['address']}"


def _params_option(text: str) -> Any:
    """``--params``: JSON, or ``@FILE`` holding it."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"--params {text}: cannot read the file: {exc.strerror}", status=2) from exc
        except UnicodeDecodeError as exc:
            raise CliError(
                f"--params {text}: not UTF-8 text (byte {exc.start}): give JSON in UTF-8", status=2
            ) from exc
    return _json_option("--params", text)


def _json_option(name: str, text: str) -> Any:
    try:
        return parse_json(text)
    except ValueError as exc:
        raise CliError(f"{name} is not valid JSON: {exc}", status=2) from exc
