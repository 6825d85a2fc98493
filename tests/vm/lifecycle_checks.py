"""Claims through the CLI, the real handlers acting on the real kernel through ``agent run
--once``, and what the kernel shows after each step: the function's driver, ``/dev/vfio/<group>``,
USB ``authorized``; then the failure paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.vm.discovery_checks import MF_NIC, NIC, NVME_VF, USB_STICK, agent_toml
from tests.vm.guest import HOST, PCI, SYS, Guest, driver, group_of, kread, kwrite

VFIO = "vfio-pci"
TYPES: dict[str, dict[str, Any]] = {
    # The sriov_vf handler sets MAC/VLAN through the PF's netdev; an NVMe PF has none.
    NVME_VF: {"handler": "pci"},
    NIC: {"config": {"reset": "bus"}},
    MF_NIC: {},
    USB_STICK: {},
}


def run(g: Guest) -> None:
    c = g.checks
    with c.part("lifecycle: server and first report"):
        if not c.check(
            "server answers /healthz",
            g.start_server(),
            (Path("/tmp/devassign-vm/server.log")).read_text()[-1500:]
            if g.server and g.server.poll() is not None
            else "",
        ):
            return
        for name, body in TYPES.items():
            resp = g.http.post("/v1/resource-types", json={"name": name, **body})
            c.equal(f"type {name} created", resp.status_code, 201, resp.text[:300])
        done = g.agent()
        c.equal("first report: agent exits 0", done.returncode, 0, done.stderr[-1500:])
        offered = [a for a, d in g.discovered.items() if d.get("offered")]
        c.equal(
            "every offered device is available",
            {a: g.state(a) for a in offered},
            {a: "available" for a in offered},
        )
    with c.part("lifecycle: claim, setup, release, cleanup"):
        cycle(g)
    with c.part("lifecycle: removed while assigned"):
        removed_while_assigned(g)
    if g.full:
        with c.part("lifecycle: group mate on a host driver"):
            group_mate_in_use(g)
        with c.part("lifecycle: group held by a guest"):
            group_held(g)
        with c.part("lifecycle: device open in a guest"):
            device_open(g)


def claim(g: Guest, consumer: str, **counts: int) -> dict[str, str]:
    """``devassign claim``; returns address -> type of what was claimed."""
    specs = [x for t, n in counts.items() for x in ("--spec", f"hardware_resource:{t}={n}")]
    done = g.devassign("claim", "--consumer", consumer, *specs, "--host", HOST, "-f", "json")
    if not g.checks.equal(f"claim {counts} exits 0", done.returncode, 0, done.stderr[-800:]):
        return {}
    return {d["address"]: d["type"] for d in json.loads(done.stdout)["devices"]}


def states(g: Guest, addresses: list[str], want: str, what: str) -> bool:
    return g.checks.equal(
        f"{what}: {want}", {a: g.state(a) for a in addresses}, dict.fromkeys(addresses, want)
    )


def agent_ok(g: Guest, what: str) -> bool:
    done = g.agent()
    return g.checks.equal(f"agent run --once ({what}) exits 0", done.returncode, 0, done.stderr[-1500:])


def on_vfio(g: Guest, address: str) -> None:
    c, group = g.checks, group_of(address)
    c.equal(f"{address} on {VFIO}", driver(address), VFIO)
    c.equal(f"{address} driver_override", kread(f"{PCI}/{address}/driver_override"), VFIO)
    c.check(f"/dev/vfio/{group} exists", os.path.exists(f"/dev/vfio/{group}"))


def released(g: Guest, address: str, host_driver: str | None) -> None:
    c, group = g.checks, group_of(address)
    c.equal(f"{address} back on {host_driver}", driver(address), host_driver)
    c.equal(f"{address} driver_override cleared", kread(f"{PCI}/{address}/driver_override"), "(null)")
    c.check(f"/dev/vfio/{group} gone", not os.path.exists(f"/dev/vfio/{group}"))


def cycle(g: Guest) -> None:
    c, f = g.checks, g.found
    assert f is not None
    consumer = str(uuid.uuid4())
    stick_auth = f"{SYS}/bus/usb/devices/{f.stick}/authorized"
    nic_methods = kread(f"{PCI}/{f.nic}/reset_method")
    got = claim(g, consumer, **{NVME_VF: 1, NIC: 1, USB_STICK: 1})
    by_type = {t: a for a, t in got.items()}
    vf, nic = by_type.get(NVME_VF, ""), by_type.get(NIC, "")
    if not c.check("one of each type claimed", len(by_type) == 3, str(got)):
        return
    states(g, list(got), "reserved", "after the claim")
    agent_ok(g, "setup")
    states(g, list(got), "assigned", "after setup")
    on_vfio(g, vf)
    on_vfio(g, nic)
    c.equal("USB stick authorized", kread(stick_auth), "1")
    if g.full:
        xml = g.devassign("libvirt-xml", "--consumer", consumer).stdout
        _, bus, slot_fn = vf.split(":")
        slot, fn = slot_fn.split(".")
        where = f'bus="0x{bus}" slot="0x{slot}" function="0x{fn}"'
        c.check("libvirt XML names the VF", "<hostdev" in xml and where in xml, xml[:600])
    done = g.devassign("release", "--consumer", consumer)
    c.equal("release exits 0", done.returncode, 0, done.stderr[-800:])
    states(g, list(got), "cleaning", "after release")
    agent_ok(g, "cleanup")
    states(g, list(got), "available", "after cleanup")
    released(g, vf, None)  # VFs had no driver (sriov_drivers_autoprobe 0)
    released(g, nic, "e1000e")
    c.equal("USB stick deauthorized", kread(stick_auth), "0")
    left = [e for e in os.listdir(f"{SYS}/bus/usb/devices") if e.startswith(f.stick + ":")]
    g.kernel_answers["usb_interfaces_after_deauthorize"] = str(left)
    c.equal("its interfaces are gone", left, [])
    c.equal(
        "reset_method as it was before a bus-reset cleanup", kread(f"{PCI}/{f.nic}/reset_method"), nic_methods
    )


def removed_while_assigned(g: Guest) -> None:
    """The NIC removed from /sys while assigned, then rescanned; with it, the USB stick the
    first cycle left deauthorized is claimed again (authorized 0 -> 1, its interfaces back)."""
    c, f = g.checks, g.found
    assert f is not None
    consumer = str(uuid.uuid4())
    stick_dir = f"{SYS}/bus/usb/devices/{f.stick}"
    got = claim(g, consumer, **{NIC: 1, USB_STICK: 1})
    stick = next((a for a, t in got.items() if t == USB_STICK), "")
    if not c.equal("the NIC and the deauthorized stick claimed", sorted(got.values()), [NIC, USB_STICK]):
        return
    agent_ok(g, "setup")
    states(g, list(got), "assigned", "after setup")
    c.equal("the stick authorized again", kread(f"{stick_dir}/authorized"), "1")
    interfaces = [e for e in os.listdir(f"{SYS}/bus/usb/devices") if e.startswith(f.stick + ":")]
    c.check("its interfaces are back", bool(interfaces), str(interfaces))
    c.equal("echo 1 > remove", kwrite(f"{PCI}/{f.nic}/remove", "1"), "ok")
    g.kernel_answers["pci_remove"] = "present" if os.path.exists(f"{PCI}/{f.nic}") else "gone"
    c.equal("the function is gone from /sys", g.kernel_answers["pci_remove"], "gone")
    agent_ok(g, "report without it")
    states(g, [f.nic], "missing", "after the report")
    c.equal("echo 1 > /sys/bus/pci/rescan", kwrite(f"{SYS}/bus/pci/rescan", "1"), "ok")
    c.equal("it is back, on its host driver (the override died with it)", driver(f.nic), "e1000e")
    agent_ok(g, "report with it again")
    dev = g.device(f.nic)
    c.equal(
        "back for its consumer, unhealthy (not on vfio-pci)",
        (dev.get("state"), dev.get("healthy")),
        ("assigned", False),
    )
    g.devassign("release", "--consumer", consumer)
    agent_ok(g, "cleanup")
    state = g.state(f.nic)
    # The check right after the cleanup passes and goes with its result: a failure seen only
    # while it was held (not on vfio-pci) ends there, so it is available at once.
    c.equal("after cleanup: available", state, "available")
    c.equal("on e1000e after cleanup", driver(f.nic), "e1000e")
    c.equal(
        "the stick available, deauthorized",
        (g.state(stick), kread(f"{stick_dir}/authorized")),
        ("available", "0"),
    )
    if g.full:
        agent_ok(g, "the next report")
        states(g, [f.nic], "available", "after the next report")


def viability(group: int | None) -> dict[str, object]:
    """What the kernel says when a guest tries to take the group (tests/vm/vfio_user.py)."""
    script = str(Path(__file__).with_name("vfio_user.py"))
    done = subprocess.run(
        [sys.executable, "-I", script, str(group)],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return json.loads(done.stdout or "{}")  # type: ignore[no-any-return]


def group_mate_in_use(g: Guest) -> None:
    """Only the first function typed (``allow_shared_iommu_group``), its mate left on e1000e:
    the kernel binds vfio-pci all the same (the group is just not viable, so no guest could use
    it); the pci handler's own group check must refuse the setup."""
    c, f = g.checks, g.found
    assert f is not None
    g.config.write_text(agent_toml(g, pair_only_first=True, allow_shared=True))
    agent_ok(g, "report with the mate untyped")
    consumer = str(uuid.uuid4())
    got = claim(g, consumer, **{MF_NIC: 1})
    if not c.equal("the first function claimed alone", list(got), [f.pair[0]]):
        g.config.write_text(agent_toml(g))
        return
    agent_ok(g, "setup")
    events = " ".join(e["message"] for e in g.events(consumer))
    c.check("setup refused: the group mate is on a host driver", "IOMMU group" in events, events[-600:])
    states(g, [f.pair[0]], "cleaning", "after the refused setup")
    c.equal("the kernel bound vfio-pci anyway", [driver(a) for a in f.pair], [VFIO, "e1000e"])
    seen = viability(group_of(f.pair[0]))
    c.check(
        "but no guest could take the group (not viable)",
        not seen.get("viable") and not seen.get("held"),
        str(seen),
    )
    g.config.write_text(agent_toml(g))
    agent_ok(g, "cleanup, and report both again")
    states(g, f.pair, "available", "after cleanup")
    c.equal("back on e1000e", [driver(a) for a in f.pair], ["e1000e", "e1000e"])


