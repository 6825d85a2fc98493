"""A GPU whose vGPU (mdev) slot the agent holds stays reported; one with an mdev made by
someone else does not (``mdev_in_use``). Generated trees only."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import tomli_w
from typer.testing import CliRunner

from devassign.agent.cli import app
from devassign.agent.config import parse_config
from devassign.agent.held import HeldPartitions
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FLAG_MDEV_IN_USE
from devassign.agent.state import AgentState
from devassign.hostio import Sysfs
from devassign.lifecycle.handlers.mdev import MDEV_NAMESPACE
from tests.fixtures.sysfs import SyntheticHost, host

GPU = "0000:3b:00.0"
SLOT = f"{GPU}/nvidia-230/0"
OURS = str(uuid.uuid5(MDEV_NAMESPACE, f"vm-1/{SLOT}"))  # what the mdev handler makes for vm-1
THEIRS = str(uuid.UUID(int=7))
DESCRIPTION = "num_heads=4, frl_config=60, framebuffer=4096M, max_resolution=5120x2880, max_instance=4"
RULES: list[dict[str, Any]] = [
    {"type": "VGPU_4Q", "match": {"mdev_type": "nvidia-230"}},
    {"type": "GPU_T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}},
]


def _gpu(tmp_path: Path, instances: list[str], *, nvidia: bool = True) -> SyntheticHost:
    h = host(tmp_path / "h")
    spec = {"name": "GRID T4-4Q", "available": 4 - len(instances), "instances": instances}
    if nvidia:
        spec["description"] = DESCRIPTION
    h.mdev_parent(GPU, types={"nvidia-230": spec}, iommu_group=12)
    return h


def _state() -> AgentState:
    held = {"id": "d-1", "address": SLOT, "kind": "mdev_type", "type": "VGPU_4Q", "consumer": "vm-1"}
    return AgentState(host_id="x", assigned={"d-1": {"device": held}})


def test_the_agents_own_mdev_leaves_its_gpu_offered(tmp_path: Path) -> None:
    h = _gpu(tmp_path, [OURS])
    own = HeldPartitions.of_state(_state()).mdev_uuids
    assert own == {OURS}
    inv = build_inventory(Sysfs(h.root), parse_config({"device": RULES}), None, own_mdevs=own)
    gpu = next(d for d in inv.devices if d.address == GPU)
    assert gpu.offered and gpu.type == "GPU_T4"
    assert len([d for d in inv.offered() if d.type == "VGPU_4Q"]) == 4  # the slots stay 4
    # without the agent's state the same mdev is someone else's
    inv = build_inventory(Sysfs(h.root), parse_config({"device": RULES}), None)
    assert FLAG_MDEV_IN_USE in next(d for d in inv.devices if d.address == GPU).flags


def test_an_mdev_made_by_someone_else_beside_the_agents_own_keeps_the_gpu_back(tmp_path: Path) -> None:
    h = _gpu(tmp_path, [OURS, THEIRS])
    inv = build_inventory(Sysfs(h.root), parse_config({"device": RULES}), None, own_mdevs={OURS})
    gpu = next(d for d in inv.devices if d.address == GPU)
    assert not gpu.offered and FLAG_MDEV_IN_USE in gpu.flags


def test_slots_that_are_not_partitions_of_their_gpu_keep_it_back(tmp_path: Path) -> None:
    """mdev types of other vendors are plain slots: no pool tells the server the GPU is carved,
    so while an mdev runs the GPU is not offered, the agent's own or not."""
    h = _gpu(tmp_path, [OURS], nvidia=False)
    inv = build_inventory(Sysfs(h.root), parse_config({"device": RULES}), None, own_mdevs={OURS})
    assert FLAG_MDEV_IN_USE in next(d for d in inv.devices if d.address == GPU).flags


def test_agent_discover_reads_the_held_slots_from_the_state_file(tmp_path: Path) -> None:
    h = _gpu(tmp_path, [OURS])
    state = tmp_path / "state.json"
    st = _state()
    state.write_text(json.dumps({"host_id": st.host_id, "host": "h1", "assigned": st.assigned}))
    conf = tmp_path / "agent.toml"
    rules = tomli_w.dumps({"device": RULES})
    conf.write_text(f'host = "h1"\nstate_file = "{state}"\n{rules}')
    res = CliRunner().invoke(
        app, ["discover", "--config", str(conf), "--sysfs-root", str(h.root), "-f", "json"]
    )
    assert res.exit_code == 0, res.output
    gpu = next(d for d in json.loads(res.stdout) if d["address"] == GPU)
    assert gpu["offered"] and gpu["type"] == "GPU_T4"
