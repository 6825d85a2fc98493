"""What a configuration may declare is checked when it is loaded, not when a report fails."""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import MAX_CONFIG_ATTRIBUTES, ConfigError, parse_config
from devassign.agent.reporter import Reporter, ReportRefused
from devassign.schemas import MAX_DEVICES_PER_REPORT, ReportedDevice
from tests.unit.agent.test_agent_reporter import DEVICE, FakeServer, FakeTime


def _resource(**table: Any) -> dict[str, Any]:
    return {"host": "h1", "resource": [{"type": "LICENSE", **table}]}


@pytest.mark.parametrize(
    "value",
    [datetime.date(2027, 1, 1), float("nan"), float("inf"), [{"a": 1}], [[1]], "a\x00b", 2**70],
)
def test_an_attribute_must_be_a_plain_value(value: Any) -> None:
    with pytest.raises(ConfigError, match="attribute 'x' must be text"):
        parse_config(_resource(attributes={"x": value}))
    rule = {"type": "NIC", "match": {"vendor_id": "8086"}, "attributes": {"x": value}}
    with pytest.raises(ConfigError, match=r"\[\[device\]\] #1 \(type NIC\): attribute 'x'"):
        parse_config({"host": "h1", "device": [rule]})


def test_plain_values_and_flat_lists_are_taken() -> None:
    attrs = {"s": "gold", "i": -3, "b": True, "f": 1.5, "l": ["a", 1, 2.5, False], "e": []}
    config = parse_config(_resource(attributes=attrs))
    assert config.resources[0].attributes == attrs


def test_too_many_attributes_are_refused() -> None:
    attrs = {f"a{i}": i for i in range(MAX_CONFIG_ATTRIBUTES + 1)}
    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_ATTRIBUTES} attributes"):
        parse_config(_resource(attributes=attrs))


def test_declared_units_past_one_report_are_refused() -> None:
    raw = {"host": "h1", "resource": [{"type": f"L{i}", "count": 10_000} for i in range(3)]}
    with pytest.raises(ConfigError, match="add up to 30000 units, more than the 20000"):
        parse_config(raw)


def test_a_host_with_more_devices_than_a_report_holds_is_refused_not_cut(tmp_path: Path) -> None:
    """Cut short, the report would tell the server the rest were removed: nothing is sent."""
    server = FakeServer()
    many = [DEVICE.model_copy(update={"address": f"static:{i}"}) for i in range(MAX_DEVICES_PER_REPORT + 1)]
    devices: list[ReportedDevice] = many
    t = FakeTime()
    config = parse_config({"host": "compute-1", "state_file": "s.json"}, base_dir=tmp_path)
    reporter = Reporter(
        config,
        lambda: devices,
        httpx.Client(transport=httpx.MockTransport(server)),
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(1),
    )
    with pytest.raises(ReportRefused, match="more than the 20000 one report may hold"):
        reporter.report()
    assert server.reports() == []
