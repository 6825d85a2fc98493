"""Per request: what its selector evaluations cost, counted as they run (defence in depth).

``celcost`` bounds one evaluation before anything runs. A request evaluates once per distinct
device shape (``selector.py`` caches results by the fields a selector reads), and a big
snapshot can hold many. Each evaluation is charged its estimate (times the device's size
past the sizes the estimate assumed) plus the cost of handing the device to the library,
and its wall-clock time is summed; past either budget the request stops with a 400 that
names the budget. The library cannot be interrupted, so a budget stops a request between
evaluations, never inside one: the static limits keep each of those short.

The budget of the running request lives in a context variable: the scheduler's filters and
fit ask ``Selector.matches`` without knowing about requests, and each server request runs
in a thread of its own context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from devassign.scheduler.celcost import DEVICE_ITEMS, DEVICE_TEXT, DEVICE_VALUES
from devassign.scheduler.errors import RequestError, RequestErrorCode

# ~1-2 s of evaluation: tens of thousands of distinct devices with typical selectors.
MAX_REQUEST_UNITS = 20_000_000
# Wall-clock seconds spent in evaluations, whatever the estimates said.
MAX_REQUEST_SECONDS = 5.0
# Handing a device to the library, per evaluation: ~10 us, plus ~1 us per value in it (a
# device of 40 attributes and a 64-item list took 110 us).
HANDOFF_UNITS = 100
HANDOFF_UNITS_PER_VALUE = 10


class SelectorBudget:
    """Units and seconds of selector evaluation one request may still spend."""

    __slots__ = ("evaluations", "frozen", "max_seconds", "max_units", "memo", "seconds", "units")

    def __init__(
        self,
        units: int = MAX_REQUEST_UNITS,
        seconds: float = MAX_REQUEST_SECONDS,
        *,
        remember: bool = False,
    ) -> None:
        self.max_units = units
        self.max_seconds = seconds
        self.units = 0.0
        self.seconds = 0.0
        self.evaluations = 0
        # Under a lock another request needs, nothing is evaluated (see ``no_evaluation``).
        self.frozen = False
        # ``remember``: every result this request saw, so that a look again under a lock
        # finds them even if the shared cache was cleared meanwhile.
        self.memo: dict[tuple[Any, ...], bool] | None = {} if remember else None

    def charge(self, cost: int, degree: int, device: Mapping[str, Any]) -> None:
        """Count one evaluation of a selector of ``cost`` and ``degree`` on ``device``."""
        scale, values = measure(device)
        units = HANDOFF_UNITS + HANDOFF_UNITS_PER_VALUE * values + cost * scale**degree
        if self.units + units > self.max_units:
            raise RequestError(
                RequestErrorCode.INVALID_SELECTOR,
                f"the selectors would cost more than this request's evaluation budget of "
                f"{self.max_units:,} units ({self.evaluations:,} devices evaluated so far); name "
                "fewer hosts (hosts=) or read fewer per-device fields such as address in the selector",
            )
        self.units += units
        self.evaluations += 1

    def spent(self, seconds: float) -> None:
        """Add the wall-clock time of one evaluation; past the budget, stop the request."""
        self.seconds += seconds
        if self.seconds > self.max_seconds:
            raise RequestError(
                RequestErrorCode.INVALID_SELECTOR,
                f"the selectors took more than this request's evaluation time budget of "
                f"{self.max_seconds:g} s ({self.evaluations:,} devices evaluated); name fewer "
                "hosts (hosts=) or simplify the selector",
            )


def measure(device: Mapping[str, Any]) -> tuple[float, int]:
    """How far ``device`` exceeds the sizes the estimate assumed (1.0: within them), and how
    many values it holds (what handing it to the library costs)."""
    scale, values = 1.0, 0
    stack: list[Any] = list(device.values())
    while stack:
        v = stack.pop()
        values += 1
        if isinstance(v, str):
            scale = max(scale, len(v) / DEVICE_TEXT)
        elif isinstance(v, Mapping):
            scale = max(scale, len(v) / DEVICE_ITEMS)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            scale = max(scale, len(v) / DEVICE_ITEMS)
            stack.extend(v)
    return max(scale, values / DEVICE_VALUES), values


_CURRENT: ContextVar[SelectorBudget | None] = ContextVar("selector_budget", default=None)


def current() -> SelectorBudget | None:
    """The budget of the request running in this context, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def selector_budget(budget: SelectorBudget | None = None) -> Iterator[SelectorBudget]:
    """Charge every selector evaluation in this block to ``budget`` (a fresh one by default)."""
    budget = budget or SelectorBudget()
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def no_evaluation() -> Iterator[None]:
    """Inside, selectors answer only from results already known and evaluate nothing: an
    unknown device does not match. For code that runs under a database lock."""
    budget = _CURRENT.get()
    if budget is None:
        with selector_budget(SelectorBudget()) as fresh:
            fresh.frozen = True
            yield
        return
    before = budget.frozen
    budget.frozen = True
    try:
        yield
    finally:
        budget.frozen = before
