"""Server configuration: one dataclass, filled from the command line or by tests."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from devassign.scheduler import Policy
from devassign.server.placement import PlacementConfig
from devassign.store.db import LOCK_TIMEOUT, POOL_SIZE, POOL_TIMEOUT, STATEMENT_TIMEOUT


@dataclass(frozen=True)
class Settings:
    db_url: str | None = None
    # Auth off is for local development and the demo only; the server says so loudly.
    auth: bool = True
    migrate: bool = True
    # A host is down when the server has heard nothing from it for this long (its own clock).
    down_after: timedelta = timedelta(seconds=90)
    # An unconfirmed reservation is given up after this long; its devices go to cleaning.
    reservation_ttl: timedelta = timedelta(seconds=300)
    # A second agent process for one host is refused until the first was silent this long.
    agent_takeover_after: timedelta = timedelta(seconds=30)
    sweep_interval: float = 5.0
    # Events older than this are deleted by the sweeper (None: the log is kept for ever).
    event_retention: timedelta | None = timedelta(days=90)
    # Inventory reports and work results may be large; every other body is small.
    max_body_bytes: int = 16 * 1024 * 1024
    max_small_body_bytes: int = 1024 * 1024
    # JSON members and items (``,`` and ``:`` outside strings) in a small body and a large one.
    max_members: int = 20_000
    max_bulk_members: int = 4_000_000
    # The process's share of the database (docs/operations.md, "Overload"): connections kept,
    # more opened in bursts (None: half the pool on PostgreSQL, 10 on SQLite), seconds a request
    # waits for one before it is answered 503, seconds a statement may run (SQLite: wait for the
    # write lock) and may wait for a lock (0: no limit of its own).
    pool_size: int = POOL_SIZE
    max_overflow: int | None = None
    pool_timeout: float = POOL_TIMEOUT
    statement_timeout: float = STATEMENT_TIMEOUT
    lock_timeout: float = LOCK_TIMEOUT
    # ``/metrics`` also per host (one series per host: bounded cardinality by default).
    metrics_per_host: bool = False
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    # Cyborg's API for Nova (server/cyborg.py): where Nova's compute API is (with /v2.1) and the
    # token that may post its external events; unset: Nova is not told of bound ARQs. From the
    # environment (DEVASSIGN_NOVA_URL, DEVASSIGN_NOVA_TOKEN), so worker processes inherit them.
    nova_url: str | None = field(default_factory=lambda: os.environ.get("DEVASSIGN_NOVA_URL") or None)
    nova_token: str = field(default_factory=lambda: os.environ.get("DEVASSIGN_NOVA_TOKEN", ""), repr=False)
    # Keystone (its /v3 URL) that validates the tokens Nova sends to the Cyborg API; tokens with
    # one of keystone_roles are admins there (DEVASSIGN_KEYSTONE_URL, DEVASSIGN_KEYSTONE_ROLES).
    keystone_url: str | None = field(default_factory=lambda: os.environ.get("DEVASSIGN_KEYSTONE_URL") or None)
    keystone_roles: str = field(
        default_factory=lambda: os.environ.get("DEVASSIGN_KEYSTONE_ROLES") or "admin,service"
    )
    # Seconds between looks for ARQs whose devices are set up (and events to send); like the
    # sweeper, off when sweep_interval is 0.
    cyborg_interval: float = 1.0

    def database_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`devassign.store.Database` for these settings."""
        return {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout,
            "statement_timeout": self.statement_timeout,
            "lock_timeout": self.lock_timeout,
        }


SETTINGS_ENV = "DEVASSIGN_SERVER_SETTINGS"


def settings_to_env(settings: Settings) -> str:
    """The settings as JSON, for worker processes started by ``devassign server --workers``."""
    return json.dumps(
        {
            "db_url": settings.db_url,
            "auth": settings.auth,
            "migrate": settings.migrate,
            "down_after": settings.down_after.total_seconds(),
            "reservation_ttl": settings.reservation_ttl.total_seconds(),
            "agent_takeover_after": settings.agent_takeover_after.total_seconds(),
            "event_retention": (
                None if settings.event_retention is None else settings.event_retention.total_seconds()
            ),
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
            "statement_timeout": settings.statement_timeout,
            "lock_timeout": settings.lock_timeout,
            "metrics_per_host": settings.metrics_per_host,
            "policy": _policy_to_json(settings.placement.policy),
        }
    )


def _policy_to_json(policy: Policy) -> dict[str, Any]:
    return {
        "mode": policy.mode,
        "binpack_weight": policy.binpack_weight,
        "numa_weight": policy.numa_weight,
        "fragmentation_weight": policy.fragmentation_weight,
    }


def placement_with(
    base: PlacementConfig | None = None,
    *,
    mode: str | None = None,
    binpack_weight: float | None = None,
    numa_weight: float | None = None,
    fragmentation_weight: float | None = None,
) -> PlacementConfig:
    """``base`` (the defaults) with the scoring policy's mode and weights that are given:
    ``pack`` fills busy hosts first, ``spread`` keeps load even; each weight is how much its
    scorer counts in a host's score (a weighted mean, so only their ratios matter)."""
    base = base or PlacementConfig()
    policy = base.policy
    if mode is not None:
        if mode not in ("pack", "spread"):
            raise ValueError(f"policy {mode!r}: pack or spread")
        policy = replace(policy, mode="pack" if mode == "pack" else "spread")
    return replace(
        base,
        policy=replace(
            policy,
            binpack_weight=_weight("binpack_weight", binpack_weight, policy.binpack_weight),
            numa_weight=_weight("numa_weight", numa_weight, policy.numa_weight),
            fragmentation_weight=_weight(
                "fragmentation_weight", fragmentation_weight, policy.fragmentation_weight
            ),
        ),
    )


def _weight(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not 0 <= value < float("inf"):  # NaN too
        raise ValueError(f"{name} must be a number of 0 or more, not {value!r}")
    return float(value)


def settings_from_env(text: str) -> Settings:
    raw = json.loads(text)
    policy = raw.get("policy") or {}
    return Settings(
        db_url=raw["db_url"],
        auth=raw["auth"],
        migrate=raw["migrate"],
        down_after=timedelta(seconds=raw["down_after"]),
        reservation_ttl=timedelta(seconds=raw["reservation_ttl"]),
        agent_takeover_after=timedelta(seconds=raw.get("agent_takeover_after", 30)),
        event_retention=(
            None if raw.get("event_retention") is None else timedelta(seconds=raw["event_retention"])
        ),
        pool_size=raw["pool_size"],
        max_overflow=raw.get("max_overflow"),
        pool_timeout=raw.get("pool_timeout", POOL_TIMEOUT),
        statement_timeout=raw.get("statement_timeout", STATEMENT_TIMEOUT),
        lock_timeout=raw.get("lock_timeout", LOCK_TIMEOUT),
        metrics_per_host=raw.get("metrics_per_host", False),
        placement=placement_with(
            mode=policy.get("mode"),
            binpack_weight=policy.get("binpack_weight"),
            numa_weight=policy.get("numa_weight"),
            fragmentation_weight=policy.get("fragmentation_weight"),
        ),
    )
