"""Server configuration: one dataclass, filled from the command line or by tests."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from devassign.server.placement import PlacementConfig


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
    max_body_bytes: int = 16 * 1024 * 1024
    pool_size: int = 10
    placement: PlacementConfig = field(default_factory=PlacementConfig)


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
            "pool_size": settings.pool_size,
        }
    )


def settings_from_env(text: str) -> Settings:
    raw = json.loads(text)
    return Settings(
        db_url=raw["db_url"],
        auth=raw["auth"],
        migrate=raw["migrate"],
        down_after=timedelta(seconds=raw["down_after"]),
        reservation_ttl=timedelta(seconds=raw["reservation_ttl"]),
        agent_takeover_after=timedelta(seconds=raw.get("agent_takeover_after", 30)),
        pool_size=raw["pool_size"],
    )
