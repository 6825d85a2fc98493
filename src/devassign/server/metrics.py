"""The fleet's metrics on ``GET /metrics`` (docs/metrics.md).

Two kinds of numbers:

- **Gauges read from the database at each scrape** by :class:`FleetCollector` (devices per
  type and state, hosts up and down, quota use, unconfirmed reservations): aggregate queries in
  ``store/metrics.py``. Every server process answers the same, so with several replicas any one
  of them may be scraped for these.
- **Counters and histograms of this process** (claims, refusals by reason, claim latency,
  setup and cleanup durations and failures by handler), incremented where claims and agents'
  results are handled (one-line calls in ``server/claims.py`` and ``server/lifecycle.py``).
  Like the HTTP metrics they count what this server served: sum them over replicas (the
  worker processes of one ``devassign server --workers N`` answer them together, through
  prometheus_client's multiprocess mode: :data:`MULTIPROC_DIR_ENV`).

Host names appear only with ``devassign server --metrics-per-host`` (one series per host and
type and state: mind the cardinality of a large cloud).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.applications import Starlette

from devassign import errors, schemas
from devassign.lifecycle.registry import handler_name_for
from devassign.store import Store
from devassign.store import metrics as fleet_queries
from devassign.store.db import busy_now

log = logging.getLogger("devassign.server.metrics")

CLAIMS = Counter(
    "devassign_claims",
    "Claims answered with an allocation: created (201) or replayed (200, same idempotency key)",
    ["result"],
)
REFUSALS = Counter(
    "devassign_claim_refusals",
    "Claims refused, by reason: the error code (no_valid_host, quota_exceeded, consumer_conflict, ...)",
    ["reason"],
)
CLAIM_SECONDS = Histogram(
    "devassign_claim_duration_seconds",
    "Time to place and claim (or refuse) one request, in the server",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GANGS = Counter(
    "devassign_gangs",
    "Gangs answered with every instance's allocation: created (201) or replayed (200)",
    ["result"],
)
GANG_INSTANCES = Counter(
    "devassign_gang_instances",
    "Instances (allocations) made by gangs",
)
GANG_REFUSALS = Counter(
    "devassign_gang_refusals",
    "Gangs refused whole, by reason: the error code (no_valid_host, quota_exceeded, ...)",
    ["reason"],
)
GANG_SECONDS = Histogram(
    "devassign_gang_duration_seconds",
    "Time to plan and claim (or refuse) one gang, all its instances, in the server",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WORK_SECONDS = Histogram(
    "devassign_work_duration_seconds",
    "From a device's setup or cleanup becoming due (claimed, released) to its agent's result",
    ["action", "handler"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
)
WORK_FAILURES = Counter(
    "devassign_work_failures",
    "Setups and cleanups an agent reported as failed, by handler",
    ["action", "handler"],
)


# ---------------------------------------------------------------- counters (one-line calls)


def claim_started() -> float:
    return time.perf_counter()


def claim_answered(started: float, created: bool) -> None:
    CLAIMS.labels("created" if created else "replayed").inc()
    CLAIM_SECONDS.observe(time.perf_counter() - started)


def claim_refused(started: float, exc: errors.DevassignError) -> None:
    REFUSALS.labels(exc.code).inc()
    CLAIM_SECONDS.observe(time.perf_counter() - started)


def gang_answered(started: float, created: bool, instances: int) -> None:
    GANGS.labels("created" if created else "replayed").inc()
    if created:
        GANG_INSTANCES.inc(instances)
    GANG_SECONDS.observe(time.perf_counter() - started)


def gang_refused(started: float, exc: errors.DevassignError) -> None:
    GANG_REFUSALS.labels(exc.code).inc()
    GANG_SECONDS.observe(time.perf_counter() - started)


def work_pending(store: Store, host: str, results: Sequence[schemas.WorkResult]) -> dict[str, Any]:
    """What the posted results finish, read before they are applied (a cheap read by id);
    never fails the agent's call."""
    if not results:
        return {}
    try:
        found = store.db.reading(
            lambda c: fleet_queries.pending_work(c, host, [r.device_id for r in results])
        )
        return {"at": store.clock(), "devices": found}
    except Exception as exc:  # a metric must not refuse an agent's results
        busy = busy_now(exc)
        if busy is None:
            log.exception("could not read the devices of %s's work results for metrics", host)
        else:  # the results' own write will answer 503: one line, not a traceback per call
            log.warning("no metrics of %s's work results: %s", host, busy.message)
        return {}


def work_done(
    pending: dict[str, Any],
    results: Sequence[schemas.WorkResult],
    outcomes: Sequence[schemas.WorkOutcome],
) -> None:
    """Observe each applied result: how long its work took since it became due, and failures."""
    devices: dict[str, fleet_queries.PendingWork] = pending.get("devices") or {}
    for result, outcome in zip(results, outcomes, strict=False):
        before = devices.get(result.device_id)
        if before is None or not outcome.applied:
            continue
        try:
            handler = handler_name_for(before.kind, before.handler)
        except ValueError:
            handler = before.handler or "unknown"
        seconds = max(0.0, (pending["at"] - before.since).total_seconds())
        WORK_SECONDS.labels(result.action, handler).observe(seconds)
        if not result.ok:
            WORK_FAILURES.labels(result.action, handler).inc()


