"""Persistence: all SQL of devassign lives in this package.

:class:`Store` is the facade the server calls: each method is one transaction. Modules
below it hold the queries, grouped by what they are about.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from devassign import schemas
from devassign.store import allocations, catalog, events, inventory, tokens
from devassign.store.db import Database, SchemaError, default_url
from devassign.store.tokens import Principal

__all__ = ["Database", "Principal", "SchemaError", "Store", "default_url"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Every read and write the server makes, each in its own transaction."""

    def __init__(
        self,
        db: Database,
        *,
        down_after: timedelta = timedelta(seconds=90),
        reservation_ttl: timedelta = timedelta(seconds=300),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.down_after = down_after
        self.reservation_ttl = reservation_ttl
        self.clock = clock

    # ------------------------------------------------------------ catalog
    def list_types(self) -> list[schemas.ResourceType]:
        with self.db.read() as c:
            return catalog.list_types(c)

    def get_type(self, name: str) -> schemas.ResourceType:
        with self.db.read() as c:
            return catalog.get_type(c, name)

    def create_type(self, body: schemas.ResourceTypeCreate, actor: str) -> schemas.ResourceType:
        return self.db.retrying(lambda c: catalog.create_type(c, body, now=self.clock(), actor=actor))

    def update_type(self, name: str, body: schemas.ResourceTypeUpdate, actor: str) -> schemas.ResourceType:
        return self.db.retrying(lambda c: catalog.update_type(c, name, body, now=self.clock(), actor=actor))

    def delete_type(self, name: str, actor: str) -> None:
        self.db.retrying(lambda c: catalog.delete_type(c, name, now=self.clock(), actor=actor))

    # ------------------------------------------------------------ hosts and devices
    def apply_report(self, host: str, report: schemas.InventoryReport, actor: str) -> schemas.InventoryResult:
        return self.db.retrying(
            lambda c: inventory.apply_report(c, host, report, now=self.clock(), actor=actor)
        )

    def heartbeat(self, host: str, actor: str) -> None:
        self.db.retrying(lambda c: inventory.heartbeat(c, host, now=self.clock(), actor=actor))

    def mark_down(self) -> list[str]:
        return self.db.retrying(
            lambda c: inventory.mark_down(c, now=self.clock(), down_after=self.down_after)
        )

    def sweep(self) -> None:
        """The server's periodic duties: hosts gone silent are marked down."""
        self.mark_down()

    def list_hosts(self) -> list[schemas.Host]:
        with self.db.read() as c:
            return inventory.list_hosts(c, now=self.clock(), down_after=self.down_after)

    def get_host(self, name: str) -> schemas.Host:
        with self.db.read() as c:
            return inventory.get_host(c, name, now=self.clock(), down_after=self.down_after)

    def delete_host(self, name: str, actor: str) -> None:
        self.db.retrying(lambda c: inventory.delete_host(c, name, now=self.clock(), actor=actor))

    def list_devices(
        self,
        *,
        host: str | None = None,
        type: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[schemas.Device]:
        with self.db.read() as c:
            return inventory.list_devices(c, host=host, type=type, state=state, limit=limit, offset=offset)

    def get_device(self, device_id: str) -> schemas.Device:
        with self.db.read() as c:
            return inventory.get_device(c, device_id)

    # ------------------------------------------------------------ allocations and events
    def list_allocations(self, **filters: object) -> list[schemas.Allocation]:
        with self.db.read() as c:
            return allocations.list_allocations(c, **filters)  # type: ignore[arg-type]

    def get_allocation(self, consumer: str, project: str | None = None) -> schemas.Allocation:
        with self.db.read() as c:
            return allocations.get_allocation(c, consumer, project=project)

    def list_events(self, **filters: object) -> list[schemas.Event]:
        with self.db.read() as c:
            return events.list_events(c, **filters)  # type: ignore[arg-type]

    # ------------------------------------------------------------ tokens
    def create_token(self, body: schemas.TokenCreate, actor: str) -> schemas.TokenCreated:
        return self.db.retrying(lambda c: tokens.create_token(c, body, now=self.clock(), actor=actor))

    def lookup_token(self, secret: str) -> Principal | None:
        with self.db.read() as c:
            return tokens.lookup(c, secret)
