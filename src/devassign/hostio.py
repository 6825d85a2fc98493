"""The one seam between devassign and the host's sysfs (and the few ``/proc`` files it reads).

Everything that reads or writes ``/sys`` goes through :class:`Sysfs`, which takes a root
path: tests point it at generated trees under ``tmp_path`` and never at the real machine.
:class:`HostFiles` reads the host's other files (``/proc``, ``/dev`` links) beside that tree.
Reads never raise for a file that vanished or cannot be read (devices come and go while a
scan runs: Nova bug 1972028); writes raise :class:`HostIOError` with the path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The ``phys_port_name`` of a switchdev representor (a VF's or SF's port on the PF's
# embedded switch: mlx5 ``pf0vf3``, ``c1pf0vf3`` on a SmartNIC's host, ice ``pf0vfr3``).
_REPRESENTOR_RE = re.compile(r"(c\d+)?pf\d+(vf|vfr|sf)\d+")


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

    def subfolders(self, rel: str) -> list[str]:
        """Sorted sub-folders of a folder that are folders themselves, not links to one (a
        walk down the device tree must not follow ``driver``, ``subsystem`` or ``physfn``)."""
        try:
            with os.scandir(self._p(rel)) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            return []

    def netdev(self, rel: str) -> str | None:
        """The network interface of the PCI function at ``rel`` (``bus/pci/devices/<addr>``).
        A PF in switchdev mode lists its VFs' representors beside its uplink under ``net/``;
        they carry no VF settings and no link of the PF's own, so they are never the answer."""
        for name in self.listdir(f"{rel}/net"):
            if not _REPRESENTOR_RE.fullmatch(self.read(f"{rel}/net/{name}/phys_port_name") or ""):
                return name
        return None

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


class HostFiles:
    """The host's files outside sysfs (``proc/mounts``, ``dev/disk/...`` links), read-only,
    under ``root`` (``/`` on a host). Like :class:`Sysfs`, a missing or unreadable file is
    ``None``, never an error: what cannot be read is unknown."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)
        self._root = os.fspath(root).rstrip("/")

    @classmethod
    def beside(cls, sysfs: Sysfs) -> HostFiles:
        """The files of the machine whose sysfs tree ``sysfs`` is: ``/`` for ``/sys``, and
        ``DIR`` for a tree at ``DIR/sys`` (a captured or generated host). Beside the tree, not
        beside a link to it: through a link the host's mounts were not found, and a missing
        file says nothing, so its boot disk was offered."""
        return cls(os.path.dirname(os.path.realpath(sysfs.root)))

    def _p(self, rel: str) -> str:
        return self._root + "/" + rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        """A file's text; bytes that are not UTF-8 (a mount point, an interface name) come as
        surrogates, as ``os.listdir`` gives the same names from sysfs, so the two compare."""
        try:
            with open(self._p(rel), encoding="utf-8", errors="surrogateescape", newline="") as f:
                return f.read()
        except (OSError, ValueError):
            return None

    def link_name(self, rel: str) -> str | None:
        """The last part of a link's target (``dev/disk/by-uuid/X`` -> ``sda1``), or ``None``."""
        try:
            target = os.readlink(self._p(rel))
        except (OSError, ValueError):
            return None
        return os.path.basename(target.rstrip("/")) or None
