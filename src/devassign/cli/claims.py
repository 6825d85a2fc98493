"""Client commands for requests: claim, explain, release, capacity, libvirt XML, quotas,
and clearing quarantined devices."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from devassign.cli.client import Client, CliError, ExitCode, api_path, devices_named, parse_json
from devassign.cli.inventory import ALLOCATION_COLUMNS, DEVICE_COLUMNS, FormatOpt, client
from devassign.cli.output import Format, console, emit
from devassign.scheduler.reasons import funnel_sentence

SpecOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--spec",
        metavar="hardware_resource:TYPE=N",
        help="N devices of TYPE, as in a flavor's extra_specs (repeatable; added to --request)",
    ),
]
RequestOpt = Annotated[
    Path | None,
    typer.Option(
        "--request",
        metavar="FILE.json",
        help="The request as JSON: requests (type, count, selector, first_available), "
        "constraints and hosts, as the server's API takes it",
        exists=False,
    ),
]
HostOpt = Annotated[
    list[str] | None,
    typer.Option("--host", metavar="HOST", help="Only this host (repeatable; admins)"),
]


def plural(n: int, noun: str) -> str:
    """``1 device``, ``2 devices``, ``0 instances``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pages(fetch: Callable[[str | None], dict[str, Any]]) -> dict[str, Any]:
    """A capacity walk, page after page (``fetch(cursor)``), added up into one answer: a
    region larger than one call may read is counted whole. The pages are read one after the
    other, so claims and releases between them are counted as each page found them."""
    merged: dict[str, Any] = {"total": 0, "truncated": False}
    after: str | None = None
    while True:
        page = fetch(after)
        merged["total"] += int(page["total"])
        merged["truncated"] = merged["truncated"] or bool(page.get("truncated"))
        if "per_host" in page:  # operators only
            merged.setdefault("per_host", {}).update(page["per_host"])
        if page.get("tainted"):  # of the whole cloud, on every page
            merged["tainted"] = page["tainted"]
        after = page.get("next")
        if not after:
            return merged


# The server takes a claim's body up to 1 MiB: a file past that is refused before it is read
# whole (``--request /dev/zero`` grew the CLI's memory without end).
MAX_REQUEST_FILE = 1024 * 1024


def build_body(
    spec: list[str] | None, request: Path | None, hosts: list[str] | None, **top: Any
) -> dict[str, Any]:
    """The claim/explain/capacity body from ``--spec`` and/or ``--request`` (the server
    validates it)."""
    body: dict[str, Any] = {}
    if request is not None:
        try:
            with request.open("rb") as f:
                raw = f.read(MAX_REQUEST_FILE + 1)
            if len(raw) > MAX_REQUEST_FILE:
                raise CliError(
                    f"{request} is larger than a claim the server takes (1 MiB)", status=ExitCode.USAGE
                )
            body = parse_json(raw.decode("utf-8"))
        except OSError as exc:
            raise CliError(f"cannot read {request}: {exc.strerror}", status=ExitCode.USAGE) from exc
        except ValueError as exc:  # not JSON, not UTF-8, or a number no request can carry
            raise CliError(f"{request} is not valid JSON: {exc}", status=ExitCode.USAGE) from exc
        if not isinstance(body, dict):
            raise CliError(f"{request} must hold a JSON object", status=ExitCode.USAGE)
    if spec:
        from_file = body.get("extra_specs") or {}
        if not isinstance(from_file, dict):
            raise CliError(f"{request}: extra_specs must be a JSON object", status=ExitCode.USAGE)
        extra = dict(from_file)
        for s in spec:
            key, sep, value = s.partition("=")
            key = key.strip()
            if not sep:
                raise CliError(f"--spec {s!r}: expected hardware_resource:TYPE=N", status=ExitCode.USAGE)
            if not key.startswith("hardware_resource:"):
                # A flavor's other specs (hw:...) are the server's to ignore; here, where each
                # --spec is meant as a request, another namespace is a typo that asks for nothing.
                raise CliError(
                    f"--spec {s!r}: only hardware_resource:TYPE=N asks for devices", status=ExitCode.USAGE
                )
            named = [
                r.get("name")
                for r in body.get("requests") or []
                if isinstance(r, dict) and f"hardware_resource:{r.get('type')}" == key
            ]
            if named:
                raise CliError(
                    f"--spec {key} asks for a type request {named[0]!r} of {request} asks for too: "
                    "give the total in one place",
                    status=ExitCode.USAGE,
                )
            if key in extra:
                # A dict would keep the last count alone: a claim of fewer devices than asked.
                where = f"in {request} and on the command line" if key in from_file else "on the command line"
                raise CliError(
                    f"--spec {key} is given twice ({where}): give the total once", status=ExitCode.USAGE
                )
            extra[key] = value.strip()
        body["extra_specs"] = extra
    if not body:
        raise CliError(
            "say what to request: --spec hardware_resource:TYPE=N or --request FILE.json",
            status=ExitCode.USAGE,
        )
    if hosts:
        body["hosts"] = hosts
    body.update({k: v for k, v in top.items() if v is not None})
    return body


