"""A claim's candidate read: the best rank comes first, its equal hosts in a random order (so
concurrent claims do not all race for the same host); larger reads keep the index's order;
unchanged hosts are reused views, a changed host is read afresh."""

from __future__ import annotations

import pytest

from devassign import schemas
from devassign.store import Store
from devassign.store.claims import ClaimOrder, Pick
from tests.conftest import vf


def _hosts(store: Store, n: int, free: dict[int, int] | None = None) -> dict[str, int]:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "t")
    for i in range(n):
        devs = [vf(f"0000:3b:02.{k}") for k in range((free or {}).get(i, 4))]
        store.apply_report(f"h{i:02}", schemas.InventoryReport(generation=1, devices=devs), "t")
    return store.type_ids(["NIC_VF_1G"])


@pytest.mark.parametrize("spread", [False, True])
def test_the_best_rank_comes_first_and_its_hosts_in_random_order(store: Store, spread: bool) -> None:
    # pack: h03 and h07 (2 free) are the fullest; spread: every other host (4 free) ties.
    ids = _hosts(store, 20, {3: 2, 7: 2, 11: 3})
    firsts, reads = set(), []
    for _ in range(40):
        snap = store.candidates({ids["NIC_VF_1G"]: 1}, any_of=[], names=[], spread=spread, limit=8)
        names = [h.name for h in snap.hosts]
        assert len(names) == 8 == len(set(names))
        reads.append(names)
        firsts.add(names[0])
    for names in reads:
        if spread:
            assert not {"h03", "h07", "h11"} & set(names)  # 17 hosts have more free
        else:
            assert set(names[:2]) == {"h03", "h07"} and names[2] == "h11"
            assert names[3:] == ["h00", "h01", "h02", "h04", "h05"]  # worse ranks: index order
    assert firsts == {"h03", "h07"} if not spread else len(firsts) > 3


def test_a_large_read_keeps_the_index_order(store: Store) -> None:
    ids = _hosts(store, 40)
    reads = {
        tuple(
            h.name
            for h in store.candidates(
                {ids["NIC_VF_1G"]: 1}, any_of=[], names=[], spread=False, limit=33
            ).hosts
        )
        for _ in range(5)
    }
    assert reads == {tuple(f"h{i:02}" for i in range(33))}


def test_unchanged_hosts_are_reused_and_a_claimed_host_is_read_afresh(store: Store) -> None:
    ids = _hosts(store, 2)
    need = {ids["NIC_VF_1G"]: 1}
    before = store.candidates(need, any_of=[], names=[], spread=False, limit=8).by_name
    again = store.candidates(need, any_of=[], names=[], spread=False, limit=8).by_name
    assert again["h00"] is before["h00"] and again["h01"] is before["h01"]
    device = before["h00"].devices[0]
    store.claim(
        ClaimOrder(
            host="h00",
            chosen=[Pick("nic", (device.id,))],
            consumer="vm-1",
            project="p",
            key=None,
            request_doc={},
            actor="t",
        )
    )
    after = store.candidates(need, any_of=[], names=[], spread=False, limit=8).by_name
    assert after["h01"] is before["h01"]
    assert after["h00"] is not before["h00"]
    assert after["h00"].by_id[device.id].state == "reserved"
    assert before["h00"].by_id[device.id].state == "available"
    # The claimed host's other devices are the same views: only the changed row is rebuilt.
    for d in before["h00"].devices[1:]:
        assert after["h00"].by_id[d.id] is d


def test_the_device_views_kept_are_bounded() -> None:
    """Hosts and device views are both kept within the cache's bound, oldest out first."""
    from devassign.store.candidates import _N_DEVICE, ViewCache

    cache = ViewCache(max_devices=40)
    blank = (None,) * (_N_DEVICE - 1)  # the facts, attributes, state, ...: none needed here
    for h in range(20):
        rows = tuple((f"d{h * 4 + k}", *blank) for k in range(4))
        assert [d.id for d in cache.get(f"h{h}", True, rows).devices] == [r[0] for r in rows]
    assert len(cache._by_row) == 40 and cache._devices == 40
    assert ("d0", *blank) not in cache._by_row and ("d79", *blank) in cache._by_row


@pytest.mark.parametrize("spread", [False, True])
def test_the_driver_read_and_sqlalchemys_find_the_same_hosts_and_devices(
    store: Store, spread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the candidate read runs on psycopg with its text rendered once per set of
    type ids and counts: each shape (one need, two needs, any of several types) must read what
    SQLAlchemy's execution of the same statement reads."""
    from devassign.store import candidates

    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "t")
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_10G"), "t")
    for i in range(12):
        devs = [vf(f"0000:3b:02.{k}") for k in range(1 + i % 4)]
        devs += [vf(f"0000:5e:02.{k}", type="NIC_VF_10G") for k in range(i % 3)]
        store.apply_report(f"h{i:02}", schemas.InventoryReport(generation=1, devices=devs), "t")
    ids = store.type_ids(["NIC_VF_1G", "NIC_VF_10G"])
    one, ten = ids["NIC_VF_1G"], ids["NIC_VF_10G"]
    shapes: list[tuple[dict[int, int], list[int], int]] = [
        ({one: 1}, [], 4),
        ({one: 3}, [], 8),
        ({one: 2, ten: 1}, [], 8),
        ({}, [one, ten], 5),
        ({one: 1}, [], 40),  # past the rotated reads: the index's order
    ]

    def read(needs: dict[int, int], any_of: list[int], limit: int) -> list[tuple[str, tuple[str, ...]]]:
        snap = store.candidates(needs, any_of=any_of, names=[], spread=spread, limit=limit)
        return sorted((h.name, tuple(sorted(d.id for d in h.devices))) for h in snap.hosts)

    monkeypatch.setattr(candidates.random, "random", lambda: 0.5)  # the same rotation
    driver = [read(*s) for s in shapes]
    real = candidates.driver_rows
    used = []

    def spy(*args: object, **kwargs: object) -> object:
        used.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(candidates, "driver_rows", spy)
    assert [read(*s) for s in shapes] == driver
    assert len(used) == (len(shapes) if store.db.engine.dialect.name == "postgresql" else 0)
    monkeypatch.setattr(candidates, "driver_rows", lambda *a, **k: pytest.fail("driver used"))
    monkeypatch.setattr(store.db.engine.dialect, "name", "not-postgresql")
    assert [read(*s) for s in shapes] == driver
    assert all(driver)
