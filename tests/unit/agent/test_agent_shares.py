"""What the agent reports of partitionable devices on SYNTHETIC trees: NVIDIA mdev types as
stable slots of their GPU's framebuffer, VFs sharing their PF's bandwidth, MIG placements from
the built-in table, vGPU 17+ types of each VF."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.agent.config import ConfigError, parse_config
from devassign.agent.inventory import build_inventory
from devassign.domain import nvidia_vgpu
from devassign.hostio import Sysfs
from devassign.schemas import ReportedDevice
from tests.fixtures.sysfs import SyntheticHost, host

GPU = "0000:3b:00.0"
PF = "0000:5e:00.0"


def _reported(
    h: SyntheticHost, rules: list[dict[str, object]], seen: dict[str, dict[str, object]] | None = None
) -> dict[str, ReportedDevice]:
    config = parse_config({"host": "h", "device": rules})
    return {d.address: d for d in build_inventory(Sysfs(h.root), config, None, seen).reported()}


def test_the_vgpu_managers_description_is_read() -> None:
    text = "num_heads=4, frl_config=60, framebuffer=4096M, max_resolution=5120x2880, max_instance=4"
    assert nvidia_vgpu(text) == (4096, 4)
    assert nvidia_vgpu("num_heads=1, framebuffer=2G, max_instance=8") == (2048, 8)
    for other in ("", "low_gm_size: 128MB", "framebuffer=4096M", "framebuffer=x, max_instance=4"):
        assert nvidia_vgpu(other) is None


def test_nvidia_mdev_slots_are_what_the_gpu_offers_empty(tmp_path: Path) -> None:
    h = host(tmp_path)
    desc = "num_heads=4, frl_config=60, framebuffer={fb}, max_resolution=5120x2880, max_instance={n}"
    h.mdev_parent(
        GPU,
        types={
            # a 4Q runs: the driver shows no 1B left, and three more 4Q
            "nvidia-222": {
                "name": "GRID T4-1B",
                "available": 0,
                "description": desc.format(fb="1024M", n=16),
            },
            "nvidia-230": {
                "name": "GRID T4-4Q",
                "available": 3,
                "instances": 1,
                "description": desc.format(fb="4096M", n=4),
            },
        },
    )
    found = _reported(h, [{"type": "V1B", "match": {"mdev_type": "nvidia-222"}},
                                 {"type": "V4Q", "match": {"mdev_type": "nvidia-230"}}])  # fmt: skip
    slots_1b = [d for d in found.values() if d.type == "V1B"]
    slots_4q = [d for d in found.values() if d.type == "V4Q"]
    assert (len(slots_1b), len(slots_4q)) == (16, 4)
    one = slots_4q[0]
    assert (one.pool, one.pool_counters, one.consumes, one.mode) == (
        GPU, {"framebuffer_mb": 16384}, {"framebuffer_mb": 4096}, "GRID T4-4Q",
    )  # fmt: skip


def test_a_type_the_idle_gpu_cannot_create_is_not_offered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing runs on the GPU, yet a type shows 0 available (ECC on, a type of another series):
    its slots would only fail their setups, claim after claim. The other type is offered."""
    h = host(tmp_path)
    desc = "num_heads=4, frl_config=60, framebuffer={fb}, max_resolution=5120x2880, max_instance={n}"
    h.mdev_parent(
        GPU,
        types={
            "nvidia-222": {
                "name": "GRID T4-1B",
                "available": 0,
                "description": desc.format(fb="1024M", n=16),
            },
            "nvidia-230": {"name": "GRID T4-4Q", "available": 4, "description": desc.format(fb="4096M", n=4)},
        },
    )
    rules = [
        {"type": "V1B", "match": {"mdev_type": "nvidia-222"}},
        {"type": "V4Q", "match": {"mdev_type": "nvidia-230"}},
    ]
    found = _reported(h, rules)
    assert sorted({d.type for d in found.values()}) == ["V4Q"]
    assert len(found) == 4
    assert "nvidia-222: 0 available instances while nothing runs on the GPU" in caplog.text


