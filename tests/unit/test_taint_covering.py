"""``taint_marks.Covering`` finds the taints covering a device through its lineage: the same
taints, in the same order, and the same strongest one, as asking every taint (``applies``)."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from devassign.store.taint_marks import Covering, applies, lineage, strongest

ADDRESSES = ["gpu", "vf0", "vf1", "slot0", "slot1", "nic"]
# slot0 is carved on vf0 (its pool the GPU), vf0 and vf1 are the GPU's; a PF no rule types ("pf")
UP = {"gpu": (None, None), "vf0": ("gpu", None), "vf1": ("gpu", None), "slot0": ("vf0", "gpu"),
      "slot1": ("vf1", "gpu"), "nic": ("pf", None)}  # fmt: skip


def _devices() -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"id-{a}", address=a, parent=UP[a][0], pool=UP[a][1]) for a in ADDRESSES]


@st.composite
def taint_rows(draw: st.DrawFn) -> list[SimpleNamespace]:
    rows = []
    for n in range(draw(st.integers(0, 12))):
        target = draw(st.sampled_from(["host", "device", "parent"]))
        rows.append(
            SimpleNamespace(
                id=draw(st.integers(1, 10_000)) * 100 + n,
                effect=draw(st.sampled_from(["Drain", "NoSchedule", "None"])),
                device_id=f"id-{draw(st.sampled_from(ADDRESSES))}" if target == "device" else None,
                parent=draw(st.sampled_from([*ADDRESSES, "pf"])) if target == "parent" else None,
            )
        )
    return rows


@settings(max_examples=300, deadline=None)
@given(taint_rows())
def test_the_index_covers_what_every_taint_asked_covers(rows: list[SimpleNamespace]) -> None:
    devices = _devices()
    above = lineage(devices)
    index = Covering(rows)
    for d in devices:
        asked = [t for t in rows if applies(t, d.id, d.address, above[d.address])]
        assert index.of(d.id, d.address, above[d.address]) == asked
        assert index.strongest_of(d.id, d.address, above[d.address]) is strongest(asked)
