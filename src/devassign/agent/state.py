"""The agent's small persistent memory: a stable host id, the last report generation, and
the lifecycle journal.

Renaming a machine made Nova create a second resource provider for it (the reason for
Nova's stable-compute-uuid); keeping the id in a file that survives renames and restarts
lets the server recognise the same host under a new name. The journal is why an agent killed
mid-setup or mid-cleanup finishes the job after a restart: the kubelet lost devices when it
died between prepare and checkpoint (kubernetes #115902), so intent goes to disk before the
handler runs and the result before it is posted.

The file also records the host name it belongs to: one file per agent, so an agent whose
configuration names another host refuses it (two configurations sharing one file would be
one host under two names, each report renaming the other).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class StateError(RuntimeError):
    """The state file exists but cannot be used; replacing it would create a second host."""


class OtherHost(StateError):
    """The state file records another host name than the configuration: a second agent given
    this machine's file, or a machine renamed (``devassign host rename``), which the server
    can confirm (:meth:`StateFile.follow_rename`)."""

    def __init__(self, message: str, recorded: str, host_id: str) -> None:
        super().__init__(message)
        self.recorded = recorded  # the name in the file
        self.host_id = host_id  # the file's host id, which a rename keeps


@dataclass
class AgentState:
    """``journal``: device id -> the action in flight or its unposted result (see worker.py);
    ``facts``: device id -> what its last setup learned, kept until its cleanup is posted or
    an operator clears the device (the only facts a handler gets: never a request's params);
    ``assigned``: device id -> the work item of a device set up and assigned (health checks);
    ``host_drivers``: device id -> ``{"driver": name, "address": its address}``, the host
    driver the server knew before the last setup, until a cleanup is posted ok (a failed
    setup returns no facts, and reports made after it show the device unbound or on
    vfio-pci; ``driver`` rules match it meanwhile); ``health``: see agent/health.py."""

    host_id: str
    generation: int = 0
    journal: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    assigned: dict[str, dict[str, Any]] = field(default_factory=dict)
    host_drivers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Device id -> ``{"handler": name, "config": {...}, "device": {...}}`` of its last setup,
    # until a cleanup succeeds: the cleanup runs that handler, whatever the type's handler is
    # by then (``device``: the device as set up; files of older versions have none).
    set_up_by: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Device address -> ``{"reason": why it failed, "passes": checks passed since}``: the
    # devices whose health failed and has not passed enough checks in a row since (so a
    # restart does not make a failing device healthy after a single pass).
    health: dict[str, dict[str, Any]] = field(default_factory=dict)
    # GPU address@VF ids -> {vGPU type id: name}: every vGPU 17+ type seen on that GPU (agent/vgpu.py).
    vgpu_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    # USB bus path -> {address, vendor_id, product_id, serial}: the name each USB device was
    # given, kept while it stays at its port (agent/usb.py), so a restart does not rename it.
    usb_names: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The host name this state belongs to (files of older versions have none: the first
    # agent that uses such a file records its own).
    host: str | None = None


def held_drivers(state: AgentState) -> dict[str, str]:
    """Address -> the host driver each device had before this agent's setup of it, from the
    setup until its cleanup is posted ok: ``driver`` rules match that, not vfio-pci (files of
    older versions name no address: the held or in-flight item's)."""
    held: dict[str, str] = {}
    for dev_id, saved in state.host_drivers.items():
        driver = saved.get("driver")
        entry = state.assigned.get(dev_id) or (state.journal.get(dev_id) or {}).get("item") or {}
        address = saved.get("address") or (entry.get("device") or {}).get("address")
        if isinstance(driver, str) and isinstance(address, str):
            held[address] = driver
    return held


@dataclass(frozen=True)
class HeldType:
    """The type of a device this agent holds, and what that device is (kind, vendor and
    product id as the agent found it): another device at its address is not the one held."""

    type: str
    kind: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None

    def is_device(self, kind: str, vendor_id: str | None, product_id: str | None) -> bool:
        """Whether a device found at the held address is the held one (ids not known on
        either side are not held against it)."""
        pairs = ((self.kind, kind), (self.vendor_id, vendor_id), (self.product_id, product_id))
        return all(a is None or b is None or a == b for a, b in pairs)


def held_types(state: AgentState) -> dict[str, HeldType]:
    """Address -> type of each device this agent holds for a consumer or has an action in
    flight on: such a device stays reported under its type when no rule takes it any more (a
    rule removed or edited while it was assigned), so its holder keeps it and its cleanup runs;
    once cleaned it is no longer reported, and the server retires it."""
    held: dict[str, HeldType] = {}
    for entry in (*state.assigned.values(), *((e.get("item") or {}) for e in state.journal.values())):
        device = entry.get("device") or {}
        address, type_name = device.get("address"), device.get("type")
        if isinstance(address, str) and isinstance(type_name, str):
            ids = [device.get(k) for k in ("kind", "vendor_id", "product_id")]
            kind, vendor, product = (v if isinstance(v, str) else None for v in ids)
            held[address] = HeldType(type_name, kind, vendor, product)
    return held


def peek(path: Path) -> AgentState | None:
    """The state file as it is, read only (``agent discover`` beside a running agent), or
    ``None`` where there is none or it cannot be read: never created, adopted or locked."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        maps = {k: raw.get(k, {}) for k in _MAPS}
        for m in maps.values():
            if not isinstance(m, dict) or not all(isinstance(v, dict) for v in m.values()):
                return None
        return AgentState(host_id=str(raw.get("host_id", "")), **maps)
    except (OSError, ValueError, AttributeError):
        return None


_MAPS = ("journal", "facts", "assigned", "host_drivers", "set_up_by", "health", "vgpu_types", "usb_names")


class StateFile:
    """A JSON file, written atomically (a crash never leaves half a file)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        host: str | None = None,
        adopt: str | os.PathLike[str] | None = None,
    ) -> None:
        """``durable``: fsync each write, so a power cut keeps the journal too (a killed
        process never needs it: the rename alone is atomic).

        ``host``: the host name of the agent's configuration. A file that records another
        one is refused (:class:`StateError`); a new file, or one that records none, gets it.

        ``adopt``: where an earlier version kept the state by default; when ``path`` does
        not exist yet and that file does (and names this host, or none), it is moved to
        ``path``, so an upgrade keeps the machine's host id.
        """
        self.path = Path(path)
        self.durable = durable
        self.host = host
        self.adopt = Path(adopt) if adopt is not None else None
        self._state: AgentState | None = None
        self._lock: IO[str] | None = None
        self._renamed_from: str | None = None  # see follow_rename

    @property
    def state(self) -> AgentState:
        if self._state is None:
            self._state = self._load()
        return self._state

    def _load(self) -> AgentState:
        self._adopt()
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = AgentState(host_id=str(uuid.uuid4()), host=self.host)
            self._write(state)
            return state
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{self.path}: cannot read the agent state ({exc}); fix or remove the file "
                "(removing it makes this machine a new host)"
            ) from exc
        host_id, generation = (
            (raw.get("host_id"), raw.get("generation", 0)) if isinstance(raw, dict) else (None, None)
        )
        if not isinstance(host_id, str) or not isinstance(generation, int) or generation < 0:
            raise StateError(f"{self.path}: not an agent state file (host_id, generation)")
        recorded = raw.get("host")
        if recorded is not None and not isinstance(recorded, str):
            raise StateError(f"{self.path}: host must be a host name")
        renamed = recorded is not None and recorded == self._renamed_from
        if recorded is not None and self.host is not None and recorded != self.host and not renamed:
            raise OtherHost(self._other_host(recorded), recorded, host_id)
        maps: dict[str, dict[str, dict[str, Any]]] = {}
        for key in _MAPS:
            value = raw.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise StateError(f"{self.path}: {key} must map device ids to objects")
            maps[key] = value
        problem = _entry_problem(maps)
        if problem:
            raise StateError(
                f"{self.path}: {problem}; fix or remove the file (removing it makes this machine a new host)"
            )
        host = self.host if renamed else recorded or self.host
        state = AgentState(host_id=host_id, generation=generation, host=host, **maps)
        if (recorded is None or renamed) and self.host is not None:
            self._write(state)  # from now on this file is this host's
        return state

    def lock(self) -> None:
        """Hold ``<state file>.lock`` while this object lives (``agent run`` takes it before
        it reads the state): one agent process per state file. A second one (a second
        ``agent run`` of one configuration, ``run --once`` beside the daemon) would replay
        the live agent's journaled work from its own copy, as root, and overwrite what the
        live agent journals since; the server cannot tell it from a restart. The kernel drops
        the lock when the process ends, however it ends."""
        if self._lock is not None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held while this lives)
        except OSError as exc:
            raise StateError(f"{lock_path}: cannot open the agent state's lock ({exc})") from exc
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()[:20]
            f.close()
            raise StateError(
                f"{self.path} is in use by another agent process{f' (pid {holder})' if holder else ''}: "
                "run one agent per state file (stop the other, or give this configuration a "
                "state_file of its own)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def close(self) -> None:
        """Let the lock go (and the state read: a later use reads the file again)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._state = None

    def follow_rename(self, recorded: str) -> AgentState:
        """Take the file of host ``recorded`` as this host's: the server said the host of the
        configuration's name has the file's host id (an admin renamed it), so the file keeps
        its journal and ids and records the new name from now on."""
        self._renamed_from, self._state = recorded, None
        try:
            return self.state
        finally:
            self._renamed_from = None

    def _other_host(self, recorded: str) -> str:
        path = self.path.absolute()
        return (
            f"{path} is the state file of host {recorded!r}, but this agent's configuration "
            f"says host = {self.host!r}; one state file is one host. If this is another agent "
            "on the same machine, give it a state file of its own (state_file in its agent.toml, "
            "or leave state_file out: each configuration file then gets its own). If the machine "
            f"was renamed: an admin runs `devassign host rename {recorded} {self.host}` (the "
            "agent then finds the new name on the server and updates this file), or set "
            f'"host" to "{self.host}" in {path} and start the agent again'
        )

    def _adopt(self) -> None:
        """Move an earlier version's default state file to ``path`` (see ``adopt``)."""
        old = self.adopt
        if old is None or old == self.path or self.path.exists() or not old.exists():
            return
        try:
            raw = json.loads(old.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: not taken over (%s); starting %s", old, exc, self.path)
            return
        recorded = raw.get("host") if isinstance(raw, dict) else None
        if recorded is not None and recorded != self.host:
            return  # another host's: it stays where it is
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(old, self.path)  # fails if another agent just made ``path``
        except (FileExistsError, FileNotFoundError):
            return  # another agent took it (or made ``path``) first
        except OSError:  # no hard links here: a rename, which is atomic too
            try:
                os.rename(old, self.path)
            except OSError as exc:
                log.warning("%s: not taken over (%s); starting %s", old, exc, self.path)
                return
        else:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: cannot remove it after taking it over (%s): remove it", old, exc)
        log.warning("took over %s (the default of earlier versions) as %s", old, self.path)

    def next_generation(self) -> int:
        """Increase, persist, return: every report carries a number never used before."""
        self.state.generation += 1
        self._write(self.state)
        return self.state.generation

    def set_generation(self, generation: int) -> None:
        """Remember the server's generation (after a 409) so the next one is above it."""
        self.state.generation = max(self.state.generation, generation)
        self._write(self.state)

    def save(self) -> None:
        """Persist the journal after a change: callers mutate ``state`` and then save."""
        self._write(self.state)

    def _write(self, state: AgentState) -> None:
        """Write ``state`` whole, or raise :class:`StateError`: an agent that cannot journal
        must stop (it would run handlers it could not replay after a crash), saying why."""
        try:
            self._write_file(state)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise StateError(
                f"{self.path}: cannot write the agent state ({why}); the agent stops rather than "
                "act on devices without its journal: give it a writable state_file (free space, "
                "permissions) and start it again"
            ) from exc

    def _write_file(self, state: AgentState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {"host_id": state.host_id, "generation": state.generation}
        if state.host is not None:
            doc["host"] = state.host
        for key in _MAPS:
            value = getattr(state, key)
            if value:
                doc[key] = value
        data = json.dumps(doc, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".agent-state.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # private (work items, facts), kept by the rename
                f.write(data + "\n")
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.durable:
            self._sync_folder()

    def _sync_folder(self) -> None:
        """fsync the folder, so the rename itself survives a power cut: the journal holds
        results not yet acknowledged by the server, kept through an outage and a reboot."""
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return  # a platform without folder handles: the rename is still atomic
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems refuse fsync on a folder; nothing more can be done
        finally:
            os.close(fd)

    def unposted(self) -> int:
        """Results journaled and not yet acknowledged by the server (posted after an outage)."""
        return sum(1 for e in self.state.journal.values() if e.get("phase") == "done")


def _entry_problem(maps: dict[str, dict[str, dict[str, Any]]]) -> str | None:
    """What makes an entry of the state's maps unusable, or ``None``: read once here, so a
    damaged entry is one clear refusal at the start, not a crash deep in a later step."""
    from pydantic import ValidationError

    from devassign.schemas import WorkItem

    def item_problem(where: str, item: Any) -> str | None:
        try:
            WorkItem.model_validate(item)
        except ValidationError as exc:
            return f"{where}: not a work item ({exc.errors()[0]['msg']})"
        return None

    for dev_id, entry in maps.get("journal", {}).items():
        where = f"journal entry {dev_id!r}"
        if entry.get("action") not in ("setup", "cleanup") or entry.get("phase") not in ("started", "done"):
            return f"{where}: action must be setup or cleanup and phase started or done"
        if entry["phase"] == "done" and not isinstance(entry.get("ok"), bool):
            return f"{where}: a result needs ok (true or false)"
        problem = item_problem(where, entry.get("item"))
        if problem:
            return problem
    for dev_id, entry in maps.get("assigned", {}).items():
        problem = item_problem(f"assigned entry {dev_id!r}", entry)
        if problem:
            return problem
    for address, entry in maps.get("health", {}).items():
        passes = entry.get("passes", 0)
        if (
            not isinstance(passes, int)
            or isinstance(passes, bool)
            or not isinstance(entry.get("reason", ""), str)
        ):
            return f"health entry {address!r}: passes must be a count and reason text"
    return None
