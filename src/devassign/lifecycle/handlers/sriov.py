"""SR-IOV NIC virtual functions: the PCI part plus the VF's settings held by the PF.

The MAC, VLAN, spoof checking, trust and link state of a VF live in the PF's driver, so
they are set through netlink on the PF, not on the VF. Spoof checking stays on and trust
off unless the type allows otherwise (Neutron and Nova's defaults): a guest must not send
as someone else or change its own filters. Cleanup clears MAC and VLAN so the next tenant
inherits nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from devassign.hostio import Sysfs
from devassign.lifecycle import names
from devassign.lifecycle.base import (
    Facts,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
    config_bool,
    config_choice,
)
from devassign.lifecycle.handlers.common import pci_dir, pf_link_problem, require_present
from devassign.lifecycle.handlers.pci import PciHandler, held_elsewhere, refuse_if_held
from devassign.lifecycle.host import ZERO_MAC, HostOps, LinkState, VfConfig

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LINK_STATES: tuple[LinkState, ...] = ("auto", "enable", "disable")
# Settings the type's config gives, which a request may give instead where the type declares them.
POLICY_PARAMS = ("spoofchk", "trust", "link_state")


@dataclass(frozen=True)
class VfLocation:
    pf_address: str
    pf_ifname: str
    vf_index: int


def locate_vf(sysfs: Sysfs, address: str) -> VfLocation:
    """Find the VF's PF, the PF's interface name and the VF's index from sysfs links."""
    rel = require_present(sysfs, address)
    pf = sysfs.link_name(f"{rel}/physfn")
    if pf is None:
        raise HandlerError(f"{address} is not an SR-IOV VF (no physfn link)")
    names.pci_address(pf, f"the PF of {address}")
    uplink = sysfs.netdev(f"{rel}/physfn")
    if not uplink:
        raise HandlerError(f"the PF {pf} of {address} has no network interface")
    ifname = names.ifname(uplink, f"the interface of PF {pf}")
    for name in sysfs.listdir(f"{rel}/physfn"):
        index = name.removeprefix("virtfn")
        if not (name.startswith("virtfn") and index.isdecimal()):
            continue
        if sysfs.link_name(f"{rel}/physfn/{name}") == address:
            return VfLocation(pf, ifname, int(index))
    raise HandlerError(f"the PF {pf} lists no virtfn link to {address}")


def _pf_without_netdev(ops: HostOps, address: str) -> bool:
    rel = pci_dir(address)
    return ops.sysfs.link_name(f"{rel}/physfn") is not None and not ops.sysfs.netdev(f"{rel}/physfn")


def network_vf(sysfs: Sysfs, address: str) -> bool:
    """Whether the VF is a network function (PCI class 02): only those have a MAC, a VLAN and
    rates in their PF's driver. A crypto (QAT), NVMe or accelerator VF is a plain PCI
    function, whose PF has no network interface to set them through. Unknown class: network."""
    cls = (sysfs.read(f"{pci_dir(address)}/class") or "").lower()
    return not re.fullmatch(r"0x[0-9a-f]{6}", cls) or cls.startswith("0x02")


# What a request can ask of a network VF's settings.
NETWORK_PARAMS = ("mac", "vlan", "min_tx_rate_mbps", "max_tx_rate_mbps", *POLICY_PARAMS)


def _wanted(device: LifecycleDevice, key: str, default: Any = None) -> Any:
    """The allocation's value, else the one the host's configuration gave the device."""
    value = device.requested(key)
    return device.known(key, default) if value is None else value


def wanted_mac(device: LifecycleDevice) -> str | None:
    given = _wanted(device, "mac")
    if given is None:
        return None
    mac = str(given).lower()
    if not MAC_RE.fullmatch(mac) or mac == ZERO_MAC or int(mac[:2], 16) & 1:
        raise HandlerError(f"{given!r} is not a unicast MAC address")
    return mac


def wanted_vlan(device: LifecycleDevice) -> int:
    vlan: Any = _wanted(device, "vlan", 0)
    if isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4094:
        raise HandlerError(f"VLAN {vlan!r} is not an integer in 0..4094")
    return vlan


def wanted_config(device: LifecycleDevice, config: TypeConfig) -> VfConfig:
    """The VF settings for this assignment. The type's config sets spoof checking, trust and
    link state; a request sets one itself only where the type declares it as a param, as MAC
    and VLAN are (the server refuses the params a type does not declare, and their values out
    of the declared bounds), so the type's declaration is the one policy."""
    policy = {**config, **{key: device.params[key] for key in POLICY_PARAMS if key in device.params}}
    link_state = config_choice(policy, "link_state", "auto", LINK_STATES)
    return VfConfig(
        mac=wanted_mac(device) or ZERO_MAC,
        vlan=wanted_vlan(device),
        spoofchk=config_bool(policy, "spoofchk", True),
        trust=config_bool(policy, "trust", False),
        link_state=link_state,  # type: ignore[arg-type]
        min_tx_rate=_rate(device, "min_tx_rate_mbps"),
        max_tx_rate=_rate(device, "max_tx_rate_mbps"),
    )


