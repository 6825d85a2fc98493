"""The kernel as QEMU built it, SR-IOV through ``sriov_numvfs``, and ``agent discover`` held
against both what QEMU was told to emulate and an independent reading of /sys."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from tests.vm import machine
from tests.vm.guest import PCI, SYS, URL, Guest, driver, kread, locate, run_scenarios
from tests.vm.scenarios import EARLY

NVME_VF, NIC, MF_NIC, USB_STICK = "NVME_VF", "NIC", "MF_NIC", "USB_STICK"


def agent_toml(g: Guest, pair_only_first: bool = False, allow_shared: bool = False) -> str:
    """The agent's configuration: NVMe VFs, the NUMA-1 NIC, the two-function device (or only
    its first function), the USB stick."""
    f = g.found
    assert f is not None
    pair = f"{f.pair[0]}" if pair_only_first else f"{f.pair[0].rsplit('.', 1)[0]}.*"
    shared = "\nallow_shared_iommu_group = true" if allow_shared else ""
    return f"""host = "vm"
server = "{URL}"
state_file = "/tmp/devassign-vm/agent-state.json"

[[device]]
type = "{NVME_VF}"
match = {{ vendor_id = "{machine.NVME_VENDOR}", product_id = "{machine.NVME_DEVICE}", kind = "sriov_vf" }}

[[device]]
type = "{NIC}"
match = {{ address = "{f.nic}" }}

[[device]]
type = "{MF_NIC}"
match = {{ vendor_id = "{machine.E1000E_VENDOR}", address = "{pair}" }}{shared}

