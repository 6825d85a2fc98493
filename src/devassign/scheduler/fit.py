"""Choosing the devices on one host: a small depth-first search with a step budget.

Devices that no question can tell apart (same candidacy, NUMA node, parent, IOMMU group
and constrained attribute values) form one class, and the search chooses how many to take
from each class, never which ones: combinations, not permutations. Identical requests
without alternatives are merged into one (the 8 x 1-unit request groups that stalled
Placement, bug 2070257, are one request of 8 here). Constraints are added as devices are
taken and removed on backtrack (DRA ``constraint.add/remove``). Every (class, how many)
tried is one step; past ``budget`` steps the host fails with ``search_budget_exhausted``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from devassign.scheduler.candidates import Candidates
from devassign.scheduler.reasons import Reason, ReasonCode, constraint_phrase, distribution
from devassign.scheduler.request import Alternative, Constraint, DeviceRequest, Request
from devassign.scheduler.shares import copy_pools
from devassign.scheduler.view import STANDARD_FIELDS, DeviceView, HostView

DEFAULT_BUDGET = 10_000
DIAGNOSIS_BUDGET = 2_000


@dataclass(frozen=True, slots=True)
class Chosen:
    """What one named request got: its devices, and the IOMMU group mates that come along."""

    name: str
    type: str
    alternative: int  # 0: the request's own type; k: first_available[k - 1]
    device_ids: tuple[str, ...]
    companion_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FitResult:
    """A fit (``chosen``) or the reason there is none, and how many search steps it took."""

    host: str
    chosen: tuple[Chosen, ...] | None
    reason: Reason | None
    steps: int

    def device_ids(self) -> tuple[str, ...]:
        """Every device the claim must take, companions included."""
        if self.chosen is None:
            return ()
        return tuple(i for c in self.chosen for i in (*c.device_ids, *c.companion_ids))


class BudgetExhausted(Exception):
    pass


def attribute_value(device: DeviceView, attribute: str) -> Any:
    """The value a constraint compares; ``None`` when the device lacks it. A list or an object
    (``reset_methods``, or whatever an agent reports) compares whole, as a hashable value: the
    search keys its classes of devices by these values."""
    if attribute.startswith("attributes."):
        name = attribute[len("attributes.") :]
        if name in device.attributes or name not in STANDARD_FIELDS:
            return _frozen(device.attributes.get(name))
        attribute = name  # a standard field, as selectors read it (DeviceView.selector_attributes)
    return _frozen(getattr(device, attribute, None))


@dataclass(frozen=True, order=True)
class Flag:
    """A true/false attribute value as a constraint compares it: apart from the numbers 1 and
    0, which Python's own True and False equal (``x: true`` does not match ``x: 1``)."""

    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


def _frozen(value: Any) -> Any:
    if isinstance(value, bool):
        return Flag(value)
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    return value


def fit(
    host: HostView,
    request: Request,
    *,
    budget: int = DEFAULT_BUDGET,
    candidates: Candidates | None = None,
    quota_left: Mapping[str, int] | None = None,
    rng: random.Random | None = None,
) -> FitResult:
    """Choose devices for every named request on ``host``, or say why it cannot be done.

    Identical devices are interchangeable: by default the lowest addresses are taken (so
    tests are repeatable); with ``rng`` a random few, so concurrent claims on one host do not
    all race for the same device.
    """
    cands = candidates or Candidates()
    search = _Search(host, request, cands, request.constraints, quota_left, budget, rng)
    try:
        found = search.run()
        if found and any(ai for ai, _ in search.picks):
            search = _earliest(search, host, request, cands, quota_left, budget, rng)
    except BudgetExhausted:
        reason = Reason(
            ReasonCode.SEARCH_BUDGET_EXHAUSTED,
            f"gave up after {budget} search steps (too many ways to try; "
            "simplify the constraints or name fewer requests)",
        )
        return FitResult(host.name, None, reason, search.steps)
    if found:
        return FitResult(host.name, search.result(), None, search.steps)
    reason = _diagnose(host, request, cands, quota_left)
    return FitResult(host.name, None, reason, search.steps)


