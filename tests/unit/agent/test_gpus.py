"""The MIG table: placements inside the GPU, the usual layouts, and counters that match the rules."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from devassign.agent.gpus import (
    COMPUTE_COUNTER,
    MODELS,
    GpuModel,
    MigPlacement,
    add_mig_placements,
    consumes,
    counters,
    lookup,
    placement,
    placements,
)
from devassign.agent.model import FoundDevice
from devassign.domain import DeviceKind
from devassign.testing.nvidia_smi import sim_id

# ``nvidia-smi mig -lgipp`` as published (MIG User Guide for the A100; the H100, H100 NVL
# and A30 transcripts): an oracle written independently of the table under test. The B200's
# profiles have no published ids: they are checked under the ids of their shapes (sim_id).
LGIPP_8 = {19: "{0,1,2,3,4,5,6}:1", 15: "{0,2,4,6}:2", 14: "{0,2,4}:2", 9: "{0,4}:4", 5: "{0}:4", 0: "{0}:8"}
LGIPP_A30 = {14: "{0,1,2,3}:1", 5: "{0,2}:2", 0: "{0}:4"}


def lgipp(model: GpuModel) -> dict[int, tuple[list[int], int]]:
    text = LGIPP_A30 if model.name.startswith("A30") else LGIPP_8
    out = {}
    for pid, spec in text.items():
        m = re.fullmatch(r"\{([\d,]+)\}:(\d+)", spec)
        assert m
        out[pid] = ([int(s) for s in m.group(1).split(",")], int(m.group(2)))
    return out


def allowed(model: GpuModel, chosen: list[MigPlacement]) -> bool:
    """The placement rules themselves: published starts, no shared memory slice, and no
    more compute slices than the GPU has."""
    rules = lgipp(model)
    used: set[int] = set()
    for p in chosen:
        starts, size = rules[sim_id(p.profile)]
        if p.start not in starts:
            return False
        span = set(range(p.start, p.start + size))
        if span & used:
            return False
        used |= span
    return sum(p.profile.compute_slices for p in chosen) <= model.compute_slices


def fits(model: GpuModel, chosen: list[MigPlacement]) -> bool:
    total: Counter[str] = Counter()
    for p in chosen:
        total.update(consumes(p))
    cap = counters(model)
    return all(total[k] <= cap[k] for k in total)


def layouts(model: GpuModel, ok: object) -> set[frozenset[tuple[int, int]]]:
    """Every set of placements ``ok`` accepts, built one placement at a time."""
    every = placements(model)
    found: set[frozenset[tuple[int, int]]] = set()

    def grow(i: int, chosen: list[MigPlacement]) -> None:
        found.add(frozenset((sim_id(p.profile), p.start) for p in chosen))
        for j in range(i, len(every)):
            nxt = [*chosen, every[j]]
            if ok(model, nxt):  # type: ignore[operator]
                grow(j + 1, nxt)

    grow(0, [])
    return found


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_placement_lies_within_the_memory_slices(model: GpuModel) -> None:
    for p in placements(model):
        assert p.slices == tuple(range(p.start, p.start + p.profile.memory_slices))
        assert p.slices[0] >= 0 and p.slices[-1] < model.memory_slices
        assert set(consumes(p)) <= set(counters(model))
    assert counters(model)[COMPUTE_COUNTER] == model.compute_slices


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_the_published_placements_are_the_tables(model: GpuModel) -> None:
    assert {sim_id(p): (list(p.starts), p.memory_slices) for p in model.mig_profiles} == lgipp(model)


@pytest.mark.parametrize("model", [m for m in MODELS if m.memory_slices == 8], ids=lambda m: m.name)
@pytest.mark.parametrize(
    "layout",
    [
        [(19, s) for s in range(7)],  # 7 x 1g
        [(14, 0), (14, 2), (14, 4), (19, 6)],  # 3 x 2g + 1g
        [(9, 0), (9, 4)],  # 2 x 3g
        [(5, 0), (9, 4)],  # 4g + 3g
        [(0, 0)],  # 7g
        [(15, 0), (15, 2), (15, 4), (15, 6)],  # 4 x 1g with two memory slices
    ],
)
def test_the_usual_layouts_fit_the_counters(model: GpuModel, layout: list[tuple[int, int]]) -> None:
    by_shape = {sim_id(p): p.name for p in model.mig_profiles}
    chosen = [placement(model, by_shape[pid], start) for pid, start in layout]
    assert all(chosen)
    assert fits(model, chosen)  # type: ignore[arg-type]


def test_the_a30_layouts_fit() -> None:
    a30 = lookup("10de", "20b7")
    assert a30 is not None and a30.memory_slices == 4 and a30.compute_slices == 4
    for layout in (
        [(14, 0), (14, 1), (14, 2), (14, 3)],
        [(5, 0), (5, 2)],
        [(5, 0), (14, 2), (14, 3)],
        [(0, 0)],
    ):
        chosen = [placement(a30, pid, start) for pid, start in layout]
        assert all(chosen) and fits(a30, chosen)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_whatever_fits_the_counters_is_a_layout_the_rules_allow_and_back(model: GpuModel) -> None:
    by_counters = layouts(model, fits)
    by_rules = layouts(model, allowed)
    assert by_counters == by_rules
    assert len(by_counters) > 20


def test_overlaps_do_not_fit() -> None:
    a100 = lookup("10de", "20b2")
    assert a100 is not None
    three = placement(a100, "3g.40gb", 0)
    two = placement(a100, 14, 2)
    assert three and two and not fits(a100, [three, two])
    assert placement(a100, 9, 2) is None
    assert placement(a100, "9g.1gb", 0) is None


def test_lookup_by_pci_ids() -> None:
    assert lookup("10de", "20B2").name == "A100 80GB"  # type: ignore[union-attr]
    assert lookup("0x10DE", "0x2335").name == "H200 141GB"  # type: ignore[union-attr]
    assert lookup("10de", "2330") is lookup("10de", "2331")
    assert lookup("10de", "1eb8") is None
    assert lookup("8086", "20b2") is None
    ids = [d for m in MODELS for d in m.device_ids]
    assert len(ids) == len(set(ids))


def test_profiles_by_id_and_name() -> None:
    h100 = lookup("10de", "2330")
    assert h100 is not None
    assert h100.profile(9) is h100.profile("9") is h100.profile("3g.40gb") is h100.profile("MIG 3g.40gb")
    assert {p.name: p.profile_id for p in h100.mig_profiles} == {
        "1g.10gb": 19,
        "1g.20gb": 15,
        "2g.20gb": 14,
        "3g.40gb": 9,
        "4g.40gb": 5,
        "7g.80gb": 0,
    }
    assert h100.profile(20) is None


def test_b200_by_name_only() -> None:
    """The B200's profiles are published by name and shape; their nvidia-smi ids are not."""
    b200 = lookup("10de", "2901")
    assert b200 is not None and b200.name == "B200 180GB" and b200.memory_gb == 180
    assert [
        (p.name, p.compute_slices, p.memory_slices, p.starts, p.profile_id) for p in b200.mig_profiles
    ] == [
        ("1g.23gb", 1, 1, (0, 1, 2, 3, 4, 5, 6), None),
        ("1g.45gb", 1, 2, (0, 2, 4, 6), None),
        ("2g.45gb", 2, 2, (0, 2, 4), None),
        ("3g.90gb", 3, 4, (0, 4), None),
        ("4g.90gb", 4, 4, (0,), None),
        ("7g.180gb", 7, 8, (0,), None),
    ]
    assert b200.profile("3g.90gb") is b200.profile("MIG 3g.90gb")
    assert b200.profile(9) is None  # no id is guessed


def test_b200_slots_carry_no_guessed_id() -> None:
    gpu = FoundDevice(address="0000:1b:00.0", kind=DeviceKind.PCI, vendor_id="10de", product_id="2901")
    found = [gpu]
    add_mig_placements(found)
    slots = [d for d in found if d.kind is DeviceKind.MIG]
    assert len(slots) == 7 + 4 + 3 + 2 + 1 + 1
    assert all("mig_profile_id" not in d.attributes for d in slots)
    three = next(
        d for d in slots if d.attributes["mig_profile"] == "3g.90gb" and d.attributes["mig_start"] == 4
    )
    assert three.consumes == {
        "mig_slice_4": 1,
        "mig_slice_5": 1,
        "mig_slice_6": 1,
        "mig_slice_7": 1,
        "mig_compute": 3,
    }
