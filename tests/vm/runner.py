"""The host side: build (or reuse) the guest, boot it under QEMU, watch its serial console,
collect the results and say clearly what passed, what failed and why nothing ran."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.vm import image, machine
from tests.vm.checks import MARK

REPO = Path(__file__).resolve().parents[2]
BOOT_DEADLINE = 240.0  # seconds until /init says it started (TCG boots in about 15 s here)
START_DEADLINE = 120.0  # from then until the checks start (modules, 9p mounts)
SILENCE_DEADLINE = 420.0  # no console output for this long: the guest is stuck
TOTAL = {"short": 1200.0, "full": 2400.0}


class VmError(RuntimeError):
    """The run could not happen or did not finish; the message says why and what to do."""


@dataclass
class Outcome:
    mode: str
    ok: bool = False
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    workdir: str | None = None

    def counts(self) -> dict[str, int]:
        return dict(Counter(c["status"] for c in self.checks))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "error": self.error,
            "counts": self.counts(),
            "seconds": self.seconds,
            "guest": self.guest,
            "checks": self.checks,
            "workdir": self.workdir,
        }


def preflight() -> None:
    """What the run needs from this host, each missing piece named with its fix."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise VmError(f"needs an x86_64 Linux host (this is {platform.system()} {platform.machine()})")
    if shutil.which(machine.QEMU) is None:
        raise VmError(f"{machine.QEMU} not found: apt-get install -y qemu-system-x86")


def carried() -> list[str]:
    """The checkout and the Python it runs on, where they lie under /tmp: the guest has its own
    tmpfs there and binds these back in from the host's (read-only) /tmp."""
    out = []
    for path in (REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()):
        if Path("/tmp") in path.parents:
            rel = str(path.relative_to("/tmp"))
            if any(c.isspace() for c in rel) or rel.split("/", maxsplit=1)[0] in ("out", "devassign-vm"):
                raise VmError(f"{path}: cannot be carried into the guest's /tmp; move it")
            out.append(rel)
    return sorted(set(out))


def run_script(mode: str) -> str:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    return (
        f"cd {REPO}\nexport {exports}\n"
        f"exec {sys.executable} -m tests.vm.guest --mode {mode} --out /tmp/out/results.json\n"
    )


def _tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def boot(argv: list[str], log: Path, mode: str, echo: bool, limit: float | None = None) -> int:
    """Run QEMU until the guest powers off; the guest's exit status from its last marker.

    Raises :class:`VmError` when the guest does not boot, stalls, runs out of time or ends
    without saying how the checks ended (a panic, a crash of /init).
    """
    total = limit or TOTAL[mode]
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    seen, last_output, buf, status = 0, t0, "", None
    milestones: dict[str, float | None] = {
        "DEVASSIGN-VM: init started": None,
        "DEVASSIGN-VM: running the checks": None,
    }
    try:
        while True:
            done = proc.poll() is not None
            size = log.stat().st_size
            if size > seen:
                with open(log, "rb") as f:
                    f.seek(seen)
                    chunk = f.read(size - seen).decode(errors="replace")
                seen, last_output = size, time.monotonic()
                buf += chunk
                *lines, buf = buf.split("\n")
                for raw in lines:
                    line = raw.rstrip("\r")
                    for marker, when in milestones.items():
                        if marker in line and when is None:
                            milestones[marker] = time.monotonic() - t0
                    if line.startswith("DEVASSIGN-VM: checks exited with"):
                        status = int(line.rsplit(" ", 1)[1])
                    if "DEVASSIGN-VM: FATAL" in line:
                        raise VmError(f"the guest could not start the checks: {line}")
                    if echo and (line.startswith((MARK, "DEVASSIGN-VM", "$ devassign"))):
                        print(line, flush=True)
            if done:
                break
            now = time.monotonic() - t0
            if milestones["DEVASSIGN-VM: init started"] is None and now > BOOT_DEADLINE:
                raise VmError(f"the guest did not boot: no /init output within {BOOT_DEADLINE:.0f} s")
            started = milestones["DEVASSIGN-VM: init started"]
            if (
                started is not None
                and milestones["DEVASSIGN-VM: running the checks"] is None
                and (now > started + START_DEADLINE)
            ):
                raise VmError(f"the checks did not start within {START_DEADLINE:.0f} s of /init")
            if time.monotonic() - last_output > SILENCE_DEADLINE:
                raise VmError(f"the guest printed nothing for {SILENCE_DEADLINE:.0f} s: stuck")
            if now > total:
                raise VmError(f"the run took longer than {total:.0f} s")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if milestones["DEVASSIGN-VM: init started"] is None:
        raise VmError(f"QEMU exited ({proc.returncode}) before the guest booted")
    if status is None:
        raise VmError(f"the guest stopped (QEMU exit {proc.returncode}) before the checks ended")
    return status


