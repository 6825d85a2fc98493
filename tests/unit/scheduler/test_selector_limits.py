"""Selector limits: size, nesting, comprehensions and estimated cost, all checked before the
``cel`` library sees the source; and the per-request evaluation budget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devassign.scheduler import RequestError, RequestErrorCode, Snapshot, compile_selector, schedule
from devassign.scheduler import selector as selector_module
from devassign.scheduler.budget import (
    HANDOFF_UNITS,
    HANDOFF_UNITS_PER_VALUE,
    SelectorBudget,
    measure,
    no_evaluation,
    selector_budget,
)
from devassign.scheduler.celcost import (
    DEVICE_ITEMS,
    MAX_COMPREHENSION_DEPTH,
    MAX_COST,
    MAX_LITERAL_ITEMS,
    MAX_NESTING,
    estimate,
    regex_cost,
)
from devassign.scheduler.view import DeviceView
from tests.unit.scheduler.helpers import device, gpus, host, one, req

ZEROS = "[" + ",".join(["0"] * 100) + "]"


def nested(macro: str, depth: int, body: str, items: str = ZEROS) -> str:
    source = body
    for i in range(depth):
        source = f"{items}.{macro}(x{i}, {source})"
    return source


# The selectors of the attack: 848 characters that ran 23-42 s, and nested maps that took
# minutes and more than a gigabyte.
FOUR_ALLS = nested("all", 4, "true")
NESTED_MAPS = f"size({nested('map', 5, 'device')}) > 0"


class NoLibrary:
    """Stands in for the ``cel`` module: any use of it fails the test."""

    def compile(self, source: str) -> Any:
        raise AssertionError(f"the cel library was handed {source[:40]!r}...")


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The selector checks must refuse before the library parses (let alone evaluates)."""
    selector_module._compile.cache_clear()
    monkeypatch.setattr(selector_module, "cel", NoLibrary())
    yield
    selector_module._compile.cache_clear()


def refusal(source: str) -> str:
    with pytest.raises(RequestError) as caught:
        compile_selector(source, "/requests/0/selector", "gpu")
    assert caught.value.code is RequestErrorCode.INVALID_SELECTOR
    assert caught.value.pointer == "/requests/0/selector"
    return caught.value.message


# ---------------------------------------------------------------- what passes

REASONABLE = [
    "device.attributes.memory_mib >= 40960 && device.attributes.model.startsWith('A100')",
    "device.attributes.tags.exists(t, t == 'fast')",
    "'x' in device.attributes",
    "device.type == 'GPU_A100' && device.numa_node == 0",
    "device.driver in ['vfio-pci', 'nvidia'] || device.vendor_id == '10de'",
    "has(device.attributes.sriov) && device.attributes.sriov.totalvfs >= 8",
    "device.attributes.model.matches('^A100-(SXM|PCIE)-[0-9]+GB$')",
    "device.attributes.serial.matches('^\\\\w+$')",
    "device.attributes.all(k, !k.startsWith('debug_'))",
    "[0, 1].exists(n, device.numa_node == n)",
    "device.attributes.tags.filter(t, t.startsWith('rack')).size() <= 2",
    "size(device.attributes.tags.map(t, t + '-x')) > 0",
    "device.attributes.ports.exists(p, ['a', 'b'].exists(q, p == q))",
    "(device.numa_node == 0 ? device.attributes.memory_mib : 0) > 1024",
    "device.address.endsWith('.0') && int(device.attributes.generation) >= 3",
    "string(device.iommu_group) != '' // a comment with .all( and ((( in it",
    "device.attributes.note == '((((((((((((((((((((((((((((((((((((((((.map(x, x)'",
    "r'\\d+' == device.attributes.pattern_text",
]


@pytest.mark.parametrize("source", REASONABLE)
def test_reasonable_selectors_pass(source: str) -> None:
    s = compile_selector(source)
    assert 0 < s.cost <= MAX_COST


def test_a_selector_still_selects() -> None:
    s = compile_selector(REASONABLE[0])
    a100, t4 = gpus(1, model="A100-SXM")[0], gpus(1, memory_mib=16384, model="T4")[0]
    assert s.matches(a100) and not s.matches(t4)


# ---------------------------------------------------------------- what is refused, unseen