[[device]]
type = "{USB_STICK}"
match = {{ vendor_id = "{machine.USB_STICK[0]}", product_id = "{machine.USB_STICK[1]}" }}
"""


def run(g: Guest) -> None:
    c = g.checks
    with c.part("kernel"):
        c.check("IOMMU on (intel_iommu=on): groups exist", len(os.listdir(f"{SYS}/kernel/iommu_groups")) > 0)
        c.check("vfio-pci loaded", os.path.isdir(f"{SYS}/bus/pci/drivers/vfio-pci"))
        c.check("/dev/vfio/vfio exists", os.path.exists("/dev/vfio/vfio"))
        nodes = sorted(n for n in os.listdir(f"{SYS}/devices/system/node") if n.startswith("node"))
        c.equal("NUMA nodes", nodes, [f"node{i}" for i in range(machine.NUMA_NODES)])
        c.equal("node1 cpulist", kread(f"{SYS}/devices/system/node/node1/cpulist"), "1")
        g.found = locate(g.probe())
        c.check("the emulated devices are there", True, str(g.found))
    if g.found is None:
        return
    with c.part("sr-iov"):
        sriov(g)  # leaves its own sections for the scenarios it runs
    with c.part("discovery"):
        discovery(g)


def sriov(g: Guest) -> None:
    """The PF as QEMU made it; its VFs come from the shared ``sriov`` scenario (ERANGE above
    sriov_totalvfs, EBUSY from one count to another, virtfn/physfn, ids), on the simulation too."""
    c, pf = g.checks, g.found.nvme_pf if g.found else ""
    base = f"{PCI}/{pf}"
    c.equal("PF driver", driver(pf), "nvme")
    c.equal("sriov_totalvfs", kread(f"{base}/sriov_totalvfs"), str(machine.NVME_MAX_VFS))
    c.equal("sriov_numvfs before", kread(f"{base}/sriov_numvfs"), "0")
    # VFs meant for guests: no host driver probes them (QEMU's VFs are offline to nvme anyway);
    # the scenario sets sriov_drivers_autoprobe 0 first.
    run_scenarios(g, list(EARLY))
    g.found = locate(g.probe())
    c.equal("the VFs found again", len(g.found.vfs), machine.NVME_VFS)


def _strip(value: str | None) -> str | None:
    return value.lower().removeprefix("0x") if value else value


def discovery(g: Guest) -> None:
    c, f = g.checks, g.found
    assert f is not None
    g.config.write_text(agent_toml(g))
    probe = g.probe()
    done = g.devassign("agent", "discover", "-f", "json", "--config", str(g.config), "--sysfs-root", SYS)
    if not c.check("agent discover exits 0", done.returncode == 0, done.stderr[-2000:]):
        return
    found: dict[str, dict[str, Any]] = {d["address"]: d for d in json.loads(done.stdout)}
    g.discovered = found
    _against_sysfs(g, probe, found)
    _against_qemu(g, found)
    _plain_rule_and_vfs(g)
    if g.full:
        # One function of the pair typed, its group mate not: not offered (VFIO takes groups whole).
        g.config.write_text(agent_toml(g, pair_only_first=True))
        done = g.devassign("agent", "discover", "-f", "json", "--config", str(g.config), "--sysfs-root", SYS)
        half = {d["address"]: d for d in json.loads(done.stdout or "[]")}
        first = half.get(f.pair[0], {})
        c.check(
            "a function whose group mate has no type is not offered",
            first.get("offered") is False and "iommu_group_not_isolated" in first.get("flags", []),
            json.dumps({k: first.get(k) for k in ("type", "offered", "flags")}),
        )
        g.config.write_text(agent_toml(g))


def _against_sysfs(g: Guest, probe: dict[str, Any], found: dict[str, dict[str, Any]]) -> None:
    """Every field discovery reports for every function and USB device, against the probe."""
    c = g.checks
    wrong: dict[str, list[str]] = {}

    def compare(field: str, where: str, got: Any, want: Any) -> None:
        if got != want:
            wrong.setdefault(field, []).append(f"{where}: discover {got!r}, /sys {want!r}")

    pci = probe["pci"]
    c.equal("every PCI function discovered", sorted(a for a in found if a[:4].isdigit()), sorted(pci))
    for addr, p in pci.items():
        d = found.get(addr, {})
        a = d.get("attributes", {})
        compare(
            "ids", addr, (d.get("vendor_id"), d.get("product_id")), (_strip(p["vendor"]), _strip(p["device"]))
        )
        compare("class", addr, a.get("class"), _strip(p["class"]))
        compare("driver", addr, d.get("driver"), p["driver"])
        compare("iommu_group", addr, d.get("iommu_group"), p["iommu_group"])
        numa = int(p["numa_node"]) if p["numa_node"] is not None else -1
        compare("numa_node", addr, d.get("numa_node"), numa if numa >= 0 else None)
        compare("local_cpulist", addr, a.get("local_cpulist"), p["local_cpulist"])
        compare("resettable", addr, a.get("resettable"), p["reset"])
        methods = p["reset_method"].split() if p["reset_method"] is not None else None
        compare("reset_methods", addr, a.get("reset_methods"), methods)
        compare("parent", addr, d.get("parent"), p["physfn"])
        compare("netdev", addr, a.get("netdev"), p["net"][0] if p["net"] else None)
        if p["physfn"]:
            index = [int(k) for k, v in pci[p["physfn"]]["virtfn"].items() if v == addr]
            compare("vf_index", addr, a.get("vf_index"), index[0] if index else None)
        if p["sriov_totalvfs"] is not None:
            compare("sriov_totalvfs", addr, a.get("sriov_totalvfs"), int(p["sriov_totalvfs"]))
            compare("sriov_numvfs", addr, a.get("sriov_numvfs"), int(p["sriov_numvfs"]))
        kind = "sriov_vf" if p["physfn"] else "sriov_pf" if int(p["sriov_totalvfs"] or 0) else "pci"
        compare("kind", addr, d.get("kind"), kind)
    for field in (
        "ids",
        "class",
        "driver",
        "iommu_group",
        "numa_node",
        "local_cpulist",
        "resettable",
        "reset_methods",
        "parent",
        "netdev",
        "vf_index",
        "sriov_totalvfs",
        "sriov_numvfs",
        "kind",
    ):
        c.check(f"{field} as /sys shows it", field not in wrong, "; ".join(wrong.get(field, []))[:1500])
    pf = pci[g.found.nvme_pf] if g.found else {}
    vf_device = found.get(g.found.nvme_pf if g.found else "", {}).get("attributes", {}).get("sriov_vf_device")
    want = f"{int(pf['sriov_vf_device'], 16):04x}"
    c.equal(
        "sriov_vf_device as /sys shows it, padded to 4 digits",
        vf_device,
        want,
        f"/sys has {pf['sriov_vf_device']!r}, discover has {vf_device!r}",
    )
    by_busid = {d["attributes"].get("bus_path"): d for d in found.values() if d["kind"] == "usb"}
    c.equal("every USB device discovered", sorted(by_busid), sorted(probe["usb"]))
    for busid, u in probe["usb"].items():
        d = by_busid.get(busid, {})
        # The identity rule (docs/agent.md): the serial when it is made of letters, digits,
        # "_", "." and "-", else where the device is plugged in.
        usable = u["serial"] and re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", u["serial"])
        want = f"usb:{u['idVendor']}:{u['idProduct']}:{u['serial']}" if usable else f"usb:{busid}"
        c.equal(f"USB {busid} identity (serial {u['serial']!r})", d.get("address"), want)
        c.equal(f"USB {busid} driver", d.get("driver"), u["driver"])


def _against_qemu(g: Guest, found: dict[str, dict[str, Any]]) -> None:
    """What QEMU was told (tests/vm/machine.py) and the agent config, as discovery shows it."""
    c, f = g.checks, g.found
    assert f is not None
    pf = found[f.nvme_pf]
    c.equal("NVMe PF kind", pf["kind"], "sriov_pf")
    c.equal("NVMe PF class", pf["attributes"].get("class"), machine.NVME_CLASS)
    c.equal("NVMe PF totalvfs", pf["attributes"].get("sriov_totalvfs"), machine.NVME_MAX_VFS)
    c.equal("NVMe PF numvfs", pf["attributes"].get("sriov_numvfs"), machine.NVME_VFS)
    c.check("NVMe PF flagged vfs_enabled, not offered", "vfs_enabled" in pf["flags"] and not pf["offered"])
    c.check("NVMe PF can FLR", "flr" in (pf["attributes"].get("reset_methods") or []))
    groups = set()
    for i, vf in enumerate(f.vfs):
        d = found[vf]
        got = (d["kind"], d["parent"], d["attributes"].get("vf_index"), d["vendor_id"], d["product_id"])
        want = ("sriov_vf", f.nvme_pf, i, machine.NVME_VENDOR, machine.NVME_DEVICE)
        c.equal(f"VF {vf}: kind, PF, index, ids (a VF carries the PF's device id)", got, want)
        c.equal(f"VF {vf} typed and offered", (d["type"], d["offered"]), (NVME_VF, True))
        groups.add(d["iommu_group"])
    c.equal("each VF in its own IOMMU group", len(groups), len(f.vfs))
    nic = found[f.nic]
    c.equal("NIC on NUMA node 1", (nic["numa_node"], nic["attributes"].get("local_cpulist")), (1, "1"))
    c.equal("NIC typed and offered", (nic["type"], nic["offered"], nic["driver"]), (NIC, True, "e1000e"))
    a, b = (found[x] for x in f.pair)
    c.check("the two functions share one IOMMU group", a["iommu_group"] == b["iommu_group"] is not None)
    c.equal(
        "that group has exactly those two",
        sorted([*a["attributes"].get("iommu_group_peers", []), f.pair[0]]),
        sorted(f.pair),
    )
    c.equal("both typed and offered", [(x["type"], x["offered"]) for x in (a, b)], [(MF_NIC, True)] * 2)
    numa = {a: d["numa_node"] for a, d in found.items() if a[:4].isdigit()}
    odd = {a: n for a, n in numa.items() if n != (1 if int(a.split(":")[1], 16) >= 0x80 else None)}
    c.check("NUMA node 1 behind the expander bridge, none elsewhere", not odd, str(odd))
    stick = f"usb:{machine.USB_STICK[0]}:{machine.USB_STICK[1]}:{machine.STICK_SERIAL}"
    c.equal(
        "USB stick found by its serial, typed, offered",
        (found.get(stick, {}).get("type"), found.get(stick, {}).get("offered")),
        (USB_STICK, True),
    )
    kbd = [d for d in found.values() if (d["vendor_id"], d["product_id"]) == machine.USB_KBD]
    c.equal("USB keyboard found, untyped", [(d["kind"], d["type"]) for d in kbd], [("usb", None)])
    # QEMU's keyboard has a serial with ":" in it, as many real devices do: not an identity.
    c.equal("USB keyboard known by its port", [d["address"] for d in kbd], [f"usb:{f.keyboard}"])


def _plain_rule_and_vfs(g: Guest) -> None:
    """QEMU's NVMe VFs carry their PF's device id, as NVIDIA's do: a rule naming only the ids
    takes the PF, never its VFs (they need kind = "sriov_vf" or match_vfs = true)."""
    c, f = g.checks, g.found
    assert f is not None
    plain = g.config.with_name("plain.toml")
    ids = f'vendor_id = "{machine.NVME_VENDOR}", product_id = "{machine.NVME_DEVICE}"'
    head = f'host = "vm"\nserver = "{URL}"\nstate_file = "/tmp/devassign-vm/plain-state.json"\n'
    for extra, want in (("", None), ("\nmatch_vfs = true", "NVME")):
        plain.write_text(f'{head}[[device]]\ntype = "NVME"\nmatch = {{ {ids} }}{extra}\n')
        done = g.devassign("agent", "discover", "-f", "json", "--config", str(plain), "--sysfs-root", SYS)
        got = {d["address"]: d["type"] for d in json.loads(done.stdout or "[]")}
        c.equal(
            f"a rule with only the ids{extra.replace(chr(10), ', ')}: the PF typed, its VFs {want}",
            (got.get(f.nvme_pf), [got.get(vf) for vf in f.vfs]),
            ("NVME", [want] * len(f.vfs)),
        )
