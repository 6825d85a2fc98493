"""``devassign types`` and ``devassign type show``: each number is the state its column names,
as ``GET /v1/resource-types``, ``devassign devices --state`` and ``/metrics`` count it."""

from __future__ import annotations

from typing import Any

from devassign.cli.inventory import TYPE_SHOW_COLUMNS, type_columns

STATES = ("available", "tainted", "partitioned", "down", "reserved", "assigned", "cleaning")
OUT = ("quarantined", "unhealthy", "missing")


def _type(name: str, **counts: int) -> dict[str, Any]:
    full = {s: 0 for s in (*STATES, *OUT, "removed")} | counts
    full["total"] = sum(n for s, n in full.items() if s != "removed")
    return {"name": name, "description": "", "counts": full}


def _table(columns: list[tuple[str, Any]], t: dict[str, Any]) -> dict[str, Any]:
    return {name: get(t) for name, get in columns}


def test_unhealthy_counts_the_unhealthy_and_quarantined_and_missing_have_their_own_columns() -> None:
    sick = _type("NIC_VF_1G", available=4, unhealthy=1, quarantined=2, missing=3)
    plain = _type("GPU_A100", available=2)
    columns = type_columns([sick, plain])
    row = _table(columns, sick)
    assert (row["unhealthy"], row["quarantined"], row["missing"]) == (1, 2, 3)
    # Every device is in exactly one column: they add up to the total.
    assert sum(n for name, n in row.items() if name not in ("name", "description", "total")) == row["total"]
    # A usual cloud, with nothing quarantined or missing, keeps its narrow table.
    assert [name for name, _ in type_columns([plain])] == [
        "name",
        "description",
        "total",
        "available",
        "down",
        "reserved",
        "assigned",
        "cleaning",
        "unhealthy",
    ]


def test_type_show_has_every_state() -> None:
    t = _type("MIG_1G", available=1, tainted=2, partitioned=3, down=4, quarantined=5, unhealthy=6, missing=7)
    row = _table(TYPE_SHOW_COLUMNS, t)
    states = {name: row[name] for name in (*STATES, *OUT)}
    assert states == {s: t["counts"][s] for s in (*STATES, *OUT)}
    assert sum(states.values()) == row["total"]


def test_a_watched_table_has_a_column_for_every_state_from_the_start() -> None:
    """``types --watch`` picks its columns from the first answer: a device quarantined later
    must still be in a column."""
    plain = _type("GPU_A100", available=2)
    names = [name for name, _ in type_columns([plain], every=True)]
    assert set(names) >= {*STATES, *OUT}
