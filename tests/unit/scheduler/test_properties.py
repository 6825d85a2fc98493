"""Properties of any fit: no device twice, only free devices, constraints hold."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devassign.scheduler import DeviceView, HostView, Request
from devassign.scheduler.fit import attribute_value, fit
from tests.unit.scheduler.helpers import req

pytestmark = pytest.mark.slow  # hypothesis, 500 examples in all

STATES = ["available"] * 4 + ["assigned", "reserved", "cleaning", "quarantined"]
TYPES = ["A", "B"]


@st.composite
def hosts(draw: st.DrawFn) -> HostView:
    devices: list[DeviceView] = []
    for p in range(draw(st.integers(0, 3))):
        pf = f"0000:{0x30 + p:02x}:00.0"
        numa = draw(st.sampled_from([0, 1, None]))
        devices.append(
            DeviceView(
                pf,
                pf,
                "sriov_pf",
                "A",
                numa,
                100 + p,  # never in a VF's group: that VF could never be taken
                None,
                state=draw(st.sampled_from(STATES)),
            )
        )
        for v in range(draw(st.integers(0, 5))):
            address = f"0000:{0x30 + p:02x}:01.{v}"
            devices.append(
                DeviceView(
                    address,
                    address,
                    "sriov_vf",
                    draw(st.sampled_from(TYPES)),
                    numa,
                    draw(st.integers(0, 9)),
                    pf,
                    state=draw(st.sampled_from(STATES)),
                    healthy=draw(st.booleans()),
                )
            )
    return HostView("h", tuple(devices))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    n = draw(st.integers(1, 3))
    body = [
        {"name": f"r{i}", "type": draw(st.sampled_from(TYPES)), "count": draw(st.integers(1, 3))}
        for i in range(n)
    ]
    constraints = []
    for _ in range(draw(st.integers(0, 2))):
        names = draw(st.lists(st.sampled_from([b["name"] for b in body]), min_size=1, unique=True))
        mode = draw(st.sampled_from(["match", "distinct"]))
        attr = draw(st.sampled_from(["numa_node", "parent", "iommu_group"]))
        constraints.append({"requests": names, mode: attr})
    return req(*body, constraints=constraints)


@settings(max_examples=300, deadline=None)
@given(hosts(), requests())
def test_a_fit_is_always_valid(host: HostView, request: Request) -> None:
    result = fit(host, request)
    if result.chosen is None:
        assert result.reason is not None
        return
    chosen = [i for c in result.chosen for i in c.device_ids]
    taken = result.device_ids()
    assert len(taken) == len(set(taken)), "a device twice"
    assert all(i in host.free_ids for i in taken), "a device that is not free"
    by_name = {c.name: c for c in result.chosen}
    for r in request.requests:
        c = by_name[r.name]
        assert len(c.device_ids) == r.alternatives[c.alternative].count
        assert all(host.by_id[i].type == c.type for i in c.device_ids)
    addresses = {host.by_id[i].address for i in taken}
    assert not any(host.by_id[i].parent in addresses for i in taken), "a PF with its own VF"
    for con in request.constraints:
        values = [
            attribute_value(host.by_id[i], con.attribute)
            for name in con.requests
            for i in by_name[name].device_ids
        ]
        assert None not in values
        if con.mode == "match":
            assert len(set(values)) <= 1
        else:
            assert len(set(values)) == len(values)
    assert len(set(chosen)) == len(chosen)


@settings(max_examples=200, deadline=None)
@given(hosts(), requests())
def test_no_fit_without_constraints_means_a_type_is_short(host: HostView, request: Request) -> None:
    """Without constraints or PF/VF pairs the search is complete: a refusal is a real shortage."""
    plain = Request(request.requests)
    result = fit(host, plain)
    need: dict[str, int] = defaultdict(int)
    for r in plain.requests:
        need[r.first.type] += r.first.count
    usable = {
        t: sum(
            1
            for d in host.free_by_type.get(t, ())
            if host.group_of(d) == (d,) or all(m.id in host.free_ids for m in host.group_of(d))
        )
        for t in need
    }
    # A PF and its own VF never go in one allocation, whatever their types (found by this
    # property with a type-A PF and its type-B VF): that refusal is not a shortage.
    pf_and_vf = any(
        d.kind == "sriov_vf"
        and d.type in need
        and d.parent in host.by_address
        and host.by_address[d.parent].type in need
        for d in host.devices
    )
    if result.chosen is None and not pf_and_vf:
        assert any(need[t] > usable[t] for t in need)


@settings(max_examples=200, deadline=None)
@given(hosts(), st.lists(requests(), min_size=2, max_size=6))
def test_a_reused_view_answers_as_a_fresh_one(host: HostView, asked: list[Request]) -> None:
    """The store hands the same view to claim after claim while its host is unchanged, and
    the scheduler keeps what it derives from the view on it: each answer must be the one a
    fresh view of the same devices gives, whatever was asked of it before."""
    for request in asked:
        fresh = HostView(host.name, host.devices, host.up)
        assert fit(host, request) == fit(fresh, request)


def test_a_view_keeps_few_small_request_shapes() -> None:
    """What the fit keeps on a cached view is bounded: large request shapes (many alternatives
    or constraints, which a client could vary endlessly) and a refusal's diagnosis are not kept,
    and at most a handful of shapes are."""
    from devassign.scheduler.fit import _MEMO_ALTERNATIVES, _MEMO_MAX
    from tests.unit.scheduler.helpers import vfs

    view = HostView("h", tuple(vfs(16, numa=0)))

    def shapes() -> int:
        return len(view.memo.get("shapes", {}))

    others = [{"type": "NIC_VF_1G", "count": k} for k in range(2, _MEMO_ALTERNATIVES + 2)]
    wide = {"name": "r", "type": "NIC_VF_1G", "first_available": others}
    assert fit(view, req(wide)).chosen is not None
    assert shapes() == 0
    apart = [{"name": n, "type": "NIC_VF_1G"} for n in ("a", "b")]
    rules = [{"requests": ["a", "b"], "distinct": "numa_node"}, {"requests": ["a", "b"], "match": "parent"}]
    one_numa = req(*apart, constraints=rules)
    assert fit(view, one_numa).chosen is None  # every VF is on NUMA node 0
    assert shapes() == 1  # the shape itself, not the diagnosis's relaxed ones
    for n in range(1, 2 * _MEMO_MAX):
        fit(
            view,
            req(
                *({"name": f"r{i}", "type": "NIC_VF_1G"} for i in range(n % _MEMO_ALTERNATIVES + 1)),
                constraints=[{"requests": ["r0"], "match": f"attributes.k{n}"}],
            ),
        )
    assert shapes() == _MEMO_MAX
