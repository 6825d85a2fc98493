"""CEL selectors over ``device``, as Kubernetes DRA has them.

Uses ``common-expression-language`` (module ``cel``, Rust): it parses and evaluates ~5x
faster than ``celpy`` and reports syntax errors with a caret. It does not type-check, so
``compile_selector`` adds what can be checked cheaply: no variable but ``device``, only the
known device fields, a boolean result on a sample device. Before any of that (the sample
evaluation included) ``celcost`` checks the size, nesting and estimated cost, and every
evaluation is charged to the request's budget (``budget.py``). At evaluation a missing
attribute or a type mismatch means "does not match", never a crash.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from devassign.scheduler import budget as budgets
from devassign.scheduler.celcost import CostLimit, Estimate, Unreadable, estimate
from devassign.scheduler.celtokens import tokenize
from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.view import STANDARD_FIELDS, DeviceView

# A selector is one expression: 2 KiB holds a long list of models; more is data, not a rule.
MAX_SELECTOR_LENGTH = 2048
DEVICE_FIELDS: frozenset[str] = frozenset((*STANDARD_FIELDS, "attributes"))
# Names a comprehension macro binds, e.g. the ``x`` in ``l.exists(x, x > 1)``.
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
# Every field with a value of its own type, so a type error on it is the expression's fault.
_SAMPLE: dict[str, Any] = {
    "address": "0000:00:00.0",
    "kind": "pci",
    "type": "T",
    "vendor_id": "0000",
    "product_id": "0000",
    "numa_node": 1,
    "iommu_group": 1,
    "driver": "vfio-pci",
    "parent": "0000:00:00.0",
    "attributes": {},
}


# Results by (source, the device fields the selector reads): handing a device to CEL costs
# ~20 us (conversion), a lookup ~1 us, and devices of one shape repeat across hosts.
_RESULTS: dict[tuple[Any, ...], bool] = {}
MAX_RESULTS = 100_000


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled selector; equal when the source is equal, so requests compare by value."""

    source: str
    program: Any = field(compare=False, repr=False)
    fields: tuple[str, ...] = field(default=tuple(sorted(DEVICE_FIELDS)), compare=False)
    cost: int = field(default=1, compare=False)  # estimated units per device (celcost)
    degree: int = field(default=0, compare=False)  # how the cost grows with a device's size

    def matches(self, device: DeviceView) -> bool:
        """Whether ``device`` is selected; an error (missing attribute, bad type) is a no.

        Charged to the request's budget when it runs; under ``budget.no_evaluation`` only
        results known already answer, and an unknown device does not match.
        """
        budget = budgets.current()
        try:
            key: tuple[Any, ...] | None = (self.source, *(_field(device, f) for f in self.fields))
            hash(key)
        except TypeError:  # a value that cannot be frozen: evaluate without the cache
            key = None
        memo = budget.memo if budget is not None else None
        if key is not None:
            hit = _RESULTS.get(key)
            if hit is None and memo is not None:
                hit = memo.get(key)
            if hit is not None:
                if memo is not None:
                    memo[key] = hit
                return hit
        if budget is None:
            hit = evaluate(self, device.cel_value())
        elif budget.frozen:
            return False
        else:
            value = device.cel_value()
            budget.charge(self.cost, self.degree, value)
            start = time.perf_counter()
            hit = evaluate(self, value)
            budget.spent(time.perf_counter() - start)
        if key is not None:
            if len(_RESULTS) >= MAX_RESULTS:
                _RESULTS.clear()
            _RESULTS[key] = hit
            if memo is not None:
                memo[key] = hit
        return hit


def _field(device: DeviceView, name: str) -> Any:
    if name == "attributes":
        return _frozen(device.attributes)
    return getattr(device, name)


