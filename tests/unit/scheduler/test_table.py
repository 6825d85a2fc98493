"""One table of named scheduling cases: the devices chosen or the reason given, and steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from devassign.scheduler import Policy, ReasonCode, Request, schedule
from devassign.scheduler.fit import fit
from tests.unit.scheduler.helpers import device, gpus, host, one, req, snapshot, vfs, vgpus

PF_A = "0000:3b:00.0"
PF_B = "0000:5e:00.0"
NUMA = [{"requests": ["nic"], "match": "numa_node"}]


@dataclass
class Case:
    name: str
    host: Any
    request: Request
    devices: dict[str, list[str]] | None = None  # request name -> chosen ids (None: must fail)
    reason: ReasonCode | None = None
    message: str | None = None
    max_steps: int | None = None
    alternative: dict[str, int] = field(default_factory=dict)
    companions: dict[str, list[str]] = field(default_factory=dict)


def _vf(pf: str, i: int) -> str:
    return f"{pf}/vf{i}"


CASES = [
    Case(
        "one_vf_fits",
        host("c1", vfs(2, pf=PF_A)),
        req(one("NIC_VF_1G", name="nic")),
        devices={"nic": [_vf(PF_A, 0)]},
        max_steps=1,
    ),
    Case(
        "not_enough_free",
        host("c1", vfs(2, pf=PF_A, used=1)),
        req(one("NIC_VF_1G", 2, name="nic")),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message="needs 2 NIC_VF_1G, has 1 free",
    ),
    Case(
        "eight_identical_requests_take_a_handful_of_steps",
        host("c1", vfs(8, pf=PF_A)),
        req(*[one("NIC_VF_1G", name=f"n{i}") for i in range(8)]),
        devices={f"n{i}": [_vf(PF_A, i)] for i in range(8)},
        max_steps=8,
    ),
    Case(
        "nine_identical_requests_fail_fast",
        host("c1", vfs(8, pf=PF_A)),
        req(*[one("NIC_VF_1G", name=f"n{i}") for i in range(9)]),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message="needs 9 NIC_VF_1G (for n0, n1, n2, n3, n4, n5, n6, n7 and n8 together), has 8 free",
        max_steps=0,
    ),
    Case(
        "numa_four_of_sixty_four",
        host("c1", vfs(32, numa=0, pf=PF_A), vfs(32, numa=1, pf=PF_B)),
        req(one("NIC_VF_1G", 4, name="nic"), constraints=NUMA),
        devices={"nic": [_vf(PF_A, i) for i in range(4)]},
        max_steps=2,
    ),
    Case(
        "numa_split_refused",
        host("compute-7", vfs(4, numa=0, pf=PF_A, used=3), vfs(4, numa=1, pf=PF_B, used=3)),
        req(one("NIC_VF_1G", 2, name="nic"), constraints=NUMA),
        reason=ReasonCode.CONSTRAINT_UNSATISFIED,
        message="needs 2 NIC_VF_1G on one NUMA node, has 1 on node 0 and 1 on node 1",
        max_steps=20,
    ),
    Case(
        "gpu_and_nic_on_one_numa_node",
        host("c1", gpus(1, numa=0), vfs(2, numa=1, pf=PF_B), gpus(1, numa=1)),
        req(
            one("GPU_A100", name="gpu"),
            one("NIC_VF_1G", name="nic"),
            constraints=[{"requests": ["gpu", "nic"], "match": "numa_node"}],
        ),
        devices={"nic": [_vf(PF_B, 0)]},
    ),
    Case(
        "same_pf",
        host("c1", vfs(1, numa=0, pf=PF_A), vfs(2, numa=0, pf=PF_B)),
        req(one("NIC_VF_1G", 2, name="nic"), constraints=[{"requests": ["nic"], "match": "pf"}]),
        devices={"nic": [_vf(PF_B, 0), _vf(PF_B, 1)]},
    ),
    Case(
        "distinct_iommu_groups_refused",
        host("c1", gpus(2, group=7)),
        req(
            one("GPU_A100", name="a"),
            one("GPU_A100", name="b"),
            constraints=[{"requests": ["a", "b"], "distinct": "iommu_group"}],
        ),
        reason=ReasonCode.CONSTRAINT_UNSATISFIED,
        message="needs 2 GPU_A100 in different IOMMU groups, has 2 in group 7",
    ),
    Case(
        "iommu_group_taken_whole",
        host(
            "c1",
            [device("0000:17:00.0", "GPU_A100", iommu_group=9, numa_node=0)],
            [device("0000:17:00.1", "GPU_AUDIO", iommu_group=9, numa_node=0)],
        ),
        req(one("GPU_A100", name="gpu")),
        devices={"gpu": ["0000:17:00.0"]},
        companions={"gpu": ["0000:17:00.1"]},
    ),
    Case(
        "iommu_group_partly_in_use_refused",
        host(
            "c1",
            [device("0000:17:00.0", "GPU_A100", iommu_group=9)],
            [device("0000:17:00.1", "GPU_AUDIO", iommu_group=9, state="assigned")],
        ),
        req(one("GPU_A100", name="gpu")),
        reason=ReasonCode.IOMMU_GROUP_BUSY,
        message="needs 1 GPU_A100 with whole IOMMU groups free, has 0 "
        "(group 9 not wholly free: a member is held, tainted, unhealthy or being cleaned)",
    ),
    Case(
        "first_available_takes_the_second",
        host("c1", gpus(1), gpus(4, type="GPU_T4")),
        req(one("GPU_A100", 2, name="gpu", first_available=[{"type": "GPU_T4", "count": 4}])),
        alternative={"gpu": 1},
    ),
    Case(
        "first_available_prefers_the_first",
        host("c1", gpus(2), gpus(4, type="GPU_T4")),
        req(one("GPU_A100", 2, name="gpu", first_available=[{"type": "GPU_T4", "count": 4}])),
        alternative={"gpu": 0},
    ),
    Case(
        "first_available_none_fits",
        host("c1", gpus(1), gpus(2, type="GPU_T4")),
        req(one("GPU_A100", 2, name="gpu", first_available=[{"type": "GPU_T4", "count": 4}])),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message="needs 2 GPU_A100 or 4 GPU_T4, has 1 GPU_A100 and 2 GPU_T4 free",
    ),
    Case(
        "selector_picks_the_big_gpu",
        host(
            "c1",
            [device("0000:17:00.0", "GPU_A100", attributes={"memory_mib": 16384})],
            [device("0000:18:00.0", "GPU_A100", attributes={"memory_mib": 81920})],
        ),
        req(one("GPU_A100", name="gpu", selector="device.attributes.memory_mib >= 40960")),
        devices={"gpu": ["0000:18:00.0"]},
    ),
    Case(
        "selector_matches_too_few",
        host("c1", gpus(3, memory_mib=16384), gpus(1, memory_mib=81920)),
        req(one("GPU_A100", 2, name="gpu", selector="device.attributes.memory_mib >= 40960")),
        reason=ReasonCode.SELECTOR_MISMATCH,
        message=("needs 2 GPU_A100 matching device.attributes.memory_mib >= 40960, has 4 free, 1 matching"),
    ),
    Case(
        "selector_on_missing_attribute_is_no_match",
        host("c1", gpus(2)),
        req(one("GPU_A100", name="gpu", selector="device.attributes.ecc == true")),
        reason=ReasonCode.SELECTOR_MISMATCH,
    ),
    Case(
        "pf_not_free_while_a_vf_is_used",
        host("c1", vfs(2, pf=PF_A, with_pf=True, used=1)),
        req(one("NIC_VF_1G_PF", name="pf")),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message=(
            "needs 1 NIC_VF_1G_PF, has 0 free (1 more held back: a device carved from 0000:3b:00.0 is in use)"
        ),
    ),
    Case(
        "vf_not_free_while_its_pf_is_used",
        host(
            "c1",
            [device(PF_A, "NIC_PF", kind="sriov_pf", state="assigned")],
            vfs(2, pf=PF_A),
        ),
        req(one("NIC_VF_1G", name="nic")),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message="needs 1 NIC_VF_1G, has 0 free (2 more held back: 0000:3b:00.0 is in use whole)",
    ),
    Case(
        "pf_and_its_vf_never_in_one_allocation",
        host("c1", vfs(1, pf=PF_A, with_pf=True, groups=False)),
        req(one("NIC_VF_1G_PF", name="pf"), one("NIC_VF_1G", name="nic")),
        reason=ReasonCode.DEVICE_CONFLICT,
    ),
    Case(
        "vf_sharing_an_iommu_group_with_its_pf_refused",
        host(
            "c1",
            [device(PF_A, "NIC_PF", kind="sriov_pf", iommu_group=3)],
            [device("0000:3b:02.0", "NIC_VF_1G", kind="sriov_vf", iommu_group=3, parent=PF_A)],
        ),
        req(one("NIC_VF_1G", name="nic")),
        reason=ReasonCode.DEVICE_CONFLICT,
    ),
    Case(
        "vfs_of_a_used_pf_first",
        host("c1", vfs(4, pf=PF_A), vfs(4, pf=PF_B, used=1)),
        req(one("NIC_VF_1G", 2, name="nic")),
        devices={"nic": [_vf(PF_B, 1), _vf(PF_B, 2)]},
    ),
    Case(
        "vgpu_slots_on_a_partitioned_gpu_first",
        host("c1", vgpus(4, parent="0000:af:00.0"), vgpus(4, parent="0000:b0:00.0", used=2)),
        req(one("VGPU_T4_4Q", name="vgpu")),
        devices={"vgpu": ["0000:b0:00.0/nvidia-230/2"]},
    ),
    Case(
        "unhealthy_is_not_free",
        host("c1", gpus(1, healthy=False)),
        req(one("GPU_A100", name="gpu")),
        reason=ReasonCode.NOT_ENOUGH_FREE,
        message="needs 1 GPU_A100, has 0 free",
    ),
    Case(
        # Named requests (apart: their selectors differ) on one NUMA node, five free on each:
        # answered at once, not after every way of taking five was tried (out of steps).
        "match_short_of_one_named_request",
        host("c1", vfs(5, numa=0), vfs(5, numa=1)),
        req(
            *[one("NIC_VF_1G", name=f"n{i}", selector=f"{i} >= 0") for i in range(6)],
            constraints=[{"match": "numa_node"}, {"distinct": "address"}],
        ),
        reason=ReasonCode.CONSTRAINT_UNSATISFIED,
        message="needs 6 NIC_VF_1G on one NUMA node, has 5 on node 0 and 5 on node 1",
        max_steps=100,
    ),
    Case(
        "distinct_short_of_one_named_request",
        host("c1", *[vfs(4, numa=0, pf=f"0000:{0x30 + n:02x}:00.0") for n in range(5)]),
        req(
            *[one("NIC_VF_1G", name=f"n{i}", selector=f"{i} >= 0") for i in range(6)],
            constraints=[{"distinct": "parent"}, {"match": "numa_node"}],
        ),
        reason=ReasonCode.CONSTRAINT_UNSATISFIED,
        max_steps=100,
    ),
    Case(
        "budget_exhausted",
        host("c1", *[vfs(1, numa=n % 2, pf=f"0000:{0x20 + n:02x}:00.0") for n in range(12)]),
        req(
            *[
                one("NIC_VF_1G", name=f"n{i}", first_available=[{"type": "NONE", "count": 1}])
                for i in range(7)
            ],
            constraints=[{"match": "numa_node"}],
        ),
        reason=ReasonCode.SEARCH_BUDGET_EXHAUSTED,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case) -> None:
    policy = Policy(budget=10) if case.reason is ReasonCode.SEARCH_BUDGET_EXHAUSTED else Policy()
    decision = schedule(case.request, snapshot(case.host), policy, explain_all=True)
    result = fit(case.host, case.request, budget=policy.budget)
    verdict = decision.explanation.hosts[0]
    if case.reason is None:
        assert decision.fits, verdict.sentence
        assert result.chosen is not None
        chosen = {c.name: c for c in result.chosen}
        for name, ids in (case.devices or {}).items():
            assert list(chosen[name].device_ids) == ids
        for name, index in case.alternative.items():
            assert chosen[name].alternative == index
        for name, ids in case.companions.items():
            assert list(chosen[name].companion_ids) == ids
        assert decision.placements[0].chosen == result.chosen
    else:
        assert not decision.fits
        assert verdict.reason is not None
        assert verdict.reason.code is case.reason, verdict.sentence
        if case.message is not None:
            assert verdict.reason.message == case.message
        assert decision.explanation.removed == {case.reason.value: 1}
    if case.max_steps is not None:
        assert result.steps <= case.max_steps
