"""Listings as tables for people, or JSON (``-f json``) for scripts.

A table fits the terminal (``COLUMNS`` when the output is not a terminal) without cutting a
word in two: each column is at least as wide as its longest word, cells wrap between words,
and when the columns cannot all fit side by side, the least telling ones (:data:`DETAIL_COLUMNS`
first, then from the right) are left out and a line on stderr says which. Only a single word
wider than a third of the screen is folded.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _width_from_env() -> int | None:
    """``COLUMNS`` for output that is not a terminal (pipes and CI logs get 180 without it)."""
    if sys.stdout.isatty():
        return None  # Rich asks the terminal
    try:
        return max(20, int(os.environ.get("COLUMNS", "180")))
    except ValueError:
        return 180


# Characters a terminal acts on instead of showing: C0 controls but tab and newline (ESC
# starts CSI and OSC sequences: colours, a cleared screen, an OSC 8 hyperlink hiding its URL),
# DEL, C1 controls (0x9b is a CSI by itself), and the bidi controls that reorder what is read.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE_RE = re.compile(f"[{_UNSAFE}]")
_UNSAFE_IN_A_LINE_RE = re.compile(f"[{_UNSAFE}\n\u2028\u2029]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with what a terminal would act on written out as escapes (``\\x1b``,
    ``\\u202e``): names, reasons and messages come from agents and tenants, and are shown, never
    obeyed. ``one_line``: newlines too, so a value never prints a line of its own."""

    def shown(m: re.Match[str]) -> str:
        c = ord(m.group())
        return "\\n" if c == 10 else f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return (_UNSAFE_IN_A_LINE_RE if one_line else _UNSAFE_RE).sub(shown, text)


class _Console(Console):
    """A console that shows the text it is given, every control character escaped."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text), **kwargs)


console = _Console(width=_width_from_env())

# Columns a narrow terminal leaves out first, the most dispensable first; after them, columns
# go from the right (never the first one).
DETAIL_COLUMNS = (
    "iommu",
    "numa",
    "parent",
    "product",  # a long vendor name (pci.ids) tells less than the kind
    "kind",
    "ids",
    "generation",
    "last seen",
    "revoked",
    "created",
    "handler",
    "description",
    "notes",
    "id",
)
# Between two columns (Rich's padding, collapsed, and the divider).
GAP = 2


class Format(StrEnum):
    table = "table"
    json = "json"


Column = tuple[str, Callable[[dict[str, Any]], Any]]


def emit(data: Any, fmt: Format, columns: Sequence[Column] = (), title: str | None = None) -> None:
    """Print ``data`` in the asked format: a list of dicts as a table with a row each, one dict
    as a table with a line per column (field, value)."""
    if fmt is Format.json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not columns:
        columns = [(k, _getter(k)) for k in (rows[0].keys() if rows else [])]
    if not columns:
        console.print("(none)", highlight=False)
        return
    if isinstance(data, dict):
        fields = [[name, _cell(get(data))] for name, get in columns]
        print_table(["field", "value"], fields, title=title, show_header=False)
        return
    print_table(
        [name for name, _ in columns], [[_cell(get(row)) for _, get in columns] for row in rows], title=title
    )


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    show_header: bool = True,
    out: Console | None = None,
) -> None:
    """Print a table of plain strings that fits ``out``'s width (see the module's docstring)."""
    out = out or console
    table, left_out = fit_table(headers, rows, width=out.width, title=title, show_header=show_header)
    out.print(table)
    if left_out:
        print(
            f"({out.width} columns: {', '.join(left_out)} not shown; "
            "a wider terminal or -f json shows every column)",
            file=sys.stderr,
        )


def fit_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    title: str | None = None,
    show_header: bool = True,
) -> tuple[Table, list[str]]:
    """A table of ``rows`` no wider than ``width``, and the headers of the columns left out.

    Detail columns go first while the longest words do not fit side by side; then, if they
    still do not, a word wider than a third of the screen may be folded, and columns go from
    the right until the rest fits.
    """
    columns = [[r[i] for r in rows] for i in range(len(headers))]
    title_words = list(headers) if show_header else ["" for _ in headers]
    natural = [_natural_width(h, cells) for h, cells in zip(title_words, columns, strict=True)]
    longest = [_longest_word(h, cells) for h, cells in zip(title_words, columns, strict=True)]
    fold_above = max(12, width // 3)
    shown = list(range(len(headers)))

    def fits(least: list[int]) -> bool:
        return sum(least[j] for j in shown) + GAP * (len(shown) - 1) <= width

    order = _drop_order(headers)
    for i in (i for i in order if headers[i] in DETAIL_COLUMNS):
        if fits(longest):
            break
        shown.remove(i)
    least = longest if fits(longest) else [min(n, fold_above) for n in longest]
    for i in (i for i in order if i in shown):
        if fits(least):
            break
        shown.remove(i)
    widths = _shrink([natural[i] for i in shown], [least[i] for i in shown], width - GAP * (len(shown) - 1))
    table = Table(
        title=title,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_header=show_header,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for i, w in zip(shown, widths, strict=True):
        # Only a word wider than the column (one wider than a third of the screen) is folded.
        table.add_column(headers[i], width=w, overflow="fold")
    for row in rows:
        table.add_row(*(Text(printable(row[i])) for i in shown))
    return table, [headers[i] for i in range(len(headers)) if i not in shown]


def _drop_order(headers: Sequence[str]) -> list[int]:
    detail = [headers.index(name) for name in DETAIL_COLUMNS if name in headers[1:]]
    rest = [i for i in range(len(headers) - 1, 0, -1) if i not in detail]
    return detail + rest


def _shrink(natural: list[int], least: list[int], room: int) -> list[int]:
    """Column widths from their natural ones, narrowing the widest narrowable column first,
    never below ``least``, until they fit ``room`` (or cannot narrow further)."""
    widths = list(natural)
    while sum(widths) > room:
        narrowable = [i for i in range(len(widths)) if widths[i] > least[i]]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _natural_width(header: str, cells: Sequence[str]) -> int:
    return max(cell_len(line) for text in (header, *cells) for line in (text.splitlines() or [""]))


def _longest_word(header: str, cells: Sequence[str]) -> int:
    return max((cell_len(word) for text in (header, *cells) for word in text.split()), default=1)


def _getter(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(key)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def when(value: Any) -> str:
    """A timestamp shortened for tables."""
    return str(value)[:19].replace("T", " ") if value else "-"
