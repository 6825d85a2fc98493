"""Helpers that build SYNTHETIC hosts, shipped in the package so ``devassign demo`` can use them.

Nothing here touches a real machine: :mod:`devassign.testing.sysfs` writes a generated sysfs
tree under a folder the caller chooses.
"""

from __future__ import annotations

from devassign.testing.sysfs import SyntheticHost, host, vf_addresses

__all__ = ["SyntheticHost", "host", "vf_addresses"]
