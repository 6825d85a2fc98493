"""The agent's health record: one failing check makes a device unhealthy, only enough passes in a
row make it healthy again, a failure seen only while it was held ends with a passing check after
its cleanup, and the record outlives the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.agent.config import ConfigError, parse_config
from devassign.agent.health import HealthRecord, Verdict
from devassign.agent.state import StateFile

DEV = "0000:3b:00.0"


def record(tmp_path: Path, passes: int = 3) -> HealthRecord:
    return HealthRecord(StateFile(tmp_path / "s.json", durable=False), passes)


def test_fail_fast_recover_after_enough_passes_in_a_row(tmp_path: Path) -> None:
    r = record(tmp_path)
    assert r.verdict(DEV) == Verdict() and not r.observe(DEV, True, None)
    assert r.observe(DEV, False, "dead")  # changed: unhealthy
    assert r.verdict(DEV) == Verdict(False, "dead", False)
    assert not r.observe(DEV, False, "dead")  # the same failure again: nothing to report
    assert r.observe(DEV, True, None)  # failing -> recovering: the report says so
    assert r.verdict(DEV) == Verdict(False, "dead", True)
    assert r.observe(DEV, False, "dead")  # a failure in between starts the count again
    assert [r.observe(DEV, True, None) for _ in range(3)] == [True, False, True]
    assert r.verdict(DEV) == Verdict() and r.failing() == {}


def test_a_new_reason_is_a_change(tmp_path: Path) -> None:
    r = record(tmp_path)
    r.observe(DEV, False, "link down")
    assert r.observe(DEV, False, "gone") and r.failing() == {DEV: "gone"}


def test_a_failure_seen_only_while_held_ends_with_the_check_after_cleanup(tmp_path: Path) -> None:
    r = record(tmp_path)
    r.observe(DEV, False, "on iavf, not vfio-pci", held=True)
    assert r.observe(DEV, True, None, cleaned=True) and r.verdict(DEV).healthy
    # A failure of the free device keeps its hysteresis through a cleanup.
    r.observe(DEV, False, "0xFF")
    r.observe(DEV, False, "0xFF", held=True)
    assert r.observe(DEV, True, None, cleaned=True) and r.verdict(DEV).recovering


def test_the_record_outlives_the_process_and_forgets_vanished_devices(tmp_path: Path) -> None:
    r = record(tmp_path)
    r.observe(DEV, False, "dead")
    r.observe(DEV, True, None)
    r.observe("0000:5e:10.0", False, "link down")
    r.save()
    again = record(tmp_path)
    assert again.verdict(DEV) == Verdict(False, "dead", True)
    again.keep_only([DEV])
    assert set(again.failing()) == {DEV}


def test_the_agent_configuration_of_health_checks() -> None:
    default = parse_config({"host": "h"})
    assert (default.health_interval, default.health_passes) == (60.0, 3)
    cfg = parse_config({"host": "h", "health_interval": 15, "health_passes": 1})
    assert (cfg.health_interval, cfg.health_passes) == (15.0, 1)
    for bad in (
        {"health_interval": 0},
        {"health_passes": 0},
        {"health_passes": 1.5},
        {"health_passes": True},
    ):
        with pytest.raises(ConfigError, match="health_"):
            parse_config({"host": "h", **bad})
