"""The agent's lifecycle loop: ask the server for work, run the handlers, post the results.

The server never connects to hosts, so after each report or heartbeat (and every
``work_interval``) the agent fetches ``GET /v1/hosts/{host}/work``: devices ``reserved`` for a
consumer need a setup, devices ``cleaning`` a cleanup. Each item runs through
:func:`~devassign.lifecycle.executor.run_action` and its result goes back in
``POST /v1/hosts/{host}/work``; the server moves the device on (or ignores a stale result).

Crash safety (the kubelet leaked devices when it died between prepare and checkpoint,
kubernetes #115902): for every item the agent

1. journals the intent (device, action, the work item as the server sent it) in the state file,
2. runs the handler,
3. journals the result with the setup's facts,
4. posts it, and only then forgets the journal entry.

On start it re-posts results that were journaled but not posted, and re-runs actions that
were started but never finished (handlers are idempotent) from the journaled item: that copy
still names the driver the device had before the interrupted setup moved it. It does so only
while the server still has that round of work (the item's ticket): a state file restored from
an older backup holds actions of rounds long finished, on devices set up for others since.
No new work runs
while an older result is unposted, so results reach the server in the order they happened.
A ``cleanup ok`` is posted only from a result journaled after ``run_action`` returned ok: an
interrupted cleanup is run again, never assumed done.

The agent is the last line of defence for the root-run handlers, whatever the server sends:

- it acts only on devices it discovered and reports itself, and runs only the handlers and
  ``command`` programs its own ``[lifecycle]`` configuration allows; anything else is refused
  and posted as a failed result (a refused setup releases the allocation, a refused cleanup
  quarantines) whose message says why, so the operator sees it as an event;
- the facts a handler gets are its own journal's (the server's copy, which this agent posted,
  only when the journal has none), never a request's params;
- a cleanup after an operator's ``device clear`` forgets the journal's facts for the device
  and works from what the host shows now;
- a device it holds set up for a consumer is set up for no other one until a cleanup has run
  (a server whose database was restored from an older backup has lost that holding).

For tests, ``DEVASSIGN_AGENT_CRASH_AT=POINT[:ACTION]`` makes the agent SIGKILL itself at
``intent`` (after journaling it), ``handler`` (after the handler, before journaling the
result), ``result`` (after journaling it), ``post`` (just before posting) or ``posted`` (after
the server answered, before the journal entry is dropped).

While the server is unreachable (docs/agent.md, "When the server is unreachable") the agent
changes nothing on the host by itself: assigned devices stay assigned, no cleanup or teardown
runs without the server asking for it, and results not yet acknowledged stay in the journal
(on disk, so a restart keeps them) until a ``POST`` is answered; they are then posted once, and
a second delivery (the answer was lost) is ignored by the server. Intervals and backoff run on
a monotonic clock; the agent sends no timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import httpx

from devassign.agent.config import AgentConfig
from devassign.agent.health import HEALTHY, HealthRecord
from devassign.agent.held import HeldPartitions
from devassign.agent.inventory import build_inventory
from devassign.agent.pciids import DEFAULT_PCI_IDS
from devassign.agent.reporter import (
    AgentConflict,
    NotTaken,
    Reporter,
    ReportRefused,
    ServerUnavailable,
    payload,
    refusal,
)
from devassign.agent.state import StateFile, held_drivers, held_types
from devassign.domain import DeviceKind, DeviceState
from devassign.lifecycle.base import LEFTOVER, PARENT_IN_USE, Handler, LifecycleDevice
from devassign.lifecycle.executor import Action, ActionResult, Watchdog, own_time_bound, run_action
from devassign.lifecycle.handlers.pci import VFIO
from devassign.lifecycle.host import HostOps, VfioSnapshot
from devassign.lifecycle.registry import handler_name_for, load_handler
from devassign.schemas import (
    DEVICE_FACTS,
    HealthCheck,
    InventoryResult,
    ReportedDevice,
    WorkItem,
    WorkOutcome,
    WorkResult,
    postable_text,
    work_facts_problem,
)

# The kinds a free device's check may fail for a partition "made by hand" that its holder's
# setup made (agent/held.py).
PARTITION_KINDS = frozenset({DeviceKind.MIG, DeviceKind.MDEV_TYPE, DeviceKind.VGPU})

log = logging.getLogger(__name__)

# The server's states of a device nobody holds.
SERVER_FREE = frozenset({DeviceState.AVAILABLE.value, DeviceState.UNHEALTHY.value, DeviceState.REMOVED.value})
CRASH_ENV = "DEVASSIGN_AGENT_CRASH_AT"
CRASH_POINTS = ("intent", "handler", "result", "post", "posted")
WorkAction = Literal["setup", "cleanup"]


class WorkRefused(RuntimeError):
    """The server refused a work request for a reason retrying will not fix (4xx)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code  # the HTTP status, for the program's exit code


@dataclass(frozen=True)
class WorkDone:
    """One action the agent ran or re-posted, and what the server made of it.

    ``state`` and ``applied`` are ``None`` while the result is not posted yet; ``replayed``
    marks results and actions taken over from the journal after a restart.
    """

    device_id: str
    address: str
    action: WorkAction
    ok: bool
    error: str | None = None
    applied: bool | None = None
    state: DeviceState | None = None
    note: str = ""
    replayed: bool = False


