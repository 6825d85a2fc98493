"""Run one lifecycle action and report, never raise: the agent turns results into states.

A handler failure is an outcome to report (setup failed -> cleaning, cleanup failed ->
quarantined), not a crash of the agent; so every error, expected or not, becomes an
:class:`ActionResult` with the reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from devassign.domain import DeviceState
from devassign.lifecycle.base import Handler, HandlerError, LifecycleDevice, TypeConfig
from devassign.lifecycle.handlers import command, mig
from devassign.lifecycle.host import KILL_GRACE, HostOps
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


@dataclass
class _Running:
    action: str
    since: float
    thread: threading.Thread


class Watchdog:
    """Bounds each handler action in time, so one device never holds the agent.

    A Python handler's sysfs write (an unbind, a reset) can block in the kernel for as long as
    the kernel likes, and nothing can interrupt it. So each action runs in a thread of its own;
    one that has not returned after ``timeout`` seconds fails (a setup's device then goes to
    cleaning, a cleanup's is quarantined: never handed out), and the agent goes on with the
    other devices. The thread is left to finish: until it returns, every further action on that
    device fails at once without touching it, since two actions on one device would race.
    """

    def __init__(
        self,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        tick: Callable[[], None] | None = None,
        tick_every: float = 5.0,
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        # Called every ``tick_every`` seconds while an action runs (the agent's heartbeat, so a
        # long action does not get its host marked down); it must not raise.
        self.tick = tick
        self.tick_every = tick_every
        self._running: dict[str, _Running] = {}

    def stuck(self) -> dict[str, str]:
        """Devices whose action has not returned: address -> the action."""
        self._forget_returned()
        return {address: r.action for address, r in self._running.items()}

    def run(
        self, address: str, action: Action, call: Callable[[], ActionResult], *, at_least: float | None = None
    ) -> ActionResult:
        """``call()`` (which never raises: :func:`run_action`), or a failure once it runs too long:
        after ``timeout`` seconds, or ``at_least`` where that is longer (:func:`own_time_bound`)."""
        limit = self.timeout if at_least is None else max(self.timeout, at_least)
        self._forget_returned()
        earlier = self._running.get(address)
        if earlier is not None:
            return ActionResult(
                False,
                f"{action} of {address} not run: its {earlier.action} started "
                f"{self.clock() - earlier.since:.0f} s ago has not returned (blocked in the kernel?); "
                "the device is left alone until it does",
                {"stuck": True},
            )
        box: list[ActionResult] = []

        def target() -> None:
            box.append(call())

        thread = threading.Thread(target=target, name=f"devassign {action} {address}", daemon=True)
        since = self.clock()
        thread.start()
        deadline = time.monotonic() + limit
        while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            thread.join(min(left, self.tick_every))
            if thread.is_alive() and self.tick is not None:
                self.tick()
        if not thread.is_alive():
            return box[0] if box else ActionResult(False, f"{action} of {address} ended without a result")
        self._running[address] = _Running(action, since, thread)
        return ActionResult(
            False,
            f"{action} of {address} did not return within {limit:g} s (blocked in the kernel?); "
            "it is left running, and the device alone until it returns",
            {"stuck": True},
        )

    def _forget_returned(self) -> None:
        for address in [a for a, r in self._running.items() if not r.thread.is_alive()]:
            del self._running[address]


def own_time_bound(handler: str, config: TypeConfig) -> float | None:
    """The most seconds one action of ``handler`` takes by itself, for a handler that bounds
    its own work (``None`` for the others): ``command`` runs one program, ``mig`` at most
    :data:`~devassign.lifecycle.handlers.mig.RUNS_PER_ACTION` nvidia-smi runs, each killed at
    the type's ``timeout`` and reaped within :data:`~devassign.lifecycle.host.KILL_GRACE`. The
    watchdog waits that long at least: cutting such an action short leaves its program running
    on the device, and fails a device that nothing holds in the kernel."""
    if handler == "command":
        runs, default = 1, command.DEFAULT_TIMEOUT
    elif handler == "mig":
        runs, default = mig.RUNS_PER_ACTION, mig.DEFAULT_TIMEOUT
    else:
        return None
    timeout = config.get("timeout", default)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        return None  # the handler refuses it at once
    # and one grace more: a run killed at its timeout returns a moment after its grace
    return min(runs * (float(timeout) + KILL_GRACE) + KILL_GRACE, threading.TIMEOUT_MAX)


def state_after(action: Action, result: ActionResult) -> DeviceState | None:
    """The state to report for a device after ``action``; ``None``: leave it as it is."""
    if action == "setup":
        return DeviceState.ASSIGNED if result.ok else DeviceState.CLEANING
    if action == "cleanup":
        return DeviceState.AVAILABLE if result.ok else DeviceState.QUARANTINED
    return None if result.ok else DeviceState.UNHEALTHY
