"""Operator scripts as a handler, for devices no built-in handler knows.

The type config names an argv per action (never a shell string, so no quoting surprises)
and a timeout; the device is described in ``DEVASSIGN_*`` environment variables. A command
runs again when the agent restarts mid-way, so scripts must be idempotent too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from devassign.lifecycle.base import Facts, HandlerError, HealthResult, LifecycleDevice, TypeConfig
from devassign.lifecycle.host import HostOps

DEFAULT_TIMEOUT = 30.0
STDERR_TAIL = 2000


def command_env(device: LifecycleDevice, action: str, ops: HostOps) -> dict[str, str]:
    """The device as environment variables; JSON for the nested parts."""
    env = {
        "DEVASSIGN_ACTION": action,
        "DEVASSIGN_ADDRESS": device.address,
        "DEVASSIGN_KIND": str(device.kind),
        "DEVASSIGN_TYPE": device.type,
        "DEVASSIGN_CONSUMER": device.consumer or "",
        "DEVASSIGN_PARENT": device.parent or "",
        "DEVASSIGN_DRIVER": device.driver or "",
        "DEVASSIGN_VENDOR_ID": device.vendor_id or "",
        "DEVASSIGN_PRODUCT_ID": device.product_id or "",
        "DEVASSIGN_SYSFS_ROOT": str(ops.sysfs.root),
    }
    for name, value in (
        ("ATTRIBUTES", device.attributes),
        ("PARAMS", device.params),
        ("FACTS", device.facts),
    ):
        env[f"DEVASSIGN_{name}"] = json.dumps(dict(value), sort_keys=True, default=str)
    return env


def _argv(config: TypeConfig, action: str) -> list[str] | None:
    argv: Any = config.get(action)
    if argv is None:
        return None
    if (
        not isinstance(argv, Sequence)
        or isinstance(argv, str)
        or not argv
        or not all(isinstance(a, str) for a in argv)
    ):
        raise HandlerError(f"type config {action}: expected a list of strings (an argv)")
    return list(argv)


def _timeout(config: TypeConfig) -> float:
    value: Any = config.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise HandlerError(f"type config timeout={value!r}: expected a positive number of seconds")
    return float(value)


def _run(device: LifecycleDevice, config: TypeConfig, ops: HostOps, action: str) -> str | None:
    """Run the action's command; ``None`` when it succeeded (or there is none), else why not."""
    argv = _argv(config, action)
    if argv is None:
        return None
    timeout = _timeout(config)
    result = ops.runner.run(argv, env=command_env(device, action, ops), timeout=timeout)
    tail = result.stderr.strip()[-STDERR_TAIL:]
    if result.timed_out:
        return f"{action} command {argv[0]} timed out after {timeout:g} s: {tail}".rstrip(": ")
    if result.returncode != 0:
        return f"{action} command {argv[0]} exited {result.returncode}: {tail}".rstrip(": ")
    return None


class CommandHandler:
    """Config: ``setup``, ``cleanup``, ``health`` (argv lists, each optional), ``timeout`` (s)."""

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        problem = _run(device, config, ops, "setup")
        if problem:
            raise HandlerError(problem)
        return {}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        problem = _run(device, config, ops, "cleanup")
        if problem:
            raise HandlerError(problem)

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        problem = _run(device, config, ops, "health")
        return HealthResult(problem is None, problem)
