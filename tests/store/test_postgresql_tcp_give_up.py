"""A database host gone from the network must not hold requests for the kernel's whole TCP
retry time: every connection carries keepalive probes and a TCP user timeout, which a URL's
own settings override."""

from __future__ import annotations

import sqlalchemy as sa

from devassign.store import Database


def _settings(url: str) -> dict[bytes, bytes | None]:
    database = Database(url)
    try:
        with database.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            raw = conn.connection.driver_connection
            return {o.keyword: o.val for o in raw.pgconn.info}  # type: ignore[union-attr]
    finally:
        database.dispose()


def test_connections_give_up_on_a_silent_host(pg_url: str) -> None:
    got = _settings(pg_url)
    assert (got[b"keepalives"], got[b"keepalives_idle"], got[b"tcp_user_timeout"]) == (b"1", b"10", b"30000")
    sep = "&" if "?" in pg_url else "?"
    mine = _settings(f"{pg_url}{sep}tcp_user_timeout=5000&keepalives_idle=30")
    assert (mine[b"tcp_user_timeout"], mine[b"keepalives_idle"]) == (b"5000", b"30")
