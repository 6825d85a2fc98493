"""The agent's small persistent memory: a stable host id, the last report generation, and
the lifecycle journal.

Renaming a machine made Nova create a second resource provider for it (the reason for
Nova's stable-compute-uuid); keeping the id in a file that survives renames and restarts
lets the server recognise the same host under a new name. The journal is why an agent killed
mid-setup or mid-cleanup finishes the job after a restart: the kubelet lost devices when it
died between prepare and checkpoint (kubernetes #115902), so intent goes to disk before the
handler runs and the result before it is posted.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StateError(RuntimeError):
    """The state file exists but cannot be used; replacing it would create a second host."""


@dataclass
class AgentState:
    """``journal``: device id -> the action in flight or its unposted result (see worker.py);
    ``facts``: device id -> what its last setup learned, kept until its cleanup is posted or
    an operator clears the device (the only facts a handler gets: never a request's params);
    ``assigned``: device id -> the work item of a device set up and assigned (health checks);
    ``host_drivers``: device id -> ``{"driver": name}``, the host driver the server knew before
    the last setup (a failed setup returns no facts, and reports made after it show the
    device unbound or on vfio-pci)."""

    host_id: str
    generation: int = 0
    journal: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    assigned: dict[str, dict[str, Any]] = field(default_factory=dict)
    host_drivers: dict[str, dict[str, Any]] = field(default_factory=dict)


_MAPS = ("journal", "facts", "assigned", "host_drivers")


class StateFile:
    """A JSON file, written atomically (a crash never leaves half a file)."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        """``durable``: fsync each write, so a power cut keeps the journal too (a killed
        process never needs it: the rename alone is atomic)."""
        self.path = Path(path)
        self.durable = durable
        self._state: AgentState | None = None

    @property
    def state(self) -> AgentState:
        if self._state is None:
            self._state = self._load()
        return self._state

    def _load(self) -> AgentState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = AgentState(host_id=str(uuid.uuid4()))
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
        maps: dict[str, dict[str, dict[str, Any]]] = {}
        for key in _MAPS:
            value = raw.get(key, {})
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise StateError(f"{self.path}: {key} must map device ids to objects")
            maps[key] = value
        return AgentState(host_id=host_id, generation=generation, **maps)

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {"host_id": state.host_id, "generation": state.generation}
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
