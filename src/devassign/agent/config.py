"""The agent's TOML configuration (docs/agent.md, "Configuration reference"), checked when loaded.

A mistyped whitelist once made Nova delete rows of devices in use (bug 1633120), so a
rule that cannot mean what its author thought is refused at load time with the file and
the rule named, never applied loosely.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import math
import os
import re
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from devassign.agent.model import FoundDevice
from devassign.cli.client import header_safe, usable_url
from devassign.domain import HOST_RE, NAME_RE, DeviceKind, address_error
from devassign.lifecycle.policy import LifecyclePolicy, path_problem
from devassign.schemas import MAX_ATTRIBUTES, MAX_DEVICES_PER_REPORT, MAX_INT64, value_problem

DEFAULT_SERVER = "http://127.0.0.1:8470"
MATCH_KEYS = (
    "vendor_id",
    "product_id",
    "address",
    "class",
    "driver",
    "kind",
    "parent",
    "mdev_type",
    "vgpu_type",
    "mig_profile",
)
# Partitions carry their GPU's ids: only a rule that names them takes them (see DeviceRule.matches).
_PARTITION_KEYS = {
    DeviceKind.MDEV_TYPE: "mdev_type",
    DeviceKind.VGPU: "vgpu_type",
    DeviceKind.MIG: "mig_profile",
}
RULE_KEYS = (
    "type",
    "match",
    "attributes",
    "allow_shared_iommu_group",
    "match_vfs",
    "pf_bandwidth_mbps",
    "allow_host_in_use",
)
RESOURCE_KEYS = ("type", "information", "count", "id", "attributes")
TOP_KEYS = (
    "host",
    "server",
    "report_interval",
    "heartbeat_interval",
    "work_interval",
    "health_interval",
    "health_passes",
    "token",
    "state_file",
    "pci_ids",
    "device",
    "resource",
    "lifecycle",
)
LIFECYCLE_KEYS = ("handlers", "commands", "action_timeout")
_HANDLER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX4_RE = re.compile(r"^(?:0x)?[0-9a-fA-F]{4}$")
# Whole bytes of the class code: the class, with its subclass, with its programming interface.
_CLASS_PREFIX_RE = re.compile(r"^(?:0x)?(?:[0-9a-fA-F]{2}){1,3}$")
# A PCI address as lspci prints it, without the domain (``06:00.0``, ``3b:*``): Nova's
# device_spec reads the domain as any, and so does a rule; as written it could match nothing.
_NO_DOMAIN_RE = re.compile(r"^[^:/]{1,2}:[^:/]+$")
_STATIC_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,150}$")


# Attributes one rule or declaration may add: discovery adds up to some twenty of its own.
MAX_CONFIG_ATTRIBUTES = 32


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file and the rule."""