def test_vfs_share_their_pfs_link_speed_or_a_configured_bandwidth(tmp_path: Path) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0")
    h.write(f"{h.dev(PF)}/net/ens1f0/speed", "25000")
    link = _reported(h, [{"type": "VF", "match": {"product_id": "154c"}, "pf_bandwidth_mbps": "link"}])
    assert (link[vfs[0]].pool, link[vfs[0]].pool_counters) == (PF, {"bandwidth_mbps": 25000})
    fixed = _reported(h, [{"type": "VF", "match": {"product_id": "154c"}, "pf_bandwidth_mbps": 8000}])
    assert fixed[vfs[1]].pool_counters == {"bandwidth_mbps": 8000}
    plain = _reported(h, [{"type": "VF", "match": {"product_id": "154c"}}])
    assert plain[vfs[0]].pool is None
    h.write(f"{h.dev(PF)}/net/ens1f0/speed", "-1")  # link down: the speed is unknown
    assert (
        _reported(h, [{"type": "VF", "match": {"product_id": "154c"}, "pf_bandwidth_mbps": "link"}])[
            vfs[0]
        ].pool
        is None
    )
    for bad in (0, -5, True, "fast", 10.5):
        with pytest.raises(ConfigError, match="pf_bandwidth_mbps"):
            parse_config(
                {
                    "host": "h",
                    "device": [{"type": "VF", "match": {"kind": "sriov_vf"}, "pf_bandwidth_mbps": bad}],
                }
            )


