"""Failpoints: named places where a test makes the server process die as ``kill -9`` would.

**For tests only.** They let the crash-safety tests (``tests/reliability``) kill a real
``devassign server`` process at a chosen point of a transaction, or just after its commit,
and then check that the database holds no partial state and that every answered claim is
still there. Nothing in a deployment sets them.

They are armed by one environment variable, read once when this module is imported::

    DEVASSIGN_FAILPOINTS="claim.before_commit=kill,release.after_commit=kill@3"

a comma-separated list of ``NAME=kill`` (die at the first hit of ``NAME``) or
``NAME=kill@N`` (die at its ``N``-th hit, counted per process). The process dies by
``os.kill(os.getpid(), signal.SIGKILL)``: no ``finally``, no rollback, no answer; the
database sees a dropped connection. Just before dying, one line goes to standard error::

    devassign failpoint claim.before_commit: hit 3, killing process 1234

Every name must be one of :data:`POINTS`; an unknown name, action or count fails the import,
so a typo stops the server at its start instead of silently testing nothing.

When the variable is unset (or empty), :func:`failpoint` and :func:`after_commit` are
functions that do nothing: a call costs one Python function call, and no event listener
is installed.

Two kinds of points:

- ``failpoint("NAME")`` dies where it is called (inside a store function: before the
  transaction commits; in a route handler: after the commit, before the answer);
- ``after_commit(conn, "NAME")`` is called inside a store function's transaction and dies
  right after that transaction commits, before the connection goes back to the pool and the
  route answers (not at all if the transaction rolls back). It counts a hit per commit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

ENV = "DEVASSIGN_FAILPOINTS"

# Every failpoint, with where it is. ``*.after_commit`` points of store functions are
# ``after_commit`` calls; the others are ``failpoint`` calls.
POINTS: dict[str, str] = {
    "claim.before_commit": "store/claims.claim: devices taken, items, counts and event written; "
    "not committed",
    "claim.after_commit": "server/claims.claim: the claim committed, the answer not sent",
    "release.before_commit": "store/claims.release: allocation released, devices cleaning, counts and "
    "event written; not committed (also a failed setup's release)",
    "release.after_commit": "server/claims.release: the release committed, the 204 not sent",
    "report.mid_transaction": "store/inventory.apply_report: devices added, updated and removed; "
    "events and counts not yet written",
    "report.after_commit": "store/inventory.apply_report: the report committed, the answer not sent",
    "work.before_commit": "store/work.apply_results: every result applied and the host recounted; "
    "not committed",
    "work.after_commit": "store/work.apply_results: the results committed, the outcomes not sent",
    "sweep.host_down": "store/hosts.mark_down (sweeper): a host recorded down with its event; not committed",
    "expire.before_commit": "store/claims.release with expired_before (sweeper): an expired "
    "reservation released; not committed",
    "expire.after_commit": "Store.expire_reservations (sweeper): one expiry committed, the next not begun",
}

AFTER_COMMIT = frozenset({"report.after_commit", "work.after_commit"})

ACTIONS = ("kill",)


class FailpointError(ValueError):
    """``DEVASSIGN_FAILPOINTS`` names an unknown failpoint or action, or a bad count."""


@dataclass(frozen=True)
class Armed:
    name: str
    action: str
    nth: int  # die at this hit (1: the first)


def parse(text: str) -> dict[str, Armed]:
    """The failpoints armed by ``text`` (the variable's value); raises :class:`FailpointError`."""
    armed: dict[str, Armed] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, spec = part.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not spec:
            raise FailpointError(f"{ENV}: {part!r}: write NAME=kill or NAME=kill@N")
        if name not in POINTS:
            raise FailpointError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(sorted(POINTS))}")
        action, at, count = spec.partition("@")
        if action not in ACTIONS:
            raise FailpointError(f"{ENV}: {name}: unknown action {action!r}; known: {', '.join(ACTIONS)}")
        nth = 1
        if at:
            if not count.isascii() or not count.isdigit() or int(count) < 1:
                raise FailpointError(f"{ENV}: {name}: @{count!r} must be a whole number of 1 or more")
            nth = int(count)
        if name in armed:
            raise FailpointError(f"{ENV}: failpoint {name!r} armed twice")
        armed[name] = Armed(name, action, nth)
    return armed


def _die(name: str, hit: int) -> None:
    sys.stderr.write(f"devassign failpoint {name}: hit {hit}, killing process {os.getpid()}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    """Hits per armed failpoint in this process; dies at the armed one."""

    def __init__(self, armed: dict[str, Armed]) -> None:
        self.armed = armed
        self.hits = dict.fromkeys(armed, 0)
        self.lock = threading.Lock()

    def hit(self, name: str) -> None:
        point = self.armed.get(name)
        if point is None:
            return
        with self.lock:
            self.hits[name] += 1
            n = self.hits[name]
        if n == point.nth:
            _die(name, n)


# The connection's pool record carries an armed after-commit point from the call (inside the
# transaction) to its commit, and from the commit to the connection's return to the pool.
_PENDING = "devassign.failpoint.pending"
_COMMITTED = "devassign.failpoint.committed"


def _install_after_commit(counter: _Counter) -> None:
    def on_commit(conn: sa.Connection) -> None:
        name = conn.info.pop(_PENDING, None)
        if name is not None:
            conn.info[_COMMITTED] = name

    def on_rollback(conn: sa.Connection) -> None:
        conn.info.pop(_PENDING, None)
        conn.info.pop(_COMMITTED, None)

    def on_checkin(_dbapi_conn: Any, record: Any) -> None:
        # The transaction committed (the "commit" event runs just before the driver's commit,
        # and the connection goes back to the pool only after it).
        name = record.info.pop(_COMMITTED, None) if record is not None else None
        if name is not None:
            counter.hit(name)

    sa.event.listen(sa.engine.Engine, "commit", on_commit)
    sa.event.listen(sa.engine.Engine, "rollback", on_rollback)
    sa.event.listen(sa.pool.Pool, "checkin", on_checkin)


def _off(name: str) -> None:
    """No failpoint is armed: nothing to do."""


def _off_after_commit(conn: sa.Connection, name: str) -> None:
    """No failpoint is armed: nothing to do."""


def _armed_functions(
    armed: dict[str, Armed],
) -> tuple[Callable[[str], None], Callable[[sa.Connection, str], None]]:
    counter = _Counter(armed)

    def fire(name: str) -> None:
        counter.hit(name)

    def mark(conn: sa.Connection, name: str) -> None:
        if name in armed:
            conn.info[_PENDING] = name

    if AFTER_COMMIT & set(armed):
        _install_after_commit(counter)
    return fire, mark


ARMED: dict[str, Armed] = parse(os.environ.get(ENV, ""))

failpoint: Callable[[str], None] = _off
"""Die here if ``name`` is armed and this is its armed hit."""

after_commit: Callable[[sa.Connection, str], None] = _off_after_commit
"""Die right after ``conn``'s transaction commits, if ``name`` is armed and this is its armed hit."""

if ARMED:
    failpoint, after_commit = _armed_functions(ARMED)