def _earliest(
    found: _Search,
    host: HostView,
    request: Request,
    cands: Candidates,
    quota_left: Mapping[str, int] | None,
    budget: int,
    rng: random.Random | None,
) -> _Search:
    """The fit whose alternatives come earliest, request by request: a request gets its own
    type wherever some choice of the other requests' devices lets it, not only where the
    search's first choice of them did. ``found`` used a later alternative somewhere; each
    earlier one is tried with the requests before it kept to theirs. Within the budget left:
    past it, ``found`` stands."""
    best, spent = found, found.steps
    fixed: dict[int, int] = {}
    for ui in range(len(found.units)):
        chosen = best.picks[ui][0]
        for ai in range(chosen):
            if budget - spent <= 0:
                return best
            trial = _Search(
                host,
                request,
                cands,
                request.constraints,
                quota_left,
                budget - spent,
                rng,
                only={**fixed, ui: ai},
            )
            try:
                fits = trial.run()
            except BudgetExhausted:
                return best
            finally:
                spent += trial.steps
            if fits:
                best, chosen = trial, ai
                break
        fixed[ui] = chosen
    return best


# ---------------------------------------------------------------- the search


@dataclass(slots=True)
class _Class:
    devices: list[DeviceView]
    numa: int | None
    parent: str | None
    group: int | None  # set only for groups with more than one assignable member
    values: dict[int, Any]  # constraint index -> the class's value
    own: str | None = None  # the address of its one device, when other devices are its children
    taken: int = 0
    damage: int = 0  # what taking one costs the other partitions of its pool (shares.Pools.damage)


@dataclass(slots=True)
class _Unit:
    """One or more identical named requests searched as one."""

    members: list[DeviceRequest]
    constraints: list[int]
    alternatives: tuple[Alternative, ...]
    classes: list[list[_Class]] = field(default_factory=list)  # per alternative


# A class of interchangeable devices as kept on a host's view: the (unit, alternative) pairs it
# serves, its devices by address, then _Class's numa, parent, group, values, own and damage.
_Shape = tuple[
    tuple[tuple[int, int], ...],
    tuple[DeviceView, ...],
    int | None,
    str | None,
    int | None,
    dict[int, Any],
    str | None,
    int,
]
# How many request shapes one view keeps, and which: the few small ones a cloud's flavors ask
# for, not any shape a client can write (a view stays cached for many claims, so a large shape
# kept on it would be memory a client could grow; a diagnosis's relaxed shapes are not kept).
_MEMO_MAX = 8
_MEMO_ALTERNATIVES = 8  # alternatives in all the request's units
_MEMO_CONSTRAINTS = 4


