"""The checks, run inside the guest as root, in a chroot of the host's (read-only) filesystem.

``/init`` (tests/vm/image.py) runs ``python -m tests.vm.guest --mode short|full --out FILE``
from this checkout with its own virtual environment, so the code under test is exactly the
checkout's. ``/tmp`` is a tmpfs; the results file lies on a 9p share of a host folder.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.vm import machine
from tests.vm.checks import Checks

SYS = "/sys"
PCI = f"{SYS}/bus/pci/devices"
PORT = 8470
URL = f"http://127.0.0.1:{PORT}"
HOST = "vm"
WORK = Path("/tmp/devassign-vm")
DEVASSIGN = [sys.executable, "-m", "devassign.cli.main"]


def say(text: str) -> None:
    print(text, flush=True)


def kwrite(path: str, value: str) -> str:
    """Write to a kernel file; ``"ok"`` or the errno's name (``ERANGE``) the kernel answered."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(value)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def kread(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def driver(address: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"{PCI}/{address}/driver"))
    except OSError:
        return None


def group_of(address: str) -> int | None:
    try:
        return int(os.path.basename(os.readlink(f"{PCI}/{address}/iommu_group")))
    except OSError:
        return None


@dataclass
class Found:
    """The emulated devices as this guest's kernel numbered them (by ids and topology)."""

    nvme_pf: str
    nic: str  # the e1000e on NUMA node 1
    pair: list[str]  # the two functions of the multi-function e1000e
    xhci: str
    stick: str  # USB bus id of the storage stick
    keyboard: str
    vfs: list[str]


def locate(probe: dict[str, Any]) -> Found:
    pci, usb = probe["pci"], probe["usb"]

    def ids(info: dict[str, Any]) -> tuple[str, str]:
        return (info["vendor"] or "").removeprefix("0x"), (info["device"] or "").removeprefix("0x")

    nvme = [
        a for a, i in pci.items() if ids(i) == (machine.NVME_VENDOR, machine.NVME_DEVICE) and not i["physfn"]
    ]
    nics = [a for a, i in pci.items() if ids(i) == (machine.E1000E_VENDOR, machine.E1000E_DEVICE)]
    slots: dict[str, list[str]] = {}
    for a in nics:
        slots.setdefault(a.rsplit(".", 1)[0], []).append(a)
    pair = next((sorted(v) for v in slots.values() if len(v) == 2), [])
    single = [a for a in nics if a not in pair]
    xhci = [a for a, i in pci.items() if ids(i) == (machine.XHCI_VENDOR, machine.XHCI_DEVICE)]

    def usb_at(vp: tuple[str, str]) -> list[str]:
        return [b for b, i in usb.items() if (i["idVendor"], i["idProduct"]) == vp]

    stick, kbd = usb_at(machine.USB_STICK), usb_at(machine.USB_KBD)
    problems = [
        f"{what}: found {got}"
        for what, got, want in (
            ("one NVMe PF", nvme, 1),
            ("three e1000e functions", nics, 3),
            ("two functions in one slot", pair, 2),
            ("one qemu-xhci", xhci, 1),
            ("one USB stick", stick, 1),
            ("one USB keyboard", kbd, 1),
        )
        if len(got) != want
    ]
    if problems:
        raise RuntimeError("the guest does not show what QEMU was told to emulate: " + "; ".join(problems))
    vfs = [v for _, v in sorted((int(k), v) for k, v in pci[nvme[0]]["virtfn"].items())]
    return Found(nvme[0], single[0], pair, xhci[0], stick[0], kbd[0], vfs)


