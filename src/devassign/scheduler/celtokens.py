"""Tokens of CEL source, for the cost estimate (``celcost``): strings and comments handled.

String literals (quoted, triple-quoted, raw and bytes) are decoded, since ``matches()``
patterns are costed by their value; comments are skipped, so nothing inside either counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class Unreadable(Exception):
    """This parser could not read the source (the ``cel`` library then says why)."""


_TOKEN = re.compile(
    r"""(?P<space>\s+|//[^\n]*)
    |(?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:'''|\"\"\"|'|\"))
    |(?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?[uU]?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-*/%?:.,()\[\]{}])""",
    re.VERBOSE,
)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str  # str, num, ident, op, end
    text: str
    value: str | None = None  # a string literal's value


def tokenize(source: str) -> list[Tok]:
    """The tokens of ``source``, ending with an ``end`` token; ``Unreadable`` if it has none."""
    out: list[Tok] = []
    i = 0
    while i < len(source):
        m = _TOKEN.match(source, i)
        if m is None:
            raise Unreadable(f"unexpected character {source[i]!r}")
        kind = m.lastgroup or ""
        if kind == "str":
            i = _string(source, m.start(), m.end(), out)
            continue
        i = m.end()
        if kind == "space":
            continue
        out.append(Tok(kind, m.group()))
    out.append(Tok("end", ""))
    return out


def _string(source: str, start: int, body: int, out: list[Tok]) -> int:
    """Read the literal whose quote ends at ``body``; returns where it ends."""
    prefix = source[start:body].rstrip("'\"").lower()
    quote = source[len(prefix) + start : body]
    raw = "r" in prefix
    chars: list[str] = []
    i = body
    while True:
        if i >= len(source) or (len(quote) == 1 and source[i] == "\n"):
            raise Unreadable("unterminated string")
        if source.startswith(quote, i):
            break
        c = source[i]
        if c == "\\" and not raw:
            c, i = _escape(source, i + 1)
        else:
            i += 1
        chars.append(c)
    out.append(Tok("str", source[start : i + len(quote)], "".join(chars)))
    return i + len(quote)


def _escape(source: str, i: int) -> tuple[str, int]:
    c = source[i : i + 1]
    if not c:
        raise Unreadable("unterminated string")
    if c in _ESCAPES:
        return _ESCAPES[c], i + 1
    if c in "\\'\"`?":
        return c, i + 1
    for lead, n in (("x", 2), ("X", 2), ("u", 4), ("U", 8)):
        if c == lead and re.fullmatch(r"[0-9a-fA-F]+", source[i + 1 : i + 1 + n] or "-"):
            return chr(min(int(source[i + 1 : i + 1 + n], 16), 0x10FFFF)), i + 1 + n
    if re.fullmatch(r"[0-3][0-7][0-7]", source[i : i + 3]):
        return chr(int(source[i : i + 3], 8)), i + 3
    raise Unreadable(f"unknown escape \\{c}")