class _Search:
    def __init__(
        self,
        host: HostView,
        request: Request,
        cands: Candidates,
        constraints: tuple[Constraint, ...],
        quota_left: Mapping[str, int] | None,
        budget: int,
        rng: random.Random | None = None,
        *,
        keep: bool = True,
        only: Mapping[int, int] | None = None,
    ) -> None:
        self.host = host
        self.only = only or {}  # unit -> the one alternative it may use (_earliest)
        self.rng = rng
        self.keep = keep  # whether its class shapes may be kept on the view (not a diagnosis's)
        self.constraints = constraints
        self.budget = budget
        self.steps = 0
        self.quota = dict(quota_left) if quota_left is not None else None
        self.units = _units(request, constraints)
        self.request_order = request.requests
        self.picks: list[tuple[int, list[tuple[_Class, list[DeviceView]]]]] = []
        self.bound: list[Any] = [None] * len(constraints)
        self.bound_n = [0] * len(constraints)
        self.seen: list[Counter[Any]] = [Counter() for _ in constraints]
        self.held_addr: Counter[str] = Counter()
        self.held_parent: Counter[str] = Counter()
        self.group_refs: Counter[int] = Counter()
        self.numas: Counter[int] = Counter()
        self.used_parents = host.used_parents
        self.pools = copy_pools(host.pools)
        self._free_in_pool: dict[str | None, list[DeviceView]] = {}
        self._build_classes(cands)

    def _build_classes(self, cands: Candidates) -> None:
        for unit in self.units:
            unit.classes = [[] for _ in unit.alternatives]
        for where, devices, numa, parent, group, values, own, damage in self._class_shapes(cands):
            cls = _Class(list(devices), numa, parent, group, values, own, damage=damage)
            if self.rng is not None:
                self.rng.shuffle(cls.devices)
            for ui, ai in where:
                unit = self.units[ui]
                # A device lacking a constrained attribute can satisfy neither match nor distinct.
                if all(cls.values[ci] is not None for ci in unit.constraints):
                    unit.classes[ai].append(cls)

    def _class_shapes(self, cands: Candidates) -> list[_Shape]:
        """The host's usable devices grouped into classes of interchangeable ones, each with
        the (unit, alternative) pairs it may serve. A pure function of the host's view and the
        request's shape (types, not counts), so it is kept on the view for requests without
        selectors (their results are per request); small shapes only, at most ``_MEMO_MAX`` a view."""
        host = self.host
        kept: dict[tuple[Any, ...], list[_Shape]] = host.memo.setdefault("shapes", {})
        key: tuple[Any, ...] | None = None
        alternatives = [alt for unit in self.units for alt in unit.alternatives]
        if (
            self.keep
            and len(kept) < _MEMO_MAX
            and len(alternatives) <= _MEMO_ALTERNATIVES
            and len(self.constraints) <= _MEMO_CONSTRAINTS
            and all(alt.selector is None for alt in alternatives)
        ):
            key = (
                "classes",
                tuple(tuple((alt.type, alt.extra) for alt in unit.alternatives) for unit in self.units),
                tuple(c.attribute for c in self.constraints),
            )
            found = kept.get(key)
            if found is not None:
                return found
        candidacy: dict[str, list[tuple[int, int]]] = {}
        devices: dict[str, DeviceView] = {}
        for ui, unit in enumerate(self.units):
            for ai, alt in enumerate(unit.alternatives):
                pair = (ui, ai)  # one tuple shared by every device it applies to
                for d in cands.of(host, alt).usable:
                    candidacy.setdefault(d.id, []).append(pair)
                    devices[d.id] = d
        classes: dict[tuple[Any, ...], list[DeviceView]] = {}
        first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for dev_id, where in candidacy.items():
            d = devices[dev_id]
            group = d.iommu_group if len(host.group_of(d)) > 1 else None
            own = d.address if (d.address in host.parents or d.address in self.pools.capacity) else None
            values = {ci: attribute_value(d, c.attribute) for ci, c in enumerate(self.constraints)}
            share = (d.pool, d.mode, tuple(sorted((d.consumes or {}).items())))
            ck = (tuple(where), d.numa_node, d.parent, group, own, tuple(values.values()), share)
            members = classes.get(ck)
            if members is None:
                members = classes[ck] = []
                damage = self.pools.damage(d, self._pool_free(d.pool)) if d.consumes else 0
                first[ck] = (d.numa_node, d.parent, group, values, own, damage)
            members.append(d)
        shapes: list[_Shape] = [
            (ck[0], tuple(sorted(members, key=lambda d: d.address)), *first[ck])
            for ck, members in classes.items()
        ]
        if key is not None:
            kept[key] = shapes
        return shapes

    def _pool_free(self, pool: str | None) -> list[DeviceView]:
        """The free partitions of ``pool`` on this host, whatever type: what a choice may cost."""
        found = self._free_in_pool.get(pool)
        if found is None:
            free = self.host.free_ids
            found = self._free_in_pool[pool] = [
                e for e in self.host.devices if e.pool == pool and e.id in free
            ]
        return found

    def run(self) -> bool:
        try:
            return self._unit(0)
        except RecursionError:
            # One call per class taken from, per request: a search that deep (thousands of
            # distinct devices) is one too large to finish, as one past its steps is.
            raise BudgetExhausted from None

    def _unit(self, ui: int) -> bool:
        if ui == len(self.units):
            return True
        unit = self.units[ui]
        k = len(unit.members)
        for ai, alt in enumerate(unit.alternatives):
            if self.only.get(ui, ai) != ai:
                continue
            need = alt.count * k
            if self.quota is not None and self.quota.get(alt.type, need) < need:
                continue
            classes = sorted(unit.classes[ai], key=lambda c: self._order(c, need))
            left = sum(len(c.devices) - c.taken for c in classes)
            if left < need:
                continue
            if self.quota is not None and alt.type in self.quota:
                self.quota[alt.type] -= need
            self.picks.append((ai, []))
            if self._take(ui, unit, classes, 0, need, left):
                return True
            self.picks.pop()
            if self.quota is not None and alt.type in self.quota:
                self.quota[alt.type] += need
        return False

    def _order(self, c: _Class, need: int) -> tuple[int, int, int, int, int]:
        """Try first: the NUMA node already used, a partly used parent, the partition that
        leaves its pool's largest partitions possible, a class that fits alone, the smallest
        such class (keeps whole PFs and GPUs free for the next request)."""
        left = len(c.devices) - c.taken
        same_numa = 0 if (not self.numas or c.numa in self.numas) else 1
        used_parent = 0 if c.parent and (c.parent in self.used_parents) else 1
        return (same_numa, used_parent, c.damage, 0 if left >= need else 1, left)

    def _take(self, ui: int, unit: _Unit, classes: list[_Class], i: int, need: int, left: int) -> bool:
        """Take ``need`` devices for unit ``ui`` from ``classes[i:]``, most from each class
        first. A class left out is a step of the loop, not a call: a host with a thousand
        classes (devices that differ in a constrained attribute) went past Python's recursion
        limit; the calls are one per class taken from, so as deep as the devices taken."""
        if need == 0:
            return self._unit(ui + 1)
        distinct = any(self.constraints[ci].mode == "distinct" for ci in unit.constraints)
        while i < len(classes) and left >= need:
            c = classes[i]
            avail = len(c.devices) - c.taken
            most = min(avail, need, 1) if distinct else min(avail, need)
            for t in range(most, 0, -1):
                self._step()
                new = self._add(unit, c, t)
                if new is None:
                    continue
                if self.constraints and self._hopeless(ui, need - t):
                    self._remove(unit, c, t)
                    continue
                self.picks[-1][1].append((c, new))
                if self._take(ui, unit, classes, i + 1, need - t, left - avail):
                    return True
                self.picks[-1][1].pop()
                self._remove(unit, c, t)
            self._step()  # none of this class
            i, left = i + 1, left - avail
        return False

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.budget:
            raise BudgetExhausted

    def _hopeless(self, ui: int, need: int) -> bool:
        """Whether the constraints leave fewer devices than the requests still to place need:
        six requests on one NUMA node that has five, or under six distinct PFs of five, fail
        at once, not after every way of taking the first five is tried (which ran out of steps
        with a few named requests). ``need``: what unit ``ui`` still needs. Counts what the
        remaining requests could use at best, so it never refuses a choice that fits."""
        for ci, constraint in enumerate(self.constraints):
            match = constraint.mode == "match"
            if match and not self.bound_n[ci]:
                continue
            wanted = 0
            within: dict[int, _Class] = {}
            for uj in range(ui, len(self.units)):
                unit = self.units[uj]
                if ci not in unit.constraints:
                    continue
                if uj == ui:
                    wanted += need
                    lists = [unit.classes[self.picks[-1][0]]]
                else:
                    allowed = [ai for ai in range(len(unit.alternatives)) if self.only.get(uj, ai) == ai]
                    if not allowed:
                        continue
                    wanted += min(unit.alternatives[ai].count for ai in allowed) * len(unit.members)
                    lists = [unit.classes[ai] for ai in allowed]
                for classes in lists:
                    for cl in classes:
                        if cl.taken < len(cl.devices) and self._open(unit, cl):
                            within[id(cl)] = cl
            if not wanted:
                continue
            if match:
                if wanted > sum(len(cl.devices) - cl.taken for cl in within.values()):
                    return True
            elif wanted > len({cl.values[ci] for cl in within.values() if not self.seen[ci][cl.values[ci]]}):
                return True
        return False

    def _open(self, unit: _Unit, cl: _Class) -> bool:
        """Whether ``cl`` has the values the unit's match constraints are bound to."""
        for cj in unit.constraints:
            if self.bound_n[cj] and self.constraints[cj].mode == "match" and cl.values[cj] != self.bound[cj]:
                return False
        return True

    def _add(self, unit: _Unit, c: _Class, t: int) -> list[DeviceView] | None:
        """Take ``t`` devices of ``c`` if the constraints and PF/VF exclusion allow it."""
        for ci in unit.constraints:
            v = c.values[ci]
            if self.constraints[ci].mode == "match":
                if self.bound_n[ci] and self.bound[ci] != v:
                    return None
            elif self.seen[ci][v]:
                return None
        new = c.devices[c.taken : c.taken + t]
        mates: list[DeviceView] = []
        if c.group is not None and not self.group_refs[c.group]:
            mates = _mates(self.host, c.group, new)
        batch = (*new, *mates)
        here = {d.address for d in batch}
        lineage = self.host.lineage  # empty unless some parent has a parent: then one check
        for d in batch:
            if d.parent and (
                any(self.held_addr[a] or a in here for a in lineage[d.address])
                if lineage
                else (self.held_addr[d.parent] or d.parent in here)
            ):
                return None
            if d.pool and (self.held_addr[d.pool] or d.pool in here):
                return None
            if self.held_parent[d.address]:
                return None
        if not self._charge(mates, 1):
            return None
        extra = dict(unit.alternatives[self.picks[-1][0]].extra)
        if self.pools and not self._draw(new, mates, extra):
            self._charge(mates, -1)
            return None
        for ci in unit.constraints:
            v = c.values[ci]
            if self.constraints[ci].mode == "match":
                self.bound[ci] = v
                self.bound_n[ci] += t
            else:
                self.seen[ci][v] += t
        if c.group is not None:
            self.group_refs[c.group] += t
        for d in batch:
            self._hold(d, 1)
        c.taken += t
        return new

    def _remove(self, unit: _Unit, c: _Class, t: int) -> None:
        c.taken -= t
        new = c.devices[c.taken : c.taken + t]
        mates: list[DeviceView] = []
        if c.group is not None:
            self.group_refs[c.group] -= t
            if not self.group_refs[c.group]:
                mates = _mates(self.host, c.group, new)
        extra = dict(unit.alternatives[self.picks[-1][0]].extra)
        self._charge(mates, -1)
        for d in (*new, *mates):
            self._hold(d, -1)
            if self.pools:
                self.pools.take(d, -1, extra if d in new else None)
        for ci in unit.constraints:
            if self.constraints[ci].mode == "match":
                self.bound_n[ci] -= t
            else:
                self.seen[ci][c.values[ci]] -= t

    def _charge(self, mates: list[DeviceView], n: int) -> bool:
        """Count IOMMU group mates against their own type's quota (``n=1``), as the claim
        counts them, or give them back (``n=-1``). False, charging nothing, when one would
        pass the quota: that host does not fit (another may)."""
        quota = self.quota
        if quota is None or not mates:
            return True
        kinds = [m.type for m in mates if m.type in quota]
        if n > 0 and any(quota[k] < kinds.count(k) for k in set(kinds)):
            return False
        for k in kinds:
            quota[k] -= n
        return True

    def _draw(self, new: list[DeviceView], mates: list[DeviceView], extra: dict[str, int]) -> bool:
        """Take the chosen devices (with what the request's params take, ``extra``) and their
        group mates from their pools, all or nothing: each must fit on top of the others."""
        batch = [(d, extra) for d in new] + [(d, {}) for d in mates]
        for i, (d, more) in enumerate(batch):
            if self.pools.refusal(d, more) is not None:
                for e, less in batch[:i]:
                    self.pools.take(e, -1, less)
                return False
            self.pools.take(d, 1, more)
        return True

    def _hold(self, d: DeviceView, n: int) -> None:
        """Count ``d`` as held (``n=-1``: no longer), and every device above it as one that a
        held device is carved from (its parent, the parent's parent, its pool)."""
        self.held_addr[d.address] += n
        above = self.host.above(d)
        for a in above:
            self.held_parent[a] += n
        if d.pool and d.pool not in above:
            self.held_parent[d.pool] += n
        if d.numa_node is not None:
            self.numas[d.numa_node] += n
            if not self.numas[d.numa_node]:
                del self.numas[d.numa_node]

    def commit(self) -> None:
        """Keep what the last ``run`` chose as held, and start the next instance afresh: the
        host as ``HostView.with_held`` would show it, without rebuilding it (capacity)."""
        held: dict[str, DeviceView] = {}
        groups: set[int] = set()
        for _, takes in self.picks:
            for c, new in takes:
                held.update((d.id, d) for d in new)
                if c.group is not None:
                    groups.add(c.group)
                    held.update((m.id, m) for m in self.host.group_members[c.group])
        addresses = {d.address for d in held.values()}
        lineage = self.host.lineage
        parents = {a for d in held.values() for a in self.host.above(d)}
        parents |= {d.pool for d in held.values() if d.pool}
        self.used_parents = self.used_parents | parents
        # A class is out once its group is partly held, a device above it is held, or its one
        # device is above a held device: what HostView leaves out of the free devices.
        for unit in self.units:
            for ai, classes in enumerate(unit.classes):
                unit.classes[ai] = [
                    c
                    for c in classes
                    if c.taken < len(c.devices)
                    and c.group not in groups
                    and not (c.parent and addresses.intersection((c.parent, *lineage.get(c.parent, ()))))
                    and c.own not in parents
                ]
        self.picks = []
        self.bound = [None] * len(self.constraints)
        self.bound_n = [0] * len(self.constraints)
        self.seen = [Counter() for _ in self.constraints]
        self.numas = Counter()

    def result(self) -> tuple[Chosen, ...]:
        """Split each unit's devices back among its named requests; add the group mates."""
        per_request: list[tuple[DeviceRequest, int, list[DeviceView]]] = []
        for unit, (ai, takes) in zip(self.units, self.picks, strict=True):
            devices = [d for _, new in takes for d in new]
            n = unit.alternatives[ai].count
            for j, member in enumerate(unit.members):
                per_request.append((member, ai, devices[j * n : (j + 1) * n]))
        chosen_ids = {d.id for _, _, devices in per_request for d in devices}
        mates_seen: set[str] = set()
        out: dict[str, Chosen] = {}
        for r, ai, devices in per_request:
            mates: list[str] = []
            for d in devices:
                for m in self.host.group_of(d):
                    if m.id not in chosen_ids and m.id not in mates_seen:
                        mates_seen.add(m.id)
                        mates.append(m.id)
            alt = r.alternatives[ai]
            ids = tuple(d.id for d in devices)
            out[r.name] = Chosen(r.name, alt.type, ai, ids, tuple(mates))
        return tuple(out[r.name] for r in self.request_order)


