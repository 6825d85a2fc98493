"""HostView indexes the claim relies on."""

from __future__ import annotations

from devassign.scheduler import HostView
from tests.unit.scheduler.helpers import vfs


def test_has_relatives_only_when_a_parent_or_child_is_reported() -> None:
    alone = HostView("h1", tuple(vfs(4, pf="0000:3b:00.0")))  # VFs whose PF is not offered
    assert not alone.has_relatives([d.id for d in alone.devices])

    family = HostView("h2", tuple(vfs(4, pf="0000:5e:00.0", with_pf=True)))
    pf = next(d for d in family.devices if d.kind == "sriov_pf")
    a_vf = next(d for d in family.devices if d.kind == "sriov_vf")
    assert family.has_relatives([a_vf.id])  # its PF is on the host
    assert family.has_relatives([pf.id])  # its VFs are on the host
    assert family.has_relatives(["not-in-the-view"])  # unknown: check under the lock
