"""A whole GPU of a model the agent knows carries its size and model name, so a selector on
``memory_mib`` (the request a user writes first) works without the operator writing it into
the rule; a rule's own attributes still win."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.sysfs import host
from tests.unit.agent.test_agent_config_identities import discover

A100 = "0000:3b:00.0"


def test_a_known_gpu_carries_its_memory_and_model(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci(A100, "10de", "20b0", cls="030200", iommu_group=7, driver="vfio-pci")
    devs = discover(
        tmp_path,
        'host = "compute-1"\n[[device]]\ntype = "GPU_A100"\n'
        'match = { vendor_id = "10de", product_id = "20b0" }\n',
        h.root,
    )
    gpu = devs[A100]
    assert gpu["type"] == "GPU_A100"
    assert gpu["attributes"]["memory_mib"] == 40960
    assert gpu["attributes"]["gpu_model"] == "A100 40GB"


def test_the_rules_own_memory_wins(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci(A100, "10de", "20b0", cls="030200", iommu_group=7, driver="vfio-pci")
    devs = discover(
        tmp_path,
        'host = "compute-1"\n[[device]]\ntype = "GPU_A100"\n'
        'match = { vendor_id = "10de", product_id = "20b0" }\nattributes = { memory_mib = 40536 }\n',
        h.root,
    )
    assert devs[A100]["attributes"]["memory_mib"] == 40536


def test_an_unknown_gpu_gets_no_guess(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3c:00.0", "10de", "1eb8", cls="030200", iommu_group=8, driver="vfio-pci")  # a T4
    devs = discover(
        tmp_path,
        'host = "compute-1"\n[[device]]\ntype = "GPU_T4"\n'
        'match = { vendor_id = "10de", product_id = "1eb8" }\n',
        h.root,
    )
    assert "memory_mib" not in devs["0000:3c:00.0"]["attributes"]