class Holder:
    """tests/vm/vfio_user.py in the background: a "guest" holding a group (and a device)."""

    def __init__(self, group: int | None, device: str | None = None) -> None:
        script = str(Path(__file__).with_name("vfio_user.py"))
        argv = [sys.executable, "-I", script, str(group), *(["--device", device] if device else [])]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.first: dict[str, object] = json.loads(self.proc.stdout.readline() or "{}")

    def status(self) -> dict[str, object]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("status\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline() or "{}")  # type: ignore[no-any-return]

    def let_go(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def held_cleanup(g: Guest, consumer: str, addresses: list[str], holder: Holder) -> None:
    """Released while a guest holds the group: each cleanup fails at once, before anything is
    written, and the devices are quarantined on vfio-pci; then the guest lets go, an operator
    clears them and a cleanup gives them back."""
    c = g.checks
    try:
        g.devassign("release", "--consumer", consumer)
        agent_ok(g, "cleanup while a guest holds the group")
        c.equal(
            "quarantined, still on vfio-pci",
            [(g.state(a), driver(a)) for a in addresses],
            [("quarantined", VFIO)] * len(addresses),
        )
        reasons = [g.device(a).get("quarantine_reason") or "" for a in addresses]
        c.check(
            "the reason names the guest holding it",
            all("in use through VFIO" in r and "pid " in r for r in reasons),
            " | ".join(reasons)[:800],
        )
        events = " ".join(e["message"] for e in g.events(consumer))
        c.check("an event says so", "in use through VFIO" in events, events[-600:])
        c.check("the guest kept its hold", holder.status().get("container_set") is True, str(holder.status()))
    finally:
        holder.let_go()
    for a in addresses:
        done = g.devassign("device", "clear", a, "--host", HOST, "--reason", "the guest let go")
        c.equal(f"device clear {a} exits 0", done.returncode, 0, done.stderr[-600:])
    agent_ok(g, "cleanup after device clear")
    states(g, addresses, "available", "after cleanup")


def group_held(g: Guest) -> None:
    """Both functions assigned, their group held by a "guest" with no device open (QEMU between
    attaching the group and opening the device). The kernel would keep e1000e off a member
    (drivers_probe EINVAL) and revoke the guest's hold when the last member leaves vfio-pci;
    the pci handler sees the holder first and touches neither."""
    c, f = g.checks, g.found
    assert f is not None
    consumer = str(uuid.uuid4())
    got = claim(g, consumer, **{MF_NIC: 1})
    if not c.equal("claiming one function takes its group mate too", sorted(got), sorted(f.pair)):
        return
    agent_ok(g, "setup")
    states(g, f.pair, "assigned", "after setup")
    for a in f.pair:
        on_vfio(g, a)
    holder = Holder(group_of(f.pair[0]))
    c.check(
        "a guest holds the group",
        bool(holder.first.get("held") and holder.first.get("container_set")),
        str(holder.first),
    )
    held_cleanup(g, consumer, list(f.pair), holder)
    c.equal("both back on e1000e", [driver(a) for a in f.pair], ["e1000e", "e1000e"])


def device_open(g: Guest) -> None:
    """A guest still has the device open when it is released: the kernel would block the
    unbind from vfio-pci until the guest lets go (and the agent in it); the agent instead
    fails the cleanup at once and quarantines the device, and cleans it once the guest is gone."""
    c, f = g.checks, g.found
    assert f is not None
    consumer = str(uuid.uuid4())
    if not c.equal("the NIC claimed", list(claim(g, consumer, **{NIC: 1})), [f.nic]):
        return
    agent_ok(g, "setup")
    holder = Holder(group_of(f.nic), f.nic)
    c.check("a guest has the device open", bool(holder.first.get("held")), str(holder.first))
    held_cleanup(g, consumer, [f.nic], holder)
    c.equal("the NIC on e1000e", driver(f.nic), "e1000e")
