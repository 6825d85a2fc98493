"""``numa_node`` -1 on a host with one NUMA node is node 0: else a request asking for its devices
on one NUMA node could never be met on a single-socket host or VM, where the kernel says -1."""

from __future__ import annotations

from pathlib import Path

from devassign.agent.discovery import scan_pci
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import SyntheticHost, host

GPU, NIC = "0000:3b:00.0", "0000:5e:00.0"


def numa(h: SyntheticHost) -> dict[str, int | None]:
    return {d.address: d.numa_node for d in scan_pci(Sysfs(h.root), pci_ids=None).devices}


def nodes(h: SyntheticHost, *names: str) -> None:
    for name in names:
        (h.root / "devices/system/node" / name).mkdir(parents=True)


def test_one_node_host_puts_unknown_nodes_on_node_0(tmp_path: Path) -> None:
    h = host(tmp_path)
    nodes(h, "node0", "possible", "online")  # the files beside the node folders do not count
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=-1)
    h.pci(NIC, "8086", "1593", numa=-1)
    assert numa(h) == {GPU: 0, NIC: 0}


def test_a_host_without_node_folders_is_one_node(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.mdev_parent(GPU, types={"nvidia-230": {"name": "GRID T4-4Q", "available": 2}}, numa=-1)
    assert set(numa(h).values()) == {0}  # the GPU and its mdev slots


def test_a_multi_node_host_keeps_unknown_as_unknown(tmp_path: Path) -> None:
    h = host(tmp_path)
    nodes(h, "node0", "node1")
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=-1)
    h.pci(NIC, "8086", "1593", numa=1)
    assert numa(h) == {GPU: None, NIC: 1}


def test_devices_on_two_nodes_make_a_multi_node_host(tmp_path: Path) -> None:
    h = host(tmp_path)  # a captured tree without devices/system
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=0)
    h.pci(NIC, "8086", "1593", numa=1)
    h.pci("0000:00:1f.0", "8086", "a1c8", cls="060100", numa=-1)
    assert numa(h) == {GPU: 0, NIC: 1, "0000:00:1f.0": None}