def test_the_attack_with_four_nested_comprehensions_is_refused_unevaluated(no_library: None) -> None:
    assert len(FOUR_ALLS) == 848
    message = refusal(FOUR_ALLS)
    assert f"nest 4 deep, at most {MAX_COMPREHENSION_DEPTH}" in message
    assert f"100 items, at most {MAX_LITERAL_ITEMS}" in message
    assert f"at most {MAX_COST:,}" in message


def test_the_attack_with_nested_maps_is_refused_unevaluated(no_library: None) -> None:
    assert len(NESTED_MAPS) > 1000
    assert "nest 5 deep" in refusal(NESTED_MAPS)


@pytest.mark.parametrize(
    "source",
    [
        "(" * 1000 + "true" + ")" * 1000,
        "[" * 1000 + "]" * 1000 + " == []",
        "size(" * 300 + "''" + ")" * 300 + " > 0",
        "!" * 2000 + "true",
        "-" * 2000 + "1 > 0",
        "true ? 1 : " * 150 + "2 == 1",
        "{'a': " * 250 + "1" + "}" * 250 + " == {}",
        "device.attributes.tags.exists(t, " * 40 + "true" + ")" * 40,
    ],
    ids=["parens", "brackets", "calls", "not", "minus", "ternary", "maps", "macros"],
)
def test_deep_nesting_is_a_clean_refusal(no_library: None, source: str) -> None:
    assert len(source) <= 2048
    assert f"more than {MAX_NESTING} deep" in refusal(source)


def test_five_thousand_parentheses_are_refused_by_length(no_library: None) -> None:
    assert "at most 2048" in refusal("(" * 5000 + "true" + ")" * 5000)


def test_nesting_at_the_limit_passes() -> None:
    compile_selector("(" * (MAX_NESTING - 1) + "device.numa_node == 0" + ")" * (MAX_NESTING - 1))


def test_a_list_literal_past_the_limit_is_refused(no_library: None) -> None:
    items = ", ".join(f"'m{i}'" for i in range(MAX_LITERAL_ITEMS + 1))
    assert f"{MAX_LITERAL_ITEMS + 1} items, at most {MAX_LITERAL_ITEMS}" in refusal(
        f"device.attributes.model in [{items}]"
    )


def test_a_list_literal_at_the_limit_passes() -> None:
    items = ", ".join(f"'m{i}'" for i in range(MAX_LITERAL_ITEMS))
    compile_selector(f"device.attributes.model in [{items}]")


def test_three_nested_comprehensions_are_refused_even_over_tiny_lists(no_library: None) -> None:
    assert "nest 3 deep, at most 2" in refusal(nested("exists", 3, "true", "[1, 2]"))


