"""Helpers that build SYNTHETIC hosts, shipped in the package so ``devassign demo`` can use them.

Nothing here touches a real machine: :mod:`devassign.testing.sysfs` writes a generated sysfs
tree under a folder the caller chooses, :func:`simulated_host` gives the handlers a
``HostOps`` acting on it like a kernel (state kept in the tree, so it survives restarts).
"""

from __future__ import annotations

from devassign.testing.host import PersistentNetlink, simulated_host
from devassign.testing.sysfs import SyntheticHost, host, vf_addresses

__all__ = ["PersistentNetlink", "SyntheticHost", "host", "simulated_host", "vf_addresses"]