@dataclass(frozen=True)
class DeviceRule:
    """One ``[[device]]`` entry: discovered devices that match become devices of ``type``."""

    type: str
    match: dict[str, str]
    attributes: dict[str, Any] = field(default_factory=dict)
    allow_shared_iommu_group: bool = False
    # Whether the rule takes SR-IOV VFs; None: only when its match names them (takes_vfs).
    match_vfs: bool | None = None
    # The VFs it takes share their PF's bandwidth (scheduler/shares.py): this many Mbit/s, or
    # "link" for the PF's link speed; a request's min_tx_rate_mbps takes from it.
    pf_bandwidth_mbps: int | str | None = None
    # Offer what it matches even where the host uses it (its disk mounted, its link the default
    # route: agent/hostuse.py); only for an operator who has checked what that pulls away.
    allow_host_in_use: bool = False

    def takes_vfs(self, dev: FoundDevice, host_driver: str | None = None) -> bool:
        """Whether this rule may take the VF ``dev`` at all (its match keys decide the rest).

        Some VFs carry their PF's vendor and device id (NVIDIA's, QEMU's NVMe), so a rule
        written for whole devices must not also hand out their VFs. A rule takes VFs when it
        says ``match_vfs = true``, names ``kind`` or ``parent``, names one function by an
        ``address`` without a glob, or names a ``product_id`` or a ``driver`` (no glob) that
        is the VF's own and not its PF's (Intel's 154c VFs of a 1572 PF; iavf VFs of an i40e
        PF). ``host_driver``: see :meth:`matches`.
        """
        if self.match_vfs is not None:
            return self.match_vfs
        m = self.match
        if "kind" in m or "parent" in m:
            return True
        # One function, in any domain (``*:05:10.1``, what ``05:10.1`` as lspci prints it reads as)
        if "address" in m and not any(c in m["address"].removeprefix("*:") for c in "*?["):
            return True
        driver = m.get("driver")
        if driver is not None and not any(c in driver for c in "*?["):
            have = host_driver if host_driver is not None else dev.driver
            if have == driver and dev.pf_driver is not None and dev.pf_driver != driver:
                return True
        pf_product = dev.attributes.get("pf_product_id")
        want = m.get("product_id")
        return want not in (None, "*") and pf_product is not None and pf_product != dev.product_id

    def matches(self, dev: FoundDevice, host_driver: str | None = None) -> bool:
        """True when every key of the rule holds for ``dev``.

        ``driver`` is the device's host driver: ``host_driver`` where the agent holds the
        device on vfio-pci for a consumer (the driver it had before its setup), else the one
        it is bound to. A device a rule took by its driver stays that rule's while assigned.

        mdev slots, vGPUs and MIG placements carry their GPU's ids, so only a rule that names
        their kind (or ``mdev_type``, ``vgpu_type``, ``mig_profile``) takes them: a rule for
        whole GPUs must not also take their partitions.
        SR-IOV VFs only go to a rule that takes VFs (:meth:`takes_vfs`).
        """
        m = self.match
        if dev.kind is DeviceKind.STATIC:
            return False
        named = _PARTITION_KEYS.get(dev.kind)
        if named is not None and named not in m and "kind" not in m:
            return False
        if dev.kind is DeviceKind.SRIOV_VF and not self.takes_vfs(dev, host_driver):
            return False
        for key, want in m.items():
            if key in ("vendor_id", "product_id"):
                have = getattr(dev, key)
                if want not in ("*", have):
                    return False
            elif key == "class":
                if not (dev.class_code or "").startswith(want):
                    return False
            elif key == "kind":
                if dev.kind.value != want:
                    return False
            elif key in ("mdev_type", "vgpu_type", "mig_profile"):
                attribute = {"vgpu_type": "vgpu_name"}.get(key, key)
                value = dev.attributes.get(attribute)
                if not isinstance(value, str) or not fnmatch.fnmatchcase(value, want):
                    return False
            else:  # address, driver, parent: globs (addresses whatever their case: a USB
                # serial or an mdev type name may have capitals; the rule's glob is lowercased)
                have = host_driver if key == "driver" and host_driver is not None else getattr(dev, key)
                if have is not None and key != "driver":
                    have = have.lower()
                if have is None or not fnmatch.fnmatchcase(have, want):
                    return False
        return True


@dataclass(frozen=True)
class ResourceDecl:
    """One ``[[resource]]`` entry: ``count`` statically declared units of ``type``."""

    type: str
    count: int = 1
    information: str = ""
    id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    first: int = 0  # the first unit's number: entries of one type without an id count on

    def units(self) -> list[FoundDevice]:
        """``static:<id>/<i>`` for each unit, so every unit has its own identity."""
        base = self.id or self.type
        out = []
        for i in range(self.first, self.first + self.count):
            attrs = dict(self.attributes)
            if self.information:
                attrs["information"] = self.information
            out.append(
                FoundDevice(
                    address=f"static:{base}/{i}",
                    kind=DeviceKind.STATIC,
                    type=self.type,
                    attributes=attrs,
                )
            )
        return out


LEGACY_STATE_NAME = "agent-state.json"


def state_dir() -> Path:
    """The user's state folder for devassign (``~/.local/state/devassign`` on Linux)."""
    return platformdirs.user_state_path("devassign")


def default_state_file(config_path: str | os.PathLike[str] | None = None, host: str | None = None) -> Path:
    """Where the host id, generation and journal live when the configuration does not say.

    One file per configuration file: ``agent-state-<file name>-<hash of its full path>.json``
    in the user's state folder, so two agents on one machine (two configuration files) never
    share one and become one host. Without a configuration file, one per host name; without
    either, the single file of earlier versions.
    """
    if config_path is not None:
        resolved = Path(config_path).expanduser().resolve()
        tag = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.stem)[:40] or "agent"
        return state_dir() / f"agent-state-{stem}-{tag}.json"
    if host is not None:
        return state_dir() / f"agent-state-{host}.json"
    return state_dir() / LEGACY_STATE_NAME


