"""MIG through ``devassign agent run --once --simulate`` as separate processes (SYNTHETIC tree):
the simulated host answers ``nvidia-smi`` for its A100 on NVIDIA's driver, so a MIG slot is set
up (its GPU instance made, state kept beside the tree between agent runs), released and
cleaned (the instance destroyed), as on a real host."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from devassign.testing.sysfs import host
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow

GPU = "0000:3b:00.0"


def test_mig_slot_set_up_and_cleaned_by_a_simulated_agent_process(tmp_path: Path) -> None:
    h = host(tmp_path / "tree", vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    conf = tmp_path / "agent.toml"
    with running_server(f"sqlite:///{tmp_path / 'e2e.db'}", auth=False, log=tmp_path / "server.log") as url:
        conf.write_text(
            f'host = "mig-sim"\nserver = "{url}"\nstate_file = "{tmp_path / "state.json"}"\n'
            '[[device]]\ntype = "MIG_2G"\nmatch = { mig_profile = "2g.20gb" }\n'
        )
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "MIG_2G", "--description", "2g.20gb of an A100 80GB", env=env)

        def agent() -> None:
            cli("agent", "run", "--once", "--simulate", "--config", str(conf), "--sysfs-root", str(h.root))

        def allocation(consumer: str) -> dict[str, object]:
            resp = httpx.get(f"{url}/v1/allocations/{consumer}")
            assert resp.status_code == 200, resp.text
            return resp.json()  # type: ignore[no-any-return]

        agent()
        consumer = str(uuid.uuid4())
        claimed = json.loads(
            cli(
                "claim", "--consumer", consumer, "--spec", "hardware_resource:MIG_2G=1", "-f", "json", env=env
            ).stdout
        )
        (slot,) = [d["address"] for d in claimed["devices"]]
        agent()
        assert allocation(consumer)["state"] == "assigned", allocation(consumer)
        smi = json.loads((h.root / ".simulated-nvidia-smi.json").read_text())
        assert smi["gpus"][GPU]["instances"], smi  # the GPU instance exists on the "host"

        cli("release", "--consumer", consumer, env=env)
        agent()
        devices = httpx.get(f"{url}/v1/devices", params={"host": "mig-sim"}).json()
        assert {d["address"]: d["state"] for d in devices}[slot] == "available"
        smi = json.loads((h.root / ".simulated-nvidia-smi.json").read_text())
        assert not smi["gpus"][GPU]["instances"], smi
