"""Human names for PCI ids from the ``pci.ids`` database, when the host has it.

Names are for people reading ``agent discover`` and the dashboard; nothing decides on
them, so a missing or odd file only means raw ids are shown.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Where distributions install pci.ids (the hwdata, pciutils or pci.ids packages); the first
# that exists is read. An agent configuration's ``pci_ids`` names another file.
PCI_IDS_PATHS: tuple[Path, ...] = (
    Path("/usr/share/hwdata/pci.ids"),
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/pci.ids"),
    Path("/usr/share/pciids/pci.ids"),
)


def find_pci_ids(candidates: tuple[Path, ...] = PCI_IDS_PATHS) -> Path | None:
    """The first of ``candidates`` that is a readable file, or ``None`` (raw ids are shown)."""
    for path in candidates:
        try:
            if path.is_file() and os.access(path, os.R_OK):
                return path
        except OSError:
            continue
    return None


DEFAULT_PCI_IDS: Path | None = find_pci_ids()


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, tuple[str, dict[str, str]]]:
    """vendor id -> (vendor name, {device id -> device name}); the class section is skipped."""
    table: dict[str, tuple[str, dict[str, str]]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            devices: dict[str, str] | None = None
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                if line.startswith("C "):
                    break  # device classes follow the vendors; we do not need them
                if line.startswith("\t\t"):
                    continue  # subsystems
                if line.startswith("\t"):
                    if devices is not None and len(line) > 6:
                        devices[line[1:5].lower()] = line[5:].strip()
                    continue
                devices = {}
                table[line[:4].lower()] = (line[4:].strip(), devices)
    except OSError as exc:
        log.warning("cannot read %s: %s; showing raw PCI ids", path, exc)
    return table


def pci_name(vendor_id: str | None, product_id: str | None, path: Path | None) -> str | None:
    """``"Intel Corporation I350 Ethernet Controller Virtual Function"``, or ``None``."""
    if path is None or vendor_id is None or not path.exists():
        return None
    entry = _load(str(path)).get(vendor_id)
    if entry is None:
        return None
    vendor_name, devices = entry
    device_name = devices.get(product_id or "")
    return f"{vendor_name} {device_name}" if device_name else vendor_name
