"""Listings as Rich tables for people, or JSON (``-f json``) for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Pipes and CI logs get wide tables instead of 80 columns of wrapped cells.
console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "180")))


class Format(StrEnum):
    table = "table"
    json = "json"


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit(data: Any, fmt: Format, columns: Sequence[Column] = (), title: str | None = None) -> None:
    """Print ``data`` (a list of dicts, or one dict) in the asked format."""
    if fmt is Format.json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not columns:
        columns = [(k, _getter(k)) for k in (rows[0].keys() if rows else [])]
    table = Table(title=title, show_lines=False, header_style="bold")
    for name, _ in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*[_cell(get(row)) for _, get in columns])
    console.print(table)


def _getter(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(key)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return escape(", ".join(f"{k}={v}" for k, v in value.items())) or "-"
    if isinstance(value, list):
        return escape(", ".join(str(v) for v in value)) or "-"
    return escape(str(value))


def when(value: Any) -> str:
    """A timestamp shortened for tables."""
    return str(value)[:19].replace("T", " ") if value else "-"
