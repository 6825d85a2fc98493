"""The one seam between devassign and the host's sysfs.

Everything that reads or writes ``/sys`` goes through :class:`Sysfs`, which takes a root
path: tests point it at generated trees under ``tmp_path`` and never at the real machine.
Reads never raise for a file that vanished or cannot be read (devices come and go while a
scan runs: Nova bug 1972028); writes raise :class:`HostIOError` with the path.
"""

from __future__ import annotations

import os
from pathlib import Path


class HostIOError(OSError):
    """A write to the host failed; the message names the file and the value."""


class Sysfs:
    """A sysfs tree rooted at ``root`` (``/sys`` on a real host)."""

    def __init__(self, root: str | os.PathLike[str] = "/sys") -> None:
        self.root = Path(root)
        # Plain string joins: discovery reads thousands of small files, and building a
        # pathlib.Path for each one was a third of its time.
        self._root = os.fspath(root).rstrip("/")

    def _p(self, rel: str) -> str:
        return self._root + "/" + rel.lstrip("/")

    def path(self, rel: str) -> Path:
        """The absolute path of ``rel`` (a path relative to the root, e.g. ``bus/pci/devices``)."""
        return Path(self._p(rel))

    def read(self, rel: str) -> str | None:
        """The stripped text of a file, or ``None`` when it is absent, unreadable or binary."""
        try:
            with open(self._p(rel), encoding="utf-8", errors="strict") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError, ValueError):
            return None

    def read_bytes(self, rel: str, size: int) -> bytes | None:
        """The first ``size`` bytes of a binary file (a PCI function's ``config``), or ``None``
        when it is absent or unreadable."""
        try:
            with open(self._p(rel), "rb") as f:
                return f.read(size)
        except OSError:
            return None

    def listdir(self, rel: str) -> list[str]:
        """Sorted entries of a folder; empty when it is absent or unreadable."""
        try:
            return sorted(os.listdir(self._p(rel)))
        except OSError:
            return []

    def readlink(self, rel: str) -> str | None:
        """The target of a symbolic link, or ``None`` when ``rel`` is not a link."""
        try:
            return os.readlink(self._p(rel))
        except OSError:
            return None

    def link_name(self, rel: str) -> str | None:
        """The last part of a link's target (``iommu_group`` -> ``"12"``, ``driver`` -> ``"ice"``)."""
        target = self.readlink(rel)
        return os.path.basename(target.rstrip("/")) if target else None

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self._p(rel))

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(self._p(rel))

    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to a sysfs attribute; the only way devassign changes the host's sysfs."""
        target = self.path(rel)
        try:
            with open(target, "w", encoding="utf-8") as f:
                f.write(value)
        except OSError as exc:
            raise HostIOError(exc.errno, f"cannot write {value!r} to {target}: {exc.strerror}") from exc