def test_mig_placements_come_from_the_table_and_only_named_rules_take_them(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci(GPU, "10de", "20b2", cls="030200", iommu_group=12, driver="nvidia")  # A100 80GB
    whole = _reported(h, [{"type": "GPU", "match": {"vendor_id": "10de"}}])
    assert list(whole) == [GPU]  # a rule for whole GPUs takes no placement
    mig = _reported(h, [{"type": "M3", "match": {"mig_profile": "3g.*"}}])
    assert sorted(mig) == [f"{GPU}/mig/3g.40gb@0", f"{GPU}/mig/3g.40gb@4"]
    p = mig[f"{GPU}/mig/3g.40gb@4"]
    assert p.consumes == {
        "mig_slice_4": 1,
        "mig_slice_5": 1,
        "mig_slice_6": 1,
        "mig_slice_7": 1,
        "mig_compute": 3,
    }
    assert p.mode == "MIG" and p.pool == GPU and p.pool_counters["mig_compute"] == 7


def test_vgpu17_types_are_remembered_while_the_gpu_runs_one(tmp_path: Path) -> None:
    h = host(tmp_path)
    types = {1428: ("NVIDIA H200X-141C", 1), 1425: ("NVIDIA H200X-35C", 4)}
    vfs = h.vgpu_gpu(PF, vfs=2, types=types)
    rules: list[dict[str, object]] = [{"type": "V35", "match": {"vgpu_type": "*-35C"}},
                                      {"type": "V141", "match": {"vgpu_type": "*-141C"}}]  # fmt: skip
    seen: dict[str, dict[str, object]] = {}
    first = _reported(h, rules, seen)
    key = f"{PF}@10de:{first[f'{vfs[0]}/vgpu/1425'].product_id}"  # the GPU's slot and model
    assert len(first) == 4 and seen == {key: {"1425": "NVIDIA H200X-35C", "1428": "NVIDIA H200X-141C"}}
    d = first[f"{vfs[0]}/vgpu/1425"]
    assert (d.pool, d.pool_counters, d.consumes, d.mode) == (
        PF, {"framebuffer_mb": 141 * 1024}, {"framebuffer_mb": 35 * 1024}, "NVIDIA H200X-35C",
    )  # fmt: skip
    # While a 35C runs, the VFs list only 35C; the 141C devices stay, as remembered.
    for vf in vfs:
        h.write(f"{h.dev(vf)}/nvidia/creatable_vgpu_types", "1425 : NVIDIA H200X-35C\n")
    assert set(_reported(h, rules, seen)) == set(first)
    assert len(_reported(h, rules, {})) == 2  # without the memory: only what is listed now


def test_remembered_vgpu_types_are_forgotten_when_the_card_is_swapped(tmp_path: Path) -> None:
    """An H100 replaced by an L40S in the same slot: the L40S must not be offered the H100's
    types, nor be sized as an 80 GB card."""
    seen: dict[str, dict[str, object]] = {}
    rules: list[dict[str, object]] = [{"type": "V", "match": {"kind": "vgpu"}}]
    h100 = host(tmp_path / "h100")
    h100.vgpu_gpu(PF, "2331", vfs=1, types={1180: ("NVIDIA H100-80C", 1), 1175: ("NVIDIA H100-20C", 4)})
    assert {d.mode for d in _reported(h100, rules, seen).values()} == {"NVIDIA H100-80C", "NVIDIA H100-20C"}
    l40s = host(tmp_path / "l40s")
    l40s.vgpu_gpu(PF, "26b9", vfs=1, types={1155: ("NVIDIA L40S-48Q", 1), 1153: ("NVIDIA L40S-24Q", 2)})
    devs = _reported(l40s, rules, seen).values()
    assert {d.mode for d in devs} == {"NVIDIA L40S-48Q", "NVIDIA L40S-24Q"}
    assert {d.pool_counters["framebuffer_mb"] for d in devs} == {48 * 1024}
    assert [k for k in seen if k.startswith(PF)] == [f"{PF}@10de:{next(iter(devs)).product_id}"]


@pytest.mark.parametrize(("product", "gb"), [("26b9", 48), ("26b5", 48), ("27b8", 24)])
def test_a_vgpu17_gpu_first_seen_running_one_type_is_sized_as_the_whole_card(
    tmp_path: Path, product: str, gb: int
) -> None:
    """An L40S (or L40, L4: no MIG, so not in the MIG table) whose agent first starts while a
    vGPU made by hand runs: its VFs list only that type, and the GPU was sized by it (one 8Q:
    an 8 GB card, refusing the five more 8Q it runs). Its framebuffer comes from the table."""
    h = host(tmp_path)
    vfs = h.vgpu_gpu(PF, product, vfs=4, types={903: ("NVIDIA L40S-8Q", 6), 900: ("NVIDIA L40S-48Q", 1)})
    h.write(f"{h.dev(vfs[0])}/nvidia/current_vgpu_type", "903")
    for vf in vfs:
        h.write(f"{h.dev(vf)}/nvidia/creatable_vgpu_types", "" if vf == vfs[0] else "903 : NVIDIA L40S-8Q\n")
    found = _reported(h, [{"type": "V8Q", "match": {"vgpu_type": "*-8Q"}}], {})
    assert found and {d.pool_counters["framebuffer_mb"] for d in found.values()} == {gb * 1024}


def test_sriov_vgpu_slots_on_vfs_draw_from_their_pf(tmp_path: Path) -> None:
    """A100 on vGPU 13-16: the mdev types sit on each VF, one instance per VF, and the GPU (the
    PF) is the pool whose framebuffer they share and whose mode they set."""
    h = host(tmp_path)
    vfs = h.sriov_pf(
        GPU, "10de", "20b5", vfs=3, vf_device="20b5", cls="030200", driver="nvidia", vf_driver="nvidia"
    )
    desc = "num_heads=1, frl_config=60, framebuffer={fb}, max_resolution=4096x2160, max_instance={n}"
    for vf in vfs:
        for tid, name, fb, n in (
            ("nvidia-471", "GRID A100D-40C", "40960M", 2),
            ("nvidia-472", "GRID A100D-80C", "81920M", 1),
        ):
            t = f"{h.dev(vf)}/mdev_supported_types/{tid}"
            h.write(f"{t}/name", name)
            h.write(f"{t}/available_instances", "1")
            h.write(f"{t}/device_api", "vfio-pci")
            h.write(f"{t}/description", desc.format(fb=fb, n=n))
            (h.root / t / "devices").mkdir(parents=True, exist_ok=True)
    found = _reported(h, [{"type": "V40C", "match": {"mdev_type": "nvidia-471"}},
                          {"type": "V80C", "match": {"mdev_type": "nvidia-472"}}])  # fmt: skip
    slots = [d for d in found.values() if d.type == "V40C"]
    assert len(slots) == 3  # one per VF
    assert {(d.parent, d.pool) for d in slots} == {(vf, GPU) for vf in vfs}
    assert slots[0].pool_counters == {"framebuffer_mb": 81920} and slots[0].consumes == {
        "framebuffer_mb": 40960
    }
