"""The host boundary handlers act through: sysfs, netlink, subprocesses and VFIO's users.

Handlers never open a file, a socket or a process themselves; they get a :class:`HostOps`
so tests (and ``devassign demo``) run them against generated trees and recording fakes.
Every sysfs write through it is resolved first and refused when it lands outside the root:
the agent runs as root, and a name checked wrongly somewhere must still not escape sysfs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from devassign.domain import ascii_digits
from devassign.hostio import HostIOError, Sysfs
from devassign.lifecycle.ledger import CommandLedger

LinkState = Literal["auto", "enable", "disable"]
# IFLA_VF_LINK_STATE_* from linux/if_link.h.
LINK_STATE_CODES: dict[str, int] = {"auto": 0, "enable": 1, "disable": 2}
ZERO_MAC = "00:00:00:00:00:00"


def inside_root(sysfs: Sysfs, rel: str) -> str:
    """The resolved absolute path of ``rel``; :class:`HostIOError` when it leaves the root."""
    root = os.path.realpath(sysfs.root)
    target = os.path.realpath(sysfs.path(rel))
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        raise HostIOError(
            errno.EPERM, f"refusing to write {rel!r}: it resolves to {target}, outside the sysfs root {root}"
        )
    return target


class ConfinedSysfs(Sysfs):
    """:class:`Sysfs` that resolves every write and refuses one that leaves the root."""

    def write(self, rel: str, value: str) -> None:
        target = inside_root(self, rel)
        # Write what was checked, so a link changed in between cannot move the write.
        super().write(os.path.relpath(target, os.path.realpath(self.root)), value)


@dataclass(frozen=True)
class VfConfig:
    """What the PF's driver holds for one VF (the ``vf N`` lines of ``ip link show``)."""

    mac: str = ZERO_MAC
    vlan: int = 0
    spoofchk: bool = True
    trust: bool = False
    link_state: LinkState = "auto"
    # Transmit rates in Mbit/s (``ip link set PF vf N min_tx_rate X max_tx_rate Y``); 0: none.
    min_tx_rate: int = 0
    max_tx_rate: int = 0


class Netlink(Protocol):
    """VF configuration on a PF: what ``ip link set PF vf N ...`` does."""

    def set_vf(
        self,
        pf_ifname: str,
        vf_index: int,
        *,
        mac: str | None = None,
        vlan: int | None = None,
        spoofchk: bool | None = None,
        trust: bool | None = None,
        link_state: LinkState | None = None,
        min_tx_rate: int | None = None,
        max_tx_rate: int | None = None,
    ) -> None: ...

    def get_vf(self, pf_ifname: str, vf_index: int) -> VfConfig: ...


