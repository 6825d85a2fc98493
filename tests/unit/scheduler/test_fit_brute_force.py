"""The fit against a brute-force search on small random hosts: PF/VF pairs, shared IOMMU
groups, MIG-like partitions, vGPU framebuffer and modes, PF bandwidth taken by params,
selectors, match/distinct constraints, one to three requests with ``first_available``.

Every fit must be valid (no device twice, free devices only, no parent with its child, pools
within their counters, constraints met, companions exactly the group mates); a refusal must
have no valid choice; and the alternatives chosen must be the earliest any valid choice has,
request by request. ``DEVASSIGN_FIT_CASES`` sets how many hosts (default 3,000; 60,000 take
about a minute).
"""

from __future__ import annotations

import itertools
import os
import random

import pytest

from devassign.scheduler import DeviceView, HostView
from devassign.scheduler.candidates import Candidates
from devassign.scheduler.fit import attribute_value, fit
from devassign.scheduler.shares import Pools, overdrawn
from tests.unit.scheduler.helpers import req

STATES = ["available"] * 12 + ["assigned", "reserved"]


def gen_host(rnd: random.Random) -> HostView:
    devs: list[DeviceView] = []
    for p in range(rnd.randint(0, 2)):
        pf = f"0000:{0x30 + p:02x}:00.0"
        numa = rnd.choice([0, 1])
        bw = rnd.random() < 0.3
        if rnd.random() < 0.5:
            devs.append(
                DeviceView(
                    pf,
                    pf,
                    "sriov_pf",
                    rnd.choice(["P", "A"]),
                    numa,
                    100 + p,
                    None,
                    state=rnd.choice(STATES),
                    attributes={"speed": rnd.randint(1, 2)},
                )
            )
        for v in range(rnd.randint(0, 4)):
            a = f"0000:{0x30 + p:02x}:01.{v}"
            extra = {}
            if bw:
                extra = dict(pool=pf, pool_counters={"bandwidth_mbps": 10})
            devs.append(
                DeviceView(
                    a,
                    a,
                    "sriov_vf",
                    rnd.choice(["A", "B"]),
                    numa,
                    rnd.randint(0, 6),
                    pf,
                    state=rnd.choice(STATES),
                    attributes={"speed": rnd.randint(1, 2)},
                    **extra,
                )
            )
    for g in range(rnd.randint(0, 2)):
        gpu = f"0000:{0x60 + g:02x}:00.0"
        numa = rnd.choice([0, 1])
        if rnd.random() < 0.7:
            devs.append(
                DeviceView(
                    gpu,
                    gpu,
                    "pci",
                    "G",
                    numa,
                    200 + g,
                    None,
                    state=rnd.choice(STATES),
                    attributes={"speed": rnd.randint(1, 2)},
                )
            )
        counters = {"s0": 1, "s1": 1, "s2": 1, "s3": 1, "c": 4}
        if rnd.random() < 0.6:
            # MIG-like placements
            shapes = [
                ("M1", ("s0",)),
                ("M1", ("s1",)),
                ("M1", ("s2",)),
                ("M1", ("s3",)),
                ("M2", ("s0", "s1")),
                ("M2", ("s2", "s3")),
                ("M4", ("s0", "s1", "s2", "s3")),
            ]
            for k, (t, sl) in enumerate(rnd.sample(shapes, rnd.randint(1, len(shapes)))):
                a = f"{gpu}/mig/{t}@{k}"
                cons = {s: 1 for s in sl} | {"c": len(sl)}
                devs.append(
                    DeviceView(
                        a,
                        a,
                        "mig",
                        t,
                        numa,
                        None,
                        gpu,
                        state=rnd.choice(STATES),
                        pool=gpu,
                        pool_counters=counters,
                        consumes=cons,
                        mode="MIG",
                        attributes={"speed": rnd.randint(1, 2)},
                    )
                )
        else:
            for k in range(rnd.randint(1, 4)):
                t = rnd.choice(["V4", "V8"])
                a = f"{gpu}/mdev/{t}/{k}"
                devs.append(
                    DeviceView(
                        a,
                        a,
                        "mdev_type",
                        t,
                        numa,
                        None,
                        gpu,
                        state=rnd.choice(STATES),
                        pool=gpu,
                        pool_counters={"fb": 16},
                        consumes={"fb": 4 if t == "V4" else 8},
                        mode=t,
                        attributes={"speed": rnd.randint(1, 2)},
                    )
                )
    # consistent states: a held partition makes consumed recorded
    return HostView("h", tuple(devs))


