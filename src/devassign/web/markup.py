"""HTML built from escaped pieces, with no template engine.

Every value that came from a user, an agent or the database goes through :func:`esc`; only
:class:`Html` (markup this package wrote) passes through unchanged. That makes "forgot to
escape" a type question rather than a review question.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlencode


class Html(str):
    """Markup that is already safe to emit as is."""

    __slots__ = ()


def esc(value: object) -> Html:
    """Escape anything that is not already :class:`Html`; ``None`` becomes an empty string."""
    if isinstance(value, Html):
        return value
    if value is None:
        return Html("")
    return Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(esc(sep).join(esc(p) for p in parts))


def tag(name: str, /, *children: object, **attrs: object) -> Html:
    """``<name attrs>children</name>``; ``class_`` is ``class``; ``True`` is a bare attribute.

    Attribute values and children are escaped unless they are :class:`Html`.
    """
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{esc(value)}"')
    opening = "<" + " ".join(parts) + ">"
    if name in _VOID:
        return Html(opening)
    return Html(opening + join(children) + f"</{name}>")


_VOID = frozenset({"br", "hr", "input", "meta", "link", "img"})


def link(text: object, path: str, **query: object) -> Html:
    return tag("a", text, href=url(path, **query))


def url(path: str, **query: object) -> str:
    """A path with the query parameters that have a value (empty ones are dropped)."""
    pairs = {k: str(v) for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(pairs) if pairs else "")


def table(
    headers: Iterable[object],
    rows: Iterable[Iterable[object]],
    *,
    empty: str = "nothing yet",
    numeric: Iterable[int] = (),
    row_attrs: Sequence[Mapping[str, object]] = (),
) -> Html:
    """A table, or a short sentence when there are no rows; ``numeric`` columns align right;
    ``row_attrs``: attributes of each row, in order (``data_host=...``, for scripts and tests)."""
    right = set(numeric)

    def cls(i: int) -> str | None:
        return "num" if i in right else None

    body = [
        tag(
            "tr",
            *(tag("td", cell, class_=cls(i)) for i, cell in enumerate(row)),
            **(row_attrs[n] if n < len(row_attrs) else {}),
        )
        for n, row in enumerate(rows)
    ]
    if not body:
        return tag("p", empty, class_="muted")
    head = tag("thead", tag("tr", *(tag("th", h, class_=cls(i)) for i, h in enumerate(headers))))
    return tag("table", head, tag("tbody", *body))


def definition_list(items: Mapping[str, object]) -> Html:
    return tag("dl", *(Html(tag("dt", k) + tag("dd", v)) for k, v in items.items()))
