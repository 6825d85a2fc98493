"""Gangs: N instances of one claim body, placed and claimed all or none.

The store reads the candidates (more of them than one claim reads: ``hosts_to_read``), the pure
``scheduler.gang.plan`` assigns every instance a host and devices, and the store claims every
instance in one transaction (``store/gangs.py``). A lost race rolls them all back and the gang
is planned again on a fresh read, at most ``ATTEMPTS`` times. The routes are in
``server/gang_routes.py``.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field, StrictBool, StrictInt

from devassign import errors, schemas
from devassign.scheduler import ClaimBody, Quota, Request, Snapshot
from devassign.scheduler.gang import MAX_INSTANCES, GangPlan, Layout, plan
from devassign.scheduler.reasons import funnel_sentence, ordinal
from devassign.schemas import ConsumerId
from devassign.server.placement import (
    Placer,
    _budgeted,
    _check_params,
    _checked_doc,
    _project,
    _refuse_unknown,
    explanation_body,
    parse,
    policy_body,
)
from devassign.server.views import redact_explanation
from devassign.store import Principal
from devassign.store.claims import ClaimOrder, LostRace, OverQuota, Pick

log = logging.getLogger(__name__)

ATTEMPTS = 10  # fresh reads after a lost race before the gang is refused
MAX_HOSTS_READ = 2000  # candidate hosts one gang reads at most (docs/requests.md)
_GANG_IDS = uuid.UUID("8d1f3a52-6c1e-4d7e-9a55-0b7c3f2a9e10")  # namespace of ids made from keys


class LayoutBody(BaseModel):
    """Constraints between a gang's instances (docs/requests.md, "Gangs")."""

    model_config = {"extra": "forbid", "frozen": True}
    distinct_hosts: StrictBool = Field(default=False, description="At most one instance per host")
    max_per_host: StrictInt | None = Field(
        default=None, ge=1, le=MAX_INSTANCES, description="At most this many instances per host"
    )
    same: str | None = Field(
        default=None,
        pattern=r"^(attributes\.)?[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="A device attribute (e.g. rack) that has one value for every instance's host",
    )

    def layout(self) -> Layout:
        cap = 1 if self.distinct_hosts else self.max_per_host
        return Layout(max_per_host=cap, same=self.same)


class GangBody(ClaimBody):
    """``POST /v1/gangs``: a claim body for one instance, and the instances."""

    instances: list[ConsumerId] = Field(
        min_length=1,
        max_length=MAX_INSTANCES,
        description="The consumers (instance UUIDs), one allocation each: all of them or none",
    )
    layout: LayoutBody = Field(default_factory=LayoutBody)
    gang: ConsumerId | None = Field(
        default=None,
        description="The gang's id (kept in each allocation); default: made from the idempotency key",
    )


class GangAllocations(BaseModel):
    gang: str
    allocations: list[schemas.Allocation]


@dataclass
class _Prepared:
    request: Request
    project: str
    gang: str
    layout: Layout
    docs: list[dict[str, Any]]
    type_ids: dict[str, int]
    quota: Quota | None
    # Its params no longer fit their types' declarations: only a replay of the gang is answered.
    refusal: errors.DevassignError | None = None


