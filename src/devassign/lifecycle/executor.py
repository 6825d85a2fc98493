"""Run one lifecycle action and report, never raise: the agent turns results into states.

A handler failure is an outcome to report (setup failed -> cleaning, cleanup failed ->
quarantined), not a crash of the agent; so every error, expected or not, becomes an
:class:`ActionResult` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from devassign.domain import DeviceState
from devassign.lifecycle.base import Handler, HandlerError, LifecycleDevice, TypeConfig
from devassign.lifecycle.host import HostOps
from devassign.lifecycle.registry import handler_name_for, load_handler
from devassign.schemas import postable_text

Action = Literal["setup", "cleanup", "health"]


@dataclass(frozen=True)
class ActionResult:
    """``details`` holds a setup's facts (keep them for the cleanup) and the handler's name."""

    ok: bool
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The error goes into a report or a result: names from the host may not be UTF-8.
        if self.error is not None:
            object.__setattr__(self, "error", postable_text(self.error))


def run_action(
    action: Action,
    device: LifecycleDevice,
    type_config: TypeConfig,
    handler_name: str | None,
    ops: HostOps,
    *,
    loader: Callable[[str], Handler] = load_handler,
) -> ActionResult:
    """Run ``action`` of the named handler (or the kind's built-in one) on ``device``."""
    name = handler_name_for(device.kind, handler_name)
    base: dict[str, Any] = {"handler": name, "action": action}
    try:
        handler = loader(name)
        if action == "setup":
            facts = handler.setup(device, type_config, ops)
            return ActionResult(True, None, {**base, "facts": dict(facts or {})})
        if action == "cleanup":
            handler.cleanup(device, type_config, ops)
            return ActionResult(True, None, base)
        if action == "health":
            health = handler.health(device, type_config, ops)
            return ActionResult(health.ok, health.reason, {**base, **health.details})
        return ActionResult(False, f"unknown action {action!r}", base)
    except HandlerError as exc:
        return ActionResult(False, f"{name} {action} of {device.address}: {exc}", base)
    except Exception as exc:  # a handler bug must not take the agent down
        return ActionResult(
            False,
            f"{name} {action} of {device.address} failed unexpectedly: {type(exc).__name__}: {exc}",
            {**base, "unexpected": True},
        )


def state_after(action: Action, result: ActionResult) -> DeviceState | None:
    """The state to report for a device after ``action``; ``None``: leave it as it is."""
    if action == "setup":
        return DeviceState.ASSIGNED if result.ok else DeviceState.CLEANING
    if action == "cleanup":
        return DeviceState.AVAILABLE if result.ok else DeviceState.QUARANTINED
    return None if result.ok else DeviceState.UNHEALTHY
