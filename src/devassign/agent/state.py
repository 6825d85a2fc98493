"""The agent's small persistent memory: a stable host id and the last report generation.

Renaming a machine made Nova create a second resource provider for it (the reason for
Nova's stable-compute-uuid); keeping the id in a file that survives renames and restarts
lets the server recognise the same host under a new name.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


class StateError(RuntimeError):
    """The state file exists but cannot be used; replacing it would create a second host."""


@dataclass
class AgentState:
    host_id: str
    generation: int = 0


class StateFile:
    """A JSON file, written atomically (a crash never leaves half a file)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
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
        return AgentState(host_id=host_id, generation=generation)

    def next_generation(self) -> int:
        """Increase, persist, return: every report carries a number never used before."""
        self.state.generation += 1
        self._write(self.state)
        return self.state.generation

    def set_generation(self, generation: int) -> None:
        """Remember the server's generation (after a 409) so the next one is above it."""
        self.state.generation = max(self.state.generation, generation)
        self._write(self.state)

    def _write(self, state: AgentState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"host_id": state.host_id, "generation": state.generation})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".agent-state.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