def _frozen(value: Any) -> Any:
    """A hashable copy that keeps types apart: ``True``, ``1`` and ``1.0`` are equal keys in
    Python, but CEL tells them apart (``device.attributes.x == 1`` is false for ``true``)."""
    if isinstance(value, Mapping):
        return ("map", tuple((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("list", tuple(_frozen(v) for v in value))
    return (type(value).__name__, value)


def evaluate(selector: Selector, device: dict[str, Any]) -> bool:
    """Run ``selector`` on a device value; only a literal ``true`` selects."""
    try:
        result = selector.program.execute({"device": device})
    except Exception:
        return False
    return result is True


def compile_selector(source: str, pointer: str = "", request: str = "") -> Selector:
    """Compile and check ``source``, or raise a ``RequestError`` that says what to fix."""
    where = f"request {request!r}: " if request else ""
    if len(source) > MAX_SELECTOR_LENGTH:
        raise RequestError(
            RequestErrorCode.INVALID_SELECTOR,
            f"{where}selector is {len(source)} characters; at most {MAX_SELECTOR_LENGTH}",
            pointer,
        )
    program, cost, problem = _compile(source)
    if problem is not None:
        raise RequestError(RequestErrorCode.INVALID_SELECTOR, f"{where}{problem}", pointer)
    assert cost is not None
    return Selector(source, program, _fields_read(source), cost.cost, cost.degree)


def _fields_read(source: str) -> tuple[str, ...]:
    """The device fields ``source`` reads (its results are cached by their values); all of
    them if it uses ``device`` as a whole."""
    fields, whole = _device_fields(source)
    if whole:
        return tuple(sorted(DEVICE_FIELDS))
    read = fields & DEVICE_FIELDS
    if "attributes" in read:
        # device.attributes holds the standard fields too (DeviceView.selector_attributes):
        # the ones it names, or all of them where the map is used whole (size(), exists()).
        names, whole_map = _attribute_names(source)
        read |= set(STANDARD_FIELDS) if whole_map else names & set(STANDARD_FIELDS)
    return tuple(sorted(read))


def _attribute_names(source: str) -> tuple[set[str], bool]:
    """The names read as ``device.attributes.NAME`` or ``device.attributes["NAME"]``, and
    whether the map is also used otherwise (a method, an index that is not a literal)."""
    try:
        toks = tokenize(source)
    except Unreadable:
        return set(), True
    names: set[str] = set()
    whole = False
    for i, t in enumerate(toks):
        if t.kind != "ident" or t.text != "attributes" or i < 2 or toks[i - 2].text != "device":
            continue
        nxt = toks[i + 1 : i + 4]
        if len(nxt) >= 2 and nxt[0].text == "." and nxt[1].kind == "ident":
            if len(nxt) == 3 and nxt[2].text == "(":
                whole = True  # a method on the map
            else:
                names.add(nxt[1].text)
        elif (
            len(nxt) == 3
            and nxt[0].text == "["
            and nxt[1].kind == "str"
            and nxt[2].text == "]"
            and nxt[1].text[:1] in "\"'"
            and nxt[1].text[:3] not in ('"""', "'''")
            and "\\" not in nxt[1].text
        ):
            names.add(nxt[1].text[1:-1])  # a plain quoted name
        else:  # anything else, an escape included (CEL decodes "numa\x5fnode"): the whole map
            whole = True
    return names, whole


def _device_fields(source: str) -> tuple[set[str], bool]:
    """The names after ``device.`` in ``source``, and whether ``device`` appears otherwise
    (``device["numa_node"]``, passed whole). Read from CEL's tokens, so nothing inside a
    string of any kind (quoted, triple-quoted, raw) or a comment counts; where the tokens
    cannot be read, the whole device."""
    try:
        toks = tokenize(source)
    except Unreadable:
        return set(), True
    fields: set[str] = set()
    whole = False
    for i, t in enumerate(toks):
        if t.kind != "ident" or t.text != "device":
            continue
        if i > 0 and toks[i - 1].kind == "op" and toks[i - 1].text == ".":
            continue  # a field named device of something else
        after = toks[i + 1 : i + 3]
        if len(after) == 2 and after[0].text == "." and after[1].kind == "ident":
            fields.add(after[1].text)
        else:
            whole = True
    return fields, whole


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> tuple[Any, Estimate | None, str | None]:
    """Compile once per distinct source: most requests reuse a handful of selectors.

    The cost check comes first: nothing is parsed by the library, let alone evaluated, for a
    selector over a limit.
    """
    if not source.strip():
        return None, None, "selector is empty; give a CEL expression over device, or leave it out"
    try:
        cost = estimate(source)
    except CostLimit as exc:
        return None, None, f"selector is too costly to run: {exc}"
    except Unreadable as exc:
        # Most likely a syntax error, which the library words best (with a caret); it only
        # parses here, nothing is evaluated.
        try:
            cel.compile(source)
        except Exception as err:
            return None, None, f"selector is not valid CEL: {err}"
        unknown = (
            f"selector uses syntax whose cost cannot be estimated ({exc}); write it with "
            "comparisons, && || !, ?:, in, has(), size(), string functions and all/exists/map/filter"
        )
        return None, None, unknown
    program, problem = _checked(source)
    return program, cost, problem


def _checked(source: str) -> tuple[Any, str | None]:
    """The library's program for ``source`` if it passes the checks that need no device."""
    try:
        program = cel.compile(source)
    except Exception as exc:
        return None, f"selector is not valid CEL: {exc}"
    bound = set(_BOUND_RE.findall(source))
    unknown = sorted(set(program.variables()) - bound - {"device"})
    if unknown:
        return None, (
            f"selector uses undeclared variable {unknown[0]!r}; the only variable is device, "
            "e.g. device.attributes.memory_mib >= 40960"
        )
    bad = sorted(_device_fields(source)[0] - DEVICE_FIELDS)
    if bad:
        return None, (
            f"selector uses device.{bad[0]}, which devices do not have; fields are "
            f"{', '.join(sorted(DEVICE_FIELDS))} (other attributes: device.attributes.NAME)"
        )
    try:
        result = program.execute({"device": _SAMPLE})
    except KeyError:
        return program, None  # an attribute the sample lacks: fine, real devices may have it
    except Exception as exc:
        if "device" in program.variables() and not isinstance(exc, RuntimeError):
            return program, None  # may depend on the device's values; judged per device
        return None, f"selector cannot be evaluated: {str(exc).split('.')[0]}"
    if not isinstance(result, bool):
        return None, (
            f"selector must be true or false, it gives {type(result).__name__}: "
            "compare it, e.g. device.numa_node == 0"
        )
    return program, None