def count_fits(
    host: HostView,
    request: Request,
    *,
    limit: int,
    budget: int = DEFAULT_BUDGET,
) -> tuple[int, int]:
    """How many instances of ``request`` fit on ``host`` one after another, each holding what
    it chose (at most ``limit``), and the search steps it took.

    One search over the classes of identical devices keeps its holds from one instance to the
    next: the same choices as ``fit`` on ``host.with_held(...)`` each time, without rebuilding
    the host and its classes per instance (which was quadratic in the host's devices: 37 s for
    20,000 VFs). Each instance has ``budget`` steps; a refusal is not diagnosed.
    """
    search = _Search(host, request, Candidates(), request.constraints, None, budget)
    n = steps = 0
    while n < limit:
        search.steps = 0
        try:
            found = search.run()
        except BudgetExhausted:
            found = False
        steps += search.steps
        if not found:
            break
        search.commit()
        n += 1
    return n, steps


class Instances:
    """Instances of ``request`` placed on ``host`` one after another, each holding what it
    chose: one search kept from one instance to the next, as :func:`count_fits` counts them,
    for a gang's instances on one host (a view of the whole host per instance made a gang of
    1,000 on a host of 20,000 devices take two minutes). The request's units have one
    alternative each (no earlier alternative to prefer) and the host no pools (a class's
    damage to its pool is read when the classes are built)."""

    def __init__(self, host: HostView, request: Request, budget: int, rng: random.Random | None) -> None:
        self._search = _Search(host, request, Candidates(), request.constraints, None, budget, rng)

    def next(self, quota_left: Mapping[str, int] | None) -> tuple[tuple[Chosen, ...] | None, int]:
        """The next instance's devices (held from now on), or ``None``; and the search steps."""
        search = self._search
        search.quota = dict(quota_left) if quota_left is not None else None
        search.steps = 0
        try:
            found = search.run()
        except BudgetExhausted:
            found = False
        if not found:
            return None, search.steps
        chosen = search.result()
        search.commit()
        return chosen, search.steps


