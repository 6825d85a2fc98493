"""Trim a captured sysfs tarball to what device discovery reads, keeping links and empty folders.

    python tests/data/realdata/trim.py ORIGINAL.tar.gz TRIMMED.tar.gz [--sys rootfs-1/sys]

Kept, below the tree's ``sys`` folder: its first-level folders (empty), ``bus/pci`` and every
entry of ``bus/pci/devices`` (links stay links); for each device folder those entries point at,
its files and links (not its sub-folders) plus ``net/<ifname>/operstate``, ``iommu_group`` and
``mdev_supported_types`` where they are folders, and each block device below it (a folder with
``holders``, at any depth but not inside another PCI function: its files, ``holders`` and its
partitions likewise); ``kernel/iommu_groups`` whole; USB devices
under ``bus/usb/devices`` like PCI ones; the folders above anything kept. Everything else
(``proc``, ``etc``, ``block``, ``class``, ``bus/pci/drivers``, power, MSI, storage and DRM
sub-folders ...) is left out. Owners become root and the gzip header carries no time or name,
so trimming the same archive twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import posixpath
import re
import tarfile

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _norm(name: str) -> str:
    return posixpath.normpath(name.removeprefix("./")).rstrip("/")


def select(members: dict[str, tarfile.TarInfo], sys_root: str) -> set[str]:
    """The member names to keep (see the module's docstring)."""
    children: dict[str, list[str]] = {}
    for name in members:
        children.setdefault(posixpath.dirname(name), []).append(name)
    keep: set[str] = set()

    def add_tree(top: str) -> None:
        keep.update(n for n in members if n == top or n.startswith(top + "/"))

    def add_block(folder: str) -> None:
        keep.add(folder)
        for child in children.get(folder, []):
            if not members[child].isdir():
                keep.add(child)
            elif posixpath.basename(child) == "holders":
                add_tree(child)

    def add_blocks(folder: str, depth: int) -> None:
        """Block devices below a device (what discovery's host-use check reads)."""
        for child in children.get(folder, []):
            base = posixpath.basename(child)
            if not members[child].isdir() or _PCI_ADDRESS.match(base):
                continue
            if f"{child}/holders" in members:
                add_block(child)
                for part in children.get(child, []):
                    name = posixpath.basename(part)
                    if members[part].isdir() and name.startswith(base) and name != base:
                        add_block(part)
            elif depth < 12:
                add_blocks(child, depth + 1)

    def add_device(entry: str) -> None:
        keep.add(entry)
        info = members[entry]
        folder = entry
        if info.issym():
            folder = posixpath.normpath(posixpath.join(posixpath.dirname(entry), info.linkname))
        if folder not in members or not members[folder].isdir():
            return
        keep.add(folder)
        for child in children.get(folder, []):
            base = posixpath.basename(child)
            if not members[child].isdir():
                keep.add(child)
            elif base in ("iommu_group", "mdev_supported_types"):
                add_tree(child)
            elif base == "net":
                keep.add(child)
                for ifname in children.get(child, []):
                    keep.add(ifname)
                    if f"{ifname}/operstate" in members:
                        keep.add(f"{ifname}/operstate")
        add_blocks(folder, 0)

    keep.update(n for n in children.get(sys_root, []) if members[n].isdir())
    for bus in ("pci", "usb"):
        for folder in (f"{sys_root}/bus/{bus}", f"{sys_root}/bus/{bus}/devices"):
            if folder in members:
                keep.add(folder)
        for entry in children.get(f"{sys_root}/bus/{bus}/devices", []):
            add_device(entry)
    add_tree(f"{sys_root}/kernel/iommu_groups")
    for name in list(keep):
        while name := posixpath.dirname(name):
            if name in members:
                keep.add(name)
    return keep


def trim(src: str, dst: str, sys_root: str = "sys") -> int:
    """Write the trimmed copy of ``src`` to ``dst``; return how many members it holds."""
    with tarfile.open(src) as tar:
        members = {_norm(m.name): m for m in tar.getmembers()}
        keep = sorted(select(members, _norm(sys_root)))
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as new:
            for name in keep:
                info = members[name]
                info.name = name
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                data = tar.extractfile(info) if info.isfile() else None
                new.addfile(info, data)
    with open(dst, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(out.getvalue())
    return len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--sys", default="sys", help="the sysfs folder inside the archive")
    args = parser.parse_args()
    print(f"{args.dst}: {trim(args.src, args.dst, args.sys)} entries")


if __name__ == "__main__":
    main()