TYPES = ["A", "B", "P", "G", "M1", "M2", "M4", "V4", "V8"]


def gen_request(rnd: random.Random, host=None):
    types = TYPES
    if host is not None:
        present = sorted({d.type for d in host.devices if d.id in host.free_ids})
        types = present * 3 + TYPES if present else ["A", "G"]
    n = rnd.randint(1, 3)
    body = []
    for i in range(n):
        r = {"name": f"r{i}", "type": rnd.choice(types), "count": rnd.randint(1, 2)}
        if rnd.random() < 0.3:
            r["selector"] = f"device.attributes.speed == {rnd.randint(1, 2)}"
        if rnd.random() < 0.4:
            r["first_available"] = [
                {"type": rnd.choice(types), "count": rnd.randint(1, 2)} for _ in range(rnd.randint(1, 2))
            ]
        if rnd.random() < 0.15:
            r["params"] = {"min_tx_rate_mbps": rnd.choice([2, 4])}
        body.append(r)
    constraints = []
    for _ in range(rnd.choice([0, 0, 1, 1, 2])):
        names = rnd.sample([b["name"] for b in body], rnd.randint(1, n))
        mode = rnd.choice(["match", "distinct"])
        attr = rnd.choice(["numa_node", "parent", "iommu_group", "attributes.speed"])
        constraints.append({"requests": names, mode: attr})
    return req(*body, constraints=constraints), body


def valid(host: HostView, request, picks) -> bool:
    """picks: per request (alt index, device list)."""
    chosen = [d for _, ds in picks for d in ds]
    if len({d.id for d in chosen}) != len(chosen):
        return False
    taken: dict[str, DeviceView] = {}
    for d in chosen:
        for m in host.group_of(d):
            taken[m.id] = m
    if any(i not in host.free_ids for i in taken):
        return False
    addrs = {d.address for d in taken.values()}
    for d in taken.values():
        if d.parent in addrs or (d.pool and d.pool in addrs):
            return False
    # pools
    pools = Pools.of(host.devices, (d for d in host.devices if d.holding))
    chosen_ids = {d.id for d in chosen}
    for r, (ai, ds) in zip(request.requests, picks, strict=True):
        extra = dict(r.alternatives[ai].extra)
        for d in ds:
            pools.take(d, 1, extra)
    for d in taken.values():
        if d.id not in chosen_ids:
            pools.take(d, 1)
    if overdrawn(pools) is not None:
        return False
    by_name = {r.name: ds for r, (ai, ds) in zip(request.requests, picks, strict=True)}
    for c in request.constraints:
        vals = [attribute_value(d, c.attribute) for n in c.requests for d in by_name[n]]
        if any(v is None for v in vals):
            return False
        if c.mode == "match" and len(set(vals)) > 1:
            return False
        if c.mode == "distinct" and len(set(vals)) != len(vals):
            return False
    return True


def brute(host: HostView, request):
    cands = Candidates()
    options = []
    for r in request.requests:
        opts = []
        for ai, alt in enumerate(r.alternatives):
            usable = cands.of(host, alt).usable
            for combo in itertools.combinations(usable, alt.count):
                opts.append((ai, list(combo)))
        options.append(opts)
    sols = []
    for picks in itertools.product(*options):
        if valid(host, request, picks):
            sols.append(picks)
    return sols


CASES = int(os.environ.get("DEVASSIGN_FIT_CASES", "3000"))


@pytest.mark.parametrize("seed", range(80000, 80000 + CASES))
def test_fit_matches_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    host = gen_host(rnd)
    request, _ = gen_request(rnd, host)
    if overdrawn(Pools.of(host.devices, (d for d in host.devices if d.holding))) is not None:
        pytest.skip("inconsistent held state")
    result = fit(host, request)
    sols = brute(host, request)
    if result.chosen is None:
        assert not sols, f"false refusal {result.reason}; brute: {sols[0]}"
        return
    by_name = {c.name: c for c in result.chosen}
    picks = [
        (by_name[r.name].alternative, [host.by_id[i] for i in by_name[r.name].device_ids])
        for r in request.requests
    ]
    assert valid(host, request, picks), f"invalid fit {result.chosen}"
    # companions exactly the group mates
    exp = set()
    for _, ds in picks:
        for d in ds:
            exp |= {m.id for m in host.group_of(d)}
    assert set(result.device_ids()) == exp
    # first_available: lexicographically first alternative vector
    best = min(tuple(ai for ai, _ in s) for s in sols)
    got = tuple(ai for ai, _ in picks)
    assert got == best, f"alternatives {got}, but {best} fits: {sols[0]}"