def _mates(host: HostView, group: int, new: list[DeviceView]) -> list[DeviceView]:
    ids = {d.id for d in new}
    return [m for m in host.group_members[group] if m.id not in ids]


def _units(request: Request, constraints: tuple[Constraint, ...]) -> list[_Unit]:
    units: list[_Unit] = []
    index: dict[tuple[Any, ...], _Unit] = {}
    for r in request.requests:
        member_of = [ci for ci, c in enumerate(constraints) if r.name in c.requests]
        key = (r.alternatives, tuple(member_of))
        if len(r.alternatives) == 1 and key in index:
            index[key].members.append(r)
            continue
        unit = _Unit([r], member_of, r.alternatives)
        units.append(unit)
        if len(r.alternatives) == 1:
            index[key] = unit
    return units


# ---------------------------------------------------------------- why not


def _solves(
    host: HostView,
    request: Request,
    cands: Candidates,
    constraints: tuple[Constraint, ...],
) -> bool | None:
    """Whether a relaxed version fits; ``None`` when even that ran out of steps."""
    search = _Search(host, request, cands, constraints, None, DIAGNOSIS_BUDGET, keep=False)
    try:
        return search.run()
    except BudgetExhausted:
        return None


def _diagnose(
    host: HostView, request: Request, cands: Candidates, quota_left: Mapping[str, int] | None
) -> Reason:
    """Name the first thing that stands in the way, by relaxing one thing at a time."""
    if quota_left is not None and _solves(host, request, cands, request.constraints):
        left = ", ".join(f"{t}: {n} left" for t, n in sorted(quota_left.items()))
        return Reason(
            ReasonCode.OVER_QUOTA,
            f"fits only with more devices than the project's quota leaves ({left})",
            1,
        )
    for c in request.constraints:
        if _solves(host, request, cands, (c,)) is False:
            return constraint_reason(host, request, cands, c)
    if request.constraints and _solves(host, request, cands, ()):
        rules = "; ".join(
            f"{' and '.join(c.requests)} {constraint_phrase(c.attribute, c.mode)}"
            for c in request.constraints
        )
        return Reason(
            ReasonCode.CONSTRAINT_UNSATISFIED,
            f"no choice of devices meets all the constraints together ({rules})",
            1,
        )
    need: dict[str, list[DeviceRequest]] = {}
    for r in request.requests:
        need.setdefault(r.first.type, []).append(r)
    for type_name, members in need.items():
        total = sum(r.first.count for r in members)
        usable = {d.id for r in members for d in cands.of(host, r.first).usable}
        if total > len(usable) and all(len(r.alternatives) == 1 for r in members):
            names = ", ".join(r.name for r in members)
            return Reason(
                ReasonCode.NOT_ENOUGH_FREE,
                f"needs {total} {type_name} (for {names} together), has {len(usable)} usable",
                total - len(usable),
            )
    taking = _params_reason(host, request, cands)
    if taking is not None:
        return taking
    wants = " and ".join(_describe(r) for r in request.requests)
    return Reason(
        ReasonCode.DEVICE_CONFLICT,
        f"cannot take {wants} at once: they compete for the same devices, "
        "or would put a device and its own parent in one allocation",
        1,
    )


