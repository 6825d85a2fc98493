"""What a resource type's ``config`` may hold for the built-in handlers, checked by the server
when the type is created or changed (the handlers check it again at each action).

The agents read the config at every action and health check, and a value they cannot use
fails it there: a misspelt ``reset`` took every device of the type out of service on every
host at the next report. The server refuses it at once instead, naming the key and what it
takes. A handler a third party ships has its own keys, which only it knows: for it only the
keys every handler shares are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from devassign.lifecycle import names
from devassign.lifecycle.base import HandlerError
from devassign.lifecycle.handlers.pci import RESET_CHOICES
from devassign.lifecycle.handlers.sriov import LINK_STATES
from devassign.lifecycle.registry import DEFAULT_FOR_KIND


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"expected one of {', '.join(allowed)}"

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def _seconds(v: Any) -> str | None:
    ok = not isinstance(v, bool) and isinstance(v, int | float) and 0 < v < 86_400
    return None if ok else "expected a positive number of seconds (below a day)"


def _argv(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)
    return None if ok else "expected a list of strings (an argv, never a shell string)"


def _argv_or_none(v: Any) -> str | None:
    return None if v is None else _argv(v)


def _driver(v: Any) -> str | None:
    try:
        names.driver_name(v)  # as the handler takes it
    except HandlerError:
        return "expected a driver name (1-64 letters, digits, _ . -; no /)"
    return None


def _program(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "expected the program to run"


# Keys every handler's devices are subject to (the server's and the executor's own).
SHARED: dict[str, Callable[[Any], str | None]] = {"one_time_use": _bool, "timeout": _seconds}
_PCI = {"reset": _choice(*RESET_CHOICES), "host_driver": _driver}
BUILT_IN: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "pci": {**_PCI, "nvidia_smi": _program},
    "sriov_vf": {
        **_PCI,
        "spoofchk": _bool,
        "trust": _bool,
        "link_state": _choice(*LINK_STATES),
        "pf_link": _choice("check", "ignore"),
    },
    "mdev": {},
    "usb": {},
    "noop": {},
    "nvidia_vgpu": {},
    "mig": {"nvidia_smi": _program},
    # ``cleanup`` is said, never left out: null where nothing a holder does outlives it.
    "command": {"setup": _argv, "cleanup": _argv_or_none, "health": _argv},
}
# A type without a handler gets the built-in one of each device's kind: any of these.
_BY_KIND = sorted(set(DEFAULT_FOR_KIND.values()))


def config_problem(handler: str | None, config: Mapping[str, Any]) -> str | None:
    """Why ``config`` is no config for ``handler`` (None: the built-in one of each device's
    kind), or None when it is one."""
    if handler is None:
        keys = {k: c for name in _BY_KIND for k, c in BUILT_IN[name].items()}
    elif handler in BUILT_IN:
        keys = dict(BUILT_IN[handler])
    else:
        keys = None  # a third party's handler: its own keys are its own to check
    for key, value in config.items():
        check = SHARED.get(key) or (keys or {}).get(key)
        if check is None:
            if keys is None:
                continue
            known = ", ".join(sorted({*keys, *SHARED}))
            whose = f"handler {handler}" if handler else "the built-in handlers"
            return f"config: {key!r} is no key of {whose} (known: {known})"
        why = check(value)
        if why is not None:
            return f"config: {key}={value!r:.80}: {why}"
    if handler == "command" and "cleanup" not in config:
        # Left out, every release was "cleaned" by running nothing: the next holder got the
        # device as the last one left it.
        return (
            'config: a command type says its "cleanup": the argv that scrubs a device before its '
            "next holder, or null where nothing a holder does outlives it"
        )
    return None