class PyrouteNetlink:
    """:class:`Netlink` over pyroute2's ``IPRoute``; failures raise :class:`HostIOError`."""

    def __init__(self) -> None:
        self._ipr: Any = None

    def _ip(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def _index(self, ifname: str) -> int:
        found = self._ip().link_lookup(ifname=ifname)
        if not found:
            raise HostIOError(f"no network interface {ifname!r}")
        return int(found[0])

    def set_vf(
        self,
        pf_ifname: str,
        vf_index: int,
        *,
        mac: str | None = None,
        vlan: int | None = None,
        spoofchk: bool | None = None,
        trust: bool | None = None,
        link_state: LinkState | None = None,
        min_tx_rate: int | None = None,
        max_tx_rate: int | None = None,
    ) -> None:
        spec: dict[str, Any] = {"vf": vf_index}
        if mac is not None:
            spec["mac"] = mac
        if vlan is not None:
            spec["vlan"] = vlan
        if spoofchk is not None:
            spec["spoofchk"] = int(spoofchk)
        if trust is not None:
            spec["trust"] = int(trust)
        if link_state is not None:
            spec["link_state"] = LINK_STATE_CODES[link_state]
        if min_tx_rate is not None or max_tx_rate is not None:
            spec["rate"] = {"min_tx_rate": min_tx_rate or 0, "max_tx_rate": max_tx_rate or 0}
        try:
            self._ip().link("set", index=self._index(pf_ifname), vf=spec)
        except HostIOError:
            raise
        except Exception as exc:  # pyroute2 raises NetlinkError and socket errors
            raise HostIOError(f"ip link set {pf_ifname} vf {vf_index} {spec}: {exc}") from exc

    def get_vf(self, pf_ifname: str, vf_index: int) -> VfConfig:
        try:
            (msg,) = self._ip().link("get", index=self._index(pf_ifname), ext_mask=1)
            vflist = msg.get_attr("IFLA_VFINFO_LIST")
            infos = vflist.get_attrs("IFLA_VF_INFO") if vflist is not None else []
        except HostIOError:
            raise
        except Exception as exc:
            raise HostIOError(f"ip link show {pf_ifname}: {exc}") from exc
        for info in infos:
            mac = info.get_attr("IFLA_VF_MAC")
            if mac is None or mac["vf"] != vf_index:
                continue
            vlan = info.get_attr("IFLA_VF_VLAN")
            spoof = info.get_attr("IFLA_VF_SPOOFCHK")
            trust = info.get_attr("IFLA_VF_TRUST")
            link = info.get_attr("IFLA_VF_LINK_STATE")
            rate = info.get_attr("IFLA_VF_RATE")
            names = {v: k for k, v in LINK_STATE_CODES.items()}
            return VfConfig(
                mac=str(mac["mac"]),
                vlan=int(vlan["vlan"]) if vlan else 0,
                spoofchk=bool(spoof["spoofchk"]) if spoof else True,
                trust=bool(trust["trust"]) if trust else False,
                link_state=names.get(int(link["link_state"]), "auto") if link else "auto",  # type: ignore[arg-type]
                min_tx_rate=int(rate["min_tx_rate"]) if rate else 0,
                max_tx_rate=int(rate["max_tx_rate"]) if rate else 0,
            )
        raise HostIOError(f"{pf_ifname} has no VF {vf_index}")


class TreeNetlink:
    """:class:`Netlink` for a sysfs root that is not this machine's sysfs (a captured or
    generated tree): the PF's interface named in the tree is not an interface of this machine,
    or worse is one by the same name, whose VFs the settings would change. Every call fails,
    saying so; ``--simulate`` gives a tree a netlink of its own."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def _refused(self, pf_ifname: str) -> HostIOError:
        return HostIOError(
            f"the sysfs root {self.root} is not this machine's sysfs: VF settings for {pf_ifname} are "
            "not sent to this machine's network interfaces (run with --simulate to try a tree)"
        )

    def set_vf(self, pf_ifname: str, vf_index: int, **_settings: Any) -> None:
        raise self._refused(pf_ifname)

    def get_vf(self, pf_ifname: str, vf_index: int) -> VfConfig:
        raise self._refused(pf_ifname)


# The kernel writes a blank, tab, newline or backslash in a mount point as \040, \011, ...
_OCTAL = re.compile(r"\\([0-7]{3})")


def is_machine_sysfs(root: str | os.PathLike[str], mounts: str = "/proc/self/mounts") -> bool:
    """Whether ``root`` is this machine's sysfs: ``/sys``, or a sysfs mounted elsewhere (an
    agent in a container given the host's under another path), not a folder of files."""
    real = os.path.realpath(root)
    if real == "/sys":
        return True
    best, fstype = "", ""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:
        return False
    return fstype == "sysfs"


class RecordingNetlink:
    """A fake :class:`Netlink` that keeps each VF's config in memory and records every call."""

    def __init__(self, pfs: Mapping[str, int] | None = None) -> None:
        # pf ifname -> number of VFs; None: any PF and any index exist.
        self.pfs = dict(pfs) if pfs is not None else None
        self.calls: list[tuple[str, str, int, dict[str, Any]]] = []
        self.vfs: dict[tuple[str, int], VfConfig] = {}
        self.fail_with: str | None = None

    def _check(self, pf_ifname: str, vf_index: int) -> None:
        if self.fail_with:
            raise HostIOError(self.fail_with)
        if self.pfs is not None and not 0 <= vf_index < self.pfs.get(pf_ifname, 0):
            raise HostIOError(f"{pf_ifname} has no VF {vf_index}")

    def set_vf(
        self,
        pf_ifname: str,
        vf_index: int,
        *,
        mac: str | None = None,
        vlan: int | None = None,
        spoofchk: bool | None = None,
        trust: bool | None = None,
        link_state: LinkState | None = None,
        min_tx_rate: int | None = None,
        max_tx_rate: int | None = None,
    ) -> None:
        given: dict[str, Any] = {"mac": mac, "vlan": vlan, "spoofchk": spoofchk, "trust": trust}
        given["link_state"] = link_state
        given["min_tx_rate"] = min_tx_rate
        given["max_tx_rate"] = max_tx_rate
        changes = {k: v for k, v in given.items() if v is not None}
        self.calls.append(("set_vf", pf_ifname, vf_index, changes))
        self._check(pf_ifname, vf_index)
        current = self.vfs.get((pf_ifname, vf_index), VfConfig())
        self.vfs[(pf_ifname, vf_index)] = replace(current, **changes)

    def get_vf(self, pf_ifname: str, vf_index: int) -> VfConfig:
        self.calls.append(("get_vf", pf_ifname, vf_index, {}))
        self._check(pf_ifname, vf_index)
        return self.vfs.get((pf_ifname, vf_index), VfConfig())


class VfioUsers(Protocol):
    """Who has VFIO device nodes open: a guest (QEMU) holding a group or a device.

    The kernel blocks an unbind from vfio-pci until every user closes the device, and the
    agent would wait in that write with all its other work; so handlers ask first.
    """

    def holders(self, nodes: Sequence[str]) -> list[str]:
        """``pid N (command)`` for each process that has one of ``nodes`` open
        (``/dev/vfio/12``, ``/dev/vfio/devices/vfio0``)."""
        ...


class NoVfioUsers:
    """No process holds anything: a tree that is not this machine's ``/sys``."""

    def holders(self, nodes: Sequence[str]) -> list[str]:
        return []


class ProcVfioUsers:
    """:class:`VfioUsers` from ``/proc/<pid>/fd``: the open files of every process.

    A process whose files cannot be read (it exited, or the agent is not root) is passed
    over; the agent runs as root, so on a host it sees every guest.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc

    def holders(self, nodes: Sequence[str]) -> list[str]:
        wanted = set(nodes)
        if not wanted:
            return []
        found: list[str] = []
        for holder, _node in self._scan(wanted.__contains__):
            if holder not in found:
                found.append(holder)
        return found

    def open_nodes(self) -> dict[str, list[str]]:
        """Every VFIO node some process has open, with who: one pass over ``/proc``."""
        out: dict[str, list[str]] = {}
        for holder, node in self._scan(lambda target: target.startswith("/dev/vfio/")):
            out.setdefault(node, []).append(holder)
        return out

    def _scan(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
        """``(pid N (command), node)`` for each distinct open file of each process that is wanted."""
        try:
            pids = [p for p in os.listdir(self.proc) if ascii_digits(p)]
        except OSError:
            return
        for pid in sorted(pids, key=int):
            fds = f"{self.proc}/{pid}/fd"
            try:
                entries = os.listdir(fds)
            except OSError:
                continue
            seen: set[str] = set()
            for fd in entries:
                try:
                    target = os.readlink(f"{fds}/{fd}").removesuffix(" (deleted)")
                except OSError:
                    continue
                if target not in seen and wanted(target):
                    seen.add(target)
                    yield f"pid {pid} ({_command(self.proc, pid)})", target


class VfioSnapshot:
    """A :class:`VfioUsers` that asks once: who holds which VFIO node, as one scan found it,
    for a pass of health checks over many free devices (a scan per device would read every
    process's open files again for each). Never for a cleanup, which must ask the host now."""

    def __init__(self, live: VfioUsers) -> None:
        self.live = live
        self._open: dict[str, list[str]] | None = None

    def holders(self, nodes: Sequence[str]) -> list[str]:
        scan = getattr(self.live, "open_nodes", None)
        if scan is None:
            return self.live.holders(nodes)
        if self._open is None:
            self._open = scan()
        found: list[str] = []
        for node in nodes:
            found += [h for h in self._open.get(node, []) if h not in found]
        return found


def _command(proc: str, pid: str) -> str:
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


class Runner(Protocol):
    """Runs an operator's command with a time limit; never raises for a failing command."""

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult: ...


# How long a command killed at its timeout gets to be reaped and its output read.
KILL_GRACE = 5.0


class SubprocessRunner:
    """:class:`Runner` over ``subprocess``; ``env`` is added to the agent's environment.

    Each command runs in a session of its own; at its timeout the whole process group is
    killed, so a helper it started does not go on changing the device after the agent has
    called the action failed (and perhaps run it again). One that cannot be reaped within
    :data:`KILL_GRACE` (stuck in the kernel, or started in a session of its own by ``setsid``,
    which the group kill does not reach) is left behind, and the result says so. With a
    ``ledger``, each command is written down while it runs, so that an agent process started
    after this one was killed ends the commands it left running (lifecycle/ledger.py)."""

    def __init__(self, ledger: CommandLedger | None = None) -> None:
        self.ledger = ledger

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult:
        try:
            proc = subprocess.Popen(
                list(argv),
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            return RunResult(returncode=127, stderr=f"cannot run {argv[0]!r}: {exc.strerror}")
        entry = self.ledger.enter(proc.pid, argv) if self.ledger is not None else None
        try:
            return self._wait(proc, timeout)
        finally:
            if self.ledger is not None:
                self.ledger.leave(entry)

    @staticmethod
    def _wait(proc: subprocess.Popen[str], timeout: float) -> RunResult:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            try:
                out, err = proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                proc.poll()  # reaped if only its pipes are held (by a process of another session)
                note = (
                    f"\n(killed, but its output still open after {KILL_GRACE:g} s: a process it "
                    "started in another session (setsid), or one stuck in the kernel)"
                )
                return RunResult(returncode=-9, stderr=note, timed_out=True)
            return RunResult(returncode=-9, stdout=out or "", stderr=err or "", timed_out=True)
        return RunResult(proc.returncode, out or "", err or "")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class RecordedRun:
    argv: list[str]
    env: dict[str, str]
    timeout: float


@dataclass
class RecordingRunner:
    """A fake :class:`Runner`: records each call and answers with ``respond`` (default: exit 0)."""

    respond: Callable[[Sequence[str]], RunResult] = lambda argv: RunResult(0)
    calls: list[RecordedRun] = field(default_factory=list)

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult:
        self.calls.append(RecordedRun(list(argv), dict(env), timeout))
        return self.respond(argv)


@dataclass
class HostOps:
    """Everything a handler may touch on the host. A plain :class:`Sysfs` is made a
    :class:`ConfinedSysfs`; other kinds are checked again by the handlers' write helper.
    ``vfio`` defaults to what the sysfs offers (a simulated tree's guests), else nobody."""

    sysfs: Sysfs
    netlink: Netlink
    runner: Runner
    vfio: VfioUsers | None = None

    def __post_init__(self) -> None:
        if type(self.sysfs) is Sysfs:
            self.sysfs = ConfinedSysfs(self.sysfs.root)
        if self.vfio is None:
            own = getattr(self.sysfs, "vfio_users", None)
            self.vfio = own() if callable(own) else NoVfioUsers()

    @property
    def vfio_users(self) -> VfioUsers:
        assert self.vfio is not None  # set in __post_init__
        return self.vfio

    @classmethod
    def for_host(cls, sysfs_root: str | os.PathLike[str] = "/sys") -> HostOps:
        """The real machine: sysfs at ``sysfs_root``, real subprocesses, pyroute2 netlink when
        ``sysfs_root`` is a sysfs (a tree's PF names no interface of this machine), and VFIO's
        users from /proc when it is this machine's /sys."""
        mine = os.path.realpath(sysfs_root) == "/sys"
        users: VfioUsers = ProcVfioUsers() if mine else NoVfioUsers()
        netlink: Netlink = PyrouteNetlink() if is_machine_sysfs(sysfs_root) else TreeNetlink(sysfs_root)
        return cls(ConfinedSysfs(sysfs_root), netlink, SubprocessRunner(), users)

    @classmethod
    def simulated(
        cls, sysfs_root: str | os.PathLike[str], native_drivers: Mapping[str, str] | None = None
    ) -> HostOps:
        """A generated tree whose bind/unbind/mdev writes act like the kernel, with recording
        netlink (in memory) and a runner that records commands and answers ``nvidia-smi`` for
        the tree's GPUs: for tests and ``devassign demo``; ``agent run --simulate`` uses
        ``devassign.testing.simulated_host``, this with netlink kept in the tree."""
        from pathlib import Path

        from devassign.lifecycle.simulated import SimulatedSysfs
        from devassign.testing.nvidia_smi import SimulatedRunner

        runner = SimulatedRunner(root=Path(sysfs_root))
        return cls(SimulatedSysfs(sysfs_root, native_drivers), RecordingNetlink(), runner)