def _read_results(outcome: Outcome, results: Path) -> None:
    """What the guest recorded (also after a timeout or a crash: it writes as it goes)."""
    try:
        doc = json.loads(results.read_text())
    except (OSError, ValueError):
        return
    outcome.checks = doc.get("checks", [])
    outcome.guest.update(doc.get("meta", {}))


def run(mode: str, *, keep: bool = False, echo: bool = True, limit: float | None = None) -> Outcome:
    outcome = Outcome(mode)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="devassign-vm-"))
    log, results = work / "serial.log", work / "out" / "results.json"
    try:
        preflight()
        guest_image = image.prepare(print if echo else (lambda _: None))
        outcome.guest["kernel_package"] = guest_image.kernel_package
        outcome.seconds["prepare"] = round(time.monotonic() - t0, 1)
        paths = machine.Paths(stick=work / "stick.raw", nvme=work / "nvme.raw", out=results.parent)
        paths.out.mkdir()
        for disk, mb in ((paths.stick, machine.STICK_MB), (paths.nvme, 16)):
            with open(disk, "wb") as f:
                f.truncate(mb << 20)
        (paths.out / "run.sh").write_text(run_script(mode))
        (paths.out / "carry").write_text("".join(f"{p}\n" for p in carried()))
        t1 = time.monotonic()
        argv = machine.qemu_argv(guest_image.kernel, guest_image.initramfs, paths)
        status = boot(argv, log, mode, echo, limit)
        outcome.seconds["guest"] = round(time.monotonic() - t1, 1)
        _read_results(outcome, results)
        failed = outcome.counts().get("fail", 0)
        outcome.ok = status == 0 and bool(outcome.checks) and not failed
        if not outcome.checks:
            outcome.error = "the guest ran no checks (no results on the share)"
        elif status != 0 and not failed:
            outcome.error = f"the checks exited with {status} without a failed check"
    except (VmError, image.PrepareError) as exc:
        _read_results(outcome, results)  # what ran before it went wrong
        outcome.error = (
            f"{exc}\n--- the end of the console ({log}):\n{_tail(log)}" if log.exists() else str(exc)
        )
    except KeyboardInterrupt:
        outcome.error = "interrupted"
    finally:
        outcome.seconds["total"] = round(time.monotonic() - t0, 1)
        if keep or (not outcome.ok and log.exists()):
            outcome.workdir = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return outcome


def summary(outcome: Outcome) -> str:
    lines = []
    section = None
    for c in outcome.checks:
        if c["section"] != section:
            section = c["section"]
            lines.append(f"\n[{section}]")
        detail = f"  -- {c['detail']}" if c["status"] != "pass" and c["detail"] else ""
        lines.append(f"  {c['status'].upper():5} {c['name']}{detail}")
    counts = outcome.counts()
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in outcome.seconds.items())
    verdict = "PASSED" if outcome.ok else "FAILED"
    kernel = outcome.guest.get("kernel_package", "no guest")
    tally = f"{counts.get('pass', 0)} passed, {counts.get('fail', 0)} failed, {counts.get('known', 0)} known"
    lines.append(f"\nreal-kernel checks ({outcome.mode}, {kernel}): {verdict}: {tally}; {secs}")
    if outcome.error:
        lines.append(f"error: {outcome.error}")
    if outcome.workdir:
        lines.append(f"console log and results kept in {outcome.workdir}")
    return "\n".join(lines)


def main(mode: str, *, keep: bool, json_out: Path | None, quiet: bool, limit: float | None) -> int:
    outcome = run(mode, keep=keep, echo=not quiet, limit=limit)
    print(summary(outcome), flush=True)
    if json_out is not None:
        json_out.write_text(json.dumps(outcome.to_json(), indent=1) + "\n")
    return 0 if outcome.ok else 1
