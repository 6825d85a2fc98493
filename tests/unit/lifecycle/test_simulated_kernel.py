"""The simulated kernel's answers that tests/vm found the real kernel gives (SYNTHETIC trees).

The scenarios shared with the guest are in test_kernel_scenarios.py; these are the details
around them: what the tree looks like after each reaction.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from devassign.hostio import HostIOError
from devassign.lifecycle.host import HostOps, NoVfioUsers, ProcVfioUsers, VfioSnapshot
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.sysfs import host

PF = "0000:5e:00.0"


def sriov_host(root: Path, autoprobe: bool = True) -> SimulatedSysfs:
    h = host(root, vfio=True)
    h.sriov_pf(PF, "8086", "1572", vfs=0, total_vfs=4, vf_device="154c", iommu_group=30)
    h.native_ids("iavf", "8086", "154c")
    if not autoprobe:
        h.set(PF, "sriov_drivers_autoprobe", "0")
    return SimulatedSysfs(h.root)


def errno_of(action: object) -> int | None:
    try:
        action()  # type: ignore[operator]
    except HostIOError as exc:
        return exc.errno
    return None


def test_a_cleared_driver_override_reads_null_as_on_the_kernel(tmp_path: Path) -> None:
    h = host(tmp_path, vfio=True)
    h.pci("0000:3b:00.0", "10de", "1eb8", driver="nvidia", iommu_group=12)
    sysfs = SimulatedSysfs(h.root)
    rel = "bus/pci/devices/0000:3b:00.0/driver_override"
    assert sysfs.read(rel) == "(null)"
    sysfs.write(rel, "vfio-pci")
    assert sysfs.read(rel) == "vfio-pci"
    sysfs.write(rel, "\n")
    assert sysfs.read(rel) == "(null)"
    # "(null)" is no override: the function still goes back to its own driver when probed.
    sysfs.write("bus/pci/drivers/nvidia/unbind", "0000:3b:00.0")
    sysfs.write("bus/pci/drivers_probe", "0000:3b:00.0")
    assert sysfs.link_name("bus/pci/devices/0000:3b:00.0/driver") == "nvidia"


def test_reset_method_takes_only_supported_methods(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", reset="flr bus")
    sysfs = SimulatedSysfs(h.root)
    rel = "bus/pci/devices/0000:3b:00.0/reset_method"
    assert errno_of(lambda: sysfs.write(rel, "pm")) == errno.EINVAL
    assert errno_of(lambda: sysfs.write(rel, "bus pm")) == errno.EINVAL
    assert sysfs.read(rel) == "flr bus"
    sysfs.write(rel, "bus bus")
    assert sysfs.read(rel) == "bus"
    sysfs.write(rel, "default")
    assert sysfs.read(rel) == "flr bus"
    sysfs.write(rel, "\n")
    assert sysfs.read(rel) == ""
    assert errno_of(lambda: sysfs.write("bus/pci/devices/0000:3b:00.0/reset", "1")) == errno.ENOTTY


def test_sriov_numvfs_creates_the_vfs_and_0_removes_them(tmp_path: Path) -> None:
    sysfs = sriov_host(tmp_path)
    pf = f"bus/pci/devices/{PF}"
    sysfs.write(f"{pf}/sriov_numvfs", "2")
    vfs = ["0000:5e:10.0", "0000:5e:10.1"]
    assert [sysfs.link_name(f"{pf}/virtfn{i}") for i in range(2)] == vfs
    for vf in vfs:
        base = f"bus/pci/devices/{vf}"
        assert sysfs.link_name(f"{base}/physfn") == PF
        assert (sysfs.read(f"{base}/vendor"), sysfs.read(f"{base}/device")) == ("0x8086", "0x154c")
        assert sysfs.link_name(f"{base}/driver") == "iavf"  # sriov_drivers_autoprobe 1
        assert sysfs.read(f"{base}/driver_override") == "(null)"
    groups = [sysfs.link_name(f"bus/pci/devices/{vf}/iommu_group") for vf in vfs]
    assert groups == ["31", "32"]
    assert sysfs.listdir("kernel/iommu_groups/31/devices") == [vfs[0]]
    assert sysfs.read(f"{pf}/sriov_numvfs") == "2"
    assert errno_of(lambda: sysfs.write(f"{pf}/sriov_numvfs", "3")) == errno.EBUSY
    assert errno_of(lambda: sysfs.write(f"{pf}/sriov_numvfs", "5")) == errno.ERANGE
    sysfs.write(f"{pf}/sriov_numvfs", "0")
    assert sysfs.read(f"{pf}/sriov_numvfs") == "0"
    assert not [e for e in sysfs.listdir(pf) if e.startswith("virtfn")]
    assert not any(sysfs.exists(f"bus/pci/devices/{vf}") for vf in vfs)
    assert not sysfs.exists("kernel/iommu_groups/31")
    assert sysfs.listdir("bus/pci/drivers/iavf") == [".simulated-ids"]


def test_an_iommu_group_folder_with_a_non_ascii_digit_does_not_break_enabling_vfs(tmp_path: Path) -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` fails: the new VFs' groups are numbered past
    the ASCII ones only."""
    sysfs = sriov_host(tmp_path)
    (tmp_path / "sys/kernel/iommu_groups/\u00b2").mkdir()
    sysfs.write(f"bus/pci/devices/{PF}/sriov_numvfs", "1")
    assert sysfs.link_name("bus/pci/devices/0000:5e:10.0/iommu_group") == "31"