class Gangs:
    """Plan and claim gangs with the :class:`Placer`'s store, policy and helpers."""

    def __init__(self, placer: Placer) -> None:
        self.placer = placer
        self.store = placer.store
        self.rng = random.Random()

    # ------------------------------------------------------------ the verbs
    def claim(
        self, body: GangBody, caller: Principal, *, operator: bool = True
    ) -> tuple[GangAllocations, bool]:
        """All instances claimed (created True), a replay of the same gang (False), or an error
        (for a caller who is not an ``operator``: without host names)."""
        p = self._prepare(body, caller)
        # A replay first, as for a single claim: the gang's own allocations count in the quota's
        # usage by now, so checking the quota first would refuse the retry of a gang it holds.
        try:
            replays = self.store.gang_replays(
                list(body.instances),
                body.idempotency_key,
                p.project,
                dict(zip(body.instances, p.docs, strict=True)),
            )
        except errors.DevassignError:
            if p.refusal is not None:
                raise p.refusal from None
            raise
        if p.refusal is not None and len(replays) != len(body.instances):
            raise p.refusal
        if len(replays) == len(body.instances):
            order = {c: i for i, c in enumerate(body.instances)}
            replays.sort(key=lambda a: order[a.consumer])
            return GangAllocations(gang=p.gang, allocations=replays), False
        if replays:
            raise errors.DevassignError(
                errors.CONSUMER_CONFLICT,
                f"{len(replays)} of the {len(body.instances)} instances already hold this gang's "
                f"allocations; release the gang (DELETE /v1/gangs/{p.gang}) and claim it again",
            )
        found: GangPlan | None = None
        over: OverQuota | None = None
        for attempt in range(ATTEMPTS):
            # Before anything is read, and again with the quota read afresh after the quota
            # refused a claim under its lock (another claim of the project committed since).
            self._check_quota(p.request, p.quota, len(body.instances), p.project)
            found, _ = self._plan(p, len(body.instances))
            if not found.fits:
                raise self._refusal(p, found, operator=operator)
            orders = self._orders(p, body, found, caller)
            try:
                made, created = self.store.claim_gang(orders, p.gang)
                return GangAllocations(gang=p.gang, allocations=made), created
            except OverQuota as exc:
                log.debug("gang %s over quota under its lock (attempt %d): %s", p.gang, attempt + 1, exc)
                over, p.quota = exc, self.placer._quota(p.project)
            except LostRace as exc:
                log.debug("gang %s lost a race (attempt %d): %s", p.gang, attempt + 1, exc)
                over = None
                time.sleep(self.rng.uniform(0, 0.005 * (attempt + 1)))
        assert found is not None
        if over is not None:
            raise over.error
        raise errors.DevassignError(
            errors.NO_VALID_HOST,
            f"gang {p.gang}: every plan lost a race with concurrent claims {ATTEMPTS} times; retry",
        )

    def explain(self, body: GangBody, caller: Principal, *, operator: bool = True) -> dict[str, Any]:
        """Would the gang fit now, where, and why not; nothing claimed. For a caller who is not
        an ``operator``: counts and reason codes only (no host, no attribute value)."""
        p = self._prepare(body, caller)
        if p.refusal is not None:
            raise p.refusal
        self._check_quota(p.request, p.quota, len(body.instances), p.project)
        found, snapshot = self._plan(p, len(body.instances))
        out = explanation_body(found.explanation, *self.placer.funnel(p.request, operator=operator))
        out.update(
            fits=found.fits,
            wanted=found.wanted,
            placed=found.placed,
            message=_message(found, out["funnel"], out["taints"]),
            hosts_read=len(snapshot.hosts),
            per_host=found.per_host(),
            instances=[
                {"consumer": c, "host": pl.host}
                for c, pl in zip(body.instances, found.placements, strict=False)
            ],
            policy=policy_body(self.placer.config.policy),
        )
        if found.group is not None:
            out["same"] = {"attribute": p.layout.attribute, "value": found.group}
        if operator:
            return out
        redacted = redact_explanation(out)
        redacted.update(
            wanted=found.wanted,
            placed=found.placed,
            message=_public_message(found, p.layout, out["funnel"], out["taints"]),
            hosts_used=len(out["per_host"]),
        )
        return redacted

    # ------------------------------------------------------------ steps
    def _prepare(self, body: GangBody, caller: Principal) -> _Prepared:
        if body.consumer is not None:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                "a gang names its consumers in instances (one per allocation), not in consumer",
            )
        twice = sorted({c for c in body.instances if body.instances.count(c) > 1})
        if twice:
            raise errors.DevassignError(
                errors.INVALID_REQUEST, f"instances: {', '.join(twice[:5])} given more than once"
            )
        one = ClaimBody.model_validate(
            body.model_dump(exclude={"instances", "layout", "gang"}, exclude_none=True)
        )
        request = parse(one)
        _check_params(one, instances=len(body.instances))
        project = _project(request, caller)
        types = sorted({a.type for r in request.requests for a in r.alternatives})
        ids = self.store.type_ids(types)
        _refuse_unknown(types, ids)
        refusal = None
        try:
            doc = _checked_doc(one, self.store.type_params(types), project)
        except errors.DevassignError as exc:
            # A retry of a gang made before its types' params were declared otherwise still
            # answers the gang: claim() refuses anything else.
            doc, refusal = one.model_dump(mode="json", exclude_none=True), exc
        gang = body.gang or (
            str(uuid.uuid5(_GANG_IDS, f"{project}\n{body.idempotency_key}"))
            if body.idempotency_key
            else str(uuid.uuid4())
        )
        layout = body.layout.layout()
        # The layout is kept with each instance: a move of one instance keeps to it (store/moves.py).
        kept = {"gang_layout": asdict(layout)} if layout != Layout() else {}
        docs = [
            {**doc, "consumer": c, "gang": gang, "gang_size": len(body.instances), **kept}
            for c in body.instances
        ]
        quota = self.placer._quota(project)
        return _Prepared(request, project, gang, layout, docs, ids, quota, refusal)

    @staticmethod
    def _check_quota(request: Request, quota: Quota | None, n: int, project: str) -> None:
        """The gang's total against the quota left, once: a 403 before any host is read (after
        the look for a replay, whose allocations the usage already counts)."""
        if quota is None:
            return
        left = quota.left()
        total: dict[str, int] = defaultdict(int)
        for r in request.requests:
            if len(r.alternatives) == 1:
                total[r.first.type] += r.first.count * n
        over = [
            f"{t}: {n_} for the gang, {left[t]} left "
            f"(limit {quota.limits[t]}, in use {quota.usage.get(t, 0)})"
            for t, n_ in sorted(total.items())
            if t in left and n_ > left[t]
        ]
        if over:
            raise errors.DevassignError(
                errors.QUOTA_EXCEEDED,
                f"project {project} is over quota for this gang of {n}: {'; '.join(over)}",
                project=project,
                limits=dict(quota.limits),
                usage=dict(quota.usage),
                requested={t: k for t, k in total.items() if t in left},
            )

    def _plan(self, p: _Prepared, n: int) -> tuple[GangPlan, Snapshot]:
        """Plan on the candidates, reading more hosts each time a full read fell short."""
        reads = hosts_to_read(n, p.layout, self.placer.config.candidate_limit)
        for read in reads:
            snapshot = self.placer._snapshot(p.request, read)
            with _budgeted():
                found = plan(
                    p.request,
                    n,
                    snapshot,
                    self.placer.config.policy,
                    layout=p.layout,
                    quota=p.quota,
                    rng=self.rng,
                )
            if found.fits or len(snapshot.hosts) < read:
                break
        return found, snapshot

    def _orders(self, p: _Prepared, body: GangBody, found: GangPlan, caller: Principal) -> list[ClaimOrder]:
        names = {i: t for t, i in p.type_ids.items()}
        consumption = {r.name: dict(r.first.extra) for r in p.request.requests if r.first.extra}
        return [
            ClaimOrder(
                host=pl.host,
                chosen=[Pick(c.name, c.device_ids, c.companion_ids) for c in pl.chosen],
                consumer=consumer,
                project=p.project,
                key=body.idempotency_key,
                request_doc=doc,
                actor=caller.name,
                type_names=names,
                # The store checks the project's quota under its lock for each instance in turn
                # (whenever it has a limit for the devices' types by then): the earlier
                # instances of the same transaction count, so the gang counts once.
                wait=True,
                consumption=consumption,
            )
            for consumer, doc, pl in zip(body.instances, p.docs, found.placements, strict=True)
        ]

    def _refusal(self, p: _Prepared, found: GangPlan, *, operator: bool) -> errors.DevassignError:
        body = explanation_body(found.explanation, *self.placer.funnel(p.request, operator=operator))
        before = funnel_sentence(body["funnel"], body["taints"])
        if not operator:
            # The hosts' sentences name hosts and addresses, the plan's the attribute value the
            # hosts share (a rack): counts and codes only.
            public = _public_message(found, p.layout, body["funnel"], body["taints"])
            message = f"gang of {found.wanted}: {public}"
            if before and found.explanation.considered:
                message += f"; {before}"
            redacted = redact_explanation(body)
            return errors.DevassignError(
                errors.NO_VALID_HOST, message, explanation=redacted, wanted=found.wanted, placed=found.placed
            )
        message = f"gang of {found.wanted}: {_message(found, body['funnel'], body['taints'])}"
        if before and found.explanation.considered:
            message += f"; {before}"
        closest = "; ".join(c["message"] for c in body["closest"])
        if closest:
            message += f"; closest: {closest}"
        return errors.DevassignError(
            errors.NO_VALID_HOST, message, explanation=body, wanted=found.wanted, placed=found.placed
        )


