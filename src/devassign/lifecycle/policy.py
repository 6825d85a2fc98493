"""What this host's agent lets the server make it run: handlers and ``command`` programs.

A resource type's config (written by any admin) names the handler, and for ``command`` the
argv each action runs, as root, on every host with a device of that type. So the host has
the last word: its own ``agent.toml`` lists the handlers it runs (default: the built-in
ones, not ``command``) and the programs ``command`` may start (default: none). A work item
outside the lists is refused with a message naming the setting to change.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devassign.lifecycle.base import TypeConfig

BUILTIN_HANDLERS = ("pci", "sriov_vf", "mdev", "usb", "noop", "nvidia_vgpu", "mig")
COMMAND_HANDLER = "command"
COMMAND_ACTIONS = ("setup", "cleanup", "health")
# Built-in handlers whose type config may name the program they run: (key, default). Another
# program than the default must be on the host's [lifecycle] commands list, as command's are.
PROGRAM_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {"mig": (("nvidia_smi", "nvidia-smi"),)}


def path_problem(path: object) -> str | None:
    """Why ``path`` cannot be a program (or glob of programs) to allow, or ``None``.

    Absolute and already normal (no ``..``, ``.`` or ``//``), so a pattern's ``*`` can
    only stand for names inside the folder the operator wrote.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    if "\x00" in path or posixpath.normpath(path) != path or path.startswith("//"):
        return f"{path!r} is not a normal path (no .., ., // or a trailing /)"
    return None


def command_allowed(program: str, patterns: Sequence[str]) -> bool:
    """Whether ``program`` matches one of ``patterns``, one path component at a time (a
    ``*`` never crosses a ``/``)."""
    if path_problem(program) is not None:
        return False
    parts = program.split("/")
    for pattern in patterns:
        want = pattern.split("/")
        if len(want) == len(parts) and all(
            fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=True)
        ):
            return True
    return False


def command_programs(config: TypeConfig) -> list[tuple[str, str]]:
    """``(action, program)`` for each action's argv in a ``command`` type's config; a
    malformed argv is left to the handler, which refuses it."""
    out = []
    for action in COMMAND_ACTIONS:
        argv: Any = config.get(action)
        if isinstance(argv, list | tuple) and argv and isinstance(argv[0], str):
            out.append((action, argv[0]))
    return out


@dataclass(frozen=True)
class LifecyclePolicy:
    """``[lifecycle]`` of agent.toml: ``handlers`` this agent runs, ``commands`` it may start,
    and the seconds one handler action may run (``action_timeout``)."""

    handlers: frozenset[str] = frozenset(BUILTIN_HANDLERS)
    commands: tuple[str, ...] = ()
    action_timeout: float = 120.0

    def refusal(self, handler: str, config: TypeConfig, *, host: str, source: str) -> str | None:
        """Why a work item for ``handler`` with this type ``config`` must not run, or ``None``."""
        if handler not in self.handlers:
            return (
                f"handler {handler!r} is not allowed on host {host}: add it to [lifecycle] handlers "
                f"in {source} to let this agent run it"
            )
        for key, default in PROGRAM_SETTINGS.get(handler, ()):
            program = config.get(key, default)
            if program != default and not (
                isinstance(program, str) and command_allowed(program, self.commands)
            ):
                return (
                    f"type config {key}={program!r} names a program other than {default!r}, and it is "
                    f"not allowed on host {host}: add it to [lifecycle] commands in {source} to let "
                    "this agent run it"
                )
        if handler != COMMAND_HANDLER:
            return None
        for action, program in command_programs(config):
            if not command_allowed(program, self.commands):
                return (
                    f"command {program!r} ({action}) is not allowed on host {host}: add it, or a "
                    f"glob matching it, to [lifecycle] commands in {source} to let this agent run it"
                )
        return None
