"""Every libvirt XML form, checked against libvirt's own RelaxNG schema (domain.rng)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from devassign.domain import DeviceKind, mdev_address
from devassign.lifecycle.base import LifecycleDevice
from devassign.lifecycle.handlers.mdev import mdev_uuid
from devassign.lifecycle.libvirt import (
    LibvirtXMLError,
    device_element,
    device_elements,
    devices_xml,
)
from tests.unit.lifecycle.support import GPU, device

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
VF = "0000:5e:10.1"
MAC = "52:54:00:6d:90:02"


@pytest.fixture(scope="module")
def domain_schema() -> etree.RelaxNG:
    if not SCHEMA.exists():
        if os.environ.get("DEVASSIGN_REQUIRE_LIBVIRT_SCHEMA"):
            pytest.fail(f"{SCHEMA} is missing (install Debian's libvirt0)")
        pytest.skip(f"{SCHEMA} is missing (install Debian's libvirt0)")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def assert_valid(schema: etree.RelaxNG, elements: list[etree._Element]) -> None:
    """Wrap the elements in the smallest domain libvirt accepts and validate it."""
    domain = etree.fromstring(
        "<domain type='kvm'><name>t</name><memory>1048576</memory>"
        "<os><type>hvm</type></os><devices/></domain>"
    )
    devices = domain.find("devices")
    assert devices is not None
    devices.extend(elements)
    assert schema.validate(domain), schema.error_log


def vf(**params: object) -> LifecycleDevice:
    return device(VF, DeviceKind.SRIOV_VF, params=params)


DEVICES = {
    "pci": device(GPU, DeviceKind.PCI),
    "sriov_pf": device("0000:5e:00.0", DeviceKind.SRIOV_PF),
    "vf_plain": vf(),
    "vf_mac_vlan": vf(mac=MAC, vlan=42),
    "vf_mac": vf(mac=MAC),
    "vf_vlan": vf(vlan=7),
    "mdev": device(mdev_address(GPU, "nvidia-230", 0), DeviceKind.MDEV_TYPE),
    "usb_ids": device("usb:0529:0620:ABC123", DeviceKind.USB),
    "usb_ids_bus": device("usb:0529:0620:ABC123", DeviceKind.USB, facts={"usb_bus": 1, "usb_device": 5}),
    "usb_bus_only": device("usb:1-2.3", DeviceKind.USB, facts={"usb_bus": 1, "usb_device": 5}),
    # vGPU 17+: the VF (its vGPU type set) is the guest's device
    "vgpu": device("0000:3b:10.2/vgpu/1428", DeviceKind.VGPU, parent="0000:3b:10.2"),
}


@pytest.mark.parametrize("name", DEVICES)
def test_every_form_is_valid_libvirt(domain_schema: etree.RelaxNG, name: str) -> None:
    assert_valid(domain_schema, device_elements([DEVICES[name]]))


def test_all_forms_together_are_one_valid_domain(domain_schema: etree.RelaxNG) -> None:
    elements = device_elements(DEVICES.values())
    assert len(elements) == len(DEVICES)
    assert_valid(domain_schema, elements)


def test_a_pci_hostdev() -> None:
    xml = devices_xml([DEVICES["pci"]])
    assert xml == (
        '<hostdev mode="subsystem" type="pci" managed="no">\n'
        '  <driver name="vfio"/>\n'
        "  <source>\n"
        '    <address domain="0x0000" bus="0x3b" slot="0x00" function="0x0"/>\n'
        "  </source>\n"
        "</hostdev>\n"
    )


def test_a_vf_with_mac_and_vlan_is_an_interface() -> None:
    el = device_element(DEVICES["vf_mac_vlan"])
    assert el is not None and el.tag == "interface" and el.get("managed") == "no"
    assert el.xpath("mac/@address") == [MAC]
    assert el.xpath("vlan/tag/@id") == ["42"]
    assert el.xpath("source/address/@type") == ["pci"]
    assert el.xpath("source/address/@slot") == ["0x10"]
    assert el.xpath("source/address/@function") == ["0x1"]
    plain = device_element(DEVICES["vf_plain"])
    assert plain is not None and plain.tag == "hostdev"


def test_an_mdev_by_its_uuid() -> None:
    el = device_element(DEVICES["mdev"])
    assert el is not None
    assert el.xpath("source/address/@uuid") == [mdev_uuid(DEVICES["mdev"])]
    assert el.get("model") == "vfio-pci"


def test_usb_by_ids_and_address() -> None:
    el = device_element(DEVICES["usb_ids_bus"])
    assert el is not None
    assert el.xpath("source/vendor/@id") == ["0x0529"]
    assert el.xpath("source/product/@id") == ["0x0620"]
    assert el.xpath("source/address/@bus") == ["1"]
    assert el.xpath("source/address/@device") == ["5"]


def test_usb_where_it_is_plugged_in_now() -> None:
    """A token plugged in again while held has new bus and device numbers (its host reports
    them); the numbers its setup recorded may be another device's by now."""
    replugged = device(
        "usb:0529:0620:ABC123",
        DeviceKind.USB,
        facts={"usb_bus": 1, "usb_device": 5},
        attributes={"busnum": "2", "devnum": "9", "bus_path": "2-1"},
    )
    el = device_element(replugged)
    assert el is not None
    assert (el.xpath("source/address/@bus"), el.xpath("source/address/@device")) == (["2"], ["9"])
    # numbers a report did not give (or not as numbers): the setup's
    odd = device(
        "usb:0529:0620:ABC123",
        DeviceKind.USB,
        facts={"usb_bus": 1, "usb_device": 5},
        attributes={"busnum": "2", "devnum": "x"},
    )
    el = device_element(odd)
    assert el is not None
    assert (el.xpath("source/address/@bus"), el.xpath("source/address/@device")) == (["1"], ["5"])


def test_declared_resources_have_no_element() -> None:
    assert device_elements([device("fpga-0", DeviceKind.STATIC)]) == []


@pytest.mark.parametrize(
    "dev",
    [
        device(mdev_address(GPU, "nvidia-230", 0), DeviceKind.MDEV_TYPE, consumer=None),
        device("usb:1-2.3", DeviceKind.USB),
        vf(mac="ff:ff:ff:ff:ff:ff"),
    ],
)
def test_devices_that_cannot_be_described_are_errors(dev: LifecycleDevice) -> None:
    with pytest.raises(LibvirtXMLError):
        device_element(dev)


def test_the_consumer_names_the_mdev_the_server_describes() -> None:
    other = device(mdev_address(GPU, "nvidia-230", 0), DeviceKind.MDEV_TYPE, consumer="x")
    assert mdev_uuid(other) != mdev_uuid(DEVICES["mdev"])


def test_a_vgpu_is_its_vf_and_a_mig_instance_is_no_guest_device() -> None:
    el = device_element(DEVICES["vgpu"])
    assert el is not None and el.tag == "hostdev" and el.get("managed") == "no"
    assert el.xpath("source/address/@slot") == ["0x10"] and el.xpath("source/address/@function") == ["0x2"]
    mig = device(f"{GPU}/mig/2g.20gb@2", DeviceKind.MIG, parent=GPU)
    with pytest.raises(LibvirtXMLError, match="MIG-backed vGPU"):
        device_element(mig)
