"""CEL selectors over ``device``, as Kubernetes DRA has them.

Uses ``common-expression-language`` (module ``cel``, Rust): it parses and evaluates ~5x
faster than ``celpy`` and reports syntax errors with a caret. It does not type-check, so
``compile_selector`` adds what can be checked cheaply: no variable but ``device``, only the
known device fields, a boolean result on a sample device. At evaluation a missing attribute
or a type mismatch means "does not match", never a crash.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import cel

from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.view import DeviceView

MAX_SELECTOR_LENGTH = 2048
DEVICE_FIELDS: frozenset[str] = frozenset(
    {
        "address",
        "kind",
        "type",
        "vendor_id",
        "product_id",
        "numa_node",
        "iommu_group",
        "driver",
        "parent",
        "attributes",
    }
)
# Names a comprehension macro binds, e.g. the ``x`` in ``l.exists(x, x > 1)``.
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_FIELD_RE = re.compile(r"\bdevice\s*\.\s*([A-Za-z_]\w*)")
_STRING_RE = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
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

    def matches(self, device: DeviceView) -> bool:
        """Whether ``device`` is selected; an error (missing attribute, bad type) is a no."""
        try:
            key = (self.source, *(_field(device, f) for f in self.fields))
            hit = _RESULTS.get(key)
        except TypeError:  # an unhashable attribute value: evaluate without the cache
            return evaluate(self, device.cel_value())
        if hit is None:
            hit = evaluate(self, device.cel_value())
            if len(_RESULTS) >= MAX_RESULTS:
                _RESULTS.clear()
            _RESULTS[key] = hit
        return hit


def _field(device: DeviceView, name: str) -> Any:
    if name == "attributes":
        return tuple(device.attributes.items())
    return getattr(device, name)


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
    program, problem = _compile(source)
    if problem is not None:
        raise RequestError(RequestErrorCode.INVALID_SELECTOR, f"{where}{problem}", pointer)
    return Selector(source, program, _fields_read(source))


def _fields_read(source: str) -> tuple[str, ...]:
    """The device fields ``source`` reads; all of them if it uses ``device`` as a whole."""
    text = _STRING_RE.sub("''", source)
    if re.search(r"\bdevice\b(?!\s*\.)", text):
        return tuple(sorted(DEVICE_FIELDS))
    return tuple(sorted(set(_FIELD_RE.findall(text)) & DEVICE_FIELDS))


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> tuple[Any, str | None]:
    """Compile once per distinct source: most requests reuse a handful of selectors."""
    if not source.strip():
        return None, "selector is empty; give a CEL expression over device, or leave it out"
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
    fields = set(_FIELD_RE.findall(_STRING_RE.sub("''", source)))
    bad = sorted(fields - DEVICE_FIELDS)
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