def test_two_comprehensions_over_a_device_list_cost_too_much(no_library: None) -> None:
    source = "device.attributes.tags.all(a, device.attributes.tags.exists(b, a == b))"
    message = refusal(source)
    assert f"at most {MAX_COST:,}" in message and f"{DEVICE_ITEMS} for a device's attributes" in message
    # Reading device.attributes in the body copies them on every item: dear, even over a literal.
    assert "estimated cost" in refusal(
        nested("all", 2, "device.attributes.a == 1", "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    )


def test_concatenation_in_a_comprehension_costs_its_length(no_library: None) -> None:
    long = "'" + "x" * 600 + "'"
    source = f"{nested('map', 2, long + ' + ' + long, '[' + ','.join(['0'] * 40) + ']')} != []"
    assert "estimated cost" in refusal(source)


def test_a_dear_regex_is_refused_and_a_computed_one_too(no_library: None) -> None:
    assert "estimated cost" in refusal("device.attributes.serial.matches('\\\\w{20}')")
    assert "string literal" in refusal("device.address.matches(device.attributes.pattern)")
    assert regex_cost("a{3}") < regex_cost("a{300}") < regex_cost("(a{300}){300}")


def test_strings_and_comments_do_not_count() -> None:
    inside = "'" + "[0,0,0].all(x, " * 20 + "'"
    assert estimate(f"device.attributes.note == {inside}").depth == 0
    assert estimate("device.numa_node == 0 // [0,0].all(a, [0].all(b, [0].all(c, true)))\n").depth == 0
    assert estimate("'''a ' ( [ '''  == device.attributes.note").cost < 200


def test_syntax_errors_keep_the_librarys_words() -> None:
    assert "not valid CEL" in refusal("device.numa_node == = 1")
    assert "not valid CEL" in refusal("device.numa_node == 0 $")


# ---------------------------------------------------------------- the cache and the budget


def test_the_cache_tells_true_from_one() -> None:
    s = compile_selector("device.attributes.flag == 1")
    yes = device("0000:01:00.0", "X", attributes={"flag": 1})
    no = device("0000:02:00.0", "X", attributes={"flag": True})
    assert s.matches(yes) and not s.matches(no)


def test_list_attributes_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_evaluations(monkeypatch)
    s = compile_selector("device.attributes.tags.exists(t, t == 'fast')")
    same = [device(f"0000:{i + 16:02x}:00.0", "X", attributes={"tags": ["fast", "x"]}) for i in range(50)]
    assert all(s.matches(d) for d in same)
    assert calls == [1]


def count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = selector_module.evaluate

    def counting(selector: Any, value: dict[str, Any]) -> bool:
        calls[0] += 1
        return real(selector, value)

    monkeypatch.setattr(selector_module, "evaluate", counting)
    return calls


def distinct(n: int) -> list[DeviceView]:
    """``n`` GPUs that a selector reading the address tells apart (no two share a result)."""
    return [device(f"0000:{i // 32 + 16:02x}:{i % 32:02x}.0", "GPU", numa_node=0) for i in range(n)]


def test_the_request_budget_stops_a_request_between_evaluations() -> None:
    request = req(one("GPU", selector="device.address.startsWith('0000:1')"))
    cost = request.requests[0].first.selector.cost  # type: ignore[union-attr]
    big = host("big", distinct(50))
    # The fields and the attributes map as CEL gets them (the standard fields in it too).
    values = measure(big.devices[0].cel_value())[1]
    per_device = HANDOFF_UNITS + HANDOFF_UNITS_PER_VALUE * values + cost
    budget = SelectorBudget(units=per_device * 10)
    with selector_budget(budget), pytest.raises(RequestError) as caught:
        schedule(request, Snapshot((big,)))
    assert budget.evaluations == 10
    assert caught.value.code is RequestErrorCode.INVALID_SELECTOR
    assert f"evaluation budget of {per_device * 10:,} units" in caught.value.message
    assert "hosts=" in caught.value.message


def test_the_time_budget_stops_a_request() -> None:
    request = req(one("GPU", selector="device.address.endsWith('.0')"))
    with selector_budget(SelectorBudget(seconds=0.0)), pytest.raises(RequestError) as caught:
        schedule(request, Snapshot((host("big", distinct(5)),)))
    assert "evaluation time budget of 0 s" in caught.value.message


def test_a_device_past_the_assumed_sizes_is_charged_more() -> None:
    small = {"attributes": {"tags": ["a"] * DEVICE_ITEMS}}
    big = {"attributes": {"tags": ["a"] * (DEVICE_ITEMS * 10)}}
    assert measure(small) == (1.0, 3 + DEVICE_ITEMS)  # attributes, "tags", its list, the items
    assert measure(big) == (10.0, 3 + DEVICE_ITEMS * 10)
    budget = SelectorBudget()
    budget.charge(100, 2, big)
    assert budget.units == HANDOFF_UNITS + HANDOFF_UNITS_PER_VALUE * (3 + DEVICE_ITEMS * 10) + 100 * 10**2


def test_nothing_is_evaluated_under_no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a claim's refit does under the host's lock: known results only."""
    calls = count_evaluations(monkeypatch)
    s = compile_selector("device.address.endsWith('.0') && device.numa_node == 0")
    known, unknown = distinct(2)
    with selector_budget(SelectorBudget(remember=True)):
        assert s.matches(known)
        selector_module._RESULTS.clear()  # another request filled the shared cache meanwhile
        with no_evaluation():
            assert s.matches(known)  # remembered by this request
            assert not s.matches(unknown)  # unknown: no match, and not evaluated
    assert calls == [1]
    with no_evaluation():
        assert not s.matches(unknown)
    assert calls == [1]
