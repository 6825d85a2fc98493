"""A request of alternatives (``first_available``) gets as many candidate hosts as asked, even
when every host has several of the alternatives free (each host then matches once per type)."""

from __future__ import annotations

import pytest

from devassign import schemas
from devassign.store import Store
from tests.conftest import vf


@pytest.mark.parametrize("spread", [False, True])
def test_hosts_with_several_alternatives_free_fill_the_limit(store: Store, spread: bool) -> None:
    for t in ("NIC_VF_1G", "NIC_VF_10G"):
        store.create_type(schemas.ResourceTypeCreate(name=t), "t")
    for i in range(12):
        free = 1 + i % 3  # ranks differ, so the best hosts are known
        devs = [vf(f"0000:3b:02.{k}", "NIC_VF_1G") for k in range(free)]
        devs += [vf(f"0000:5e:02.{k}", "NIC_VF_10G") for k in range(free)]
        store.apply_report(f"h{i:02}", schemas.InventoryReport(generation=1, devices=devs), "t")
    ids = store.type_ids(["NIC_VF_1G", "NIC_VF_10G"])
    snap = store.candidates({}, any_of=list(ids.values()), names=[], spread=spread, limit=6)
    names = [h.name for h in snap.hosts]
    assert len(names) == 6 == len(set(names))
    best = sorted(range(12), key=lambda i: ((1 + i % 3) * (-1 if spread else 1), i * (-1 if spread else 1)))
    assert names == [f"h{i:02}" for i in best[:6]]