def _message(found: GangPlan, funnel: dict[str, int], taints: Sequence[str]) -> str:
    """The plan's sentence; when no host reached the scheduler, the pre-filter says why."""
    before = funnel_sentence(funnel, taints)
    if found.explanation.considered or not before:
        return found.message
    return found.message.replace(found.explanation.summary(), f"no host fits: {before}")


def _public_message(found: GangPlan, layout: Layout, funnel: dict[str, int], taints: Sequence[str]) -> str:
    """The plan's sentence for a member: how many instances fit on how many hosts and the
    reason codes, without the value of ``same`` the hosts share (a rack is the operators')."""
    attribute = layout.attribute
    if found.fits:
        message = f"{found.wanted} of {found.wanted} instances fit on {len(found.per_host())} hosts"
        return message + (f" with one {attribute}" if attribute is not None else "")
    message = f"{found.placed} of {found.wanted} instances fit"
    if attribute is not None and found.group is not None:
        message += f" with the same {attribute}"
    elif attribute is not None:
        message += f" (no fitting host reports one {attribute})"
    before = funnel_sentence(funnel, taints)
    why = found.explanation.summary()
    if before and not found.explanation.considered:  # the pre-filter says why, as in _message
        why = f"no host fits: {before}"
    return f"{message}; the {ordinal(found.placed + 1)} fits on no host: {why}"


def hosts_to_read(n: int, layout: Layout, candidate_limit: int) -> list[int]:
    """Candidate hosts a gang of ``n`` reads, in turn until one read fits it: 4 per instance
    (at least one claim's read), then with ``same`` 16 per instance (its instances must find
    one rack among the hosts read), then ``MAX_HOSTS_READ``. Most gangs fit in the first read;
    reading 16 per instance at once made every ``same`` gang read four times as many hosts."""
    reads = [min(MAX_HOSTS_READ, max(candidate_limit, 4 * n))]
    for wider in [16 * n] if layout.same else []:
        if reads[-1] < wider < MAX_HOSTS_READ:
            reads.append(wider)
    if reads[-1] < MAX_HOSTS_READ:
        reads.append(MAX_HOSTS_READ)
    return reads