def test_sriov_numvfs_without_autoprobe_leaves_the_vfs_unbound(tmp_path: Path) -> None:
    sysfs = sriov_host(tmp_path, autoprobe=False)
    sysfs.write(f"bus/pci/devices/{PF}/sriov_numvfs", "1")
    assert sysfs.link_name("bus/pci/devices/0000:5e:10.0/driver") is None


def test_writing_remove_takes_the_function_out(tmp_path: Path) -> None:
    sysfs = sriov_host(tmp_path)
    sysfs.write(f"bus/pci/devices/{PF}/sriov_numvfs", "2")
    # A VF has no remove file, and sysfs makes none: EACCES, as on the kernel.
    assert errno_of(lambda: sysfs.write("bus/pci/devices/0000:5e:10.1/remove", "1")) == errno.EACCES
    sysfs.write(f"bus/pci/devices/{PF}/remove", "0")
    assert sysfs.exists(f"bus/pci/devices/{PF}")
    sysfs.write(f"bus/pci/devices/{PF}/remove", "1")
    assert not sysfs.exists(f"bus/pci/devices/{PF}")
    assert sysfs.listdir("bus/pci/drivers/ice") == [".simulated-ids"]
    assert "30" not in sysfs.listdir("kernel/iommu_groups")  # its group, now empty
    # Its VFs stay, as nvme leaves them (the kernel warns "driver left SR-IOV enabled").
    assert sysfs.listdir("bus/pci/devices") == ["0000:5e:10.0", "0000:5e:10.1"]
    assert sysfs.listdir("kernel/iommu_groups") == ["31", "32"]


