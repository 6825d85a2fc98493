"""Device health as the agent judges it: fail fast, recover slowly.

Every device of the host is checked, free or held, every ``health_interval`` and right after
its cleanup, by its type's handler (a PCI function's config space, a VF's PF link, an mdev's
parent, a USB device's presence). One failing check makes a device unhealthy at once; it is
healthy again only after ``health_passes`` passing checks in a row, so a device that flaps
(a link that bounces, a GPU that answers one read in three) is not handed out between two
failures. The record lives in the agent's state file: a restart does not turn a failing
device healthy after one lucky check.

The server applies the verdict: ``healthy: false`` with the reason; while the checks pass
again but not yet enough of them, ``health_recovering: true``, which keeps whatever the
server has, so an operator's clear (``devassign device clear``) stands until a check fails
again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from devassign.agent.state import StateFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What the agent reports of one device: ``healthy`` and, when not, why, and whether its
    checks pass again (``recovering``)."""

    healthy: bool = True
    reason: str | None = None
    recovering: bool = False


HEALTHY = Verdict()


class HealthRecord:
    """The failing and recovering devices of one host, by address, kept in the state file:
    ``{"reason": why, "passes": passing checks since, "held": failed only while assigned}``."""

    def __init__(self, state: StateFile, passes_needed: int) -> None:
        self.state = state
        self.passes_needed = passes_needed

    @property
    def _map(self) -> dict[str, dict[str, object]]:
        return self.state.state.health

    def verdict(self, address: str) -> Verdict:
        entry = self._map.get(address)
        if entry is None:
            return HEALTHY
        passes = int(str(entry.get("passes", 0)))
        return Verdict(False, str(entry.get("reason") or "health check failed"), passes > 0)

    def observe(
        self, address: str, ok: bool, reason: str | None, *, held: bool = False, cleaned: bool = False
    ) -> bool:
        """Record one check; ``True`` when the device's reported verdict changed (a report is
        then due now, not at the next interval). Saved with the state file's next write.

        ``held``: the device is assigned, so a failure may be the assignment's (a VF taken
        back from vfio-pci, a consumer's mdev gone) rather than the hardware's. ``cleaned``:
        the check right after a cleanup; when it passes, such a failure is over at once (the
        cleanup put the device back in the state the check verifies), while a failure seen on
        the free device, or one that came back after passing checks (a flap), keeps its
        hysteresis.
        """
        entry = self._map.get(address)
        if not ok:
            why = reason or "health check failed"
            changed = entry is None or entry.get("reason") != why or bool(entry.get("passes"))
            was_held = bool(entry.get("held")) if entry is not None else held
            # A failure after checks that passed again is a flap: failing hardware, not an
            # assignment undone behind the agent's back, so a cleanup does not end it.
            flapped = entry is not None and bool(entry.get("passes"))
            self._map[address] = {"reason": why, "passes": 0, "held": was_held and held and not flapped}
            if changed:
                log.warning("%s is unhealthy: %s", address, why)
            return changed
        if entry is None:
            return False
        passes = int(str(entry.get("passes", 0))) + 1
        if passes >= self.passes_needed or (cleaned and entry.get("held")):
            del self._map[address]
            log.warning("%s is healthy again after %d passing checks", address, passes)
            return True
        entry["passes"] = passes
        return passes == 1  # failing -> recovering

    def failing_free(self, address: str) -> str | None:
        """Why the device's last check failed, where it failed as a free device and has not
        passed since; else ``None``. No setup runs on such a device."""
        entry = self._map.get(address)
        if entry is None or entry.get("passes") or entry.get("held"):
            return None
        return str(entry.get("reason") or "health check failed")

    def keep_only(self, addresses: Iterable[str]) -> None:
        """Forget devices the host no longer has (a device that comes back is checked anew)."""
        keep = set(addresses)
        for address in [a for a in self._map if a not in keep]:
            del self._map[address]

    def failing(self) -> dict[str, str]:
        """Address -> reason of every device not (yet) healthy again."""
        return {a: self.verdict(a).reason or "" for a in self._map}

    def save(self) -> None:
        self.state.save()
