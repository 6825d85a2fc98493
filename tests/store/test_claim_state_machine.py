"""A hypothesis state machine over claims: claim, release, expire, host down and up, report, clean,
taint and untaint (a device, the PF with its VFs, a whole host; some taints expire).

The invariants are checked after every step, on SQLite and on PostgreSQL:
no device in two live allocations; every reserved or assigned device belongs to exactly one
live allocation and the other way round; ``inventory`` agrees with a recount of ``devices``;
a device only becomes ``available`` again through the cleanup or a report that brings back
a ``removed`` one; a host that is down gets no new claims; no claim takes a device that a
NoSchedule or Drain taint covers, and ``devices.taint`` marks exactly the covered devices.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from devassign import errors, schemas
from devassign.domain import Role, mdev_address
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Database, Principal, Store
from devassign.store.inventory import recount
from devassign.store.schema import allocation_items, allocations, devices, hosts
from tests.conftest import Clock, _truncate
from tests.e2e.contention import violations

DOWN_AFTER = 90.0
TTL = 300.0
ADMIN = Principal(name="admin", role=Role.ADMIN)
HOSTS = ("sm-0", "sm-1")
PF = "0000:3b:00.0"
HELD = ("reserved", "assigned")
# What a claim may ask for: NIC_PF excludes its VFs, the GPUs are plain devices.
REQUESTS = (
    {"hardware_resource:NIC_VF_1G": "1"},
    {"hardware_resource:NIC_VF_1G": "2"},
    {"hardware_resource:NIC_PF": "1"},
    {"hardware_resource:GPU": "1"},
    {"hardware_resource:GPU": "2"},
    {"hardware_resource:GPU": "1", "hardware_resource:NIC_VF_1G": "1"},
    # A T4 offered whole or as time-sliced vGPUs: one type at a time, 8 GB in all.
    {"hardware_resource:GPU_T4": "1"},
    {"hardware_resource:VGPU_4Q": "1"},
    {"hardware_resource:VGPU_4Q": "2"},
    {"hardware_resource:VGPU_8Q": "1"},
    {"hardware_resource:VGPU_4Q": "1", "hardware_resource:NIC_VF_1G": "1"},
)
T4 = "0000:d8:00.0"


def host_devices() -> list[dict[str, Any]]:
    """Every device a host of the machine can report: a PF with 3 VFs, 2 GPUs, and a T4 with
    its vGPU slots (two 4Q, one 8Q, drawing on its 8 GB: scheduler/shares.py)."""
    pf = {"address": PF, "kind": "sriov_pf", "type": "NIC_PF"}
    vfs = [
        {"address": f"0000:3b:02.{i}", "kind": "sriov_vf", "type": "NIC_VF_1G", "parent": PF}
        for i in range(3)
    ]
    gpus = [{"address": f"0000:af:0{i}.0", "kind": "pci", "type": "GPU"} for i in range(2)]
    t4 = {"address": T4, "kind": "pci", "type": "GPU_T4"}
    share = {"kind": "mdev_type", "parent": T4, "pool_counters": {"framebuffer_mb": 8192}}
    q4 = {**share, "type": "VGPU_4Q", "consumes": {"framebuffer_mb": 4096}, "mode": "4Q"}
    q8 = {**share, "type": "VGPU_8Q", "consumes": {"framebuffer_mb": 8192}, "mode": "8Q"}
    slots = [{**q4, "address": mdev_address(T4, "nvidia-230", i)} for i in range(2)]
    slots.append({**q8, "address": mdev_address(T4, "nvidia-231", 0)})
    return [pf, *vfs, *gpus, t4, *slots]


ADDRESSES = tuple(d["address"] for d in host_devices())


class ClaimMachine(RuleBasedStateMachine):
    """The store driven like the server drives it, with a model of what must hold."""

    url_factory: Callable[[], tuple[str, Callable[[], None]]]

    def __init__(self) -> None:
        super().__init__()
        url, self._cleanup = type(self).url_factory()
        self.db = Database(url, pool_size=2)
        self.db.upgrade()
        self.clock = Clock()
        self.store = Store(
            self.db,
            down_after=timedelta(seconds=DOWN_AFTER),
            reservation_ttl=timedelta(seconds=TTL),
            clock=self.clock,
        )
        self.placer = Placer(self.store)
        self.placer.rng = random.Random(0)  # the same choices when hypothesis replays a case
        for name in ("NIC_PF", "NIC_VF_1G", "GPU", "GPU_T4", "VGPU_4Q", "VGPU_8Q"):
            self.store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
        self.reported: dict[str, set[str]] = {h: set(ADDRESSES) for h in HOSTS}
        self.generation = dict.fromkeys(HOSTS, 0)
        self.last_seen: dict[str, float] = {}
        self.elapsed = 0.0  # seconds since the machine started, as the clock sees it
        for h in HOSTS:
            self._report(h)
        self.live: dict[str, tuple[frozenset[str], float]] = {}  # consumer -> (device ids, claimed at)
        # taint id -> (host, target: "host", "parent" or a device id, effect, expires at or None)
        self.taints: dict[int, tuple[str, str, str, float | None]] = {}
        self.ever: set[str] = set()
        self.n = 0
        # Devices the last step may legitimately have made available again.
        self.may_revive: set[str] = set()
        self.before = self._states()

    def teardown(self) -> None:
        try:
            # After the sweeper's pass, the audit finds nothing at all (hosts down for less than
            # ten years do not count: the machine moves its clock by minutes).
            self.store.sweep()
            report = self.store.audit(down_for=timedelta(days=3650))
            assert report.findings == [], report.findings
        finally:
            self.db.dispose()
            self._cleanup()

    # ------------------------------------------------------------ helpers
    def _advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.elapsed += seconds

    def _up(self, host: str) -> bool:
        return self.last_seen[host] >= self.elapsed - DOWN_AFTER

    def _report(self, host: str) -> schemas.InventoryResult:
        self.generation[host] += 1
        devs = [schemas.ReportedDevice(**d) for d in host_devices() if d["address"] in self.reported[host]]
        result = self.store.apply_report(
            host, schemas.InventoryReport(generation=self.generation[host], devices=devs), "agent"
        )
        self.last_seen[host] = self.elapsed
        return result

    def _states(self) -> dict[str, tuple[str, str, str]]:
        """Device id -> (host, address, state)."""
        with self.db.read() as c:
            rows = c.execute(
                sa.select(devices.c.id, hosts.c.name, devices.c.address, devices.c.state).join(
                    hosts, hosts.c.id == devices.c.host_id
                )
            ).all()
        return {r.id: (r.name, r.address, r.state) for r in rows}

    def _expire_expected(self) -> set[str]:
        return {c for c, (_, at) in self.live.items() if at + TTL < self.elapsed}

    def _sweep(self) -> None:
        expected = self._expire_expected()
        expired = set(self.store.sweep())
        assert expired == expected, (expired, expected)
        for c in expired:
            del self.live[c]
        for t, (*_, until) in list(self.taints.items()):
            if until is not None and until <= self.elapsed:
                del self.taints[t]

    def _tainted(self, states: dict[str, tuple[str, str, str]]) -> set[str]:
        """Device ids that a NoSchedule or Drain taint of the model covers."""
        out: set[str] = set()
        for host, target, effect, _ in self.taints.values():
            if effect == "None":
                continue
            for d, (h, address, _state) in states.items():
                if h != host:
                    continue
                under_pf = address == PF or address.startswith("0000:3b:02.")
                if target in ("host", d) or (target == "parent" and under_pf):
                    out.add(d)
        return out

    # ------------------------------------------------------------ rules
    @rule(spec=st.sampled_from(REQUESTS), key=st.booleans())
    def claim(self, spec: dict[str, str], key: bool) -> None:
        self.n += 1
        consumer = f"vm-{self.n}"
        body = ClaimBody(consumer=consumer, extra_specs=spec, idempotency_key=f"k-{self.n}" if key else None)
        before = self.before
        try:
            allocation, created = self.placer.claim(body, ADMIN)
        except errors.DevassignError as exc:
            assert exc.code == errors.NO_VALID_HOST, (exc.code, exc.message)
            assert exc.message
            self._assert_really_full(spec, before)
            return
        assert created
        ids = frozenset(d.id for d in allocation.devices)
        assert self._up(allocation.host), f"claimed on {allocation.host}, which is down"
        tainted = self._tainted(before)
        for d in ids:
            assert before[d][0] == allocation.host
            assert before[d][2] == "available", f"{before[d]} claimed for {consumer}"
            assert d not in tainted, f"{before[d]} is tainted but was claimed for {consumer}"
        wanted = sum(int(n) for n in spec.values())
        assert len(ids) == wanted
        self.live[consumer] = (ids, self.elapsed)
        self.ever.add(consumer)
        if key:  # a replay returns the same allocation
            again, created = self.placer.claim(body, ADMIN)
            assert not created and {d.id for d in again.devices} == ids

    def _assert_really_full(self, spec: dict[str, str], before: dict[str, tuple[str, str, str]]) -> None:
        """A refusal must be right: no up host had the free devices (VFs of a held PF excluded)."""
        tainted = self._tainted(before)
        for host in HOSTS:
            if not self._up(host):
                continue
            mine = {address: state for h, address, state in before.values() if h == host}
            # A tainted free device is not free for a claim (its parent or children still are).
            offered = {
                address: "tainted" if d in tainted and state == "available" else state
                for d, (h, address, state) in before.items()
                if h == host
            }
            pf_busy = mine.get(PF) in ("reserved", "assigned", "cleaning", "missing", "quarantined")
            vf_busy = any(
                s in ("reserved", "assigned", "cleaning", "missing", "quarantined")
                for a, s in mine.items()
                if a.startswith("0000:3b:02.")
            )
            free = {
                "NIC_PF": int(offered.get(PF) == "available" and not vf_busy),
                "NIC_VF_1G": 0
                if pf_busy
                else sum(s == "available" for a, s in offered.items() if a.startswith("0000:3b:02.")),
                "GPU": sum(s == "available" for a, s in offered.items() if a.startswith("0000:af:")),
                **self._t4_free(mine, offered),
            }
            fits = all(free[t.split(":")[1]] >= int(n) for t, n in spec.items())
            assert not fits, f"refused {spec} although {host} had {free} free"

    @staticmethod
    def _t4_free(mine: dict[str, str], offered: dict[str, str]) -> dict[str, int]:
        """The T4 by its rules: whole or in vGPUs, one vGPU type at a time, 8 GB in all."""
        busy = ("reserved", "assigned", "cleaning", "missing", "quarantined")
        q4 = [mdev_address(T4, "nvidia-230", i) for i in range(2)]
        q8 = mdev_address(T4, "nvidia-231", 0)
        held4 = sum(mine.get(a) in busy for a in q4)
        held8 = int(mine.get(q8) in busy)
        whole = mine.get(T4) in busy
        free4 = sum(offered.get(a) == "available" for a in q4)
        return {
            "GPU_T4": int(offered.get(T4) == "available" and not held4 and not held8),
            "VGPU_4Q": 0 if whole or held8 else min(free4, 2 - held4),
            "VGPU_8Q": int(offered.get(q8) == "available" and not whole and not held4),
        }

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        consumer = data.draw(st.sampled_from(sorted(self.live)))
        ids, _ = self.live.pop(consumer)
        assert self.store.release(consumer, "admin") is True
        assert self.store.release(consumer, "admin") is False  # twice is harmless
        after = self._states()
        for d in ids:
            was, now = self.before[d][2], after[d][2]
            assert now == ("missing" if was == "missing" else "cleaning"), (d, was, now)

    @precondition(lambda self: bool(self.ever))
    @rule()
    def release_unknown(self) -> None:
        with pytest.raises(errors.DevassignError) as exc:
            self.store.release(f"never-{self.n}", "admin")
        assert exc.value.code == errors.ALLOCATION_NOT_FOUND

    @rule()
    def expire(self) -> None:
        """Past the reservation TTL; hosts that were up stay up (they heartbeat)."""
        up = [h for h in HOSTS if self._up(h)]
        self._advance(TTL + 1)
        for h in up:
            self.store.heartbeat(h, "agent")
            self.last_seen[h] = self.elapsed
        self._sweep()
        assert not self.live  # nothing is ever confirmed here

    @rule(host=st.sampled_from(HOSTS))
    def host_down(self, host: str) -> None:
        others = [h for h in HOSTS if h != host and self._up(h)]
        self._advance(DOWN_AFTER + 1)
        for h in others:
            self.store.heartbeat(h, "agent")
            self.last_seen[h] = self.elapsed
        self._sweep()
        assert not self._up(host)
        assert self.store.get_host(host).status == "down"

    @rule(host=st.sampled_from(HOSTS))
    def host_up(self, host: str) -> None:
        self.store.heartbeat(host, "agent")
        self.last_seen[host] = self.elapsed
        assert self.store.get_host(host).status == "up"

    @rule(host=st.sampled_from(HOSTS), address=st.sampled_from(ADDRESSES))
    def report(self, host: str, address: str) -> None:
        """The host reports again with ``address`` removed, or re-added if it was gone. A
        reserved device that leaves ends its claim at once (its setup can never run)."""
        back = address not in self.reported[host]
        gone = (
            set()
            if back
            else {d for d, (h, a, s) in self.before.items() if (h, a, s) == (host, address, "reserved")}
        )
        self.reported[host] ^= {address}
        self._report(host)
        for consumer, (ids, _) in list(self.live.items()):
            if ids & gone:
                del self.live[consumer]
        if back:
            self.may_revive |= {
                d for d, (h, a, s) in self.before.items() if h == host and a == address and s == "removed"
            }

    @rule(
        host=st.sampled_from(HOSTS),
        what=st.sampled_from(("host", "parent", *ADDRESSES)),
        effect=st.sampled_from(("NoSchedule", "Drain", "None")),
        expires=st.sampled_from((None, 120.0)),
    )
    def taint(self, host: str, what: str, effect: str, expires: float | None) -> None:
        body = schemas.TaintCreate(
            effect=effect,  # type: ignore[arg-type]
            reason=f"step {self.n}",
            expires_in=None if expires is None else timedelta(seconds=expires),
        )
        if what == "host":
            made = self.store.add_taint(body, "admin", host=host)
            key = "host"
        elif what == "parent":
            body.parent = PF
            made = self.store.add_taint(body, "admin", host=host)
            key = "parent"
        else:
            key = next(d for d, (h, a, _) in self.before.items() if h == host and a == what)
            made = self.store.add_taint(body, "admin", device_id=key)
        assert made.host == host and made.effect == effect
        self.taints[made.id] = (host, key, effect, None if expires is None else self.elapsed + expires)

    @precondition(lambda self: bool(self.taints))
    @rule(data=st.data(), one=st.booleans())
    def untaint(self, data: st.DataObject, one: bool) -> None:
        taint_id = data.draw(st.sampled_from(sorted(self.taints)))
        host = self.taints[taint_id][0]
        if one:
            removed = self.store.remove_taints("admin", host=host, taint_id=taint_id)
            assert [t.id for t in removed] == [taint_id]
            del self.taints[taint_id]
            return
        removed = self.store.remove_taints("admin", host=host)
        mine = {t for t, v in self.taints.items() if v[0] == host}
        assert {t.id for t in removed} == mine
        for t in mine:
            del self.taints[t]
        assert self.store.remove_taints("admin", host=host) == []  # twice is harmless

    @rule()
    def clean(self) -> None:
        """Stand-in for the agent's cleanup: cleaning devices become available."""
        cleaning = {d for d, (_, _, s) in self.before.items() if s == "cleaning"}
        self.may_revive |= cleaning
        now = self.clock()

        def run(c: sa.Connection) -> None:
            ids = [
                r.host_id
                for r in c.execute(sa.select(devices.c.host_id).where(devices.c.state == "cleaning"))
            ]
            c.execute(
                devices.update()
                .where(devices.c.state == "cleaning")
                .values(state="available", allocation_id=None, state_changed_at=now, updated_at=now)
            )
            for host_id in sorted(set(ids)):
                recount(c, host_id)

        self.db.retrying(run)

    # ------------------------------------------------------------ invariants
    @invariant()
    def holdings_are_consistent(self) -> None:
        with self.db.read() as c:
            found = violations(c)
            live = {
                r.consumer: r.id
                for r in c.execute(
                    sa.select(allocations.c.consumer, allocations.c.id).where(
                        allocations.c.released_at.is_(None)
                    )
                )
            }
            items: dict[int, set[str]] = {}
            for r in c.execute(
                sa.select(allocation_items.c.allocation_id, allocation_items.c.device_id).where(
                    allocation_items.c.allocation_id.in_(list(live.values()))
                )
            ):
                items.setdefault(r.allocation_id, set()).add(r.device_id)
        assert not found, found
        assert set(live) == set(self.live), (sorted(live), sorted(self.live))
        for consumer, alloc_id in live.items():
            assert items.get(alloc_id, set()) == set(self.live[consumer][0])

    @invariant()
    def the_audit_finds_no_inconsistency(self) -> None:
        """Every check that does not depend on time passing (those wait for the sweeper)."""
        timed = {"reservation_overdue", "held_on_down_host", "stranded_work", "move_stale"}
        report = self.store.audit(down_for=timedelta(days=3650))
        assert [f for f in report.findings if f.check not in timed] == []

    @invariant()
    def taint_marks_are_the_models(self) -> None:
        with self.db.read() as c:
            marked = {r.id for r in c.execute(sa.select(devices.c.id).where(devices.c.taint.is_not(None)))}
        assert marked == self._tainted(self._states())
        listed = {t.id for t in self.store.list_taints()}
        assert listed == {t for t, v in self.taints.items() if v[3] is None or v[3] > self.elapsed}

    @invariant()
    def nothing_becomes_available_unexplained(self) -> None:
        after = self._states()
        for d, (host, address, state) in after.items():
            was = self.before.get(d, (host, address, "new"))[2]
            if state == "available" and was not in ("available", "new"):
                assert d in self.may_revive, f"{host} {address} went {was} -> available"
            if was in ("cleaning", "quarantined", "missing") and state == "available":
                assert d in self.may_revive
        self.before = after
        self.may_revive = set()


def _sqlite_url() -> tuple[str, Callable[[], None]]:
    folder = Path(tempfile.mkdtemp(prefix="devassign-sm-"))
    return f"sqlite:///{folder / 'sm.db'}", lambda: shutil.rmtree(folder, ignore_errors=True)


SETTINGS = settings(
    max_examples=int(os.environ.get("DEVASSIGN_SM_EXAMPLES", "30")),
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_claim_state_machine(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        factory = _sqlite_url
    else:
        url: str = request.getfixturevalue("pg_url")

        def factory() -> tuple[str, Callable[[], None]]:
            _truncate(url)
            return url, lambda: None

    machine = type(f"ClaimMachine_{backend}", (ClaimMachine,), {"url_factory": staticmethod(factory)})
    run_state_machine_as_test(machine, settings=SETTINGS)
