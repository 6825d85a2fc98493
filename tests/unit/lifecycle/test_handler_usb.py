"""The usb handler against SYNTHETIC bus/usb/devices trees."""

from __future__ import annotations

import pytest

from devassign.domain import DeviceKind
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.usb import UsbHandler
from tests.unit.lifecycle.support import Machine, device

TOKEN = "usb:0529:0620:ABC123"


def plug(machine: Machine, busid: str = "1-2", serial: str | None = "ABC123") -> str:
    path = machine.h.usb(busid, "0529", "0620", serial=serial)
    (path / "authorized").write_text("0\n")
    return f"bus/usb/devices/{busid}/authorized"


def token(address: str = TOKEN, **kw: object) -> LifecycleDevice:
    return device(address, DeviceKind.USB, **kw)


def test_setup_authorizes_and_cleanup_deauthorizes(machine: Machine) -> None:
    authorized = plug(machine)
    facts = UsbHandler().setup(token(), {}, machine.ops)
    assert machine.read(authorized) == "1"
    devnum = int(machine.read("bus/usb/devices/1-2/devnum") or "")
    assert facts == {"usb_bus_path": "1-2", "usb_bus": 1, "usb_device": devnum}
    assert UsbHandler().health(token(), {}, machine.ops).ok
    UsbHandler().cleanup(token(), {}, machine.ops)
    assert machine.read(authorized) == "0"
    assert not UsbHandler().health(token(), {}, machine.ops).ok


def test_an_odd_device_number_is_left_out_of_the_facts(machine: Machine) -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` fails: the setup went down with it."""
    path = machine.h.root / "bus/usb/devices/1-2"
    plug(machine)
    (path / "devnum").write_text("\u00b2\n")
    assert UsbHandler().setup(token(), {}, machine.ops) == {"usb_bus_path": "1-2", "usb_bus": 1}


def test_setup_twice_writes_once(machine: Machine) -> None:
    plug(machine)
    UsbHandler().setup(token(), {}, machine.ops)
    UsbHandler().setup(token(), {}, machine.ops)
    assert machine.writes_to("/authorized") == ["1"]


def test_a_device_found_by_its_bus_path(machine: Machine) -> None:
    authorized = plug(machine, "1-2.3", serial=None)
    dev = token("usb:1-2.3", vendor_id="0529", product_id="0620")
    UsbHandler().setup(dev, {}, machine.ops)
    assert machine.read(authorized) == "1"


def test_another_device_in_the_same_port_is_refused(machine: Machine) -> None:
    plug(machine, "1-2.3", serial=None)
    dev = token("usb:1-2.3", vendor_id="1050", product_id="0407")
    with pytest.raises(HandlerError, match="replugged"):
        UsbHandler().setup(dev, {}, machine.ops)


def test_two_devices_with_one_identity_are_ambiguous(machine: Machine) -> None:
    plug(machine, "1-2")
    plug(machine, "1-3")
    with pytest.raises(HandlerError, match="several USB devices: 1-2, 1-3"):
        UsbHandler().setup(token(), {}, machine.ops)


def test_an_unplugged_device_cannot_be_set_up_but_is_clean(machine: Machine) -> None:
    with pytest.raises(HandlerError, match="not plugged in"):
        UsbHandler().setup(token(), {}, machine.ops)
    UsbHandler().cleanup(token(), {}, machine.ops)
    assert machine.sysfs.writes == []


def test_the_root_hub_and_interfaces_are_never_matched(machine: Machine) -> None:
    plug(machine)
    hub = token("usb:1d6b:0002:x")
    with pytest.raises(HandlerError, match="not plugged in"):
        UsbHandler().setup(hub, {}, machine.ops)