def _params_reason(host: HostView, request: Request, cands: Candidates) -> Reason | None:
    """When the request fits but for what its params take of the devices' pools (a VF's
    guaranteed rate of its PF's bandwidth): ``needs 1 NIC_VF with 6000 bandwidth_mbps each,
    0000:5e:00.0 has 4000 of 10000 bandwidth_mbps left``."""
    if not any(a.extra for r in request.requests for a in r.alternatives):
        return None
    plain = replace(
        request,
        requests=tuple(
            replace(r, alternatives=tuple(replace(a, extra=()) for a in r.alternatives))
            for r in request.requests
        ),
    )
    if not _solves(host, plain, cands, request.constraints):
        return None
    wants, left = [], {}
    for r in request.requests:
        if not r.first.extra:
            continue
        each = ", ".join(f"{amount} {k}" for k, amount in r.first.extra)
        wants.append(f"{r.first.count} {r.first.type} with {each} each")
        for d in cands.of(host, r.first).usable:
            if d.pool is not None:
                cap, used = host.pools.capacity.get(d.pool, {}), host.pools.used.get(d.pool, Counter())
                for k, _ in r.first.extra:
                    left[(d.pool, k)] = (
                        f"{d.pool} has {max(cap.get(k, 0) - used[k], 0)} of {cap.get(k, 0)} {k} left"
                    )
    pools = "; ".join(left[key] for key in sorted(left)[:3]) + ("; ..." if len(left) > 3 else "")
    return Reason(ReasonCode.NOT_ENOUGH_FREE, f"needs {' and '.join(wants)} of their pool: {pools}", 1)


