"""The database tables (SQLAlchemy Core): the one place that says what is stored.

Rows never leave ``store/``: callers get plain dataclasses or the API's Pydantic models.
Migrations in ``store/migrations`` create exactly these tables; a test checks they agree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# JSON on SQLite, JSONB on PostgreSQL.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# 64-bit ids on PostgreSQL; SQLite's INTEGER PRIMARY KEY is already 64-bit and autoincrementing.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Stamp = sa.DateTime(timezone=True)

resource_types = sa.Table(
    "resource_types",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("handler", sa.String(64)),
    sa.Column("config", Json, nullable=False),
    sa.Column("attribute_schema", Json),
    # The request params the type accepts ({name: schemas.ParamSpec}); NULL: none.
    sa.Column("params", Json),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("updated_at", Stamp, nullable=False),
    # When ``config`` last changed (NULL: never since it was made, or before this was kept).
    sa.Column("config_changed_at", Stamp),
)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(253), nullable=False, unique=True),
    # The agent's stable id from its state file: bound to the name it was first reported
    # under (a rename is an admin's `devassign host rename`).
    sa.Column("host_id", sa.String(64), unique=True),
    sa.Column("generation", sa.BigInteger, nullable=False, server_default="-1"),
    sa.Column("last_report_at", Stamp),
    # Server clock only: liveness is never judged from the agent's clock.
    sa.Column("last_seen_at", Stamp),
    sa.Column("marked_down", sa.Boolean, nullable=False, server_default=sa.false()),
    # Digest of the last report applied: an unchanged report only refreshes liveness.
    sa.Column("report_digest", sa.String(64)),
    # The agent process (a random id chosen at its start) that last reported or heartbeat,
    # and when (server clock): a second live agent with the same host id is refused.
    sa.Column("agent_instance", sa.String(64)),
    sa.Column("agent_seen_at", Stamp),
    sa.Column("created_at", Stamp, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("address", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("type_id", sa.Integer, sa.ForeignKey("resource_types.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # The state a device had before it went missing, to restore it if it comes back.
    sa.Column("prior_state", sa.String(16)),
    sa.Column("healthy", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("vendor_id", sa.String(4)),
    sa.Column("product_id", sa.String(4)),
    sa.Column("numa_node", sa.Integer),
    sa.Column("iommu_group", sa.Integer),
    sa.Column("driver", sa.String(128)),
    sa.Column("parent", sa.String(256)),
    sa.Column("attributes", Json, nullable=False),
    # What the agent's last setup recorded (original driver, mdev UUID...), for the cleanup.
    sa.Column("facts", Json),
    # Why a quarantined device is quarantined: a failed cleanup, or a one-time-use type.
    sa.Column("quarantine_reason", sa.Text),
    sa.Column("allocation_id", BigId, sa.ForeignKey("allocations.id")),
    # The taint that keeps the device from new claims (NoSchedule or Drain), as a phrase:
    # "NoSchedule (maintenance: PSU swap, by admin)"; NULL: schedulable. Recomputed from
    # ``taints`` in the same transaction as every taint, untaint and expiry (store/taints.py).
    sa.Column("taint", sa.Text),
    # Why the device's last health check failed (NULL while healthy); see agent/health.py.
    sa.Column("health_reason", sa.Text),
    # Partitionable devices (scheduler/shares.py): the device it is carved from, that pool's
    # counters, what it takes of them while held, the mode all held from one pool share.
    sa.Column("pool_counters", Json),
    sa.Column("consumes", Json),
    sa.Column("pool", sa.String(256)),
    sa.Column("mode", sa.String(128)),
    # What it takes of its pool while held (consumes plus what its request's params take),
    # recorded by the claim, dropped when it is free again.
    sa.Column("consumed", Json),
    sa.Column("state_changed_at", Stamp, nullable=False),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("updated_at", Stamp, nullable=False),
    sa.UniqueConstraint("host_id", "address"),
    sa.Index("ix_devices_type_state", "type_id", "state"),
    sa.Index("ix_devices_state", "state"),
    sa.Index("ix_devices_allocation", "allocation_id"),
)

# Per host and type: how many devices exist and how many are free right now. Kept in step
# with ``devices`` in the same transaction, so candidate hosts are found through an index
# instead of scanning every device (docs/architecture.md, "The claim").
inventory = sa.Table(
    "inventory",
    metadata,
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("type_id", sa.Integer, sa.ForeignKey("resource_types.id"), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    # Free and untainted, but their pool cannot give them now (scheduler/shares.py): not in
    # ``available``; ``types`` counts them as ``partitioned``.
    sa.Column("carved", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_inventory_type_available_host", "type_id", "available", "host_id"),
)

# Taints (Kubernetes DRA's device taints): on one device (``device_id``), on a parent and
# every device under it (``parent``: its address on that host), or on a whole host (neither).
# ``effect``: NoSchedule (no new claims), Drain (no new claims, holders asked to move) or None
# (informational). ``devices.taint`` is what the claim reads.
taints = sa.Table(
    "taints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("device_id", sa.String(36), sa.ForeignKey("devices.id", ondelete="CASCADE")),
    sa.Column("parent", sa.String(256)),
    sa.Column("effect", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("set_by", sa.String(160), nullable=False),
    # Set by a host's agent (which may lift it again), not an admin: recorded, never told
    # from ``set_by``, a token name an admin chooses.
    sa.Column("by_agent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("expires_at", Stamp),
    sa.Index("ix_taints_host", "host_id"),
    sa.Index("ix_taints_expires", "expires_at"),
    # Removed by id: on SQLite an id is never given twice (else the newest taint's, once
    # removed, went to the next one, and a stale id removed another taint).
    sqlite_autoincrement=True,
)

consumers = sa.Table(
    "consumers",
    metadata,
    sa.Column("uuid", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("created_at", Stamp, nullable=False),
)

allocations = sa.Table(
    "allocations",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("consumer", sa.String(64), sa.ForeignKey("consumers.uuid"), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(128)),
    sa.Column("request", Json, nullable=False),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("expires_at", Stamp),
    sa.Column("released_at", Stamp),
    # Why it ended (released, expired, setup_failed, moved, ...), and for a failed setup what
    # the agent said: a client polling its allocation sees why it was released.
    sa.Column("release_reason", sa.String(32)),
    sa.Column("release_detail", sa.String(1000)),
    # One live allocation per consumer.
    sa.Index(
        "uq_allocations_live_consumer",
        "consumer",
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    ),
    sa.Index("ix_allocations_project", "project"),
    sa.Index("ix_allocations_expires", "expires_at"),
)


class GangId(sa.sql.expression.ColumnElement[str]):
    """A gang's id, kept in its allocations' request documents (``request.gang``).

    Written without a bound JSON path, so that the index below and the queries of
    store/gangs.py spell it identically and the planner matches them."""

    type = sa.String()
    inherit_cache = True


@compiles(GangId, "postgresql")
def _gang_id_pg(element: GangId, compiler: Any, **kw: Any) -> str:
    return "(request ->> 'gang')"


@compiles(GangId, "sqlite")
def _gang_id_sqlite(element: GangId, compiler: Any, **kw: Any) -> str:
    return "json_extract(request, '$.gang')"


# A gang's live allocations by its id (store/gangs.py), without reading the project's
# released history through ix_allocations_project.
sa.Index(
    "ix_allocations_live_gang",
    GangId(),
    allocations.c.project,
    sqlite_where=sa.text("released_at IS NULL"),
    postgresql_where=sa.text("released_at IS NULL"),
)

allocation_items = sa.Table(
    "allocation_items",
    metadata,
    sa.Column("allocation_id", BigId, sa.ForeignKey("allocations.id"), primary_key=True),
    sa.Column("device_id", sa.String(36), sa.ForeignKey("devices.id"), primary_key=True),
    sa.Column("request_name", sa.String(64)),
    sa.Column("released_at", Stamp),
    # The database itself makes one device in two live allocations impossible, even if the
    # claim code were wrong (docs/architecture.md, "The claim").
    sa.Index(
        "uq_allocation_items_live_device",
        "device_id",
        unique=True,
        sqlite_where=sa.text("released_at IS NULL"),
        postgresql_where=sa.text("released_at IS NULL"),
    ),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", Stamp, nullable=False),
    sa.Column("actor", sa.String(160), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("host", sa.String(253)),
    sa.Column("device", sa.String(256)),
    sa.Column("device_id", sa.String(36)),
    sa.Column("consumer", sa.String(64)),
    sa.Column("type", sa.String(64)),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("detail", Json, nullable=False),
    sa.Index("ix_events_host", "host", "id"),
    sa.Index("ix_events_device_id", "device_id", "id"),
    sa.Index("ix_events_consumer", "consumer", "id"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128)),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("host", sa.String(253)),
    sa.Column("project", sa.String(64)),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("revoked_at", Stamp),
)

# One-time sign-in links to the dashboard (``devassign token login-link``): a code that an
# admin made for a token, stored as its SHA-256 like the tokens, that a browser exchanges once,
# before ``expires_at``, for a dashboard session of that token (whose secret is also stored
# hashed). The session ends at ``session_expires_at``, at sign-out, or with its token.
login_codes = sa.Table(
    "login_codes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token_id", sa.Integer, sa.ForeignKey("tokens.id"), nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("expires_at", Stamp, nullable=False),
    sa.Column("used_at", Stamp),
    sa.Column("session_hash", sa.String(64), unique=True),
    sa.Column("session_expires_at", Stamp),
)

# The server's own secrets, one row each, made once and shared by every replica: ``cursor_key``
# signs the capacity cursors a member is given (store/secrets.py).
server_secrets = sa.Table(
    "server_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)

quotas = sa.Table(
    "quotas",
    metadata,
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("type_id", sa.Integer, sa.ForeignKey("resource_types.id"), primary_key=True),
    sa.Column("limit", sa.Integer, nullable=False),
)

# A consumer's allocation moving to another host (live or cold migration, store/moves.py):
# the target devices are held by an internal allocation (consumer ``target_consumer``, a
# reserved ``move:`` id) while the source allocation stays live. Commit releases the source
# and re-points the target allocation to ``consumer``; abort or expiry releases the target.
# ``device_map``: [{request, source_id, source_address, target_id, target_address}].
# ``state``: pending, committed or aborted (``reason`` says why: aborted, expired, released).
moves = sa.Table(
    "moves",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("consumer", sa.String(64), sa.ForeignKey("consumers.uuid"), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("target_consumer", sa.String(64), nullable=False),
    sa.Column("source_allocation_id", BigId, sa.ForeignKey("allocations.id"), nullable=False),
    sa.Column("target_allocation_id", BigId, sa.ForeignKey("allocations.id"), nullable=False),
    sa.Column("source_host_id", sa.Integer, sa.ForeignKey("hosts.id"), nullable=False),
    sa.Column("target_host_id", sa.Integer, sa.ForeignKey("hosts.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("device_map", Json, nullable=False),
    sa.Column("idempotency_key", sa.String(128)),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("finished_at", Stamp),
    sa.Index("ix_moves_consumer", "consumer", "id"),
    sa.Index("ix_moves_target_allocation", "target_allocation_id"),
    # At most one pending move per consumer.
    sa.Index(
        "uq_moves_pending_consumer",
        "consumer",
        unique=True,
        sqlite_where=sa.text("finished_at IS NULL"),
        postgresql_where=sa.text("finished_at IS NULL"),
    ),
)

# Cyborg's API as Nova uses it (server/cyborg.py, store/cyborg.py). A device profile names
# the devices of a flavor's ``accel:device_profile``: ``groups`` as Cyborg writes them
# ([{"resources:CUSTOM_NIC_VF_1G": "1", "trait:...": "required"}]), one devassign type each.
cyborg_device_profiles = sa.Table(
    "cyborg_device_profiles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("groups", Json, nullable=False),
    sa.Column("created_at", Stamp, nullable=False),
)

# Accelerator requests (ARQs): one per device of a profile's group. Bound to an instance on a
# host, all ARQs of one instance are one devassign allocation (consumer = the instance).
# ``state``: Initial, BindStarted (claimed, waiting for the agent's setup), Bound, BindFailed.
# ``event``: the status of the ``accelerator-request-bound`` event Nova still has to be told
# (completed or failed); NULL once sent, or when there is none to send.
cyborg_arqs = sa.Table(
    "cyborg_arqs",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("profile_name", sa.String(255), nullable=False),
    sa.Column("group_id", sa.Integer, nullable=False),
    sa.Column("type_name", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("hostname", sa.String(253)),
    sa.Column("device_rp_uuid", sa.String(36)),
    sa.Column("instance_uuid", sa.String(64)),
    sa.Column("device_id", sa.String(36)),
    sa.Column("attach_handle_type", sa.String(16)),
    sa.Column("attach_handle_info", Json),
    sa.Column("attach_handle_uuid", sa.String(36)),
    sa.Column("event", sa.String(16)),
    sa.Column("created_at", Stamp, nullable=False),
    sa.Column("updated_at", Stamp, nullable=False),
    sa.Index("ix_cyborg_arqs_instance", "instance_uuid"),
    sa.Index("ix_cyborg_arqs_state", "state"),
)
