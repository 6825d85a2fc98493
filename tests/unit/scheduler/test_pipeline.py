"""Ranking, explanations, claim order, capacity and quota."""

from __future__ import annotations

import random

from devassign.scheduler import (
    Policy,
    Quota,
    ReasonCode,
    check_quota,
    claim_order,
    explain,
    schedule,
)
from devassign.scheduler.capacity import capacity
from tests.unit.scheduler.helpers import gpus, host, one, req, snapshot, vfs


def test_pack_prefers_the_busier_host_and_spread_the_emptier() -> None:
    busy = host("busy", gpus(4), gpus(4, state="assigned"))
    empty = host("empty", gpus(8))
    request = req(one("GPU_A100", name="gpu"))
    packed = schedule(request, snapshot(empty, busy), Policy(mode="pack"))
    spread = schedule(request, snapshot(busy, empty), Policy(mode="spread"))
    assert [p.host for p in packed.placements] == ["busy", "empty"]
    assert [p.host for p in spread.placements] == ["empty", "busy"]
    assert all(0.0 <= v <= 1.0 for p in packed.placements for v in p.scores.values())


def test_numa_locality_ranks_one_node_first() -> None:
    split = host("split", gpus(1, numa=0), gpus(1, numa=1))
    local = host("local", gpus(2, numa=1))
    decision = schedule(req(one("GPU_A100", 2, name="gpu")), snapshot(split, local))
    assert [p.host for p in decision.placements] == ["local", "split"]
    assert decision.placements[0].scores["numa"] == 1.0
    assert decision.placements[1].scores["numa"] == 0.5


def test_explanation_counts_each_filter_and_names_the_closest() -> None:
    hosts = [
        host("none", vfs(1)),
        host("split", vfs(2, numa=0, used=1), vfs(2, numa=1, used=1)),
        host("down", vfs(4), up=False),
    ]
    request = req(
        one("NIC_VF_1G", 2, name="nic"),
        constraints=[{"requests": ["nic"], "match": "numa_node"}],
        hosts=["none", "split", "down", "ghost"],
    )
    decision = schedule(request, snapshot(*hosts))
    e = decision.explanation
    assert not decision.fits
    assert e.removed == {"host_down": 1, "not_enough_free": 1, "constraint_unsatisfied": 1}
    assert [v.sentence for v in e.hosts] == [
        "none: needs 2 NIC_VF_1G, has 1 free",
        "split: needs 2 NIC_VF_1G on one NUMA node, has 1 on node 0 and 1 on node 1",
        "down: is down (no report received recently)",
        "ghost: is not a known host, or has no devices",
    ]
    assert e.closest[0].host == "split"
    assert e.summary() == (
        "no host fits: 3 hosts considered; host_down: 1, not_enough_free: 1, constraint_unsatisfied: 1"
    )


def test_explain_gives_every_host_a_verdict() -> None:
    decision = explain(req(one("GPU_A100", name="gpu")), snapshot(host("a", gpus(1)), host("b")))
    assert [v.sentence for v in decision.explanation.hosts] == [
        "a: fits",
        "b: needs 1 GPU_A100, has 0 free",
    ]


def test_hosts_not_asked_for_are_removed() -> None:
    decision = schedule(
        req(one("GPU_A100", name="gpu"), hosts=["b"]), snapshot(host("a", gpus(1)), host("b", gpus(1)))
    )
    assert [p.host for p in decision.placements] == ["b"]
    assert decision.explanation.removed == {"host_not_requested": 1}


def test_claim_order_shuffles_only_the_best_few_and_is_seedable() -> None:
    hosts = [host(f"h{i}", gpus(1), gpus(i, state="assigned")) for i in range(6)]
    placements = schedule(req(one("GPU_A100", name="gpu")), snapshot(*hosts)).placements
    first = claim_order(placements, 3, random.Random(7))
    assert claim_order(placements, 3, 7) == first
    assert {p.host for p in first[:3]} == {p.host for p in placements[:3]}
    assert first[3:] == placements[3:]
    seen = {claim_order(placements, 3, seed)[0].host for seed in range(50)}
    assert seen == {p.host for p in placements[:3]}


def test_capacity_counts_per_host_and_in_total() -> None:
    request = req(one("NIC_VF_1G", 2, name="nic"), constraints=[{"requests": ["nic"], "match": "numa_node"}])
    cap = capacity(request, snapshot(host("a", vfs(5, numa=0), vfs(3, numa=1)), host("b", vfs(1))))
    assert cap.per_host == {"a": 3, "b": 0}
    assert cap.total == 3
    assert not cap.truncated


def test_capacity_stops_at_the_limit() -> None:
    cap = capacity(req(one("GPU_A100", name="gpu")), snapshot(host("a", gpus(5))), limit_per_host=2)
    assert cap.per_host == {"a": 2}
    assert cap.truncated


def test_capacity_respects_pf_vf_exclusion() -> None:
    request = req(one("NIC_VF_1G_PF", name="pf"))
    assert capacity(request, snapshot(host("a", vfs(2, with_pf=True)))).total == 1


def test_quota_within_and_over() -> None:
    request = req(one("GPU_A100", 2, name="gpu"))
    assert check_quota(request, Quota({"GPU_A100": 4}, {"GPU_A100": 2})).ok
    verdict = check_quota(request, Quota({"GPU_A100": 4}, {"GPU_A100": 3}))
    assert not verdict.ok
    assert verdict.message() == "over quota: GPU_A100: limit 4, 3 in use, 2 requested"


def test_quota_lets_first_available_fall_back() -> None:
    request = req(one("GPU_A100", 2, name="gpu", first_available=[{"type": "GPU_T4", "count": 4}]))
    quota = Quota({"GPU_A100": 1})
    assert check_quota(request, quota).ok
    decision = schedule(request, snapshot(host("a", gpus(2), gpus(4, type="GPU_T4"))), quota=quota)
    assert decision.placements[0].chosen[0].type == "GPU_T4"


def test_quota_in_the_fit_names_the_reason() -> None:
    request = req(one("GPU_A100", 2, name="gpu", first_available=[{"type": "GPU_T4", "count": 4}]))
    decision = schedule(request, snapshot(host("a", gpus(2))), quota=Quota({"GPU_A100": 1}), explain_all=True)
    reason = decision.explanation.hosts[0].reason
    assert reason is not None
    assert reason.code is ReasonCode.OVER_QUOTA