def test_usb_deauthorize_removes_interfaces_and_authorize_brings_them_back(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.usb("1-2", "0529", "0620", serial="ABC")
    sysfs = SimulatedSysfs(h.root)
    sysfs.write("bus/usb/devices/1-2/authorized", "0")
    assert sysfs.listdir("bus/usb/devices") == ["1-2", "usb1"]
    assert not any(e.startswith("1-2:") for e in sysfs.listdir("bus/usb/devices/1-2"))
    sysfs.write("bus/usb/devices/1-2/authorized", "1")
    assert sysfs.listdir("bus/usb/devices") == ["1-2", "1-2:1.0", "usb1"]
    assert sysfs.read("bus/usb/devices/1-2:1.0/bInterfaceClass") == "0b"


def vfio_pair(root: Path) -> SimulatedSysfs:
    h = host(root, vfio=True)
    for a in ("0000:3b:00.0", "0000:3b:00.1"):
        h.pci(a, "10de", "1eb8", driver="nvidia", iommu_group=12)
    sysfs = SimulatedSysfs(h.root)
    for a in ("0000:3b:00.0", "0000:3b:00.1"):
        sysfs.write(f"bus/pci/devices/{a}/driver_override", "vfio-pci")
        sysfs.write("bus/pci/drivers/nvidia/unbind", a)
        sysfs.write("bus/pci/drivers_probe", a)
    return sysfs


def test_the_group_node_lives_while_a_member_is_on_vfio(tmp_path: Path) -> None:
    sysfs = vfio_pair(tmp_path)
    assert sysfs.dev_node("vfio/12").exists()
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", "0000:3b:00.0")
    assert sysfs.dev_node("vfio/12").exists()
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", "0000:3b:00.1")
    assert not sysfs.dev_node("vfio/12").exists()
    with pytest.raises(HostIOError) as caught:
        sysfs.hold_group(12)  # no node, nothing to open
    assert caught.value.errno == errno.ENOENT


def test_a_held_group_keeps_host_drivers_off_and_an_open_device_cannot_be_unbound(tmp_path: Path) -> None:
    sysfs = vfio_pair(tmp_path)
    sysfs.hold_group(12, "pid 7 (qemu)", devices=["0000:3b:00.1"])
    users = HostOps.simulated(tmp_path / "sys").vfio_users
    assert users.holders(["/dev/vfio/12"]) == ["pid 7 (qemu)"]
    assert users.holders(["/dev/vfio/13"]) == []
    # The open device: the kernel would block; the simulation refuses.
    assert errno_of(lambda: sysfs.write("bus/pci/drivers/vfio-pci/unbind", "0000:3b:00.1")) == errno.EDEADLK
    sysfs.write("bus/pci/drivers/vfio-pci/unbind", "0000:3b:00.0")
    sysfs.write("bus/pci/devices/0000:3b:00.0/driver_override", "\n")
    assert errno_of(lambda: sysfs.write("bus/pci/drivers_probe", "0000:3b:00.0")) == errno.EINVAL
    assert errno_of(lambda: sysfs.write("bus/pci/drivers/nvidia/bind", "0000:3b:00.0")) == errno.EBUSY
    sysfs.release_group(12)
    sysfs.write("bus/pci/drivers_probe", "0000:3b:00.0")
    assert sysfs.link_name("bus/pci/devices/0000:3b:00.0/driver") == "nvidia"


def test_the_last_member_leaving_vfio_ends_the_hold(tmp_path: Path) -> None:
    sysfs = vfio_pair(tmp_path)
    sysfs.hold_group(12)
    for a in ("0000:3b:00.0", "0000:3b:00.1"):
        sysfs.write("bus/pci/drivers/vfio-pci/unbind", a)
    assert sysfs.vfio_users().holders(["/dev/vfio/12"]) == []
    sysfs.write("bus/pci/devices/0000:3b:00.0/driver_override", "\n")
    sysfs.write("bus/pci/drivers_probe", "0000:3b:00.0")
    assert sysfs.link_name("bus/pci/devices/0000:3b:00.0/driver") == "nvidia"


def test_proc_vfio_users_reads_open_files_of_processes(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, targets in (
        ("42", "qemu-system-x86", ["/dev/null", "/dev/vfio/12"]),
        ("43", "sshd", ["/dev/vfio/vfio"]),
        ("44", "qemu-kvm", ["/dev/vfio/devices/vfio3 (deleted)"]),
    ):
        (proc / pid / "fd").mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        for i, target in enumerate(targets):
            os.symlink(target, proc / pid / "fd" / str(i))
    (proc / "self").mkdir()
    users = ProcVfioUsers(str(proc))
    assert users.holders(["/dev/vfio/12"]) == ["pid 42 (qemu-system-x86)"]
    assert users.holders(["/dev/vfio/13", "/dev/vfio/devices/vfio3"]) == ["pid 44 (qemu-kvm)"]
    assert users.holders([]) == []
    assert ProcVfioUsers(str(tmp_path / "none")).holders(["/dev/vfio/12"]) == []
    # One scan for a pass of health checks: the same answers from what it found.
    assert users.open_nodes() == {
        "/dev/vfio/12": ["pid 42 (qemu-system-x86)"],
        "/dev/vfio/vfio": ["pid 43 (sshd)"],
        "/dev/vfio/devices/vfio3": ["pid 44 (qemu-kvm)"],
    }
    snapshot = VfioSnapshot(users)
    assert snapshot.holders(["/dev/vfio/12", "/dev/vfio/devices/vfio3"]) == [
        "pid 42 (qemu-system-x86)",
        "pid 44 (qemu-kvm)",
    ]
    (proc / "45" / "fd").mkdir(parents=True)
    os.symlink("/dev/vfio/13", proc / "45" / "fd" / "0")
    assert snapshot.holders(["/dev/vfio/13"]) == []  # what the one scan saw
    assert users.holders(["/dev/vfio/13"]) == ["pid 45 (?)"]  # a cleanup asks the host now


def test_only_this_machines_sys_is_asked_about_vfio_users(tmp_path: Path) -> None:
    assert isinstance(HostOps.for_host(tmp_path).vfio_users, NoVfioUsers)
    assert isinstance(HostOps.for_host("/sys").vfio_users, ProcVfioUsers)


def test_a_tree_that_is_not_this_machines_sysfs_sends_no_netlink(tmp_path: Path) -> None:
    """An agent run on a captured tree without --simulate sent the VF settings of the tree's
    PF (``net/eno1`` in the tree) to this machine's interface of that name."""
    from devassign.lifecycle.host import PyrouteNetlink, TreeNetlink, is_machine_sysfs

    ops = HostOps.for_host(tmp_path)
    assert isinstance(ops.netlink, TreeNetlink)
    with pytest.raises(HostIOError, match=r"not this machine's sysfs.*--simulate"):
        ops.netlink.set_vf("lo", 0, mac="00:00:00:00:00:00")
    with pytest.raises(HostIOError, match="not this machine's sysfs"):
        ops.netlink.get_vf("lo", 0)
    assert isinstance(HostOps.for_host("/sys").netlink, PyrouteNetlink)
    # The host's sysfs mounted elsewhere (an agent in a container) is this machine's.
    mounts = tmp_path / "mounts"
    host_sys = tmp_path / "host" / "sys"
    (host_sys / "bus").mkdir(parents=True)
    mounts.write_text(f"overlay / overlay rw 0 0\nsysfs {host_sys} sysfs ro 0 0\ntmpfs /tmp tmpfs rw 0 0\n")
    assert is_machine_sysfs(host_sys / "bus", str(mounts))
    assert not is_machine_sysfs(tmp_path / "host", str(mounts))
    assert not is_machine_sysfs(tmp_path, str(tmp_path / "no-such-file"))
    # A mount point with a tab or a backslash, as the kernel escapes them.
    odd = tmp_path / "host\tsys\\x"
    odd.mkdir()
    escaped = str(odd).replace("\\", "\\134").replace("\t", "\\011")
    mounts.write_text(f"sysfs {escaped} sysfs ro 0 0\n")
    assert is_machine_sysfs(odd, str(mounts))
