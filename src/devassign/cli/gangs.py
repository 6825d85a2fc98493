"""``devassign gang``: claim N instances all or none, explain a gang, release it."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

import typer

from devassign.cli.claims import HostOpt, RequestOpt, SpecOpt, build_body, plural, print_explanation, summary
from devassign.cli.client import CliError, ExitCode, api_path, not_empty
from devassign.cli.inventory import ALLOCATION_COLUMNS, FormatOpt, client
from devassign.cli.output import Format, console, emit
from devassign.scheduler.reasons import ordinal

InstanceOpt = Annotated[
    list[str] | None,
    typer.Option("--instance", metavar="CONSUMER", help="One instance (its UUID); repeatable"),
]
CountOpt = Annotated[
    int | None,
    typer.Option(
        "--instances",
        metavar="N",
        min=1,
        max=1000,
        help="N instances named PREFIX0, PREFIX1, ... (see --prefix), instead of --instance",
    ),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option(
        metavar="PREFIX",
        help="Names of --instances N (default: the gang's id, a dash and, when --gang is given, "
        "a digest of the project and token, so two projects' gangs of one id never collide)",
    ),
]
DistinctOpt = Annotated[bool, typer.Option("--distinct-hosts", help="At most one instance per host")]
MaxPerHostOpt = Annotated[
    int | None, typer.Option("--max-per-host", metavar="K", min=1, help="At most K instances per host")
]
SameOpt = Annotated[
    str | None,
    typer.Option(
        "--same",
        metavar="ATTRIBUTE",
        help="Every instance on hosts whose devices report one value of this attribute (e.g. rack)",
    ),
]
GangOpt = Annotated[
    str | None, typer.Option("--gang", metavar="ID", help="The gang's id (default: made from the key)")
]
_GANG_IDS = uuid.UUID("3f0c9a7e-5b1d-4e62-8f4a-2d6b9c1e7a53")  # namespace of the CLI's ids made from keys

ProjectOpt = Annotated[
    str | None, typer.Option(metavar="PROJECT", help="The instances' project (a member's token: its own)")
]


def gang_body(
    spec: list[str] | None,
    request: Any,
    hosts: list[str] | None,
    *,
    instance: list[str] | None,
    count: int | None,
    prefix: str | None,
    gang: str | None,
    distinct: bool,
    max_per_host: int | None,
    same: str | None,
    project: str | None,
    idempotency_key: str | None = None,
    caller: str = "",
) -> dict[str, Any]:
    """The ``POST /v1/gangs`` body from the options (the server validates it); ``caller``:
    :attr:`Client.caller`, for a gang id made from a key."""
    body = build_body(spec, request, hosts, project=project, gang=gang, idempotency_key=idempotency_key)
    if instance and count:
        raise CliError(
            "give --instance CONSUMER (repeatable) or --instances N, not both", status=ExitCode.USAGE
        )
    if count:
        start = prefix
        if not body.get("gang"):  # an id made from the key is per caller already
            body["gang"] = gang_id(body.get("idempotency_key"), body.get("project"), caller)
            start = f"{body['gang']}-" if start is None else start
        elif start is None:
            start = instance_prefix(body["gang"], body.get("project"), caller)
        body["instances"] = [f"{start}{i}" for i in range(count)]
    elif instance:
        body["instances"] = list(instance)
    if not body.get("instances"):
        raise CliError(
            "say which instances: --instance CONSUMER (repeatable), --instances N, or instances in --request",
            status=ExitCode.USAGE,
        )
    layout = body.get("layout")
    if layout is None:
        layout = {}
    elif not isinstance(layout, dict):
        raise CliError(
            f"{request}: layout must be a JSON object (distinct_hosts, max_per_host, same), "
            f"not {json.dumps(layout)[:40]}",
            status=ExitCode.USAGE,
        )
    layout = dict(layout)
    if distinct:
        layout["distinct_hosts"] = True
    if max_per_host is not None:
        layout["max_per_host"] = max_per_host
    if same:
        layout["same"] = same
    if layout:
        body["layout"] = layout
    return body


def gang_id(key: Any, project: Any, caller: str = "") -> str:
    """The id of a gang of ``--instances N`` given no ``--gang`` (its instances are named after
    it): made from the idempotency key, ``--project`` and the caller (a digest of its token: a
    member's token names its project) when there is a key, so a retry with the same key and
    token names the same gang and instances, and two projects' same key never collide; else
    random."""
    if isinstance(key, str) and key:
        seed = f"{project if isinstance(project, str) else ''}\n{caller}\n{key}"
        return f"gang-{uuid.uuid5(_GANG_IDS, seed).hex[:12]}"
    return f"gang-{uuid.uuid4().hex[:12]}"


def instance_prefix(gang: str, project: Any, caller: str = "") -> str:
    """The names of ``--instances N`` of a gang whose id was given (``--gang ID``): the id, then
    a digest of the project and the caller, so two projects' gangs of one id (ids are per
    project) never name the same consumers (consumer ids are cloud-wide), and the same command
    with the same token names the same instances (a retry)."""
    seed = f"{project if isinstance(project, str) else ''}\n{caller}\n{gang}"
    return f"{gang}-{uuid.uuid5(_GANG_IDS, seed).hex[:8]}-"


def _details(exp: dict[str, Any]) -> None:
    """The hosts removed per reason and the closest misses of an explanation."""
    for code, n in (exp.get("removed") or {}).items():
        console.print(f"  {code}: {plural(int(n), 'host')} removed", markup=False, highlight=False)
    for h in exp.get("closest") or []:
        if "message" in h:
            console.print(f"  closest: {h['message']}", markup=False, highlight=False)


def _refused(exc: CliError, fmt: Format) -> CliError:
    """A 409's explanation printed for people; the one-line error says how many fit."""
    error = (exc.body or {}).get("error", {}) if isinstance(exc.body, dict) else {}
    exp = error.get("explanation")
    if not exp or fmt is not Format.table:
        return exc
    placed, wanted = error.get("placed"), error.get("wanted")
    if placed is None or wanted is None:
        console.print("[red]cannot place this gang[/red]")
        print_explanation(exp)
        return CliError(f"the gang does not fit: {summary(exp)}", code=exc.code)
    head = f"{placed} of {wanted} instances fit; the {ordinal(placed + 1)} fits on no host"
    console.print(f"[red]cannot place this gang[/red]: {head}", highlight=False)
    _details(exp)
    return CliError(f"{head}: {summary(exp)}", code=exc.code)


