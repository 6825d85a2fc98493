"""USB hubs are not offered: cleaning one would cut off every device behind it."""

from __future__ import annotations

from pathlib import Path

from devassign.agent.usb import scan_usb
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host


def test_hubs_are_skipped_and_the_devices_behind_them_name_theirs(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.usb("1-2", "1050", "0407", serial="hubtoken")  # a token with a built-in hub
    h.usb("1-2.1", "1050", "0407", serial="t1")
    h.usb("1-3", "0424", "2514")  # an external hub with a token behind it
    h.usb("1-3.4", "096e", "0608", serial="t2")
    h.usb("1-4", "096e", "0608", serial="t3")
    for hub in ("1-2", "1-3"):
        (h.root / "bus/usb/devices" / hub / "bDeviceClass").write_text("09\n")
    (h.root / "bus/usb/devices/1-4/bDeviceClass").write_text("00\n")
    found = {d.attributes["bus_path"]: d for d in scan_usb(Sysfs(h.root))}
    assert sorted(found) == ["1-2.1", "1-3.4", "1-4"]
    assert found["1-2.1"].attributes["usb_hub"] == "1-2"
    assert found["1-3.4"].attributes["usb_hub"] == "1-3"
    assert "usb_hub" not in found["1-4"].attributes


def test_a_device_with_one_behind_it_is_a_hub_whatever_its_class_says(tmp_path: Path) -> None:
    """A captured tree may lack bDeviceClass; the port path 1-3.1.2 still says 1-3.1 is a hub."""
    h = host(tmp_path)
    h.usb("1-3", "0424", "2514")
    h.usb("1-3.1", "0424", "2514")
    h.usb("1-3.1.2", "096e", "0608", serial="t1")
    found = {d.attributes["bus_path"]: d for d in scan_usb(Sysfs(h.root))}
    assert sorted(found) == ["1-3.1.2"]
    assert found["1-3.1.2"].attributes["usb_hub"] == "1-3.1"