def _rate(device: LifecycleDevice, key: str) -> int:
    """A transmit rate the allocation asked for (Mbit/s; the server checked it against the
    type's declared param and the PF's bandwidth), 0 for none."""
    value = device.requested(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HandlerError(f"{device.address}: {key} {value!r} is not a rate in Mbit/s")
    return value


class SriovVfHandler:
    """``sriov_vf`` devices. Config: ``spoofchk`` (default true), ``trust`` (default false),
    ``link_state`` (auto | enable | disable), and the ``pci`` handler's keys. Params: ``mac``,
    ``vlan``, and those three where the type declares them. A VF that is not a network
    function (QAT, NVMe) is handled as the ``pci`` handler does, and refuses those params."""

    pci = PciHandler()

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        if not network_vf(ops.sysfs, device.address):
            asked = sorted(k for k in NETWORK_PARAMS if device.requested(k) is not None)
            if asked:
                raise HandlerError(
                    f"{device.address} is not a network function: it has no {', '.join(asked)} to set"
                )
            return self.pci.setup(device, config, ops)
        where = locate_vf(ops.sysfs, device.address)
        want = wanted_config(device, config)
        elsewhere = held_elsewhere(ops, device.address)  # before its settings are touched
        if elsewhere:
            raise HandlerError(elsewhere)
        try:
            ops.netlink.set_vf(
                where.pf_ifname,
                where.vf_index,
                mac=want.mac if want.mac != ZERO_MAC else None,
                vlan=want.vlan,
                spoofchk=want.spoofchk,
                trust=want.trust,
                link_state=want.link_state,
                # Rates only where asked: a VF without them keeps the driver's none.
                min_tx_rate=want.min_tx_rate or None,
                max_tx_rate=want.max_tx_rate or None,
            )
        except OSError as exc:
            raise HandlerError(f"cannot configure VF {where.vf_index} of {where.pf_ifname}: {exc}") from exc
        facts = self.pci.setup(device, config, ops)
        return {**facts, "pf_ifname": where.pf_ifname, "vf_index": where.vf_index}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        if not network_vf(ops.sysfs, device.address):
            self.pci.cleanup(device, config, ops)
            return
        if "pf_ifname" not in device.facts and _pf_without_netdev(ops, device.address):
            # Its setup stopped before its PF was asked anything (it has no interface to ask):
            # nothing of the VF's settings to undo there.
            self.pci.cleanup(device, config, ops)
            return
        where = locate_vf(ops.sysfs, device.address)
        refuse_if_held(ops.sysfs, ops.vfio_users, device.address)  # before its MAC is taken
        try:
            ops.netlink.set_vf(
                where.pf_ifname,
                where.vf_index,
                mac=ZERO_MAC,
                vlan=0,
                spoofchk=True,
                trust=False,
                link_state="auto",
                min_tx_rate=0,
                max_tx_rate=0,
            )
        except OSError as exc:
            raise HandlerError(f"cannot reset VF {where.vf_index} of {where.pf_ifname}: {exc}") from exc
        self.pci.cleanup(device, config, ops)

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        """Present, alive (config space), its PF's link up; when assigned, also on vfio-pci
        with the MAC/VLAN/policy its holder asked for. A free VF whose PF has no network
        interface (a PF driven by DPDK or on vfio-pci) is unhealthy: no setup of it can work."""
        rel = pci_dir(device.address)
        if not ops.sysfs.is_dir(rel):
            return HealthResult(False, f"VF {device.address} is not present")
        pci = self.pci.health(device, config, ops)
        if not pci.ok or not network_vf(ops.sysfs, device.address):
            return pci
        check_link = config_choice(config, "pf_link", "check", ("check", "ignore")) == "check"
        if device.consumer is None:
            pf = ops.sysfs.link_name(f"{rel}/physfn")
            uplink = ops.sysfs.netdev(f"{rel}/physfn") if pf else None
            if pf and not uplink:
                # Every setup would fail (and burn the VF in a failed cleanup): none is tried.
                return HealthResult(
                    False,
                    f"its PF {pf} has no network interface (a PF on vfio-pci or DPDK): the VF's MAC "
                    'and VLAN cannot be set; a type with handler = "pci" passes such VFs through '
                    "as they are",
                )
            down = pf_link_problem(ops.sysfs, pf, uplink) if (check_link and pf and uplink) else None
            return HealthResult(False, down) if down else pci
        try:
            where = locate_vf(ops.sysfs, device.address)
            have = ops.netlink.get_vf(where.pf_ifname, where.vf_index)
        except (HandlerError, OSError) as exc:
            return HealthResult(False, str(exc))
        down = pf_link_problem(ops.sysfs, where.pf_address, where.pf_ifname) if check_link else None
        if down:
            return HealthResult(False, down)
        want = wanted_config(device, config)
        if want.mac == ZERO_MAC:
            want = replace(want, mac=have.mac)  # any MAC; the rest as asked, rates too
        if have != want:
            return HealthResult(False, f"VF {where.vf_index} of {where.pf_ifname} is {have}")
        return HealthResult(True)
