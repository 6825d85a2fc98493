"""A static cost estimate of a CEL selector, so its limits are checked before it ever runs.

The ``cel`` library evaluates in Rust holding the GIL, with no cost tracking and no way to
stop it: four nested comprehensions over 100-element lists (848 characters) held every
thread of the server, ``/healthz`` included, for 23-42 s. Like Kubernetes' cost estimator
for DRA selectors, ``estimate`` reads the source (a tokenizer and a recursive-descent parser,
strings and comments handled) and bounds the nesting of parentheses and operators, the
nesting of comprehension macros, the size of list and map literals and an estimated cost
per device. A unit is about 0.1 us of the library's time (one CEL operation is 0.5-2 units).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from devassign.scheduler.celtokens import Tok, Unreadable, tokenize
from devassign.schemas import MAX_ATTRIBUTES

__all__ = ["CostLimit", "Estimate", "Unreadable", "estimate", "regex_cost"]

# Parentheses, brackets, calls, unary and ternary operators inside one another: selectors
# nest under 10; CEL's own parser gives up near 100, and a deep AST is a deep Rust stack.
MAX_NESTING = 32
# all/exists/exists_one/map/filter inside one another: DRA selectors use one; three over
# 100-item lists is 10^6 steps per device.
MAX_COMPREHENSION_DEPTH = 2
# Items of one list or map literal: a selector names a few models or ids, not data.
MAX_LITERAL_ITEMS = 64
# Estimated units per device (~1 ms at most); typical selectors cost a few hundred.
MAX_COST = 10_000
# A device's attributes, and the items assumed of an attribute's list or map value.
DEVICE_ITEMS = MAX_ATTRIBUTES
# Characters assumed of a device's text (models, versions, networks are short); a device
# with more items or longer text is charged in proportion when its selector runs (budget.py).
DEVICE_TEXT = 256
# Values assumed in a device's attributes, counted through lists and maps (a few dozen
# attributes, some lists): the library copies them all whenever a selector reads one.
DEVICE_VALUES = 128
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

_CHAR = 0.1  # per character compared, copied or searched (Kubernetes' traversal factor)
_COPY = 0.5  # per value copied (device attributes when read; map and filter's lists)
_SCALAR_TEXT = 24  # characters of a number or a duration written as text
# matches() compiles its pattern on every call (~0.7 us per literal character, 200 us per \w).
_REGEX_BASE = 50
_REGEX_ATOM = 7
_REGEX_CLASSES = {"w": 2000, "W": 2000, "d": 140, "D": 140, "s": 20, "S": 20, "p": 1400, "P": 1400}
_CAP = 1e18


class CostLimit(Exception):
    """The selector is over a limit; the message names which and by how much."""


@dataclass(frozen=True, slots=True)
class Estimate:
    cost: int  # units per evaluation on a device within DEVICE_ITEMS and DEVICE_TEXT
    degree: int  # the cost grows as (device size / assumed size) ** degree beyond them
    depth: int  # comprehensions nested


@dataclass(frozen=True, slots=True)
class _Val:
    """What is known of a sub-expression: its cost, and bounds on the value it makes."""

    cost: float = 1.0
    items: float = 0.0  # elements of a list or map
    chars: float = _SCALAR_TEXT  # characters of a string
    elem: _Val | None = None  # an element (list, map key/value); None: a scalar or the device's
    device: bool = False  # device data: sizes bounded by DEVICE_ITEMS and DEVICE_TEXT
    deg: int = 0  # items and chars grow as device size ** deg
    cdeg: int = 0  # cost grows as device size ** cdeg
    depth: int = 0  # comprehensions nested inside
    text: str | None = None  # a string literal's value
    root: bool = False  # the variable ``device`` itself


_SCALAR = _Val()
_DEVICE = _Val(items=DEVICE_ITEMS, chars=DEVICE_TEXT, device=True, deg=1)
_ROOT = replace(_DEVICE, root=True)


def _elem(v: _Val) -> _Val:
    if v.elem is not None:
        return v.elem
    return _DEVICE if v.device else _SCALAR


def _join(a: _Val, b: _Val) -> _Val:
    """A value that is either ``a`` or ``b`` (list elements, ternary branches)."""
    elem = None
    if a.elem is not None or b.elem is not None:
        elem = _join(_elem(a), _elem(b))
    return _Val(
        cost=max(a.cost, b.cost),
        items=max(a.items, b.items),
        chars=max(a.chars, b.chars),
        elem=elem,
        device=a.device or b.device,
        deg=max(a.deg, b.deg),
        cdeg=max(a.cdeg, b.cdeg),
        depth=max(a.depth, b.depth),
    )


# ---------------------------------------------------------------- the estimate


def estimate(source: str) -> Estimate:
    """The cost of ``source`` per device, or ``CostLimit`` naming every limit it is over."""
    tokens = tokenize(source)
    depth = 0
    for tok in tokens:  # before the parser recurses into them
        depth += (tok.text in "([{") - (tok.text in ")]}") if tok.kind == "op" else 0
        if depth > MAX_NESTING:
            raise CostLimit(f"parentheses and brackets nest more than {MAX_NESTING} deep")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.peek().kind != "end":
        raise Unreadable(f"unexpected {parser.peek().text!r}")
    over = []
    if value.depth > MAX_COMPREHENSION_DEPTH:
        over.append(
            f"comprehensions (all, exists, exists_one, map, filter) nest {value.depth} deep, "
            f"at most {MAX_COMPREHENSION_DEPTH}"
        )
    if parser.widest > MAX_LITERAL_ITEMS:
        over.append(f"a list or map literal has {parser.widest} items, at most {MAX_LITERAL_ITEMS}")
    cost = math.ceil(min(value.cost, _CAP))
    if cost > MAX_COST:
        over.append(
            f"its estimated cost is {cost:,} units per device, at most {MAX_COST:,} (a comprehension "
            f"multiplies its body's cost by its items, {DEVICE_ITEMS} for a device's attributes or "
            "lists, and every read of device.attributes copies them)"
        )
    over += parser.problems
    if over:
        raise CostLimit("; ".join(over))
    return Estimate(cost, value.cdeg, value.depth)


class _Parser:
    """Recursive descent over CEL's grammar; every method returns the ``_Val`` it read."""

    def __init__(self, tokens: list[Tok]) -> None:
        self.tokens = tokens
        self.i = 0
        self.nesting = 0
        self.widest = 0
        self.scope: list[tuple[str, _Val]] = []  # comprehension variables, innermost last
        self.problems: list[str] = []

    # ------------------------------------------------ tokens
    def peek(self, ahead: int = 0) -> Tok:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self, text: str | None = None) -> Tok:
        tok = self.peek()
        if text is not None and tok.text != text:
            raise Unreadable(f"expected {text!r}, found {tok.text or 'the end'!r}")
        self.i += 1
        return tok

    def deeper(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise CostLimit(f"operators and parentheses nest more than {MAX_NESTING} deep")

    # ------------------------------------------------ grammar, loosest first
    def expr(self) -> _Val:
        self.deeper()
        cond = self.binary(0)
        if self.peek().text == "?":
            self.take()
            yes = self.expr()
            self.take(":")
            no = self.expr()
            both = _join(yes, no)
            cond = replace(
                both,
                cost=cond.cost + both.cost + 1,
                cdeg=max(cond.cdeg, both.cdeg),
                depth=max(cond.depth, both.depth),
            )
        self.nesting -= 1
        return cond

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> _Val:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek().text in self._LEVELS[level] and self.peek().kind in ("op", "ident"):
            op = self.take().text
            left = _operator(op, left, self.binary(level + 1))
        return left

    def unary(self) -> _Val:
        if self.peek().text in ("!", "-"):
            self.take()
            self.deeper()
            inner = self.unary()
            self.nesting -= 1
            return replace(inner, cost=inner.cost + 1)
        return self.member()

    def member(self) -> _Val:
        value = self.primary()
        while self.peek().text in (".", "["):
            if self.take().text == "[":
                index = self.expr()
                self.take("]")
                value = _select(value, None, index)
                continue
            name = self.take().text
            if self.peek().text == "(":
                value = self.call(name, value)
            elif self.peek().text == "{":
                value = self.message(value)
            else:
                value = _select(value, name, None)
        return value

    def primary(self) -> _Val:
        tok = self.take()
        if tok.kind == "num" or tok.text in ("true", "false", "null"):
            return _SCALAR
        if tok.kind == "str":
            assert tok.value is not None
            return _Val(chars=len(tok.value), text=tok.value)
        if tok.text == "(":
            value = self.expr()
            self.take(")")
            return value
        if tok.text in ("[", "{"):
            return self.literal(tok.text)
        if tok.text == ".":
            tok = self.take()
        if tok.kind != "ident":
            raise Unreadable(f"unexpected {tok.text or 'end'!r}")
        if self.peek().text == "(":
            return self.call(tok.text, None)
        if self.peek().text == "{":
            return self.message(_SCALAR)
        for name, value in reversed(self.scope):
            if name == tok.text:
                return replace(value, cost=1, cdeg=0, depth=0)
        return _ROOT if tok.text == "device" else _SCALAR

    def literal(self, opener: str) -> _Val:
        closer = "]" if opener == "[" else "}"
        self.deeper()
        parts: list[_Val] = []
        while self.peek().text != closer:
            parts.append(self.expr())
            if opener == "{":
                self.take(":")
                parts.append(self.expr())
            if self.peek().text != ",":
                break
            self.take(",")
        self.take(closer)
        self.nesting -= 1
        n = len(parts) // 2 if opener == "{" else len(parts)
        self.widest = max(self.widest, n)
        elem = parts[0] if parts else None
        for p in parts[1:]:
            assert elem is not None
            elem = _join(elem, p)
        return _Val(
            cost=1 + sum(p.cost for p in parts),
            items=n,
            chars=sum(p.chars for p in parts),
            elem=elem,
            cdeg=max((p.cdeg for p in parts), default=0),
            depth=max((p.depth for p in parts), default=0),
        )

    def message(self, type_name: _Val) -> _Val:
        """``Type{field: value}``: costed as a map literal of its fields."""
        self.take("{")
        self.deeper()
        cost = 1.0
        while self.peek().text != "}":
            self.take()
            self.take(":")
            cost += self.expr().cost
            if self.peek().text != ",":
                break
            self.take(",")
        self.take("}")
        self.nesting -= 1
        return replace(_SCALAR, cost=cost + type_name.cost)

    def call(self, name: str, target: _Val | None) -> _Val:
        self.take("(")
        self.deeper()
        args: list[_Val] = []
        if target is not None and name in MACROS and self.peek().kind == "ident" and self.peek(1).text == ",":
            value = self.comprehension(name, target)
        else:
            while self.peek().text != ")":
                args.append(self.expr())
                if self.peek().text != ",":
                    break
                self.take(",")
            value = self.function(name, target, args)
        self.take(")")
        self.nesting -= 1
        return value

    def comprehension(self, name: str, target: _Val) -> _Val:
        """``target.all(x, p)`` and friends: the body runs once per item of ``target``."""
        variable = self.take().text
        self.take(",")
        self.scope.append((variable, replace(_elem(target), cost=1)))
        body = [self.expr()]
        while self.peek().text == "," and len(body) < 2:
            self.take(",")
            body.append(self.expr())
        self.scope.pop()
        n = max(target.items, 1.0)
        cost = target.cost + 1 + n * (sum(b.cost for b in body) + 1)
        cdeg = max(target.cdeg, target.deg + max(b.cdeg for b in body))
        result = _SCALAR
        if name in ("map", "filter"):
            item = body[-1] if name == "map" else _elem(target)
            result = _Val(items=n, chars=n * item.chars, elem=item, deg=target.deg)
            # The library copies the list built so far on every item: quadratic in the items
            # (a map over 1,024 items took 24 ms, over 512 6.5 ms).
            cost += n * n / 2 * _COPY * (1 + item.chars / DEVICE_TEXT)
            cdeg = max(cdeg, 2 * target.deg + item.deg)
        return replace(
            result,
            cost=min(cost, _CAP),
            cdeg=cdeg,
            depth=max(target.depth, 1 + max(b.depth for b in body)),
        )

    def function(self, name: str, target: _Val | None, args: list[_Val]) -> _Val:
        parts = ([target] if target is not None else []) + args
        cost = 1 + sum(p.cost for p in parts)
        cdeg = max((p.cdeg for p in parts), default=0)
        depth = max((p.depth for p in parts), default=0)
        size_deg = max((p.deg for p in parts), default=0)
        chars = sum(p.chars for p in parts)
        out = _SCALAR
        if name == "matches":
            pattern = parts[-1] if len(parts) == 2 else None
            if pattern is None or pattern.text is None:
                self.problems.append("matches() takes its pattern as a string literal (so its cost is known)")
            else:
                cost += _CHAR * parts[0].chars + regex_cost(pattern.text)
                cdeg = max(cdeg, size_deg)
        elif name in ("size", "has"):
            pass  # constant time
        elif name == "dyn" and len(parts) == 1:
            out = parts[0]
        else:  # string functions, conversions, timestamps and durations: linear in the text
            cost += _CHAR * chars
            cdeg = max(cdeg, size_deg)
            if name in ("string", "bytes"):
                out = _Val(chars=chars, deg=size_deg)
        return replace(out, cost=min(cost, _CAP), cdeg=cdeg, depth=depth, text=None)


def _select(value: _Val, name: str | None, index: _Val | None) -> _Val:
    """``value.name`` or ``value[index]``. The library copies what it selects from device
    data: ``device.attributes`` costs its whole contents, on every evaluation (in a loop, on
    every item); other fields of the device are scalars."""
    cost = value.cost + 1 + (index.cost if index is not None else 0)
    cdeg = max(value.cdeg, index.cdeg if index is not None else 0)
    depth = max(value.depth, index.depth if index is not None else 0)
    if value.root and name != "attributes":
        return replace(_DEVICE, cost=cost, cdeg=cdeg, depth=depth)
    if value.device:
        copied = DEVICE_VALUES if value.root else DEVICE_ITEMS
        return replace(_DEVICE, cost=cost + _COPY * copied, cdeg=max(cdeg, 1), depth=depth)
    return replace(_elem(value), cost=cost, cdeg=cdeg, depth=depth, root=False)


def _operator(op: str, a: _Val, b: _Val) -> _Val:
    """A binary operator: linear in the sizes it compares, concatenates or searches."""
    cost = a.cost + b.cost + 1
    cdeg = max(a.cdeg, b.cdeg)
    depth = max(a.depth, b.depth)
    size_deg = max(a.deg, b.deg)
    out = _SCALAR
    if op == "+":
        cost += a.items + b.items + _CHAR * (a.chars + b.chars)
        elem = _join(_elem(a), _elem(b)) if (a.items or b.items) else None
        out = _Val(items=a.items + b.items, chars=a.chars + b.chars, elem=elem, device=False, deg=size_deg)
        cdeg = max(cdeg, size_deg)
    elif op == "in":  # a list is searched item by item; a string comparison stops at the shorter
        cost += b.items * (1 + _CHAR * min(a.chars, _elem(b).chars))
        cdeg = max(cdeg, b.deg + min(a.deg, _elem(b).deg))
    elif op not in ("&&", "||", "*", "/", "%", "-"):  # comparisons stop at the shorter side
        cost += min(a.items, b.items) * (1 + _CHAR * min(_elem(a).chars, _elem(b).chars))
        cost += _CHAR * min(a.chars, b.chars)
        cdeg = max(cdeg, min(a.deg, b.deg))
    return replace(out, cost=min(cost, _CAP), cdeg=cdeg, depth=depth)


def regex_cost(pattern: str) -> float:
    """Units to compile ``pattern`` (the library compiles it on every call): literal
    characters are cheap, Unicode classes dear, and a repetition ``{n}`` copies what it
    repeats n times."""
    groups: list[list[float]] = [[0.0, 0.0]]  # per open group: total, the last atom's weight
    i = 0

    def atom(weight: float) -> None:
        groups[-1][0] += weight
        groups[-1][1] = weight

    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            i += 2
            if nxt in ("p", "P") and pattern[i : i + 1] == "{":
                i = pattern.find("}", i) + 1 or len(pattern)
            atom(_REGEX_CLASSES.get(nxt, _REGEX_ATOM))
        elif c == "[":
            j, weight = i + 1, float(_REGEX_ATOM)
            if pattern[j : j + 1] == "^":
                weight, j = weight + 17, j + 1
            if pattern[j : j + 1] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                if pattern[j] == "\\":
                    weight += _REGEX_CLASSES.get(pattern[j + 1 : j + 2], 1)
                    j += 1
                j += 1
            i = j + 1
            atom(weight)
        elif c == "(":
            groups.append([0.0, 0.0])
            i += 1
        elif c == ")" and len(groups) > 1:
            total = groups.pop()[0]
            atom(total + _REGEX_ATOM)
            i += 1
        elif c == "{" and (m := re.match(r"\{(\d+)(,(\d*))?\}", pattern[i:])):
            low, high = int(m.group(1)), m.group(3)
            times = max(int(high) if high else low + 1 if m.group(2) else low, low, 1)
            groups[-1][0] = min(groups[-1][0] + groups[-1][1] * (times - 1), _CAP)
            i += m.end()
        elif c in "*+?|^$":
            i += 1
        else:
            atom(30 if c == "." else _REGEX_ATOM)
            i += 1
    while len(groups) > 1:
        total = groups.pop()[0]
        atom(total)
    return _REGEX_BASE + groups[0][0]
