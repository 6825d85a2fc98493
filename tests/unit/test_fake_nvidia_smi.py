"""The fake nvidia-smi: wording, refusals, placement rules, and state that outlives the runner."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from devassign.agent.gpus import lookup, placements
from devassign.lifecycle.handlers.mig import parse_compute_instances, parse_gpu_instances
from devassign.lifecycle.host import RunResult
from devassign.testing.nvidia_smi import FakeNvidiaSmi, bus_id, smi_bus_id

GPU = "0000:3b:00.0"
SMI = "00000000:3B:00.0"


@pytest.fixture
def smi(tmp_path: Path) -> FakeNvidiaSmi:
    return FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})


def run(smi: FakeNvidiaSmi, *args: str) -> RunResult:
    return smi.run(["nvidia-smi", *args], env={}, timeout=5)


def enable(smi: FakeNvidiaSmi) -> None:
    assert run(smi, "-i", GPU, "-mig", "1").returncode == 0


def test_bus_ids_in_both_forms() -> None:
    assert bus_id(SMI) == GPU == bus_id("0000:3B:00.0")
    assert smi_bus_id(GPU) == SMI
    assert bus_id("3b:00.0") is None


def test_mig_mode_on_and_off(smi: FakeNvidiaSmi) -> None:
    done = run(smi, "-i", SMI, "-mig", "1")
    assert done == RunResult(0, f"Enabled MIG Mode for GPU {SMI}\nAll done.\n")
    assert smi.mig_enabled(GPU)
    assert run(smi, "-i", GPU, "-mig", "0").stdout.startswith(f"Disabled MIG Mode for GPU {SMI}")
    assert not smi.mig_enabled(GPU)


def test_mode_switch_refused_while_an_instance_exists_or_the_gpu_is_busy(smi: FakeNvidiaSmi) -> None:
    enable(smi)
    assert run(smi, "mig", "-i", GPU, "-cgi", "19:0", "-C").returncode == 0
    for value in ("0", "1"):
        refused = run(smi, "-i", GPU, "-mig", value)
        assert refused.returncode != 0 and "In use by another client" in refused.stderr
    assert smi.mig_enabled(GPU)
    assert run(smi, "mig", "-i", GPU, "-dci", "-gi", "1").returncode == 0
    assert run(smi, "mig", "-i", GPU, "-dgi", "-gi", "1").returncode == 0
    smi.set_flag(GPU, "busy")
    assert run(smi, "-i", GPU, "-mig", "0").returncode != 0
    smi.set_flag(GPU, "busy", False)
    assert run(smi, "-i", GPU, "-mig", "0").returncode == 0


def test_enabling_can_stay_pending(smi: FakeNvidiaSmi) -> None:
    smi.set_flag(GPU, "needs_reset")
    done = run(smi, "-i", GPU, "-mig", "1")
    assert done.returncode == 0 and "pending enable state" in done.stdout
    assert not smi.mig_enabled(GPU)


def test_create_prints_what_the_real_one_prints(smi: FakeNvidiaSmi) -> None:
    enable(smi)
    done = run(smi, "mig", "-i", GPU, "-cgi", "3g.40gb:4", "-C")
    assert done.stdout.splitlines() == [
        "Successfully created GPU instance ID  1 on GPU  0 using profile MIG 3g.40gb (ID  9)",
        "Successfully created compute instance ID  0 on GPU  0 GPU instance ID  1"
        " using profile MIG 3g.40gb (ID  2)",
    ]
    done = run(smi, "mig", "-i", SMI, "-cgi", "19")
    assert (
        done.stdout == "Successfully created GPU instance ID  2 on GPU  0 using profile MIG 1g.10gb (ID 19)\n"
    )
    assert [(i.gpu_instance, i.profile_id, i.start, i.compute_instances) for i in smi.instances(GPU)] == [
        (1, 9, 4, (0,)),
        (2, 19, 0, ()),
    ]


def test_refusals(smi: FakeNvidiaSmi) -> None:
    off = run(smi, "mig", "-i", GPU, "-cgi", "19:0")
    assert off.returncode != 0 and "No MIG-enabled devices found" in off.stderr
    enable(smi)
    assert run(smi, "mig", "-i", GPU, "-cgi", "9:0", "-C").returncode == 0
    overlap = run(smi, "mig", "-i", GPU, "-cgi", "14:2")
    assert overlap.returncode != 0
    assert overlap.stderr.splitlines() == [
        "Unable to create a GPU instance on GPU  0 using profile 14: Insufficient Resources",
        "Failed to create GPU instances: Insufficient Resources",
    ]
    bad_start = run(smi, "mig", "-i", GPU, "-cgi", "9:2")
    assert bad_start.returncode != 0 and "Invalid Argument" in bad_start.stderr
    assert run(smi, "mig", "-i", GPU, "-cgi", "8g.1tb").returncode != 0
    assert len(smi.instances(GPU)) == 1
    # Without a start: the first free placement.
    assert run(smi, "mig", "-i", GPU, "-cgi", "14").returncode == 0
    assert [(i.profile_id, i.start) for i in smi.instances(GPU)][-1] == (14, 4)
    missing = run(smi, "mig", "-i", "0000:99:00.0", "-lgi")
    assert missing.returncode != 0 and "No devices were found" in missing.stderr


def test_listing_tables_parse(smi: FakeNvidiaSmi) -> None:
    enable(smi)
    empty = run(smi, "mig", "-i", GPU, "-lgi")
    assert empty.returncode != 0 and "No GPU instances found: Not Found" in empty.stderr
    for spec in ("19:1", "14:2", "9:4"):
        assert run(smi, "mig", "-i", GPU, "-cgi", spec, "-C").returncode == 0
    table = run(smi, "mig", "-i", GPU, "-lgi")
    assert table.returncode == 0
    assert "|   0  MIG 1g.10gb         19        1          1:1     |" in table.stdout
    rows = parse_gpu_instances(table.stdout)
    assert [(r.name, r.profile_id, r.instance_id, r.start, r.size) for r in rows] == [
        ("1g.10gb", 19, 1, 1, 1),
        ("2g.20gb", 14, 2, 2, 2),
        ("3g.40gb", 9, 3, 4, 4),
    ]
    cis = parse_compute_instances(run(smi, "mig", "-i", GPU, "-lci", "-gi", "3").stdout)
    assert [(c.gpu_instance, c.name, c.profile_id, c.instance_id) for c in cis] == [(3, "3g.40gb", 2, 0)]


def test_destroying_a_gpu_instance_with_compute_instances_fails(smi: FakeNvidiaSmi) -> None:
    enable(smi)
    run(smi, "mig", "-i", GPU, "-cgi", "19:0", "-C")
    refused = run(smi, "mig", "-i", GPU, "-dgi", "-gi", "1")
    assert refused.returncode != 0
    assert refused.stderr.splitlines() == [
        "Unable to destroy GPU instance ID  1 from GPU  0: In use by another client",
        "Failed to destroy GPU instances: In use by another client",
    ]
    smi.set_flag(GPU, "busy")
    assert "In use by another client" in run(smi, "mig", "-i", GPU, "-dci", "-gi", "1").stderr
    smi.set_flag(GPU, "busy", False)
    done = run(smi, "mig", "-i", GPU, "-dci", "-gi", "1")
    assert done.stdout == "Successfully destroyed compute instance ID  0 from GPU  0 GPU instance ID  1\n"
    assert "Not Found" in run(smi, "mig", "-i", GPU, "-dci", "-gi", "1").stderr
    assert (
        run(smi, "mig", "-i", GPU, "-dgi", "-gi", "1").stdout
        == "Successfully destroyed GPU instance ID  1 from GPU  0\n"
    )
    gone = run(smi, "mig", "-i", GPU, "-dgi", "-gi", "1")
    assert gone.returncode != 0 and "Not Found" in gone.stderr


def test_a_compute_instance_can_be_added_back(smi: FakeNvidiaSmi) -> None:
    enable(smi)
    run(smi, "mig", "-i", GPU, "-cgi", "14:0")
    assert run(smi, "mig", "-i", GPU, "-cci", "1", "-gi", "1").returncode == 0
    assert run(smi, "mig", "-i", GPU, "-cci", "1", "-gi", "1").returncode != 0
    assert smi.instances(GPU)[0].compute_instances == (0,)


@pytest.mark.parametrize(
    "args",
    [
        ["-q"],
        ["mig", "-lgi"],
        ["mig", "-i", GPU, "-dgi"],
        ["mig", "-i", GPU, "-lgip"],
        ["mig", "-i", GPU, "-lgi", "-C"],
        ["-i", GPU, "-mig", "1", "-r"],
        ["mig", "-i", GPU, "-cci", "0", "-gi", "1"],
    ],
)
def test_anything_else_is_unsupported(smi: FakeNvidiaSmi, args: list[str]) -> None:
    enable(smi)
    run(smi, "mig", "-i", GPU, "-cgi", "14:0")
    done = run(smi, *args)
    assert done.returncode != 0 and "unsupported by the fake" in done.stderr


def test_state_outlives_the_runner(tmp_path: Path) -> None:
    path = tmp_path / "state" / "smi.json"
    first = FakeNvidiaSmi(path, {GPU: "20b2", "0000:af:00.0": "2330"})
    run(first, "-i", GPU, "-mig", "1")
    run(first, "mig", "-i", GPU, "-cgi", "9:0", "-C")
    again = FakeNvidiaSmi(path, {GPU: "20b2"})
    assert again.mig_enabled(GPU) and not again.mig_enabled("0000:af:00.0")
    assert [(i.profile_id, i.start) for i in again.instances(GPU)] == [(9, 0)]
    assert run(again, "mig", "-i", "0", "-lgi").returncode == 0
    assert again.calls[-1].argv == ["nvidia-smi", "mig", "-i", "0", "-lgi"]
    with pytest.raises(ValueError):
        FakeNvidiaSmi(path, {"0000:01:00.0": "1eb8"})


def test_every_counter_fitting_pair_is_accepted_and_every_overlap_refused(tmp_path: Path) -> None:
    """The fake enforces exactly the table's rules: each pair of placements, both orders."""
    model = lookup("10de", "20b2")
    assert model is not None
    every = placements(model)
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})
    enable(smi)
    for a, b in itertools.permutations(every, 2):
        first = run(smi, "mig", "-i", GPU, "-cgi", f"{a.profile.profile_id}:{a.start}")
        assert first.returncode == 0
        second = run(smi, "mig", "-i", GPU, "-cgi", f"{b.profile.profile_id}:{b.start}")
        assert (second.returncode == 0) == (not set(a.slices) & set(b.slices))
        for inst in smi.instances(GPU):
            assert run(smi, "mig", "-i", GPU, "-dgi", "-gi", str(inst.gpu_instance)).returncode == 0