def constraint_reason(host: HostView, request: Request, cands: Candidates, c: Constraint) -> Reason:
    """``needs 2 NIC_VF_1G on one NUMA node, has 1 on node 0 and 1 on node 1``."""
    members = [r for r in request.requests if r.name in c.requests]
    need: dict[str, int] = {}
    for r in members:
        need[r.first.type] = need.get(r.first.type, 0) + r.first.count
    wants = " and ".join(f"{n} {t}" for t, n in need.items())
    per_type: dict[str, Counter[Any]] = {}
    for r in members:
        per_type[r.first.type] = Counter(
            attribute_value(d, c.attribute) for d in cands.of(host, r.first).usable
        )
    if len(per_type) == 1:
        has = distribution(c.attribute, next(iter(per_type.values())))
    else:
        has = "; ".join(f"{t}: {distribution(c.attribute, n)}" for t, n in per_type.items())
    total = sum(need.values())
    best = max((n for counts in per_type.values() for n in counts.values()), default=0)
    phrase = constraint_phrase(c.attribute, c.mode)
    return Reason(
        ReasonCode.CONSTRAINT_UNSATISFIED,
        f"needs {wants} {phrase}, has {has}",
        max(1, total - best),
    )


def _describe(r: DeviceRequest) -> str:
    return " or ".join(a.describe() for a in r.alternatives)