def summary(exp: dict[str, Any]) -> str:
    """The explanation's verdict. When no host reached the scheduler, the reason is the
    pre-filter's (no host has the free devices, hosts are down, none has reported), not
    "0 hosts considered"."""
    funnel = exp.get("funnel") or {}
    if exp.get("fits") or exp.get("considered") or exp.get("feasible"):
        return str(exp.get("summary", ""))
    before = funnel_sentence(funnel, exp.get("taints") or ())
    if before:
        return f"no host fits: {before}"
    asked = "; ".join(str(h.get("message")) for h in exp.get("hosts") or [] if not h.get("fits"))
    if asked:
        return f"no host fits: {asked}"  # the hosts named (unknown ones, ones without devices)
    if funnel and not funnel.get("hosts"):
        return "no host fits: no host has reported to the server yet"
    return str(exp.get("summary", ""))


def policy_words(policy: dict[str, Any]) -> str:
    """``pack (weights: pack 1, numa 1, fragmentation 0.5)``."""
    weights = ", ".join(f"{name} {value:g}" for name, value in (policy.get("weights") or {}).items())
    return f"{policy.get('mode', '?')}" + (f" (weights: {weights})" if weights else "")


def print_explanation(exp: dict[str, Any]) -> None:
    """Why a request fits or not, for people."""
    console.print(summary(exp), style="bold", markup=False, highlight=False)
    funnel = exp.get("funnel") or {}
    if funnel and (exp.get("considered") or exp.get("feasible")):
        before = funnel_sentence(funnel, exp.get("taints") or ())
        if before:
            console.print(f"before scheduling: {before}", markup=False, highlight=False)
    for code, n in (exp.get("removed") or {}).items():
        console.print(f"  {code}: {plural(int(n), 'host')} removed", markup=False, highlight=False)
    for h in exp.get("hosts") or []:
        console.print(f"  {h['message']}", markup=False, highlight=False)
    for h in exp.get("closest") or []:
        if "message" in h:
            console.print(f"  closest: {h['message']}", markup=False, highlight=False)


def text_of(c: Client, path: str) -> str:
    """GET ``path`` through the client's request helper, so its failures are the same one-line
    errors and exit codes as every command's, and return the answer as text (the helper
    parses JSON, and this answer is not)."""
    answers: list[httpx.Response] = []
    c.http.event_hooks["response"] = [*c.http.event_hooks["response"], answers.append]
    c.request("GET", path)
    return answers[-1].text if answers else ""