@dataclass(frozen=True)
class AgentConfig:
    host: str
    server: str = DEFAULT_SERVER
    report_interval: float = 30.0
    heartbeat_interval: float = 10.0
    work_interval: float = 2.0
    # Every device's health is checked this often (and a device right after its cleanup); a
    # device that failed is healthy again only after ``health_passes`` passing checks in a row.
    health_interval: float = 60.0
    health_passes: int = 3
    token: str | None = None
    state_file: Path = field(default_factory=default_state_file)
    pci_ids: Path | None = None
    devices: tuple[DeviceRule, ...] = ()
    resources: tuple[ResourceDecl, ...] = ()
    lifecycle: LifecyclePolicy = field(default_factory=LifecyclePolicy)
    source: str = "<defaults>"
    # Set when state_file is the default: the default of earlier versions (one file for every
    # agent of the user), taken over once if it is this host's (see StateFile's ``adopt``).
    legacy_state_file: Path | None = None


def default_config() -> AgentConfig:
    """No file: this host's name, no rules (``agent discover`` still shows every device)."""
    host = socket.gethostname()
    return AgentConfig(
        host=host, token=os.environ.get("DEVASSIGN_TOKEN"), state_file=default_state_file(host=host)
    )


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and check an agent configuration file; :class:`ConfigError` says what is wrong."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{p}: not valid TOML: nested too deeply") from None
    return parse_config(raw, source=str(p), base_dir=p.parent, path=p)


def parse_config(
    raw: dict[str, Any], source: str = "<config>", base_dir: Path | None = None, path: Path | None = None
) -> AgentConfig:
    """Check ``raw`` (a parsed TOML document). ``path``: the file it came from, which the
    default state file is derived from (see :func:`default_state_file`)."""

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {msg}")

    _unknown(raw, TOP_KEYS, "", fail)
    host = raw.get("host", socket.gethostname())
    if not isinstance(host, str) or not HOST_RE.fullmatch(host):
        raise fail(f"host {host!r} is not a host name (letters, digits, _ . -)")
    server = raw.get("server", DEFAULT_SERVER)
    if not isinstance(server, str) or not re.match(r"^https?://[^\s/]+", server) or not usable_url(server):
        raise fail(f"server {server!r} is not an http(s) URL")
    interval = _positive(raw.get("report_interval", 30), "report_interval", fail)
    heartbeat = _positive(raw.get("heartbeat_interval", max(1.0, interval / 3)), "heartbeat_interval", fail)
    work_interval = _positive(raw.get("work_interval", 2), "work_interval", fail)
    health_interval = _positive(raw.get("health_interval", 60), "health_interval", fail)
    passes = raw.get("health_passes", 3)
    if isinstance(passes, bool) or not isinstance(passes, int) or not 1 <= passes <= 100:
        raise fail(f"health_passes must be a whole number from 1 to 100, not {passes!r}")
    token = raw.get("token", os.environ.get("DEVASSIGN_TOKEN"))
    if token is not None and (not isinstance(token, str) or not token):
        raise fail("token must be a non-empty string")
    if token is not None and not header_safe(token):
        # A header cannot carry it: every request would fail, and the agent retry for ever.
        raise fail(
            "token holds spaces, newlines or non-ASCII characters: "
            "give it as `devassign token create` printed it"
        )
    base = base_dir or Path.cwd()
    state_file = default_state_file(path, host)
    legacy: Path | None = state_dir() / LEGACY_STATE_NAME
    if "state_file" in raw:
        legacy = None
        if not isinstance(raw["state_file"], str):
            raise fail("state_file must be a path")
        state_file = base / Path(raw["state_file"]).expanduser()
        if state_file.is_dir():  # "fix or remove the file" would then name a folder
            raise fail(f"state_file {state_file} is a folder: name a file (the agent writes it)")
    pci_ids = None
    if "pci_ids" in raw:
        if not isinstance(raw["pci_ids"], str):
            raise fail("pci_ids must be a path")
        pci_ids = base / Path(raw["pci_ids"]).expanduser()
    rules = tuple(_rule(r, i, fail) for i, r in enumerate(_tables(raw, "device", fail), 1))
    resources = _numbered(_resource(r, i, fail) for i, r in enumerate(_tables(raw, "resource", fail), 1))
    declared = sum(res.count for res in resources)
    if declared > MAX_DEVICES_PER_REPORT:
        raise fail(
            f"[[resource]] counts add up to {declared} units, more than the {MAX_DEVICES_PER_REPORT} "
            "one host may report"
        )
    addresses: set[str] = set()
    for res in resources:
        for unit in res.units():
            if unit.address in addresses:
                raise fail(f"[[resource]] {res.type}: unit {unit.address} is declared twice")
            addresses.add(unit.address)
    return AgentConfig(
        host=host,
        server=server.rstrip("/"),
        report_interval=interval,
        heartbeat_interval=heartbeat,
        work_interval=work_interval,
        health_interval=health_interval,
        health_passes=passes,
        token=token,
        state_file=state_file,
        pci_ids=pci_ids,
        devices=rules,
        resources=resources,
        lifecycle=_lifecycle(raw.get("lifecycle", {}), fail),
        source=source,
        legacy_state_file=legacy,
    )


