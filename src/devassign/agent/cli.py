"""``devassign agent ...``: run the agent, show what it would report, import Nova's config.

Every failure a user can cause ends as one line on stderr and a non-zero exit code, never a
traceback: 2 for a wrong command line, configuration or sysfs root, 3 when the server cannot
be reached (or fails), 4 when it refuses the agent's token, 1 for any other refusal or a bad
state file (docs/cli.md, "Exit codes").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from devassign.cli.client import ExitCode
from devassign.cli.output import print_table

if TYPE_CHECKING:
    from devassign.agent.config import AgentConfig
    from devassign.agent.inventory import Inventory
    from devassign.agent.model import FoundDevice
    from devassign.agent.state import StateFile
    from devassign.agent.worker import Agent
    from devassign.hostio import Sysfs
    from devassign.lifecycle.host import HostOps

# The agent's own modules (discovery, handlers, the configuration's models) are imported by
# the commands that use them: every other ``devassign`` command starts without them.

app = typer.Typer(
    help="The host agent: discover devices, report them to the server, keep them current.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Agent configuration (TOML)")]
SysfsOpt = Annotated[
    Path, typer.Option("--sysfs-root", help="Where sysfs is mounted (a generated tree in tests)")
]


class Format(StrEnum):
    table = "table"
    json = "json"


def _fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(int(code))


def _config(path: Path | None) -> AgentConfig:
    from devassign.agent.config import ConfigError, default_config, load_config

    try:
        return load_config(path) if path is not None else default_config()
    except ConfigError as exc:
        _fail(str(exc))


def _sysfs(root: Path, config: AgentConfig) -> Sysfs:
    """The sysfs tree at ``root``; a folder with neither PCI nor USB devices, and a
    configuration that declares none, is a wrong ``--sysfs-root``, not an empty host."""
    from devassign.hostio import Sysfs

    if not root.is_dir():
        _fail(f"{root}: no such folder (expected a sysfs tree)")
    sysfs = Sysfs(root)
    if not sysfs.is_dir("bus/pci") and not sysfs.is_dir("bus/usb") and not config.resources:
        _fail(
            f"{root} has neither bus/pci nor bus/usb: not a sysfs tree (sysfs is at /sys on a "
            "host), and the configuration declares no [[resource]] either"
        )
    return sysfs


def _refusal_code(exc: Exception) -> ExitCode:
    """4 when the server refused who is asking (401, 403: the agent's token), else 1."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):  # the refusals word their HTTP status: "refused ... (401 ..."
        found = re.search(r"\((\d{3})\b", str(exc))
        status = int(found.group(1)) if found else None
    return ExitCode.DENIED if status in (401, 403) else ExitCode.ERROR


def _n(count: int, noun: str) -> str:
    """``1 device``, ``2 devices``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Agent configuration (TOML)")],
    sysfs_root: SysfsOpt = Path("/sys"),
    once: Annotated[bool, typer.Option("--once", help="Report once, do the pending work once, exit")] = False,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate",
            help="Act on a generated sysfs tree as if it were a kernel (demos and tests); "
            "netlink and commands are recorded, not run, and nvidia-smi answered for the tree's GPUs",
        ),
    ] = False,
    simulate_fail: Annotated[
        list[str] | None,
        typer.Option(
            "--simulate-fail",
            help="With --simulate: writes to paths matching this glob fail (fault injection)",
            hidden=True,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Discover, report, heartbeat, and set up / clean devices as the server asks."""
    from devassign.agent.reporter import ReportRefused, ServerUnavailable
    from devassign.agent.state import StateError, StateFile
    from devassign.agent.worker import Agent, WorkRefused
    from devassign.lifecycle.host import HostOps
    from devassign.lifecycle.simulated import SimulatedSysfs
    from devassign.testing.host import simulated_host

    _logging(verbose)
    cfg = _config(config)
    _sysfs(sysfs_root, cfg)
    if simulate_fail and not simulate:
        _fail("--simulate-fail needs --simulate")
    ops = simulated_host(sysfs_root) if simulate else HostOps.for_host(sysfs_root)
    if simulate_fail and isinstance(ops.sysfs, SimulatedSysfs):
        for pattern in simulate_fail:
            ops.sysfs.fail(pattern)
    state_file = StateFile(cfg.state_file, host=cfg.host, adopt=cfg.legacy_state_file)
    agent = Agent(cfg, sysfs_root, ops, state=state_file)
    try:
        logging.getLogger(__name__).info("host %s, state file %s", cfg.host, state_file.path)
        state_file.lock()  # one agent process per state file
        _load_state(state_file, agent)  # another host's is refused before anything is sent
        _end_leftovers(ops, state_file.path)
        if not once:
            agent.run()
            return
        result = agent.run_once()
    except ServerUnavailable as exc:
        _fail(f"server unavailable: {exc}", ExitCode.UNREACHABLE)
    except (ReportRefused, WorkRefused) as exc:
        _fail(str(exc), _refusal_code(exc))
    except StateError as exc:
        _fail(str(exc), ExitCode.ERROR)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    report = result.report
    if report is not None:
        typer.echo(
            f"reported {_n(report.accepted, 'device')} for host {report.host} "
            f"(generation {report.generation}, {len(report.refused)} refused)"
        )
    for address, why in result.unhealthy.items():
        typer.echo(f"unhealthy {address}: {why}")
    for done in result.work:
        what = "ok" if done.ok else f"failed: {done.error}"
        state = done.state.value if done.state is not None else "not posted"
        again = " (after a restart)" if done.replayed else ""
        typer.echo(f"{done.action} {done.address}{again}: {what} -> {state}")


def _end_leftovers(ops: HostOps, state_path: Path) -> None:
    """Kill the handler commands an agent process of this state file left running when it was
    killed (lifecycle/ledger.py), before this one does any work; then write its own down."""
    from devassign.lifecycle.host import SubprocessRunner
    from devassign.lifecycle.ledger import CommandLedger

    if not isinstance(ops.runner, SubprocessRunner):
        return
    ops.runner.ledger = CommandLedger(state_path.with_name(state_path.name + ".commands"))
    for what in ops.runner.ledger.reap():
        logging.getLogger(__name__).warning(
            "killed %s: a handler command an earlier agent process left running", what
        )


@app.command()
def discover(
    config: ConfigOpt = None,
    sysfs_root: SysfsOpt = Path("/sys"),
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table or json")] = Format.table,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Print every device this host has and what it would report, without a server."""
    from devassign.agent.held import HeldPartitions
    from devassign.agent.inventory import build_inventory
    from devassign.agent.state import held_drivers, held_types, peek

    _logging(verbose)
    cfg = _config(config)
    # What the agent knows (read only, beside a running agent): the host driver of a device it
    # holds on vfio-pci, which its rule matches, and the vGPU types seen on a busy GPU.
    state = peek(cfg.state_file)
    if state is None and cfg.state_file.exists():
        typer.echo(
            f"note: the state file {cfg.state_file} cannot be read (`agent run` refuses it: fix or "
            "remove it); what follows leaves out what it records (devices the agent holds, USB names)",
            err=True,
        )
    inv = build_inventory(
        _sysfs(sysfs_root, cfg),
        cfg,
        vgpu_seen=dict(state.vgpu_types) if state else None,
        held_drivers=held_drivers(state) if state else None,
        held_types=held_types(state) if state else None,
        own_mdevs=HeldPartitions.of_state(state).mdev_uuids if state else (),
        usb_names={k: dict(v) for k, v in state.usb_names.items()} if state else None,
    )
    # A rule that types nothing is most often a typo (an address without its domain is read
    # as any domain; a vendor that is not here): said, not left to a silent "0 offered".
    # And a type whose devices are of different PCI classes (a vendor-only rule took a GPU's
    # HDMI audio function too: two "GPUs" for one card).
    classes: dict[str, set[str]] = {}
    for d in inv.devices:
        if d.type:
            classes.setdefault(d.type, set()).update([d.class_code[:2]] if d.class_code else [])
    for rule_type in dict.fromkeys(r.type for r in cfg.devices):
        if rule_type not in classes:
            why = _shadowed(cfg, rule_type, inv) or (
                f"no device here matches the rules for type {rule_type}" + _vfs_left(cfg, rule_type, inv)
            )
            typer.echo(f"note: {why}", err=True)
        elif len(classes.get(rule_type, ())) > 1:
            mixed = ", ".join(sorted(classes[rule_type]))
            typer.echo(
                f"note: type {rule_type} takes devices of PCI classes {mixed}: a match.class in its "
                "rule keeps one kind (a GPU's audio function goes with it as its IOMMU group mate)",
                err=True,
            )
    if fmt is Format.json:
        typer.echo(json.dumps([d.to_json() for d in inv.devices], indent=2))
        return
    headers, rows = _table(inv)
    print_table(headers, rows, title=f"{len(inv.devices)} devices, {len(inv.offered())} offered")


def _shadowed(cfg: AgentConfig, rule_type: str, inv: Inventory) -> str:
    """Where the rules of ``rule_type`` match devices an earlier rule took (the first rule that
    matches a device gives its type): which, and to what type; else ""."""
    rules = [r for r in cfg.devices if r.type == rule_type]
    taken: dict[str, list[str]] = {}
    for d in inv.devices:
        if d.type and d.type != rule_type and any(r.matches(d) for r in rules):
            taken.setdefault(d.type, []).append(d.address)
    if not taken:
        return ""
    where = "; ".join(
        f"{len(a)} to type {t} ({', '.join(a[:3])}{', ...' if len(a) > 3 else ''})"
        for t, a in sorted(taken.items())
    )
    return (
        f"type {rule_type} gets no device: its rule matches devices an earlier rule takes ({where}); "
        "the first rule that matches a device gives its type: narrow the earlier rule or reorder them"
    )


def _vfs_left(cfg: AgentConfig, rule_type: str, inv: Inventory) -> str:
    """What to add where a rule of ``rule_type`` would take SR-IOV VFs but is not written to
    (an address glob, a vendor: Nova's globs take VFs, a devassign rule only when it says so)."""
    from devassign.domain import DeviceKind

    vfs = [d for d in inv.devices if d.kind is DeviceKind.SRIOV_VF]
    rules = [r for r in cfg.devices if r.type == rule_type and r.match_vfs is None]
    n = sum(1 for d in vfs if any(dataclasses.replace(r, match_vfs=True).matches(d) for r in rules))
    if not n:
        return ""
    vf = "1 SR-IOV VF matches" if n == 1 else f"{n} SR-IOV VFs match"
    return f": {vf} its rule, which does not take VFs (add match_vfs = true)"


def _table(inv: Inventory) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of ``agent discover``; the table fits the terminal (``cli.output``)."""
    cols: list[tuple[str, Callable[[Any], Any]]] = [
        ("address", lambda d: d.address),
        ("kind", lambda d: d.kind.value),
        ("ids", lambda d: f"{d.vendor_id or '?'}:{d.product_id or '?'}" if d.vendor_id else ""),
        ("product", lambda d: d.attributes.get("name") or d.attributes.get("product") or ""),
        ("numa", lambda d: d.numa_node),
        ("iommu", lambda d: d.iommu_group),
        ("driver", lambda d: d.driver),
        ("parent", lambda d: d.parent),
        ("type", lambda d: d.type),
        ("notes", _notes),
    ]
    rows = [["" if (v := get(dev)) is None else str(v) for _, get in cols] for dev in inv.devices]
    return [name for name, _ in cols], rows


def _notes(dev: FoundDevice) -> str:
    """The device's flags, and for one the host uses, why (``host_in_use: sda1 is swap``)."""
    from devassign.agent.model import FLAG_HOST_IN_USE

    shown = [f"{f}: {'; '.join(dev.host_use)}" if f == FLAG_HOST_IN_USE else f for f in dev.flags]
    if dev.attributes.get("no_iommu_group") is True:
        # Not a flag of the agent's: the server refuses it for a handler that binds vfio-pci.
        shown.append("no_iommu_group (the IOMMU is off: refused for vfio-pci handlers)")
    return ", ".join(shown)


@app.command("import-nova")
def import_nova_cmd(
    file: Annotated[Path, typer.Argument(help="nova.conf, or a JSON file of specs and aliases")],
) -> None:
    """Print Nova's PCI device_spec and alias settings as devassign device rules (TOML)."""
    from devassign.agent.config import ConfigError
    from devassign.agent.nova import import_nova

    try:
        typer.echo(import_nova(file), nl=False)
    except ConfigError as exc:
        _fail(str(exc))


def _load_state(state_file: StateFile, agent: Agent) -> None:
    """Read the state file; one that records another host name is taken only where the server
    says the host of this name has the file's host id (an admin renamed the host), so a
    renamed machine's agent needs its new name and token, not an edit of the state file."""
    from devassign.agent.reporter import ServerUnavailable
    from devassign.agent.state import OtherHost, StateError

    try:
        _ = state_file.state
    except OtherHost as exc:
        try:
            record = agent.reporter.host_record(exc.host_id)
        except ServerUnavailable as down:
            why = f"the server, which could confirm a rename, did not answer: {down}"
            raise StateError(f"{exc} ({why})") from exc
        if record is None or record.get("host_id") != exc.host_id:
            raise
        state_file.follow_rename(exc.recorded)
        logging.getLogger(__name__).warning(
            "host %s was renamed %s on the server (same host id %s): %s now records the new name",
            exc.recorded,
            agent.config.host,
            exc.host_id,
            state_file.path,
        )