# ---------------------------------------------------------------- gauges (at scrape time)


class FleetCollector(Collector):
    """The fleet as the database has it now, at each scrape."""

    def __init__(self, store: Store, *, per_host: bool) -> None:
        self.store = store
        self.per_host = per_host

    def describe(self) -> Iterable[Metric]:
        return []  # no database read when registered

    def collect(self) -> Iterable[Metric]:
        store = self.store
        up = GaugeMetricFamily(
            "devassign_fleet_scrape_ok",
            "1 when the database answered this scrape's fleet queries, else 0 (and no fleet gauges)",
        )
        try:
            found = store.db.reading(
                lambda c: fleet_queries.fleet(
                    c, now=store.clock(), up_since=store.up_since(), per_host=self.per_host
                )
            )
        except Exception as exc:
            busy = busy_now(exc)
            if busy is None:
                log.exception("metrics: the fleet queries failed")
            else:
                log.warning("metrics: the fleet queries skipped: %s", busy.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _fleet_metrics(found, per_host=self.per_host)


def _fleet_metrics(found: fleet_queries.Fleet, *, per_host: bool) -> Iterable[Metric]:
    devices = GaugeMetricFamily(
        "devassign_devices",
        "Devices per type and state, as GET /v1/resource-types counts them (down: free on a down host)",
        labels=["type", "state"],
    )
    for type_name in found.types:
        for state in fleet_queries.DEVICE_STATES:
            devices.add_metric([type_name, state], found.devices.get((type_name, state), 0))
    yield devices
    if per_host:
        host_devices = GaugeMetricFamily(
            "devassign_host_devices",
            "Devices per host, type and state (--metrics-per-host)",
            labels=["host", "type", "state"],
        )
        for (host, type_name, state), n in sorted(found.host_devices.items()):
            host_devices.add_metric([host, type_name, state], n)
        yield host_devices
    hosts = GaugeMetricFamily(
        "devassign_hosts",
        "Hosts up and down (heard from within --down-after, server clock)",
        labels=["state"],
    )
    hosts.add_metric(["up"], found.hosts_up)
    hosts.add_metric(["down"], found.hosts_down)
    yield hosts
    oldest = GaugeMetricFamily(
        "devassign_hosts_last_seen_max_age_seconds",
        "Seconds since the host heard from longest ago last reported or sent a heartbeat",
    )
    if found.seen_age_max is not None:
        oldest.add_metric([], found.seen_age_max)
    yield oldest
    if per_host:
        seen = GaugeMetricFamily(
            "devassign_host_last_seen_age_seconds",
            "Seconds since each host last reported or sent a heartbeat (--metrics-per-host)",
            labels=["host"],
        )
        for host, age in sorted(found.seen_age.items()):
            seen.add_metric([host], age)
        yield seen
    limit = GaugeMetricFamily(
        "devassign_quota_limit_devices", "Each project's quota per type", labels=["project", "type"]
    )
    used = GaugeMetricFamily(
        "devassign_quota_used_devices",
        "Devices of the type each project with a quota on it holds",
        labels=["project", "type"],
    )
    for (project, type_name), (n_limit, n_used) in sorted(found.quotas.items()):
        limit.add_metric([project, type_name], n_limit)
        used.add_metric([project, type_name], n_used)
    yield limit
    yield used
    pending = GaugeMetricFamily(
        "devassign_reservations_unconfirmed",
        "Live allocations waiting for their setup; each expires --reservation-ttl after its claim",
    )
    pending.add_metric([], found.reservations_unconfirmed)
    yield pending
    overdue = GaugeMetricFamily(
        "devassign_reservations_overdue",
        "Unconfirmed reservations past their expiry that the sweeper has not expired yet",
    )
    overdue.add_metric([], found.reservations_overdue)
    yield overdue
    first = GaugeMetricFamily(
        "devassign_reservations_next_expiry_seconds",
        "Seconds until the first unconfirmed reservation expires (negative: overdue); absent if none",
    )
    if found.next_expiry is not None:
        first.add_metric([], found.next_expiry)
    yield first


class _ProcessMetrics(Collector):
    """This process's counters and histograms (the default registry), next to the fleet's."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


# Set by ``devassign server --workers N`` for its workers (prometheus_client's multiprocess
# mode): each worker keeps its counters and histograms in files there, and every scrape, which
# reaches one worker, answers them summed over the workers.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition(app: Starlette) -> bytes:
    """The text of ``GET /metrics`` for ``app``: its fleet's gauges and this process's metrics
    (of all the server's worker processes, under ``--workers N``)."""
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        if os.environ.get(MULTIPROC_DIR_ENV):
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(_ProcessMetrics())
        registry.register(FleetCollector(app.state.store, per_host=app.state.settings.metrics_per_host))
        app.state.metrics_registry = registry
    out: bytes = generate_latest(registry)
    return out