def _lifecycle(table: Any, fail: Any) -> LifecyclePolicy:
    """``[lifecycle]``: the handlers this agent runs and the programs ``command`` may start."""
    if not isinstance(table, dict):
        raise fail("lifecycle must be a table: [lifecycle]")
    _unknown(table, LIFECYCLE_KEYS, "[lifecycle]: ", fail)
    default = LifecyclePolicy()
    handlers = table.get("handlers", sorted(default.handlers))
    if not isinstance(handlers, list) or not all(isinstance(h, str) for h in handlers):
        raise fail("[lifecycle]: handlers must be a list of handler names")
    for name in handlers:
        if not _HANDLER_NAME_RE.fullmatch(name):
            raise fail(f"[lifecycle]: handlers: {name!r} is not a handler name")
    commands = table.get("commands", [])
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise fail("[lifecycle]: commands must be a list of absolute paths or globs")
    for path in commands:
        problem = path_problem(path)
        if problem:
            raise fail(f"[lifecycle]: commands: {problem}")
    timeout = table.get("action_timeout", default.action_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 86400:
        raise fail(f"[lifecycle]: action_timeout={timeout!r}: expected seconds, from 1 to 86400")
    return LifecyclePolicy(frozenset(handlers), tuple(commands), float(timeout))


def _unknown(table: dict[str, Any], known: tuple[str, ...], where: str, fail: Any) -> None:
    for key in table:
        if key not in known:
            raise fail(f"{where}unknown key {key!r}; known keys: {', '.join(known)}")


# The longest interval: a day (TOML has inf and nan, and a sleep of 1e300 s fails).
MAX_INTERVAL = 86_400.0


def _positive(value: Any, name: str, fail: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_INTERVAL  # nan compares false both ways
    ):
        raise fail(f"{name} must be a positive number of seconds up to {MAX_INTERVAL:g}, not {value!r}")
    return float(value)


def _tables(raw: dict[str, Any], key: str, fail: Any) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise fail(f"{key} must be written as [[{key}]] tables")
    return value


def _type_name(table: dict[str, Any], where: str, fail: Any) -> str:
    name = table.get("type")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise fail(f"{where}: type {name!r} must be 1-64 letters, digits or _")
    return name


# What discovery reads on the host and the server, the scheduler or a handler acts on (the
# refusals of a report, resets, VF and mdev identity, MIG placements): a rule saying otherwise
# would turn a device the server refuses, or one its handler cannot set up, into one on offer.
DISCOVERED_ATTRIBUTES = frozenset(
    {
        "no_iommu_group", "resettable", "reset_methods", "class", "pcie_root",
        "netdev", "pf_netdev", "pf_product_id", "vf_index", "sriov_numvfs", "sriov_totalvfs",
        "sriov_vf_device", "mdev_type", "mdev_total", "mdev_name", "device_api", "mig_profile",
        "mig_profile_id", "mig_start", "mig_slices", "vgpu_type_id", "vgpu_name", "usb_hub",
        "bus_path", "serial",
    }
)  # fmt: skip


def _attributes(table: dict[str, Any], where: str, fail: Any, *, rule: bool = False) -> dict[str, Any]:
    """A rule's or declaration's attributes: JSON's plain values, checked at load (a TOML date
    or a NaN failed later, when a report was sent, and the device was left out)."""
    attrs = table.get("attributes", {})
    if not isinstance(attrs, dict):
        raise fail(f"{where}: attributes must be a table")
    if len(attrs) > MAX_CONFIG_ATTRIBUTES:
        raise fail(
            f"{where}: at most {MAX_CONFIG_ATTRIBUTES} attributes (discovery adds its own, and a "
            f"device may carry {MAX_ATTRIBUTES} in all)"
        )
    for key, value in attrs.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", key):
            raise fail(f"{where}: attribute name {key!r} must be an identifier")
        if rule and key in DISCOVERED_ATTRIBUTES:
            raise fail(
                f"{where}: attribute {key!r} is what discovery reads on the host (the server and "
                "the handlers act on it); a rule cannot set it: name your own attribute"
            )
        items = value if isinstance(value, list) else [value]
        wrong = [v for v in items if not _plain(v)]
        if wrong:
            raise fail(
                f"{where}: attribute {key!r} must be text, a whole number, true/false, a finite "
                f"number or a list of those, not {_shown(wrong[0])}"
            )
    return dict(attrs)


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -MAX_INT64 <= value <= MAX_INT64
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and value_problem(value) is None


def _shown(value: Any) -> str:
    """A refused value in the file's terms (``repr`` would say ``datetime.date(2027, 1, 1)``)."""
    if isinstance(value, datetime.date | datetime.time):  # a datetime is a date too
        return f"the TOML date or time {value.isoformat()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list inside a list"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} (past 64 bits)"
    if isinstance(value, str):
        return "text with a NUL or a lone surrogate character"
    return repr(value)


