"""A gang's instances on one host come from one search kept from instance to instance
(``fit.Instances``), not from a view of the whole host per instance: the same plan, at a
cost that grows with instances + devices, not their product."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from devassign.scheduler import HostView, Request
from devassign.scheduler import gang as gang_module
from devassign.scheduler.fit import Instances
from devassign.scheduler.gang import plan
from tests.unit.scheduler.helpers import count_view_devices, host, one, req, snapshot, vfs
from tests.unit.scheduler.test_properties import hosts, requests

pytestmark = pytest.mark.slow  # hypothesis


def _per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plan as before: the shared search finds nothing, so every instance is scheduled on a
    view of the host with the earlier ones held."""
    monkeypatch.setattr(Instances, "next", lambda self, quota_left: (None, 0))


@settings(max_examples=300, deadline=None)
@given(hosts(), requests())
def test_the_shared_search_plans_as_a_view_per_instance_does(host: HostView, request: Request) -> None:
    shared = plan(request, 6, snapshot(host))
    with pytest.MonkeyPatch.context() as mp:
        _per_instance(mp)
        each = plan(request, 6, snapshot(host))
    assert [p.device_ids() for p in shared.placements] == [p.device_ids() for p in each.placements]
    assert shared.message == each.message
    ids = [i for p in shared.placements for i in p.device_ids()]
    assert len(ids) == len(set(ids))


def test_a_large_gang_on_a_large_host_builds_few_host_views(monkeypatch: pytest.MonkeyPatch) -> None:
    big = host("big", vfs(2000))
    seen_so_far = count_view_devices(monkeypatch)
    found = plan(req(one("NIC_VF_1G", 1, name="nic")), 1000, snapshot(big))
    assert found.fits and found.placed == 1000
    # the snapshot's view and the held one: not one per instance
    assert seen_so_far() <= 4 * 2000, seen_so_far()


def test_a_plan_that_must_build_a_view_per_instance_stops_at_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _per_instance(monkeypatch)
    monkeypatch.setattr(gang_module, "MAX_VIEW_DEVICES", 50 * 200)
    found = plan(req(one("NIC_VF_1G", 1, name="nic")), 150, snapshot(host("big", vfs(200))))
    # the first; one from the view that says why the shared search found no more (here it
    # finds one: the search is stubbed), not charged; then 50 views' worth
    assert not found.fits and found.placed == 52
    assert "search_budget_exhausted" in found.message
    assert "host views of 10,000 devices" in found.explanation.closest[0].sentence
