"""Values that become sysfs paths are checked by the kernel's name rules before any write.

The attack: ``original_driver = "../../../../tmp/x"`` (once taken from a tenant's request
params) made the root agent write ``bind`` into a folder outside sysfs.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from devassign.domain import DeviceKind
from devassign.lifecycle import names
from devassign.lifecycle.base import HandlerError
from devassign.lifecycle.handlers.mdev import mdev_uuid
from devassign.lifecycle.handlers.pci import PciHandler
from devassign.lifecycle.libvirt import devices_xml
from devassign.lifecycle.policy import LifecyclePolicy, command_allowed, path_problem
from tests.unit.lifecycle.support import GPU, Machine, device

ESCAPE = "../../../../tmp/x"


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (
            names.driver_name,
            ["nvidia", "vfio-pci", "snd_hda_intel", "i915.x"],
            ["", ".", "..", ESCAPE, "a/b", "x" * 65],
        ),
        (
            names.pci_address,
            ["0000:3b:00.0", "10000:e1:00.7"],
            ["0000:3b:00.8", "0000:3B:00.0", "../0000:3b:00.0"],
        ),
        (
            names.mdev_uuid,
            [str(uuid.UUID(int=7))],
            ["", "..", str(uuid.UUID(int=0xABC)).upper(), "{" + str(uuid.UUID(int=7)) + "}"],
        ),
        (names.mdev_type, ["nvidia-35", "i915-GVTg_V5_4", "vfio_ap-passthrough"], [".", "..", "a/b", ""]),
        (names.ifname, ["ens1f0", "eth0.100", "x" * 15], ["", ".", "..", "a/b", "a b", "a:b", "x" * 16]),
        (names.usb_bus_path, ["1-2", "3-1.4.2"], ["usb1", "1-2:1.0", "../1-2", "1-"]),
    ],
)
def test_name_rules(check: object, good: list[str], bad: list[object]) -> None:
    assert callable(check)
    for value in good:
        assert check(value) == value
    for value in [*bad, None, 3]:
        with pytest.raises(HandlerError, match="refused, nothing written"):
            check(value)


def _outside(machine: Machine) -> Path:
    """The folder ``bus/pci/drivers/../../../../tmp/x`` resolves to: outside the sysfs root."""
    target = (machine.sysfs.root / "bus/pci/drivers" / ESCAPE).resolve()
    target.mkdir(parents=True)
    (target / "bind").write_text("")
    assert not target.is_relative_to(machine.sysfs.root.resolve())
    return target


def test_a_poisoned_original_driver_fails_the_cleanup_and_writes_nothing(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    outside = _outside(machine)
    PciHandler().setup(device(GPU, DeviceKind.PCI, driver="nvidia"), {}, machine.ops)
    writes = len(machine.sysfs.writes)
    poisoned = device(GPU, DeviceKind.PCI, driver="vfio-pci", facts={"original_driver": ESCAPE})
    with pytest.raises(
        HandlerError, match=r"recorded original_driver '\.\./\.\./\.\./\.\./tmp/x' is not a driver"
    ):
        PciHandler().cleanup(poisoned, {}, machine.ops)
    assert machine.sysfs.writes[writes:] == [], "refused before the reset or any other write"
    assert (outside / "bind").read_text() == ""
    assert machine.driver(GPU) == "vfio-pci"


def test_original_driver_in_params_is_never_a_fact(machine: Machine) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    outside = _outside(machine)
    attack = {"original_driver": ESCAPE}
    dev = device(GPU, DeviceKind.PCI, driver="nvidia", params=attack)
    facts = PciHandler().setup(dev, {}, machine.ops)
    assert facts == {"original_driver": "nvidia"}
    PciHandler().cleanup(
        device(GPU, DeviceKind.PCI, driver="vfio-pci", params=attack, facts=facts), {}, machine.ops
    )
    assert machine.driver(GPU) == "nvidia"
    assert (outside / "bind").read_text() == ""


def test_a_device_already_on_vfio_records_no_param_as_its_driver(machine: Machine) -> None:
    """The original attack: nothing to learn from the host, so params used to fill in."""
    machine.pci(GPU, driver="vfio-pci", group=12)
    outside = _outside(machine)
    dev = device(GPU, DeviceKind.PCI, driver="vfio-pci", params={"original_driver": ESCAPE})
    assert PciHandler().setup(dev, {}, machine.ops) == {"original_driver": None}
    PciHandler().cleanup(dev, {}, machine.ops)
    assert (outside / "bind").read_text() == ""


@pytest.mark.parametrize("config", [{"host_driver": ESCAPE}, {"host_driver": ".."}, {"host_driver": 7}])
def test_a_bad_host_driver_in_the_type_config_is_refused_before_any_write(
    machine: Machine, config: dict[str, object]
) -> None:
    machine.pci(GPU, driver=None, group=12)
    _outside(machine)
    with pytest.raises(HandlerError, match=r"type config host_driver .* is not a driver name"):
        PciHandler().setup(device(GPU, DeviceKind.PCI), config, machine.ops)
    assert machine.sysfs.writes == []


def test_a_params_mdev_uuid_never_reaches_the_libvirt_xml() -> None:
    victim = str(uuid.UUID(int=7))
    slot = device(f"{GPU}/nvidia-230/0", DeviceKind.MDEV_TYPE, parent=GPU, params={"mdev_uuid": victim})
    xml = devices_xml([slot])
    assert victim not in xml
    assert f'uuid="{mdev_uuid(slot)}"' in xml


def test_command_allow_list_matches_one_component_at_a_time() -> None:
    allowed = ["/usr/local/libexec/devassign/*", "/opt/fpga/wipe"]
    assert command_allowed("/usr/local/libexec/devassign/fpga-load", allowed)
    assert command_allowed("/opt/fpga/wipe", allowed)
    for program in (
        "/usr/local/libexec/devassign/../../../../bin/sh",
        "/usr/local/libexec/devassign/sub/x",
        "/usr/local/libexec/devassign//x",
        "fpga-load",
        "/bin/sh",
    ):
        assert not command_allowed(program, allowed), program
    assert path_problem("relative/x") and path_problem("/a/../b") and path_problem("/a/")
    assert path_problem("/usr/local/libexec/devassign/*") is None


def test_policy_names_the_setting_and_the_host() -> None:
    policy = LifecyclePolicy()
    cmd = {"setup": ["/bin/sh", "-c", "id"]}
    refusal = policy.refusal("command", cmd, host="c1", source="/etc/devassign/agent.toml")
    assert refusal and "'command' is not allowed on host c1" in refusal
    assert "[lifecycle] handlers in /etc/devassign/agent.toml" in refusal
    policy = LifecyclePolicy(frozenset({"command"}), ("/opt/fpga/*",))
    refusal = policy.refusal("command", cmd, host="c1", source="agent.toml")
    assert refusal and "command '/bin/sh' (setup) is not allowed on host c1" in refusal
    assert "[lifecycle] commands in agent.toml" in refusal
    assert policy.refusal("command", {"setup": ["/opt/fpga/load"]}, host="c1", source="a") is None
    assert policy.refusal("pci", {}, host="c1", source="a") is not None


def test_a_mig_type_may_name_its_nvidia_smi_only_as_the_host_allows() -> None:
    policy = LifecyclePolicy()
    assert policy.refusal("mig", {}, host="c1", source="a") is None
    assert policy.refusal("mig", {"nvidia_smi": "nvidia-smi"}, host="c1", source="a") is None
    for program in ("/tmp/evil", "evil", "/usr/bin/nvidia-smi", ["/tmp/x"], 3):
        refusal = policy.refusal("mig", {"nvidia_smi": program}, host="c1", source="agent.toml")
        assert refusal and "[lifecycle] commands in agent.toml" in refusal, program
    allowed = LifecyclePolicy(commands=("/usr/bin/nvidia-smi",))
    assert allowed.refusal("mig", {"nvidia_smi": "/usr/bin/nvidia-smi"}, host="c1", source="a") is None
    assert allowed.refusal("mig", {"nvidia_smi": "/tmp/evil"}, host="c1", source="a") is not None
