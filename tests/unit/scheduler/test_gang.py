"""Gang planning: N instances of one request over hosts, all or nothing, with constraints."""

from __future__ import annotations

from collections import Counter

from devassign.scheduler import Policy, Quota, ReasonCode
from devassign.scheduler.gang import Layout, ordinal, plan
from tests.unit.scheduler.helpers import gpus, host, one, req, snapshot

EIGHT = req(one("GPU_A100", 8, name="gpu"))
TWO = req(one("GPU_A100", 2, name="gpu"))


def _all_devices(p: object) -> list[str]:
    return [i for pl in p.placements for i in pl.device_ids()]  # type: ignore[attr-defined]


def test_every_instance_gets_its_own_devices_and_several_fit_on_one_host() -> None:
    snap = snapshot(host("a", gpus(8)), host("b", gpus(4)))
    found = plan(TWO, 6, snap)
    assert found.fits
    assert found.per_host() == {"a": 4, "b": 2}
    ids = _all_devices(found)
    assert len(ids) == len(set(ids)) == 12


def test_pack_fills_a_host_before_the_next_and_spread_deals_round_robin() -> None:
    hosts = [host(f"h{i}", gpus(4)) for i in range(4)]
    packed = plan(TWO, 4, snapshot(*hosts), Policy(mode="pack"))
    spread = plan(TWO, 4, snapshot(*hosts), Policy(mode="spread"))
    assert sorted(packed.per_host().values()) == [2, 2]
    assert sorted(spread.per_host().values()) == [1, 1, 1, 1]


def test_distinct_hosts_and_at_most_k_per_host() -> None:
    hosts = [host(f"h{i}", gpus(8)) for i in range(3)]
    one_each = plan(TWO, 3, snapshot(*hosts), layout=Layout(max_per_host=1))
    assert one_each.fits and sorted(one_each.per_host().values()) == [1, 1, 1]
    two_each = plan(TWO, 5, snapshot(*hosts), layout=Layout(max_per_host=2))
    assert two_each.fits and max(two_each.per_host().values()) == 2
    too_many = plan(TWO, 4, snapshot(*hosts), layout=Layout(max_per_host=1))
    assert not too_many.fits and too_many.placed == 3
    assert "3 of 4 instances fit; the 4th fits on no host" in too_many.message
    assert too_many.explanation.removed == {"constraint_unsatisfied": 3}
    assert "1 per host" in too_many.explanation.closest[0].reason.message  # type: ignore[union-attr]


def test_63_of_64_says_why_the_64th_does_not_fit() -> None:
    hosts = [host(f"h{i:02d}", gpus(8)) for i in range(63)] + [host("short", gpus(7))]
    found = plan(EIGHT, 64, snapshot(*hosts))
    assert not found.fits and found.placed == 63
    assert found.message.startswith("63 of 64 instances fit; the 64th fits on no host")
    closest = found.explanation.closest[0]
    assert closest.host == "short" and closest.reason is not None
    assert closest.reason.code is ReasonCode.NOT_ENOUGH_FREE


def test_same_rack_puts_every_instance_in_one_rack() -> None:
    r1 = [host(f"r1-{i}", gpus(8, rack="r1")) for i in range(2)]
    r2 = [host(f"r2-{i}", gpus(8, rack="r2")) for i in range(3)]
    unracked = host("loose", gpus(8))
    found = plan(EIGHT, 3, snapshot(*r1, unracked, *r2), layout=Layout(same="rack"))
    assert found.fits and found.group == "r2"
    assert set(found.per_host()) == {h.name for h in r2}
    # Four: no rack has four hosts; the best rack (r2) gets 3, and the sentence says so.
    short = plan(EIGHT, 4, snapshot(*r1, unracked, *r2), layout=Layout(same="attributes.rack"))
    assert not short.fits and short.placed == 3 and short.group == "r2"
    assert "rack=r2" in short.message
    # r1's two hosts and the host without a rack are out; r2's are full.
    assert short.explanation.removed == {"not_enough_free": 3, "constraint_unsatisfied": 3}
    messages = " ".join(v.sentence for v in short.explanation.closest)
    assert "holds 1 of the gang's instances" in messages


def test_a_host_whose_devices_disagree_on_the_attribute_is_left_out() -> None:
    mixed = host("mixed", gpus(4, rack="r1"), gpus(4, rack="r2"))
    found = plan(EIGHT, 1, snapshot(mixed), layout=Layout(same="rack"))
    assert not found.fits
    assert "several values of rack" in found.message or "several values of rack" in str(
        [v.reason for v in found.explanation.closest]
    )


def test_the_gang_total_counts_against_the_quota_once() -> None:
    hosts = [host(f"h{i}", gpus(8)) for i in range(4)]
    quota = Quota({"GPU_A100": 6}, {"GPU_A100": 0})
    found = plan(TWO, 4, snapshot(*hosts), quota=quota)
    assert not found.fits and found.placed == 3
    assert "over_quota" in found.explanation.removed
    assert plan(TWO, 3, snapshot(*hosts), quota=quota).fits


def test_no_host_at_all() -> None:
    found = plan(EIGHT, 2, snapshot(host("tiny", gpus(2))))
    assert not found.fits and found.placed == 0
    assert found.message.startswith("0 of 2 instances fit; the 1st fits on no host")
    assert Counter(found.explanation.removed) == Counter({"not_enough_free": 1})


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 64, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "64th", "101st", "111th",
    ]  # fmt: skip
