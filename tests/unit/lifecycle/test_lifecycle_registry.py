"""Handlers by name through the devassign.handlers entry points, and the executor around them."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from devassign.domain import DeviceKind, DeviceState
from devassign.lifecycle import registry
from devassign.lifecycle.base import Handler, HandlerError, LifecycleDevice
from devassign.lifecycle.executor import ActionResult, run_action, state_after
from devassign.lifecycle.handlers.command import CommandHandler
from devassign.lifecycle.handlers.mdev import MdevHandler
from devassign.lifecycle.handlers.noop import NoopHandler
from devassign.lifecycle.handlers.pci import PciHandler
from devassign.lifecycle.handlers.sriov import SriovVfHandler
from devassign.lifecycle.handlers.usb import UsbHandler
from tests.unit.lifecycle.support import GPU, Machine, device

BUILT_IN = {
    "noop": NoopHandler,
    "command": CommandHandler,
    "pci": PciHandler,
    "sriov_vf": SriovVfHandler,
    "mdev": MdevHandler,
    "usb": UsbHandler,
}


@pytest.mark.parametrize(("name", "cls"), BUILT_IN.items())
def test_every_built_in_handler_loads_by_name(name: str, cls: type) -> None:
    assert isinstance(registry.load_handler(name), cls)


def test_an_unknown_name_says_which_exist() -> None:
    with pytest.raises(registry.UnknownHandlerError, match=r"no lifecycle handler 'gpu'.*mdev"):
        registry.load_handler("gpu")


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (DeviceKind.PCI, "pci"),
        (DeviceKind.SRIOV_PF, "pci"),
        (DeviceKind.SRIOV_VF, "sriov_vf"),
        (DeviceKind.MDEV_TYPE, "mdev"),
        (DeviceKind.USB, "usb"),
        (DeviceKind.STATIC, "noop"),
    ],
)
def test_the_kind_picks_the_built_in_handler(kind: DeviceKind, name: str) -> None:
    assert registry.handler_name_for(kind) == name
    assert registry.handler_name_for(kind, "command") == "command"


def _fake_entry_points(*eps: EntryPoint) -> Any:
    return lambda group: [ep for ep in eps if ep.group == group]


def test_a_third_party_handler_is_found_through_its_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ep = EntryPoint("acme", "devassign.lifecycle.handlers.noop:NoopHandler", registry.GROUP)
    monkeypatch.setattr(registry, "entry_points", _fake_entry_points(ep))
    assert isinstance(registry.load_handler("acme"), NoopHandler)
    assert registry.handler_names() == ["acme"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("acme_missing.module:Handler", "cannot load handler"), ("builtins:object", "lacks setup")],
)
def test_a_broken_third_party_handler_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setattr(
        registry, "entry_points", _fake_entry_points(EntryPoint("acme", value, registry.GROUP))
    )
    with pytest.raises(HandlerError, match=message):
        registry.load_handler("acme")


def gpu(machine: Machine) -> LifecycleDevice:
    machine.pci(GPU, driver="nvidia", group=12)
    return device(GPU, DeviceKind.PCI, driver="nvidia")


def test_setup_success_reports_assigned_with_the_facts(machine: Machine) -> None:
    result = run_action("setup", gpu(machine), {}, None, machine.ops)
    assert result == ActionResult(
        True,
        None,
        {"handler": "pci", "action": "setup", "facts": {"original_driver": "nvidia"}},
    )
    assert state_after("setup", result) is DeviceState.ASSIGNED


def test_setup_failure_reports_cleaning(machine: Machine) -> None:
    dev = gpu(machine)
    machine.sysfs.fail("bus/pci/drivers_probe")
    result = run_action("setup", dev, {}, None, machine.ops)
    assert not result.ok and f"pci setup of {GPU}: cannot probe {GPU}" in (result.error or "")
    assert state_after("setup", result) is DeviceState.CLEANING


def test_cleanup_results_map_to_available_or_quarantined(machine: Machine) -> None:
    dev = gpu(machine)
    assert run_action("setup", dev, {}, "pci", machine.ops).ok
    machine.sysfs.fail(f"bus/pci/devices/{GPU}/reset")
    failed = run_action("cleanup", dev, {}, "pci", machine.ops)
    assert state_after("cleanup", failed) is DeviceState.QUARANTINED
    machine.sysfs.failures.clear()
    done = run_action("cleanup", dev, {}, "pci", machine.ops)
    assert state_after("cleanup", done) is DeviceState.AVAILABLE


def test_health_results(machine: Machine) -> None:
    dev = gpu(machine)
    sick = run_action("health", dev, {}, None, machine.ops)
    assert not sick.ok and state_after("health", sick) is DeviceState.UNHEALTHY
    assert run_action("setup", dev, {}, None, machine.ops).ok
    well = run_action("health", dev, {}, None, machine.ops)
    assert well.ok and state_after("health", well) is None


class Exploding:
    def setup(self, *args: object) -> dict[str, Any]:
        raise ZeroDivisionError("bug")

    cleanup = health = setup


def test_a_handler_bug_is_reported_not_raised(machine: Machine) -> None:
    def loader(name: str) -> Handler:
        return Exploding()  # type: ignore[return-value]

    result = run_action("cleanup", gpu(machine), {}, "x", machine.ops, loader=loader)
    assert not result.ok and "ZeroDivisionError: bug" in (result.error or "")
    assert result.details["unexpected"] is True


def test_an_unknown_handler_is_reported(machine: Machine) -> None:
    result = run_action("setup", gpu(machine), {}, "nope", machine.ops)
    assert not result.ok and "no lifecycle handler 'nope'" in (result.error or "")
