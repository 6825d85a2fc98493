"""The handler commands an agent process has running, kept on disk beside its state file, so
the next agent process can end what a killed one left running.

A command runs in a session of its own (so its timeout can kill all it started), which also
means it outlives an agent killed with ``kill -9``. Left alone, a slow setup would finish on
a device the new agent has cleaned and the server has handed to someone else, or a slow
cleanup would undo the next tenant's setup. So each command is written down while it runs
(one file per process group: its id and its leader's start time), and an agent starting on
the same state file kills every group still alive before it does any work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

REAP_WAIT = 5.0  # seconds to wait for a killed group to be gone


class CommandLedger:
    """One file per running command in ``folder``: named by its process group id, holding its
    leader's start time (clock ticks since boot, from ``/proc``) and its argv."""

    def __init__(self, folder: Path, proc: Path = Path("/proc")) -> None:
        self.folder = folder
        self.proc = proc

    def enter(self, pid: int, argv: Sequence[str]) -> Path | None:
        """Write the command down; None when it cannot be (the command runs all the same)."""
        started = _start_time(self.proc, pid)
        entry = self.folder / str(pid)
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            entry.write_text(json.dumps({"start": started, "argv": list(argv)[:8]}))
        except OSError as exc:
            log.warning("cannot record the running command %s in %s: %s", argv[0], self.folder, exc)
            return None
        return entry

    def leave(self, entry: Path | None) -> None:
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.unlink()

    def reap(self) -> list[str]:
        """Kill the groups of the commands an earlier agent process left running; what was
        killed, for the log. A group whose leader is gone is killed only if no other process
        leads a group of that id (its id cannot be reused while one of its members lives)."""
        killed: list[str] = []
        try:
            entries = sorted(p for p in self.folder.iterdir() if p.name.isdigit())
        except OSError:
            return killed
        for entry in entries:
            pgid = int(entry.name)
            try:
                recorded = json.loads(entry.read_text())
            except (OSError, ValueError):
                recorded = {}
            started = _start_time(self.proc, pgid)
            ours = started is not None and started == recorded.get("start")
            orphans = started is None and bool(_members(self.proc, pgid))
            if ours or orphans:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                _wait_gone(self.proc, pgid)
                killed.append(f"{' '.join(recorded.get('argv') or ['?'])} (process group {pgid})")
            with contextlib.suppress(OSError):
                entry.unlink()
        return killed


def _stat(proc: Path, pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 onwards), or None."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _start_time(proc: Path, pid: int) -> int | None:
    fields = _stat(proc, pid)
    if fields is None or len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22: starttime


def _members(proc: Path, pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    out = []
    for d in proc.iterdir() if proc.is_dir() else ():
        if d.name.isdigit():
            fields = _stat(proc, int(d.name))
            if fields is not None and len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
                out.append(int(d.name))
    return out


def _wait_gone(proc: Path, pgid: int) -> None:
    deadline = time.monotonic() + REAP_WAIT
    while _members(proc, pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
