"""Domain vocabulary shared by every layer: states, kinds, roles and device identities.

Kept free of I/O and of any framework so the agent, the scheduler, the store and the
server all speak the same words without importing one another.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from enum import StrEnum
from typing import Any

from devassign import errors


class DeviceState(StrEnum):
    """Where a device is in its life (docs/requests.md, "Device states").

    ``available -> reserved -> assigned -> cleaning -> available``; ``quarantined`` after a
    failed cleanup; ``unhealthy`` for a free device whose health check failed; ``missing`` for a
    device that vanished from its host's report while in use; ``removed`` for a free device that
    vanished (kept, never handed out, revived if it comes back).
    """

    AVAILABLE = "available"
    RESERVED = "reserved"
    ASSIGNED = "assigned"
    CLEANING = "cleaning"
    QUARANTINED = "quarantined"
    UNHEALTHY = "unhealthy"
    MISSING = "missing"
    REMOVED = "removed"


# States in which a device belongs to somebody and must never be handed to anyone else.
IN_USE_STATES: frozenset[DeviceState] = frozenset(
    {DeviceState.RESERVED, DeviceState.ASSIGNED, DeviceState.CLEANING}
)


class DeviceKind(StrEnum):
    """How a device was found (``agent discover``, docs/agent.md)."""

    PCI = "pci"
    SRIOV_PF = "sriov_pf"
    SRIOV_VF = "sriov_vf"
    MDEV_TYPE = "mdev_type"
    USB = "usb"
    STATIC = "static"
    # An NVIDIA vGPU of vGPU 17 and later: a VF given a vGPU type through its
    # ``nvidia/current_vgpu_type`` (no mdev); one device per VF and creatable type.
    VGPU = "vgpu"
    # A MIG GPU instance at one placement of a GPU's memory slices.
    MIG = "mig"


# The kinds Nova can attach from an ARQ's handle (a PCI address, or an mdev): what a Cyborg bind
# claims; a type's USB, static or MIG devices are never bound through that API.
NOVA_ATTACHABLE_KINDS = (
    DeviceKind.PCI,
    DeviceKind.SRIOV_PF,
    DeviceKind.SRIOV_VF,
    DeviceKind.VGPU,
    DeviceKind.MDEV_TYPE,
)


class Role(StrEnum):
    """Token roles: an admin runs the cloud, an agent speaks for one host, a member for a project,
    a monitor only reads ``/metrics`` (what a Prometheus server holds: nothing else if it leaks)."""

    ADMIN = "admin"
    AGENT = "agent"
    MEMBER = "member"
    MONITOR = "monitor"


class AllocationState(StrEnum):
    """An allocation is live while reserved or assigned; released ones stay for history."""

    RESERVED = "reserved"
    ASSIGNED = "assigned"
    RELEASED = "released"


class ArqState(StrEnum):
    """A Cyborg accelerator request's state, as Nova reads it (the Cyborg API)."""

    INITIAL = "Initial"
    BIND_STARTED = "BindStarted"
    BOUND = "Bound"
    BIND_FAILED = "BindFailed"


NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
# The domain has 4 hex digits, or 5 behind an Intel VMD controller (10000:01:00.0).
PCI_ADDRESS_RE = re.compile(r"^[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# An mdev slot: the parent's PCI address, the mdev type, the slot index.
MDEV_ADDRESS_RE = re.compile(r"^([0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/([A-Za-z0-9_.-]+)/(\d+)$")
# A USB device: vendor:product:serial, or its bus path (1-2.3) when it has no serial.
VGPU_ADDRESS_RE = re.compile(r"^([0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/vgpu/(\d{1,9})$")
MIG_ADDRESS_RE = re.compile(
    r"^([0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/mig/([A-Za-z0-9.+_-]{1,32})@(\d{1,2})$"
)
USB_ADDRESS_RE = re.compile(r"^(usb:[0-9a-f]{4}:[0-9a-f]{4}:[A-Za-z0-9_.-]{1,128}|usb:\d+-\d+(\.\d+)*)$")
STATIC_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")
HEX4_RE = re.compile(r"^[0-9a-f]{4}$")


# ---------------------------------------------------------------- identifiers from callers
#
# Names that callers choose travel back in URL paths (``/v1/allocations/{consumer}``), query
# strings, events, logs and the dashboard. Each starts with a letter or digit and uses a small
# ASCII alphabet with no ``/``, space, markup or control/bidi characters, so everything
# accepted can be read and released by URL and shown as it is. The lengths are the database
# columns'. Listed in docs/limits.md.

# The extra-spec namespace whose keys ask for devices (``hardware_resource:TYPE=N``).
SPEC_PREFIX = "hardware_resource:"
# Arrays and objects nested in any request body (server/limits.py), and in what is read back.
MAX_JSON_DEPTH = 32
EVENTS_PAGE_MAX = 10_000  # the most events one GET /v1/events answers (and `devassign events --limit`)
# What stands for a value nested too deeply when it is read back (cut_too_deep).
TOO_DEEP = f"<nested deeper than {MAX_JSON_DEPTH} levels: cut off; set this value again>"


def cut_too_deep(value: Any, *, limit: int = MAX_JSON_DEPTH, _depth: int = 1) -> Any:
    """``value`` (decoded JSON) with the arrays and objects nested deeper than ``limit``
    levels replaced by :data:`TOO_DEEP`, so that it can always be serialized again.

    Bodies are limited to that depth at the edge, but a value stored before (a few hundred
    levels) made every read of it a 500: Pydantic refuses to serialize it. Never recurses past
    ``limit``; a value within the limit comes back as it is (the same object).
    """
    if isinstance(value, dict | list) and _depth > limit:
        return TOO_DEEP
    if isinstance(value, dict):
        items = {k: cut_too_deep(v, limit=limit, _depth=_depth + 1) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list):
        out = [cut_too_deep(v, limit=limit, _depth=_depth + 1) for v in value]
        return value if all(a is b for a, b in zip(out, value, strict=True)) else out
    return value


# A UUID as OpenStack writes them (Nova's instances, Cyborg's ARQs, Placement's providers): 32
# hex digits, dashes optional (oslo_utils.uuidutils.is_uuid_like takes the same, any case).
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
# A consumer (the instance the devices are for): UUIDs, Nova instance ids, ``ns:name``.
CONSUMER_MAX = 64
CONSUMER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
CONSUMER_PUNCTUATION = "_.:-"
CONSUMER_RULE = "1-64 characters: a letter or digit, then letters, digits and _ . : -"
# A project (a tenant): the Keystone-like names and ids of a cloud.
PROJECT_MAX = 64
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PROJECT_PUNCTUATION = "_.-"
PROJECT_RULE = "1-64 characters: a letter or digit, then letters, digits and _ . -"
# A label (a token's name, shown as the actor of its events): also @ and # (alice@example.com,
# member:demo#17).
LABEL_MAX = 128
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@#-]{0,127}$")
LABEL_PUNCTUATION = "_.:@#-"
LABEL_RULE = "1-128 characters: a letter or digit, then letters, digits and _ . : @ # -"


_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _char(c: str) -> str:
    """A character as a message can show it: ``'/'``, ``NUL (U+0000)``, ``U+202E RIGHT-TO-LEFT
    OVERRIDE`` (never the character itself when it is not printable ASCII)."""
    if c == "\x00":
        return "NUL (U+0000)"
    if c.isascii() and c.isprintable():
        return repr(c)
    return f"U+{ord(c):04X} {unicodedata.name(c, '')}".rstrip()


def _problem(
    value: object, pattern: re.Pattern[str], punctuation: str, what: str, rule: str, limit: int
) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be text ({rule})"
    if len(value) > limit:
        return f"{what} is {len(value)} characters, at most {limit} ({rule})"
    if pattern.fullmatch(value):
        return None
    if not value:
        return f"{what} is empty ({rule})"
    allowed = _ALNUM.union(punctuation)
    at = 0 if value[0] not in _ALNUM else next((i for i, c in enumerate(value) if c not in allowed), 0)
    return f"{value!a} is not a valid {what}: {_char(value[at])} at position {at}; {rule}"


def consumer_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a consumer id, or ``None``."""
    return _problem(value, CONSUMER_RE, CONSUMER_PUNCTUATION, "consumer id", CONSUMER_RULE, CONSUMER_MAX)


def project_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a project name, or ``None``."""
    return _problem(value, PROJECT_RE, PROJECT_PUNCTUATION, "project name", PROJECT_RULE, PROJECT_MAX)


def label_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a label (a token's name), or ``None``."""
    return _problem(value, LABEL_RE, LABEL_PUNCTUATION, "name", LABEL_RULE, LABEL_MAX)


def _check(problem: str | None, field: str) -> None:
    if problem:
        raise errors.DevassignError(errors.INVALID_REQUEST, f"{field}: {problem}")


def check_consumer(value: str, field: str = "consumer") -> str:
    """``value`` if it is a valid consumer id, else a 400 ``invalid_request`` naming ``field``."""
    _check(consumer_problem(value), field)
    return value


def check_project(value: str, field: str = "project") -> str:
    """``value`` if it is a valid project name, else a 400 ``invalid_request`` naming ``field``
    (``PUT /v1/quotas/{project}/{type}``, query filters)."""
    _check(project_problem(value), field)
    return value


def address_error(kind: DeviceKind, address: str) -> str | None:
    """Say what is wrong with ``address`` for a device of ``kind``, or ``None`` if it is well formed."""
    if kind in (DeviceKind.PCI, DeviceKind.SRIOV_PF, DeviceKind.SRIOV_VF):
        if not PCI_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a PCI address: expected domain:bus:slot.function "
                "in lowercase hex, e.g. 0000:3b:02.1"
            )
    elif kind is DeviceKind.MDEV_TYPE:
        if not MDEV_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not an mdev slot: expected PARENT_PCI_ADDRESS/MDEV_TYPE/INDEX, "
                "e.g. 0000:3b:00.0/nvidia-230/0"
            )
    elif kind is DeviceKind.VGPU:
        if not VGPU_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a vGPU: expected VF_PCI_ADDRESS/vgpu/TYPE_ID, "
                "e.g. 0000:3b:00.4/vgpu/1428"
            )
    elif kind is DeviceKind.MIG:
        if not MIG_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a MIG placement: expected GPU_PCI_ADDRESS/mig/PROFILE@START, "
                "e.g. 0000:3b:00.0/mig/2g.20gb@2"
            )
    elif kind is DeviceKind.USB:
        if not USB_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a USB identity: expected usb:VENDOR:PRODUCT:SERIAL "
                "or usb:BUSPATH, e.g. usb:0529:0620:12345 or usb:1-2.3"
            )
    elif not STATIC_ADDRESS_RE.fullmatch(address):
        return f"{address!r} is not a declared id: use letters, digits and _ . : / -"
    return None


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is a whole number in ASCII digits. ``str.isdigit()`` also takes ``²``,
    which ``int()`` refuses, and ``isdecimal()`` takes other scripts' digits: a name read from
    the host (``virtfn²``) must be neither a crash nor a number."""
    return text.isascii() and text.isdigit()


def mdev_address(parent: str, mdev_type: str, index: int) -> str:
    """The identity of slot ``index`` of ``mdev_type`` on the GPU at ``parent``."""
    return f"{parent}/{mdev_type}/{index}"


def vgpu_address(vf: str, type_id: int) -> str:
    """The identity of vGPU type ``type_id`` on the VF at ``vf`` (vGPU 17 and later)."""
    return f"{vf}/vgpu/{type_id}"


def mig_address(gpu: str, profile: str, start: int) -> str:
    """The identity of MIG profile ``profile`` placed at memory slice ``start`` of ``gpu``."""
    return f"{gpu}/mig/{profile}@{start}"


def usb_address(vendor_id: str, product_id: str, serial: str | None, bus_path: str) -> str:
    """The identity of a USB device: its serial when it has one, else where it is plugged in."""
    if serial and re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", serial):
        return f"usb:{vendor_id}:{product_id}:{serial}"
    return f"usb:{bus_path}"


def nvidia_vgpu(description: str | None) -> tuple[int, int] | None:
    """(framebuffer in MiB, max instances per GPU) from the description the NVIDIA vGPU manager
    gives each of its mdev types (``num_heads=4, frl_config=60, framebuffer=4096M,
    max_resolution=5120x2880, max_instance=4``), or ``None`` for any other description."""
    fields = dict(part.strip().partition("=")[::2] for part in (description or "").split(","))
    fb, most = _FRAMEBUFFER_RE.fullmatch(fields.get("framebuffer", "")), fields.get("max_instance", "")
    if fb is None or not ascii_digits(most) or int(most) <= 0:
        return None
    return int(fb.group(1)) * (1024 if fb.group(2) == "G" else 1), int(most)


_FRAMEBUFFER_RE = re.compile(r"([0-9]{1,9})([MG])")


def one_per_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``json.loads``'s ``object_pairs_hook``).

    Python's decoder keeps the last of a repeated key; other parsers keep the first or refuse,
    so a body read one way by a proxy and another way here is refused instead (a
    ``JSONDecodeError``, with no position: the decoder does not give the hook one).
    """
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise json.JSONDecodeError(f"the key {key!r} appears twice in one object", "", -1)
            seen.add(key)
    return out


def instance_tag(instance: str) -> str:
    """What answers, events and the agent's own log show of an agent process's id: a
    fingerprint that tells two processes apart, never the id itself, which fences the host's
    work and so must not reach a machine that was refused as the host."""
    return "#" + hashlib.sha256(instance.encode()).hexdigest()[:8]