class Guest:
    """Runs the programs under test and reads the machine; every command is echoed."""

    def __init__(self, checks: Checks, mode: str) -> None:
        self.checks = checks
        self.mode = mode
        WORK.mkdir(parents=True, exist_ok=True)
        self.config = WORK / "agent.toml"
        self.server: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=URL, timeout=60)
        self.found: Found | None = None
        self.kernel_answers: dict[str, str] = {}  # what the kernel answered to writes, for parity
        self.discovered: dict[str, dict[str, Any]] = {}  # agent discover's devices by address

    @property
    def full(self) -> bool:
        return self.mode == "full"

    def run(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        env = {**os.environ, "DEVASSIGN_URL": URL, "COLUMNS": "200"}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        shown = " ".join(a for a in argv[3:] if a) if argv[:3] == DEVASSIGN else " ".join(argv)
        say(f"$ devassign {shown}  [exit {done.returncode}, {time.monotonic() - t0:.1f} s]")
        return done

    def devassign(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run([*DEVASSIGN, *args], timeout)

    def agent(self) -> subprocess.CompletedProcess[str]:
        """``devassign agent run --once`` on the real sysfs: real handlers, no simulation."""
        done = self.devassign("agent", "run", "--once", "--config", str(self.config), "--sysfs-root", SYS)
        for line in (done.stdout + done.stderr).strip().splitlines()[-20:]:
            say(f"    {line}")
        return done

    def probe(self) -> dict[str, Any]:
        """The independent reading of /sys (tests/vm/sysfs_probe.py, no devassign code)."""
        script = Path(__file__).with_name("sysfs_probe.py")
        done = subprocess.run(
            [sys.executable, "-I", str(script), SYS], capture_output=True, text=True, check=True, timeout=120
        )
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def start_server(self) -> bool:
        log = open(WORK / "server.log", "wb")  # noqa: SIM115 (the server keeps it)
        argv = [*DEVASSIGN, "server", "--no-auth", "--db", "sqlite:////tmp/devassign-vm/x.db"]
        self.server = subprocess.Popen([*argv, "--port", str(PORT)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.server.poll() is None:
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                time.sleep(0.5)
        return False

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()

    def device(self, address: str) -> dict[str, Any]:
        """The server's view of one device of this host (``{}`` when it has none)."""
        found = [
            d for d in self.http.get("/v1/devices", params={"host": HOST}).json() if d["address"] == address
        ]
        return found[0] if found else {}

    def state(self, address: str) -> str | None:
        return self.device(address).get("state")

    def events(self, consumer: str) -> list[dict[str, Any]]:
        return self.http.get("/v1/events", params={"consumer": consumer}).json()  # type: ignore[no-any-return]


def where(found: Found) -> Any:
    """The devices the shared scenarios (tests/vm/scenarios.py) work on, in this guest."""
    from tests.vm.scenarios import Where

    return Where(found.nvme_pf, (found.pair[0], found.pair[1]), "e1000e", found.stick)


def run_scenarios(g: Guest, names: list[str]) -> None:
    """The shared scenarios on this kernel, each in its section ``scenario: NAME``; the unit
    test tests/unit/lifecycle/test_kernel_scenarios.py runs them on the simulation."""
    from tests.vm.scenarios import ALL, RealKernel

    if g.found is None:
        return
    kernel = RealKernel(SYS, "/dev")
    for name in names:
        with g.checks.part(f"scenario: {name}"):
            for step in ALL[name](kernel, where(g.found)):
                g.checks.equal(step.name, step.got, step.want)


def main() -> int:
    from tests.vm import discovery_checks, lifecycle_checks, parity
    from tests.vm.scenarios import ALL, EARLY

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("short", "full"), default="full")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    checks = Checks(out=args.out)
    checks.meta.update(mode=args.mode, kernel=os.uname().release, python=sys.version.split()[0])
    guest = Guest(checks, args.mode)
    try:
        discovery_checks.run(guest)  # with the EARLY scenarios (they make the VFs)
        if guest.found is not None:
            lifecycle_checks.run(guest)
        late = [n for n in ALL if n not in EARLY and n != "remove"]
        run_scenarios(guest, late)
        parity.run(guest)
        run_scenarios(guest, ["remove"])  # last: it takes the PF and its VFs away
    finally:
        guest.stop_server()
        checks.save()
    say(f"{len(checks.items)} checks, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
