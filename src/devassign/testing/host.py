"""A simulated host that outlives the process: for ``agent run --simulate`` and the demo.

:meth:`HostOps.simulated` keeps VF settings in memory, which is right for one test but not
for an agent that runs ``--once`` per step, or is killed and restarted: the next process
would see every VF reset and call its assigned devices unhealthy. Here the netlink fake
keeps its state in a JSON file next to the SYNTHETIC tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from devassign.hostio import HostIOError
from devassign.lifecycle.host import HostOps, LinkState, RecordingNetlink, VfConfig

NETLINK_FILE = ".simulated-netlink.json"


class PersistentNetlink(RecordingNetlink):
    """:class:`RecordingNetlink` whose VF settings are read from and saved to ``path``."""

    def __init__(self, path: str | os.PathLike[str], pfs: Mapping[str, int] | None = None) -> None:
        super().__init__(pfs)
        self.path = Path(path)
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            raise HostIOError(f"{self.path}: unreadable simulated netlink state: {exc}") from exc
        for key, cfg in raw.items():
            pf, _, index = key.rpartition("/")
            self.vfs[(pf, int(index))] = VfConfig(**cfg)

    def set_vf(
        self,
        pf_ifname: str,
        vf_index: int,
        *,
        mac: str | None = None,
        vlan: int | None = None,
        spoofchk: bool | None = None,
        trust: bool | None = None,
        link_state: LinkState | None = None,
        min_tx_rate: int | None = None,
        max_tx_rate: int | None = None,
    ) -> None:
        super().set_vf(
            pf_ifname,
            vf_index,
            mac=mac,
            vlan=vlan,
            spoofchk=spoofchk,
            trust=trust,
            link_state=link_state,
            min_tx_rate=min_tx_rate,
            max_tx_rate=max_tx_rate,
        )
        self._save()

    def _save(self) -> None:
        doc = {
            f"{pf}/{i}": {
                "mac": c.mac,
                "vlan": c.vlan,
                "spoofchk": c.spoofchk,
                "trust": c.trust,
                "link_state": c.link_state,
            }
            for (pf, i), c in sorted(self.vfs.items())
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".netlink.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, sort_keys=True)
        os.replace(tmp, self.path)


def simulated_host(
    sysfs_root: str | os.PathLike[str], native_drivers: Mapping[str, str] | None = None
) -> HostOps:
    """A generated tree acting like a kernel (``agent run --simulate``), with VF settings kept in
    ``NETLINK_FILE`` inside it, ``nvidia-smi`` answered for its GPUs on NVIDIA's driver (state
    kept beside the tree too) and every other command recorded, not run."""
    # HostOps.simulated, whose sysfs and runner these are, with netlink that outlives the process.
    ops = HostOps.simulated(sysfs_root, native_drivers)
    return dataclasses.replace(ops, netlink=PersistentNetlink(Path(sysfs_root) / NETLINK_FILE))