def register(app: typer.Typer, device_app: typer.Typer) -> None:
    quota_app = typer.Typer(help="Per-project limits per resource type.", no_args_is_help=True)
    app.add_typer(quota_app, name="quota")

    @app.command()
    def claim(
        ctx: typer.Context,
        consumer: Annotated[
            str | None,
            typer.Option(
                metavar="CONSUMER",
                help="The instance the devices are for (its UUID); may be left out when the "
                "--request file names its consumer",
            ),
        ] = None,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        project: Annotated[
            str | None,
            typer.Option(metavar="PROJECT", help="The consumer's project (a member's token: its own)"),
        ] = None,
        idempotency_key: Annotated[
            str | None,
            typer.Option(
                metavar="KEY",
                help="Send the same key to retry safely: you get the same allocation (default: a "
                "new key per command, so the command's own retries never claim twice)",
            ),
        ] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Place and claim; prints the allocation, or why it cannot be placed (exit 1)."""
        body = build_body(
            spec,
            request,
            host,
            consumer=consumer,
            project=project,
            idempotency_key=idempotency_key,
        )
        if not body.get("consumer"):
            raise CliError(
                'say whose devices these are: --consumer UUID (or "consumer" in the --request file)',
                status=ExitCode.USAGE,
            )
        body.setdefault("idempotency_key", f"cli-{uuid.uuid4()}")
        try:
            allocation = client(ctx).post("/v1/claims", body)
        except CliError as exc:
            if exc.exit_status == ExitCode.UNREACHABLE:
                # The claim may have been made before the answer was lost: the same key
                # gets its allocation, never a second one.
                raise CliError(
                    f"{exc.message}; the claim may have been made: run the command again with "
                    f"--idempotency-key {body['idempotency_key']} to get its answer",
                    code=exc.code,
                    status=exc.exit_status,
                    body=exc.body,
                ) from exc
            exp = (exc.body or {}).get("error", {}).get("explanation") if isinstance(exc.body, dict) else None
            if exp and fmt is Format.table:
                console.print("[red]cannot place this request[/red]")
                print_explanation(exp)
                raise CliError(f"no host can hold this request: {summary(exp)}", code=exc.code) from exc
            raise
        emit(allocation, fmt, ALLOCATION_COLUMNS)
        if fmt is Format.table:
            n = plural(len(allocation.get("devices") or []), "device")
            console.print(
                f"{allocation['consumer']}: {n} {allocation['state']} on {allocation['host']}",
                markup=False,
                highlight=False,
            )

    @app.command()
    def explain(
        ctx: typer.Context,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Why a request can or cannot be placed, claiming nothing; exit 0 when it fits, 1 when
        no host can hold it now."""
        exp = client(ctx).post("/v1/explain", build_body(spec, request, host))
        if fmt is Format.json:
            emit(exp, fmt)
        else:
            print_explanation(exp)
            for p in exp.get("placements") or []:
                devices = "; ".join(
                    f"{name}: {len(d['ids'])} {d['type']}" for name, d in p["devices"].items()
                )
                console.print(
                    f"  fits on {p['host']} (score {p['score']}): {devices}", markup=False, highlight=False
                )
            if exp.get("policy"):
                console.print(
                    f"hosts ranked by: {policy_words(exp['policy'])}", markup=False, highlight=False
                )
        if not exp.get("fits"):
            raise typer.Exit(int(ExitCode.ERROR))

    @app.command()
    def release(
        ctx: typer.Context,
        consumer: Annotated[
            str, typer.Option(metavar="CONSUMER", help="The consumer whose devices to release")
        ],
    ) -> None:
        """Release all of a consumer's devices (they are cleaned before anyone else gets them)."""
        client(ctx).delete(api_path("/v1/allocations/{}", consumer))
        typer.echo(f"released {consumer}: its devices go to cleaning")

    @app.command()
    def capacity(
        ctx: typer.Context,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        page_size: Annotated[
            int,
            typer.Option(
                "--page-size",
                min=1,
                max=1000,
                help="Hosts counted per call when none is named: the cloud is counted a page at a time",
            ),
        ] = 1000,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """How many more instances of this request the cloud can hold now (the request as for
        claim: --spec and/or --request)."""
        c = client(ctx)
        if request is None:
            build_body(spec, None, host)  # says what is missing
            if host:
                found = c.get("/v1/capacity", spec=spec, host=host)
            else:
                found = _pages(lambda after: c.get("/v1/capacity", spec=spec, limit=page_size, after=after))
        else:
            body = build_body(spec, request, host)
            for unused in ("consumer", "project", "idempotency_key"):
                body.pop(unused, None)  # a claim's file may carry them; capacity counts, claims nothing
            if body.get("hosts"):
                found = c.post("/v1/capacity", body)
            else:
                found = _pages(
                    lambda after: c.request(
                        "POST",
                        "/v1/capacity",
                        params={"limit": page_size, **({"after": after} if after else {})},
                        json=body,
                    )
                )
        if fmt is Format.json:
            emit(found, fmt)
            return
        rows = [{"host": h, "instances": n} for h, n in (found.get("per_host") or {}).items()]
        if rows:
            emit(rows, fmt)
        more = " or more" if found.get("truncated") else ""
        console.print(
            f"total: {plural(int(found['total']), 'instance')}{more}", markup=False, highlight=False
        )
        tainted = found.get("tainted") or {}
        if tainted:  # free but kept from new claims: what an operator could give back
            apart = ", ".join(f"{plural(int(n), t + ' device')}" for t, n in sorted(tainted.items()))
            console.print(f"not counted: {apart} tainted", markup=False, highlight=False)

    @app.command("libvirt-xml")
    def libvirt_xml(
        ctx: typer.Context,
        consumer: Annotated[
            str, typer.Option(metavar="CONSUMER", help="The consumer whose devices to describe")
        ],
    ) -> None:
        """The libvirt <hostdev> / <interface type='hostdev'> elements for a consumer's devices."""
        xml = text_of(client(ctx), api_path("/v1/allocations/{}/libvirt", consumer))
        if not xml.strip():
            # Not an error, and easy to take for one: say what the empty answer means.
            typer.echo(
                f"note: {consumer}'s devices have no libvirt element (declared [[resource]] devices: "
                "attach them as their information says)",
                err=True,
            )
            return
        typer.echo(xml, nl=not xml.endswith("\n"))

    @device_app.command("clear")
    def device_clear(
        ctx: typer.Context,
        address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The device's address (or id)")],
        host: Annotated[
            str | None,
            typer.Option(metavar="HOST", help="The device's host, when the address is on several"),
        ] = None,
        reason: Annotated[
            str, typer.Option(metavar="TEXT", help="Why it is safe now (kept in the event log)")
        ] = "",
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Let a quarantined device go (back through cleaning, or available for one-time-use
        types), vouch for one whose health check failed (available now; a check that still
        fails marks it again), or retire a missing one that is not coming back (removed; cleaned
        first if it does)."""
        c = client(ctx)
        found = devices_named(c, address, host)
        if len(found) > 1:
            clearable = ("quarantined", "missing")
            found = [d for d in found if d["state"] in clearable or not d["healthy"]] or found
        if len(found) > 1:
            hosts = ", ".join(d["host"] for d in found)
            raise CliError(
                f"{address} is on several hosts ({hosts}): say which with --host",
                status=ExitCode.USAGE,
            )
        emit(
            c.post(api_path("/v1/devices/{}/clear", found[0]["id"]), {"reason": reason}), fmt, DEVICE_COLUMNS
        )

    @quota_app.command("set")
    def quota_set(
        ctx: typer.Context,
        project: Annotated[str, typer.Argument(metavar="PROJECT", help="The project to limit")],
        type_name: Annotated[str, typer.Argument(metavar="TYPE", help="The resource type")],
        limit: Annotated[
            int | None,
            typer.Argument(metavar="LIMIT", help="Most devices it may hold; omit to remove the limit"),
        ] = None,
    ) -> None:
        """Limit how many devices of a type a project may hold (admin)."""
        client(ctx).put(api_path("/v1/quotas/{}/{}", project, type_name), {"limit": limit})
        typer.echo(f"quota of {project} for {type_name}: {limit if limit is not None else 'unlimited'}")

    @quota_app.command("list")
    def quota_list(
        ctx: typer.Context,
        project: Annotated[str | None, typer.Option(metavar="PROJECT", help="Only this project")] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Each project's limit and use per resource type (a member: its own project)."""
        emit(client(ctx).get("/v1/quotas", project=project), fmt)