def register(app: typer.Typer) -> None:
    gang_app = typer.Typer(
        help="Gangs: N instances of one request, all placed or none.", no_args_is_help=True
    )
    app.add_typer(gang_app, name="gang")

    @gang_app.command("claim")
    def gang_claim(
        ctx: typer.Context,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        instance: InstanceOpt = None,
        count: CountOpt = None,
        prefix: PrefixOpt = None,
        distinct_hosts: DistinctOpt = False,
        max_per_host: MaxPerHostOpt = None,
        same: SameOpt = None,
        gang: GangOpt = None,
        project: ProjectOpt = None,
        idempotency_key: Annotated[
            str | None,
            typer.Option(
                metavar="KEY", help="Send the same key to retry safely: the same allocations come back"
            ),
        ] = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Claim every instance (one allocation each) or none; prints the allocations, or how
        many fit and why the next does not (exit 1)."""
        api = client(ctx)
        body = gang_body(
            spec,
            request,
            host,
            instance=instance,
            count=count,
            prefix=prefix,
            gang=not_empty("--gang", gang),
            distinct=distinct_hosts,
            max_per_host=max_per_host,
            same=not_empty("--same", same),
            project=project,
            idempotency_key=not_empty("--idempotency-key", idempotency_key),
            caller=api.caller,
        )
        body.setdefault("idempotency_key", f"cli-{uuid.uuid4()}")
        try:
            found = api.post("/v1/gangs", body)
        except CliError as exc:
            raise _refused(exc, fmt) from exc
        if fmt is Format.json:
            emit(found, fmt)
            return
        allocations = found.get("allocations") or []
        emit(allocations, fmt, ALLOCATION_COLUMNS)
        hosts = len({a["host"] for a in allocations})
        console.print(
            f"gang {found['gang']}: {plural(len(allocations), 'instance')} on {plural(hosts, 'host')}; "
            f"release all with `devassign gang release {found['gang']}`",
            markup=False,
            highlight=False,
        )

    @gang_app.command("explain")
    def gang_explain(
        ctx: typer.Context,
        spec: SpecOpt = None,
        request: RequestOpt = None,
        host: HostOpt = None,
        instance: InstanceOpt = None,
        count: CountOpt = None,
        prefix: PrefixOpt = None,
        distinct_hosts: DistinctOpt = False,
        max_per_host: MaxPerHostOpt = None,
        same: SameOpt = None,
        project: ProjectOpt = None,
        fmt: FormatOpt = Format.table,
    ) -> None:
        """Whether every instance fits now, and on which hosts; claims nothing. Exit 0 when it
        fits, 1 when not."""
        body = gang_body(
            spec,
            request,
            host,
            instance=instance,
            count=count,
            prefix=prefix,
            gang=None,
            distinct=distinct_hosts,
            max_per_host=max_per_host,
            same=same,
            project=project,
        )
        exp = client(ctx).post("/v1/gangs/explain", body)
        if fmt is Format.json:
            emit(exp, fmt)
        else:
            console.print(exp.get("message", ""), style="bold", markup=False, highlight=False)
            if not exp.get("fits"):
                _details(exp)
            for name, n in sorted((exp.get("per_host") or {}).items()):
                console.print(f"  {name}: {plural(n, 'instance')}", markup=False, highlight=False)
        if not exp.get("fits"):
            raise typer.Exit(1)

    @gang_app.command("release")
    def gang_release(
        ctx: typer.Context,
        gang: Annotated[
            str, typer.Argument(metavar="GANG", help="The gang's id, as `gang claim` printed it")
        ],
        project: Annotated[
            str | None,
            typer.Option(help="The gang's project (admins: gang ids are per project); members: their own"),
        ] = None,
    ) -> None:
        """Release every allocation of the gang at once (their devices go to cleaning)."""
        api = client(ctx)
        api.request(
            "DELETE", api_path("/v1/gangs/{}", gang), params={"project": project} if project else None
        )
        console.print(f"released gang {gang}", markup=False, highlight=False)