def _rule(table: dict[str, Any], i: int, fail: Any) -> DeviceRule:
    where = f"[[device]] #{i}"
    _unknown(table, RULE_KEYS, f"{where}: ", fail)
    name = _type_name(table, where, fail)
    where = f"[[device]] #{i} (type {name})"
    match = table.get("match")
    if not isinstance(match, dict) or not match:
        raise fail(f"{where}: needs a match table with at least one of {', '.join(MATCH_KEYS)}")
    _unknown(match, MATCH_KEYS, f"{where}: match: ", fail)
    norm: dict[str, str] = {}
    for key, value in match.items():
        if not isinstance(value, str) or not value:
            raise fail(f"{where}: match.{key} must be a non-empty string, not {value!r}")
        norm[key] = _match_value(key, value, where, fail)
    _contradictions(norm, table.get("pf_bandwidth_mbps"), where, fail)
    allow = table.get("allow_shared_iommu_group", False)
    if not isinstance(allow, bool):
        raise fail(f"{where}: allow_shared_iommu_group must be true or false")
    match_vfs = table.get("match_vfs")
    if match_vfs is not None:
        if not isinstance(match_vfs, bool):
            raise fail(f"{where}: match_vfs must be true or false")
        kind = norm.get("kind")
        if kind is not None and match_vfs != (kind == DeviceKind.SRIOV_VF.value):
            raise fail(
                f"{where}: match_vfs = {str(match_vfs).lower()} contradicts match.kind {kind!r}; "
                "leave match_vfs out"
            )
    bandwidth = table.get("pf_bandwidth_mbps")
    wrong = isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or not 1 <= bandwidth <= 10_000_000
    if bandwidth is not None and bandwidth != "link" and wrong:
        raise fail(f'{where}: pf_bandwidth_mbps must be Mbit/s (1 to 10000000) or "link", not {bandwidth!r}')
    host_in_use = table.get("allow_host_in_use", False)
    if not isinstance(host_in_use, bool):
        raise fail(f"{where}: allow_host_in_use must be true or false")
    return DeviceRule(
        name, norm, _attributes(table, where, fail, rule=True), allow, match_vfs, bandwidth, host_in_use
    )