@dataclass
class StepResult:
    """What one :meth:`Agent.step` did: a report or a heartbeat, health findings, work."""

    report: InventoryResult | None = None
    heartbeat: bool = False
    unhealthy: dict[str, str] = field(default_factory=dict)
    work: list[WorkDone] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # The "server unreachable" errors of this step (their messages are in ``errors`` too; a
    # refusal of this process as a second agent is not one): retried with backoff.
    unreachable: list[ServerUnavailable] = field(default_factory=list)
    # Refused as a second agent of the host: the seconds until the server would let this
    # process take over (its ``retry_after``), the time of the next try.
    takeover_in: float | None = None


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Agent:
    """One host's agent: inventory reports and heartbeats, health checks, lifecycle work.

    ``ops`` is the host boundary the handlers act through (default: the real machine at
    ``sysfs_root``); discovery reads through ``ops.sysfs`` too, so a simulated host is seen
    the way its handlers change it. ``client`` may be any ``httpx.Client`` (a FastAPI
    ``TestClient`` included). Nothing here sleeps except :meth:`run`.
    """

    def __init__(
        self,
        config: AgentConfig,
        sysfs_root: str | os.PathLike[str] = "/sys",
        ops: HostOps | None = None,
        client: httpx.Client | None = None,
        *,
        state: StateFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        pci_ids: Path | None = DEFAULT_PCI_IDS,
        crash_at: str | None = None,
        on_crash: Callable[[], None] = _sigkill,
    ) -> None:
        self.config = config
        self.ops = ops if ops is not None else HostOps.for_host(sysfs_root)
        self.state = state if state is not None else StateFile(config.state_file)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.pci_ids = pci_ids
        self.crash_at = crash_at if crash_at is not None else os.environ.get(CRASH_ENV)
        self.on_crash = on_crash
        self.reporter = Reporter(
            config, self._inventory, client, state=self.state, clock=clock, sleep=sleep, rng=self.rng
        )
        self.health = HealthRecord(self.state, config.health_passes)
        self._checks: dict[str, HealthCheck] = {}  # type -> how its free devices are checked
        self._next_health = 0.0
        self._handlers: dict[str, Handler] = {}
        self.watchdog = Watchdog(config.lifecycle.action_timeout, tick=self._heartbeat_while_busy)
        self._reported: dict[str, ReportedDevice] | None = None  # address -> last discovered
        self._recovered = False
        self._need_report = True
        self._report_after_work = False  # a device cleaned is reported otherwise now (work())
        self._next_report = 0.0
        self._next_heartbeat = 0.0
        self._failures = 0  # steps in a row that failed: the exponent of the backoff
        self._host_use_warned: set[str] = set()  # devices the host uses, already logged
        # The devices the server says are held here, read when a free partition's check
        # failed for a partition none of the state's (a state file lost or restored): then
        # the partitions made for their holders are this agent's, not ones made by hand.
        self._server_held: list[dict[str, Any]] = []
        self._server_held_at: float | None = None

    # ------------------------------------------------------------------ reports and health
    def _inventory(self) -> list[ReportedDevice]:
        seen, usb = self.state.state.vgpu_types, self.state.state.usb_names
        before = {pf: dict(types) for pf, types in seen.items()}
        usb_before = {path: dict(entry) for path, entry in usb.items()}
        devices = build_inventory(
            self.ops.sysfs,
            self.config,
            self.pci_ids,
            seen,
            warned=self._host_use_warned,
            held_drivers=held_drivers(self.state.state),
            held_types=held_types(self.state.state),
            own_mdevs=self._held_partitions().mdev_uuids,
            usb_names=usb,
        ).reported()
        if seen != before or usb != usb_before:
            # vGPU types seen on a GPU, USB names given: known after a restart
            self.state.save()
        self._reported = {d.address: d for d in devices}
        out = []
        for d in devices:
            v = self.health.verdict(d.address)
            update = {"healthy": False, "health_reason": v.reason, "health_recovering": v.recovering}
            out.append(d if v.healthy else d.model_copy(update=update))
        return out

    @property
    def unhealthy(self) -> dict[str, str]:
        """Address -> why, of every device that failed a check and has not passed enough since."""
        return self.health.failing()

    def check_health(self, *, force: bool = False) -> dict[str, str]:
        """Check every device of the host (not more often than ``health_interval`` unless
        ``force``): assigned ones as their holder has them, the others as free devices, each
        with its type's handler; in-flight ones are left to their action. Returns
        :attr:`unhealthy`; a changed verdict makes a report due now."""
        now = self.clock()
        if not force and now < self._next_health:
            return self.unhealthy
        self._next_health = now + self.config.health_interval
        st = self.state.state
        busy = {str(d.get("address")) for d in self._in_flight()}
        partitions = self._held_partitions()
        changed = False
        for dev_id, entry in list(st.assigned.items()):
            item = WorkItem.model_validate(entry)
            busy.add(item.device.address)
            if dev_id in st.journal:
                continue  # in flight: its action decides, not a health check half-way through
            result = self._action("health", item)
            free = False if result.ok else self._free_on_server(item, partitions)
            if isinstance(free, ActionResult):
                changed |= self.health.observe(item.device.address, free.ok, free.error)
            if free is not False:
                continue
            changed |= self.health.observe(item.device.address, result.ok, result.error, held=True)
        discovered = self._discovered()
        checks: dict[str, ActionResult] = {}
        # Who holds which VFIO node, read once for every free device of this pass.
        ops = replace(self.ops, vfio=VfioSnapshot(self.ops.vfio_users))
        for address, dev in discovered.items():
            check = self._checks.get(dev.type)
            if address in busy or check is None:
                continue
            checked = self._check_free(dev, check, partitions.facts_for(dev), ops)
            if checked is not None:
                checks[address] = checked
        failed = [a for a, c in checks.items() if not c.ok and discovered[a].kind in PARTITION_KINDS]
        if failed and self._learn_server_held():
            partitions = self._held_partitions()
            for address in failed:
                dev = discovered[address]
                checked = self._check_free(dev, self._checks[dev.type], partitions.facts_for(dev), ops)
                if checked is not None:
                    checks[address] = checked
        checks.update(_parents_in_use(discovered, checks, busy))
        for address, checked in checks.items():
            # What an assignment left on it (a setup whose result came after its release)
            # ends with its cleanup, like a failure seen while it was held.
            leftover = bool(checked.details.get(LEFTOVER))
            changed |= self.health.observe(address, checked.ok, checked.error, held=leftover)
        self.health.keep_only(discovered)
        self.health.save()
        if changed:
            self._need_report = True
        return self.unhealthy

    def _free_on_server(self, item: WorkItem, partitions: HeldPartitions) -> ActionResult | bool:
        """The device's health as a free device, where a held one fails its check as held but
        the server has it free (no holding at all, or another device at that address): this
        agent's record of the holding is one the server does not have (a state file restored
        from an older backup, whose holding was cleaned since; or a server's database restored
        from one). Checked as held, it would fail for ever and keep the device ``unhealthy``,
        with no cleanup ever coming to end the record; checked as free, it can be claimed, and
        the setup refused while the record lasts (:meth:`_held_for_another`) brings the
        cleanup that ends it. ``False``: the server holds it too, or cannot say; ``True``: free
        on the server, but not to be checked now (its type's check is not known yet)."""
        try:
            row = self.reporter.device_at(item.device.address)
        except ServerUnavailable:
            return False
        if row is not None and row.get("id") == item.device.id and row.get("state") not in SERVER_FREE:
            return False
        dev = self._discovered().get(item.device.address)
        check = self._checks.get(dev.type) if dev is not None else None
        if dev is None or check is None:
            return dev is not None
        log.warning(
            "%s fails its check as held for %s, a holding the server does not have: checked as a free device",
            item.device.address,
            item.device.consumer,
        )
        checked = self._check_free(dev, check, partitions.facts_for(dev))
        return True if checked is None else checked  # None: its handler is not allowed here

    def _check_free(
        self,
        dev: ReportedDevice,
        check: HealthCheck,
        held: dict[str, Any] | None = None,
        ops: HostOps | None = None,
    ) -> ActionResult | None:
        """The health of a device nobody holds; ``None`` when this agent may not run its
        type's handler (its ``[lifecycle]`` policy): not checked, not called unhealthy. A MIG
        or mdev slot is told (``held``, as facts) the partitions this agent holds beside it, so
        that one there that is none of them (made by hand) keeps the slots it takes out of
        service."""
        name = handler_name_for(dev.kind, check.handler)
        if self.config.lifecycle.refusal(
            name, check.config, host=self.config.host, source=self.config.source
        ):
            return None
        device = LifecycleDevice(
            address=dev.address,
            kind=dev.kind,
            type=dev.type,
            parent=dev.parent,
            driver=dev.driver,
            vendor_id=dev.vendor_id,
            product_id=dev.product_id,
            attributes=dict(dev.attributes),
            facts=dict(held or {}),
        )
        return self._bounded("health", device, check.config, check.handler, ops)

    def _learn(self, result: InventoryResult) -> None:
        """The report's answer names how each reported type is checked; a type not known
        before is checked at once, not an interval later."""
        if set(result.checks) - set(self._checks):
            self._next_health = min(self._next_health, self.clock())
        self._checks = dict(result.checks)

    def report(self) -> InventoryResult:
        """Health checks (when due), then a full inventory report."""
        self.check_health()
        result = self.reporter.report()
        self._learn(result)
        self._schedule_after_report()
        return result

    def _schedule_after_report(self) -> None:
        now = self.clock()
        jitter = self.rng.uniform(0.0, 0.1 * self.config.report_interval)
        self._need_report = False
        self._next_report = now + self.config.report_interval + jitter
        self._next_heartbeat = now + self.config.heartbeat_interval

    # ------------------------------------------------------------------ one step, the loop
    def step(self) -> StepResult:
        """A report (when due) or a heartbeat (when due), then one work pass; never raises for
        server trouble: the errors are in :attr:`StepResult.errors`."""
        out = StepResult()
        now = self.clock()
        # A clock that went back (``time.monotonic`` never does; an injected one may) must not
        # postpone a heartbeat or report past its interval: the server would see a silent host.
        self._next_heartbeat = min(self._next_heartbeat, now + self.config.heartbeat_interval)
        self._next_report = min(self._next_report, now + 1.1 * self.config.report_interval)
        try:
            if not self._need_report and now < self._next_report:
                out.heartbeat = self._heartbeat_if_due()
            if self._need_report or now >= self._next_report:
                out.report = self.report()
            self.check_health()
            if self._need_report:  # a verdict changed: the server hears it now
                out.report = self.report()
            out.unhealthy = dict(self.unhealthy)
        except ServerUnavailable as exc:
            self._unreachable(out, exc)
        except ReportRefused as exc:
            out.errors.append(str(exc))
            if isinstance(exc, AgentConflict):
                out.takeover_in = exc.retry_after
        try:
            self.work(out.work)
        except ServerUnavailable as exc:
            self._unreachable(out, exc)
        except WorkRefused as exc:
            out.errors.append(str(exc))
        return out

    def _unreachable(self, out: StepResult, exc: ServerUnavailable) -> None:
        out.errors.append(str(exc))
        if not isinstance(exc, NotTaken):
            # After an outage, a full report first: the server may have lost or changed state.
            self._need_report = True
            out.unreachable.append(exc)

    def run_once(self) -> StepResult:
        """``agent run --once``: one report (retried with backoff, raising when it cannot be
        sent) and one work pass (raising on server trouble)."""
        out = StepResult()
        out.report = first = self.reporter.run(once=True)
        if first is not None:
            self._learn(first)
        self._schedule_after_report()
        self.check_health(force=True)
        if self._need_report:
            out.report = self.reporter.run(once=True)
            self._schedule_after_report()
        out.unhealthy = dict(self.unhealthy)
        self.work(out.work)
        return out

    def run(self, *, iterations: int | None = None) -> None:
        """Step every ``work_interval``, backing off while the server is unreachable or refuses
        (:meth:`Reporter.backoff`: full jitter, capped, at least its ``Retry-After``); forever
        unless ``iterations`` bounds it. An outage is logged once (:class:`Outage`), refusals
        each time."""
        n = 0
        while iterations is None or n < iterations:
            n += 1
            result = self.step()
            if result.errors:
                self._failures += 1
                asked = [e.retry_after for e in result.unreachable if e.retry_after is not None]
                if result.takeover_in is not None and not result.unreachable:
                    # A restart waits for the old process's silence, not for a backoff grown
                    # while waiting: the next try is when the server would take this one.
                    delay = self.reporter.takeover_delay(result.takeover_in)
                else:
                    delay = self.reporter.backoff(self._failures, max(asked, default=None))
                quiet = {str(e) for e in result.unreachable if e.logged}  # once per outage (Outage)
                for err in result.errors:
                    if err not in quiet:
                        log.warning("%s", err)
                log.debug("retrying in %.1f s", delay)
            else:
                self._failures = 0
                delay = self.config.work_interval
            self.sleep(delay)

    # ------------------------------------------------------------------ lifecycle work
    def work(self, done: list[WorkDone] | None = None) -> list[WorkDone]:
        """One pass: finish what the journal holds, then fetch the work and do it.

        Appends to ``done`` as it goes, so a caller keeps what happened before an error.
        """
        done = [] if done is None else done
        if not self._recovered:
            self.recover(done)
        else:
            done.extend(self._post_journaled(replayed=False))
        items = [i for i in self._read_items(self._work_list(), done) if self._answerable(i)]
        if any(i.action == "setup" for i in items):
            # What the host uses now, not at the last report (up to report_interval ago): a NIC
            # that took the default route since must not be handed to vfio-pci.
            self._discovered(fresh=True)
        # Cleanups first: they free what a setup in the same IOMMU group may need.
        items.sort(key=lambda i: (i.action != "cleanup", i.device.address))
        failed: set[str] = set()
        for item in items:
            consumer = item.device.consumer
            if item.action == "setup" and consumer is not None and consumer in failed:
                continue  # the server released the allocation; its devices come back as cleanups
            self._heartbeat_if_due()
            result = self._run(item, replayed=False)
            done.append(result)
            if item.action == "setup" and not result.ok and consumer is not None:
                failed.add(consumer)
        if self._report_after_work:
            # A device cleaned that is no longer what the last report said (its rule removed or
            # its type changed while it was held): the server hears it now, not a report
            # interval later, during which it would offer it as it was.
            self._report_after_work = False
            self._need_report = True
            try:
                self.report()
            except ReportRefused as exc:
                log.warning("report after a cleanup refused: %s", exc)
        return done

    def _heartbeat_while_busy(self) -> None:
        """The watchdog's tick while one handler action runs (a ``command`` or ``mig`` setup may
        take minutes): a heartbeat when one is due; a server that does not answer is the
        action's business no more than before, so it is only logged."""
        try:
            self._heartbeat_if_due()
        except Exception as exc:  # never fail the action for a heartbeat
            log.debug("heartbeat during a handler action failed: %s", exc)
            self._need_report = True  # as after any outage: a full report next

    def _heartbeat_if_due(self) -> bool:
        """A heartbeat when one is due (whether one was sent): at a step, and also between two
        items of a work pass and while one handler runs, since a pass of slow handlers (MIG
        instances, commands: up to a minute each) takes minutes, and without them the server
        marked the host down while its agent was busy with the host's own work."""
        now = self.clock()
        if now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + self.config.heartbeat_interval
        if not self.reporter.heartbeat():
            self._need_report = True
        return True

    def _work_list(self) -> Any:
        """The server's work list for this host (``GET work``), as it sent it."""
        resp = self.reporter.request("GET", "work")
        if resp.status_code >= 400:
            raise WorkRefused(f"server refused the work request ({refusal(resp)})", resp.status_code)
        return payload(resp, self.reporter.where)

    def _read_items(self, body: Any, done: list[WorkDone]) -> list[WorkItem]:
        """The work list's items, each read on its own: one this agent cannot read (a device
        kind of a newer server, say) is answered as failed where it names a device, and
        never stops the others (a cleanup of another device would wait for ever)."""
        raw = body.get("items") if isinstance(body, dict) else None
        if not isinstance(raw, list) or not isinstance(body.get("host"), str):
            # a 2xx that is not a work list: not our server, try later
            raise ServerUnavailable(f"{self.reporter.where}: unexpected answer to GET work: not a work list")
        items, unreadable = [], []
        for n, entry in enumerate(raw):
            try:
                items.append(WorkItem.model_validate(entry))
            except ValueError as exc:
                problem = str(exc).splitlines()
                why = "; ".join(problem[:3])[:600]
                log.error("cannot read work item %d of the server's list: %s", n, why)
                failed = _unreadable_result(entry, why)
                if failed is not None:
                    unreadable.append(failed)
        if unreadable:
            body = {"results": [r.model_dump(mode="json") for r in unreadable]}
            resp = self.reporter.request("POST", "work", body)
            if resp.status_code >= 400:
                log.error("the server refused the failures of unreadable work items (%d)", resp.status_code)
            for r in unreadable:
                done.append(WorkDone(r.device_id, "(unreadable work item)", r.action, False, r.error))
        return items

    def _answerable(self, item: WorkItem) -> bool:
        """Whether a result for ``item`` could be posted (an id and consumer the server's
        results take, text that is UTF-8): one that could not is never started nor
        journaled, or it would stop every later post, and every restart, of this agent."""
        problem = None
        if len(item.device.id) > 36:
            problem = "a device id longer than 36 characters"
        elif item.device.consumer is not None and len(item.device.consumer) > 255:
            problem = "a consumer longer than 255 characters"
        elif len(item.ticket) > 64:
            problem = "a ticket longer than 64 characters"
        else:
            try:
                json.dumps(item.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
            except (UnicodeEncodeError, ValueError):
                problem = "text that is not UTF-8"
        if problem:
            log.error(
                "ignored a %s work item for %r: it has %s (not from a devassign server?)",
                item.action,
                item.device.address[:80],
                problem,
            )
        return problem is None

    def recover(self, done: list[WorkDone] | None = None) -> list[WorkDone]:
        """After a (re)start: post journaled results, re-run interrupted actions of the rounds
        of work the server still has."""
        done = [] if done is None else done
        done.extend(self._post_journaled(replayed=True))
        st = self.state.state
        started = [
            WorkItem.model_validate(e["item"]) for e in st.journal.values() if e.get("phase") == "started"
        ]
        current = self._current_rounds() if started else set()
        for item in started:
            if item.ticket and (item.device.id, item.ticket, item.device.consumer) not in current:
                # The server finished that round long ago: this state file is older than its
                # records (restored from a backup). Run now, the action would act on a device
                # that has moved on (set up for another consumer since, with its guest on it).
                log.warning(
                    "not re-running the interrupted %s of %s: the server has no work on it in that "
                    "round (%s) any more (a state file restored from an older backup?)",
                    item.action,
                    item.device.address,
                    item.ticket,
                )
                st.journal.pop(item.device.id, None)
                self.state.save()
                continue
            log.info("re-running the interrupted %s of %s", item.action, item.device.address)
            done.append(self._run(item, replayed=True, journaled=True))
        self._recovered = True
        return done

    def _current_rounds(self) -> set[tuple[str, str, str | None]]:
        """(device id, ticket, consumer) of each item of the server's work list for this host
        now (the consumer too: a database restored from a backup gives allocation ids again)."""
        body = self._work_list()
        raw = body.get("items") if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise ServerUnavailable(f"{self.reporter.where}: unexpected answer to GET work: not a work list")
        rounds: set[tuple[str, str, str | None]] = set()
        for entry in raw:
            device = entry.get("device") if isinstance(entry, dict) else None
            if isinstance(device, dict) and isinstance(device.get("id"), str):
                consumer = device.get("consumer")
                rounds.add(
                    (
                        device["id"],
                        str(entry.get("ticket") or ""),
                        consumer if isinstance(consumer, str) else None,
                    )
                )
        return rounds

    def _discovered(self, *, fresh: bool = False) -> dict[str, ReportedDevice]:
        """What this agent last discovered and reports (discovered now if never, or ``fresh``)."""
        if self._reported is None or fresh:
            self._inventory()
        return self._reported or {}

    def _refusal(self, item: WorkItem, *, prepared: bool = True) -> str | None:
        """Why this agent will not act on ``item``: a device it did not report, a handler or
        command its configuration does not allow, or (``prepared``: the item as it would run)
        a cleanup naming what this agent made for another device; ``None`` when it may. A
        cleanup not yet prepared is checked for its device only: it runs the handler that set
        the device up, not the one it names."""
        address, host = item.device.address, self.config.host
        mine = self._discovered().get(address)
        if mine is None:
            return f"{address} is not a device this agent discovered and reported on host {host}"
        if mine.kind is not item.device.kind:
            return f"{address} is a {mine.kind.value} on host {host}, not a {item.device.kind.value}"
        if item.action == "setup" and mine.type != item.device.type:
            # Its rule changed while it was held, and the server has not heard it yet.
            return (
                f"{address} is a {mine.type} on host {host} now, not a {item.device.type} (its "
                "rule changed); the next report tells the server"
            )
        failing = self.health.failing_free(address) if item.action == "setup" else None
        if failing is not None:
            # Claimed before the server heard of the failure, or vouched for by an operator
            # and failing again: not handed to anyone until a check passes.
            return (
                f"{address} failed its last health check on host {host} ({failing}); it is not "
                "set up for anyone until a check passes"
            )
        if item.action == "cleanup" and not prepared:
            return None
        return (
            self._unknown_setup(item)
            or self._held_for_another(item)
            or self._foreign_facts(item)
            or self._policy_refusal(item)
        )

    def _unknown_setup(self, item: WorkItem) -> str | None:
        """A cleanup of a device whose type changed since its claim, where this agent has no
        record of the handler and config that set it up (its state file lost or restored from
        an older backup): the type's new cleanup may not undo the old setup (a cleanup command
        dropped), so the device is quarantined for an operator rather than called clean."""
        if item.action != "cleanup" or not item.type_changed or item.cleared:
            return None
        if item.device.id in self.state.state.set_up_by:
            return None
        return (
            f"type {item.device.type} changed while {item.device.address} was held, and this agent "
            "has no record of the handler and config that set it up (its state file lost?): not "
            "cleaned with the new ones; check the device, then `devassign device clear` it"
        )

    def _held_for_another(self, item: WorkItem) -> str | None:
        """A setup of a device this agent holds set up for another holding (another consumer,
        or the device under another id), which no cleanup has undone since: the server does not
        know that holding (its database restored from an older backup, or this agent's state
        file restored from one), and running the setup would hand the device to the new
        consumer as the old one has it (a VF on its VLAN, a GPU instance with its memory)."""
        if item.action != "setup":
            return None
        address = item.device.address
        for dev_id, entry in self.state.state.assigned.items():
            held = entry.get("device") or {}
            if held.get("address") != address:
                continue
            if dev_id == item.device.id and held.get("consumer") == item.device.consumer:
                continue  # the same holding's setup, sent again
            return (
                f"{address} is still set up for consumer {held.get('consumer')!r} on host "
                f"{self.config.host} (no cleanup since), not for {item.device.consumer!r}: the server "
                "has no record of that holding (its database, or this agent's state file, restored "
                "from an older backup?); the device is cleaned before anyone gets it"
            )
        return None

    def _foreign_facts(self, item: WorkItem) -> str | None:
        """A cleanup whose facts (the server's copy, when this agent's journal has none) name
        the mdev this agent made for another device: removing it would take another
        consumer's vGPU away, whatever the slot."""
        uid = item.facts.get("mdev_uuid") if item.action == "cleanup" else None
        if uid is None:
            return None
        for other, facts in self.state.state.facts.items():
            if other != item.device.id and facts.get("mdev_uuid") == uid:
                return (
                    f"mdev {uid} is the one this agent made for device {other}, not for {item.device.address}"
                )
        return None

    def _policy_refusal(self, item: WorkItem) -> str | None:
        name = handler_name_for(item.device.kind, item.handler)
        return self.config.lifecycle.refusal(
            name, item.config, host=self.config.host, source=self.config.source
        )

    def _prepared(self, item: WorkItem) -> WorkItem:
        """The item as this agent runs it, with facts from its own journal, never a request's.

        A setup gets the journal's facts of an earlier run (none, usually). A cleanup gets the
        journal's facts, or the server's copy (what this agent posted) when the journal lost
        them, and the host driver the device had before its setup, not what reports showed
        since (unbound, vfio-pci). A cleanup after an operator's clear forgets all of that
        and starts from what the host shows now.
        """
        st = self.state.state
        item = self._own_device(item)
        dev_id = item.device.id
        if item.action == "setup":
            if item.device.driver not in (None, VFIO):
                st.host_drivers[dev_id] = {"driver": item.device.driver, "address": item.device.address}
            # The handler that set a held device up cleans it, whatever a later setup of the
            # same device names (a server that lost the assignment, or one that lies).
            if dev_id not in st.set_up_by:
                handler = handler_name_for(item.device.kind, item.handler)
                # The device as set up: what it made (a MIG instance, an mdev) is this agent's
                # until the cleanup passes, even where the server no longer holds it (health).
                as_set_up = item.device.model_dump(mode="json")
                st.set_up_by[dev_id] = {"handler": handler, "config": item.config, "device": as_set_up}
            return item.model_copy(update={"facts": dict(st.facts.get(dev_id, {}))})
        self._take_over_holding(item)
        st.assigned.pop(dev_id, None)  # released: no more health checks as assigned
        own = st.facts.get(dev_id)
        setup = st.set_up_by.get(dev_id)
        if setup and own and item.facts and item.facts != own:
            # The server's copy of the setup's facts is another setup's than this agent's
            # record (a state file restored from a backup older than the holding): the consumer
            # that record names is not the one this holding was set up for (:meth:`_device`).
            setup.pop("device", None)
        item = self._as_set_up(item)
        if item.cleared:
            # Looked at before its pre-setup driver is forgotten: a device a ``driver`` rule
            # takes, still on vfio-pci, is that rule's only through it (else refused below).
            now = self._discovered(fresh=True).get(item.device.address)
            st.facts.pop(dev_id, None)
            st.host_drivers.pop(dev_id, None)
            device = item.device.model_copy(update={"driver": now.driver if now else None})
            return item.model_copy(update={"facts": {}, "device": device})
        own = st.facts.get(dev_id)
        update: dict[str, Any] = {"facts": dict(own if own is not None else item.facts)}
        before = st.host_drivers.get(dev_id, {}).get("driver")
        if isinstance(before, str):
            update["device"] = item.device.model_copy(update={"driver": before})
        return item.model_copy(update=update)

    def _take_over_holding(self, item: WorkItem) -> None:
        """A cleanup of a device this agent holds set up under another id (the server's
        database restored from a backup older than the device's row: the host or the device
        registered again, under new ids) undoes that holding: its records (facts, host driver,
        the handler that set it up) move to the id the cleanup names."""
        st, dev_id = self.state.state, item.device.id
        for other, entry in list(st.assigned.items()):
            if other == dev_id or (entry.get("device") or {}).get("address") != item.device.address:
                continue
            log.warning("%s: cleaning what this agent set up under device id %s", item.device.address, other)
            st.assigned.pop(other)
            for records in (st.facts, st.host_drivers, st.set_up_by):
                if other in records:
                    records.setdefault(dev_id, records.pop(other))

    def _own_device(self, item: WorkItem) -> WorkItem:
        """The item with the device's facts as this agent discovered them, never the server's
        copy: the handlers choose what to act on from them (a MIG slot's GPU, a vGPU's VF and
        type id, the driver to give back), and a server that lies must not choose another
        device of the host. A device this agent does not have is left as sent (refused)."""
        mine = self._discovered().get(item.device.address)
        if mine is None or mine.kind is not item.device.kind:
            return item
        own = {f: getattr(mine, f) for f in DEVICE_FACTS if f not in ("address", "kind")}
        own["attributes"] = dict(mine.attributes)
        return item.model_copy(update={"device": item.device.model_copy(update=own)})

    def _as_set_up(self, item: WorkItem) -> WorkItem:
        """A cleanup runs the handler and the config that set the device up: a type's handler
        or config changed while its device was held (a cleanup command dropped or replaced,
        or a server naming ``noop``) would leave the device as its holder had it and call it
        clean. (A record from before configs were kept names the handler only.)"""
        setup = self.state.state.set_up_by.get(item.device.id)
        if not setup:
            return item
        now = handler_name_for(item.device.kind, item.handler)
        same_config = "config" not in setup or dict(setup.get("config") or {}) == dict(item.config or {})
        if setup.get("handler") == now and same_config:
            return item
        address, then = item.device.address, setup["handler"]
        log.warning("cleaning %s with %s and the config that set it up, not %s as now", address, then, now)
        config = dict(setup.get("config") or {})
        return item.model_copy(update={"handler": setup["handler"], "config": config})

    def _load(self, name: str) -> Handler:
        """Handlers by name, looked up once: entry-point discovery reads package metadata."""
        handler = self._handlers.get(name)
        if handler is None:
            handler = self._handlers[name] = load_handler(name)
        return handler

    def _action(self, action: Action, item: WorkItem) -> ActionResult:
        refusal = self._policy_refusal(item)
        if refusal:
            return ActionResult(False, f"refused by the agent: {refusal}", {"refused": True})
        return self._bounded(action, self._device(item), item.config, item.handler)

    def _bounded(
        self,
        action: Action,
        device: LifecycleDevice,
        config: dict[str, Any],
        handler: str | None,
        ops: HostOps | None = None,
    ) -> ActionResult:
        """The handler's action under the watchdog: one stuck in the kernel fails after
        ``[lifecycle] action_timeout`` and holds neither the agent nor its other devices. A
        ``command`` or ``mig`` action gets the time its type's own ``timeout`` gives it, if longer."""
        return self.watchdog.run(
            device.address,
            action,
            lambda: run_action(action, device, config, handler, ops or self.ops, loader=self._load),
            at_least=own_time_bound(handler_name_for(device.kind, handler), config),
        )

    def _device(self, item: WorkItem) -> LifecycleDevice:
        """The device as a handler gets it. A cleanup's names the consumer its setup ran for
        (what it made is named after that one: an mdev's UUID), where the item names another:
        a move's target is set up for the move's own consumer and cleaned as the moved one's,
        and a holding the server lost is cleaned as the release of a refused claim."""
        device = LifecycleDevice.from_schema(
            item.device, params=item.params, facts=item.facts, companions=frozenset(item.companions)
        )
        setup = self.state.state.set_up_by.get(item.device.id) or {}
        holder = (setup.get("device") or {}).get("consumer")
        if item.action == "cleanup" and isinstance(holder, str) and holder != device.consumer:
            device = replace(device, consumer=holder)
        return device

    def _run(self, item: WorkItem, *, replayed: bool, journaled: bool = False) -> WorkDone:
        st = self.state.state
        dev_id = item.device.id
        early = None
        if not journaled:
            # A device this agent does not have, or a setup's handler it does not allow, is
            # refused as sent: nothing of the item goes into the agent's records of the device
            # it may hold under the same id (which handler set it up, its host driver), and no
            # intent is journaled (a restart never runs the item as the server sent it).
            early = self._refusal(item, prepared=False)
            if early is None:
                item = self._prepared(item)
                st.journal[dev_id] = {
                    "action": item.action,
                    "phase": "started",
                    "item": item.model_dump(mode="json"),
                }
                self.state.save()
        self._crash("intent", item.action)
        refusal = early or self._refusal(item)
        if refusal:
            log.warning("refused the %s of %s: %s", item.action, item.device.address, refusal)
            result = ActionResult(False, f"refused by the agent: {refusal}", {"refused": True})
        else:
            result = self._action(item.action, item)
            if item.action == "cleanup" and result.ok:
                self._check_cleaned(item)
        self._crash("handler", item.action)
        facts: dict[str, Any] = dict(result.details.get("facts") or {}) if item.action == "setup" else {}
        if facts:
            st.facts[dev_id] = {**st.facts.get(dev_id, {}), **facts}
            problem = work_facts_problem(st.facts[dev_id])
            if problem:  # kept here for the cleanup, but the server would refuse the whole post
                result = ActionResult(False, f"the handler's facts cannot be posted: {problem}")
                facts = {}
        item = item.model_copy(update={"facts": {**item.facts, **facts}})
        st.journal[dev_id] = {
            "action": item.action,
            "phase": "done",
            "item": item.model_dump(mode="json"),
            "ok": result.ok,
            "error": result.error,
            "facts": facts,
        }
        self.state.save()
        self._crash("result", item.action)
        if not result.ok:
            log.warning("%s of %s failed: %s", item.action, item.device.address, result.error)
        posted = self._post([dev_id], replayed=replayed)
        if not posted:  # dropped: no result of it can be posted
            address = item.device.address
            return WorkDone(dev_id, address, item.action, False, "not postable", replayed=replayed)
        return posted[0]

    def _held_partitions(self) -> HeldPartitions:
        """The GPU partitions this agent holds: assigned, with an action in flight, or set up
        and not cleaned yet (a partition a released slot's setup made, or a failed cleanup
        left, is this agent's own, kept from claims while its slot is cleaning or quarantined,
        not one made by hand)."""
        return HeldPartitions.of_state(self.state.state, self._server_held)

    def _learn_server_held(self) -> bool:
        """Read which devices the server says are held on this host (at most once a health
        interval); whether that changed what the agent knew."""
        now = self.clock()
        if self._server_held_at is not None and now < self._server_held_at + self.config.health_interval:
            return False
        self._server_held_at = now
        try:
            held = self.reporter.held_devices()
        except ServerUnavailable:
            return False
        changed = held != self._server_held
        self._server_held = held
        return changed

    def _in_flight(self) -> list[dict[str, Any]]:
        """The devices of the journal's actions (started or done, not yet posted), as sent."""
        return [(e.get("item") or {}).get("device") or {} for e in self.state.state.journal.values()]

    def _check_cleaned(self, item: WorkItem) -> None:
        """The health check right after a cleanup: its verdict goes with the cleanup's result,
        so a device that fails it is unhealthy on the server, never available. A slot is told
        the partitions this agent holds beside it, as in :meth:`check_health`."""
        device = self._device(item)
        held = self._held_partitions().facts_for(device)
        device = replace(device, consumer=None, facts={**device.facts, **held})
        result = self._bounded("health", device, item.config, item.handler)
        if not result.details.get("refused"):
            self.health.observe(device.address, result.ok, result.error, cleaned=True)

    def _post_journaled(self, *, replayed: bool) -> list[WorkDone]:
        ids = [k for k, e in self.state.state.journal.items() if e.get("phase") == "done"]
        return self._post(ids, replayed=replayed) if ids else []

    def _post(self, ids: list[str], *, replayed: bool) -> list[WorkDone]:
        """Post the journaled results of ``ids``; drop each entry once the server answered."""
        st = self.state.state
        postable, results = [], []
        for i in ids:
            try:
                results.append(self._result(i, st.journal[i]))
                postable.append(i)
            except ValueError as exc:  # a result the server cannot take: never postable
                log.error("dropped the journaled result for %r: it cannot be posted (%s)", i[:80], exc)
                st.journal.pop(i, None)
        ids = postable
        if not ids:
            self.state.save()
            return []
        entries = [st.journal[i] for i in ids]
        for e in entries:
            self._crash("post", e["action"])
        body = {"results": [r.model_dump(mode="json") for r in results]}
        resp = self.reporter.request("POST", "work", body)
        if resp.status_code >= 400:
            raise WorkRefused(f"server refused the work results ({refusal(resp)})", resp.status_code)
        try:
            outcomes = [WorkOutcome.model_validate(o) for o in payload(resp, self.reporter.where)]
        except (TypeError, ValueError) as exc:
            outcomes = []
            why = str(exc)
        else:
            why = f"{len(outcomes)} outcomes for {len(ids)} results"
        if len(outcomes) != len(ids) or any(o.device_id != i for o, i in zip(outcomes, ids, strict=False)):
            # Not an answer to these results: keep them journaled and post them again later.
            raise ServerUnavailable(f"{self.reporter.where}: unexpected answer to the work results ({why})")
        for e in entries:
            self._crash("posted", e["action"])
        out = []
        cleaned: dict[str, str] = {}  # address -> its type on the server
        for dev_id, entry, res, outcome in zip(ids, entries, results, outcomes, strict=True):
            item = WorkItem.model_validate(entry["item"])
            if res.action == "cleanup" and res.ok and outcome.applied:
                cleaned[item.device.address] = item.device.type
            st.journal.pop(dev_id, None)
            if res.action == "setup" and res.ok and outcome.state is DeviceState.ASSIGNED:
                st.assigned[dev_id] = entry["item"]
            if res.action == "cleanup" and res.ok:
                st.facts.pop(dev_id, None)
                st.set_up_by.pop(dev_id, None)
                st.host_drivers.pop(dev_id, None)  # back on it: rules see what it is bound to
            if not outcome.applied:
                log.info("%s result for %s ignored: %s", res.action, item.device.address, outcome.note)
            out.append(
                WorkDone(
                    device_id=dev_id,
                    address=item.device.address,
                    action=res.action,
                    ok=res.ok,
                    error=res.error,
                    applied=outcome.applied,
                    state=outcome.state,
                    note=outcome.note,
                    replayed=replayed,
                )
            )
        self.state.save()
        if cleaned:
            self._leaves_as_reported(cleaned)
        return out

    def _leaves_as_reported(self, cleaned: dict[str, str]) -> None:
        """Whether a device just cleaned is, now that it is free, another type here than the
        server's, or none (a rule that took it removed or changed while it was held: the server
        kept its type while it was held): then a report follows the work."""
        now = self._discovered(fresh=True)
        if any((now[a].type if a in now else None) != t for a, t in cleaned.items()):
            self._report_after_work = True

    def _result(self, dev_id: str, entry: dict[str, Any]) -> WorkResult:
        device = (entry.get("item") or {}).get("device") or {}
        health = self.health.verdict(str(device.get("address")))
        if entry["action"] != "cleanup" or not entry["ok"]:
            health = HEALTHY  # the verdict goes with a finished cleanup only
        return WorkResult(
            device_id=dev_id,
            action=entry["action"],
            ok=bool(entry["ok"]),
            error=str(entry["error"])[:4000] if entry.get("error") else None,
            facts=dict(entry.get("facts") or {}),
            consumer=device.get("consumer"),
            ticket=(entry.get("item") or {}).get("ticket") or None,
            healthy=health.healthy,
            health_reason=health.reason[:1000] if health.reason else None,
            health_recovering=health.recovering,
        )

    def _crash(self, point: str, action: str) -> None:
        if self.crash_at is not None and self.crash_at in (point, f"{point}:{action}"):
            log.warning("test hook %s=%s: dying at %s of a %s", CRASH_ENV, self.crash_at, point, action)
            self.on_crash()


def _unreadable_result(entry: Any, why: str) -> WorkResult | None:
    """The failure to post for a work item this agent cannot read, if it names a device."""
    device = entry.get("device") if isinstance(entry, dict) else None
    if not isinstance(device, dict):
        return None
    try:
        return WorkResult(
            device_id=device.get("id"),
            action=entry.get("action"),
            ok=False,
            error=postable_text(f"the agent cannot read this work item: {why}"),
            consumer=device.get("consumer"),
            ticket=entry.get("ticket") or None,
        )
    except ValueError:
        return None


def _parents_in_use(
    discovered: Mapping[str, ReportedDevice], checks: Mapping[str, ActionResult], busy: Collection[str]
) -> dict[str, ActionResult]:
    """The failed checks of the free parents (a GPU; the GPU above a VF) of partitions whose
    check found something the agent did not make running on them (a MIG instance or a vGPU
    type made by hand, :data:`PARENT_IN_USE`): the whole GPU must not be handed out, and set up
    for a tenant, under the host's partition, however its own check went."""
    out: dict[str, ActionResult] = {}
    for address, checked in checks.items():
        if checked.ok or not checked.details.get(PARENT_IN_USE):
            continue
        parent = discovered[address].parent
        for _ in range(2):  # the slot's parent, and its parent (a VF's GPU)
            dev = discovered.get(parent) if parent else None
            if parent is None or dev is None:
                break
            if parent not in busy and dev.type is not None and parent not in out:
                why = f"{address} cannot be used: {checked.error}"
                out[parent] = ActionResult(False, f"a partition of it is in use outside devassign ({why})")
            parent = dev.parent
    return out