def _contradictions(norm: dict[str, str], bandwidth: Any, where: str, fail: Any) -> None:
    """A match no device can meet is a mistake said at load, not a silent "0 offered"."""
    kind = norm.get("kind")
    named = [k for k in _PARTITION_KEYS.values() if k in norm]
    if len(named) > 1:
        raise fail(f"{where}: match.{named[0]} and match.{named[1]} name two kinds of partition; keep one")
    for part_kind, key in _PARTITION_KEYS.items():
        if key in norm and kind is not None and kind != part_kind.value:
            raise fail(f"{where}: match.{key} takes {part_kind.value} devices, not match.kind {kind!r}")
    if "parent" in norm and kind in (DeviceKind.PCI.value, DeviceKind.SRIOV_PF.value):
        raise fail(f"{where}: match.parent names what a VF or a partition is under; a {kind} has none")
    if bandwidth is not None and kind is not None and kind != DeviceKind.SRIOV_VF.value:
        raise fail(f"{where}: pf_bandwidth_mbps shares a PF's link among its VFs; match.kind is {kind!r}")


def _glob_problem(value: str) -> str | None:
    """Why a glob can match nothing: an unclosed ``[`` (read as a plain character) or a range
    that runs backwards (``[z-a]``)."""
    i = 0
    while i < len(value):
        if value[i] != "[":
            i += 1
            continue
        j = i + 1
        if j < len(value) and value[j] == "!":
            j += 1
        if j < len(value) and value[j] == "]":
            j += 1
        end = value.find("]", j)
        if end < 0:
            return f"its [ at {i + 1} is never closed"
        for a, b in re.findall(r"(.)-(.)", value[i + 1 : end]):
            if a > b:
                return f"its range [{a}-{b}] is empty"
        i = end + 1
    return None


def _match_value(key: str, value: str, where: str, fail: Any) -> str:
    if key in ("address", "parent"):
        value = value.lower()  # as it is matched: a range checked as written could turn empty
    if key in ("address", "driver", "parent", "mdev_type", "vgpu_type", "mig_profile"):
        problem = _glob_problem(value)
        if problem:
            raise fail(f"{where}: match.{key} {value!r} can match nothing: {problem}")
    if key in ("vendor_id", "product_id"):
        if value == "*":
            return value
        if not _HEX4_RE.match(value):
            raise fail(f"{where}: match.{key} {value!r} must be 4 hex digits, e.g. 8086")
        return value.lower().removeprefix("0x")
    if key == "class":
        if not _CLASS_PREFIX_RE.match(value):
            raise fail(
                f"{where}: match.class {value!r} must be 2, 4 or 6 hex digits (class, subclass, "
                "programming interface), e.g. 03 or 0302"
            )
        return value.lower().removeprefix("0x")
    if key == "kind":
        kinds = [k.value for k in DeviceKind if k is not DeviceKind.STATIC]
        if value not in kinds:
            raise fail(f"{where}: match.kind {value!r} must be one of {', '.join(kinds)}")
    if key in ("address", "parent"):
        return f"*:{value}" if _NO_DOMAIN_RE.match(value) else value
    return value


def _numbered(resources: Iterable[ResourceDecl]) -> tuple[ResourceDecl, ...]:
    """Entries of one type without an ``id`` number their units on from the one before (two
    cards of a type with different ``information``: ``static:T/0``, ``static:T/1``), in the
    file's order; an ``id`` keeps an entry's identities whatever the order."""
    next_unit: dict[str, int] = {}
    out = []
    for res in resources:
        if res.id is None:
            first = next_unit.get(res.type, 0)
            next_unit[res.type] = first + res.count
            out.append(replace(res, first=first))
        else:
            out.append(res)
    return tuple(out)


def _resource(table: dict[str, Any], i: int, fail: Any) -> ResourceDecl:
    where = f"[[resource]] #{i}"
    _unknown(table, RESOURCE_KEYS, f"{where}: ", fail)
    name = _type_name(table, where, fail)
    where = f"[[resource]] #{i} (type {name})"
    count = table.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise fail(f"{where}: count must be a whole number from 1 to 10000, not {count!r}")
    info = table.get("information", "")
    if not isinstance(info, str):
        raise fail(f"{where}: information must be a string")
    ident = table.get("id")
    if ident is not None and (not isinstance(ident, str) or not _STATIC_ID_RE.match(ident)):
        raise fail(f"{where}: id {ident!r} must be letters, digits and _ . : -")
    decl = ResourceDecl(name, count, info, ident, _attributes(table, where, fail))
    problem = address_error(DeviceKind.STATIC, decl.units()[0].address)
    if problem:
        raise fail(f"{where}: {problem}")
    return decl
