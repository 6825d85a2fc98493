"""The MIG handler against the fake nvidia-smi: placements made, adopted, refused and removed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devassign.domain import DeviceKind
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.mig import GpuInstance, MigHandler, Slot
from devassign.lifecycle.host import HostOps, RecordingNetlink, RecordingRunner, RunResult
from devassign.lifecycle.registry import load_handler
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from tests.unit.lifecycle.support import CONSUMER, GPU, Machine, device

A100 = "20b2"


@pytest.fixture
def smi(tmp_path: Path) -> FakeNvidiaSmi:
    return FakeNvidiaSmi(tmp_path / "nvidia-smi.json", {GPU: A100})


def ops_for(machine: Machine, runner: Any) -> HostOps:
    return HostOps(machine.sysfs, RecordingNetlink(), runner)


def slot(profile: str, profile_id: int, start: int, **kw: Any) -> LifecycleDevice:
    return device(
        f"{GPU}/mig/{profile}/{start}",
        DeviceKind.STATIC,
        type="MIG",
        parent=GPU,
        attributes={"mig_profile": profile, "mig_profile_id": profile_id, "mig_start": start},
        **kw,
    )


def placed(smi: FakeNvidiaSmi) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(i.profile_id, i.start, i.compute_instances) for i in smi.instances(GPU)]


def test_it_is_installed() -> None:
    assert isinstance(load_handler("mig"), MigHandler)


def test_two_placements_set_up_and_torn_down(machine: Machine, smi: FakeNvidiaSmi) -> None:
    ops = ops_for(machine, smi)
    three, one = slot("3g.40gb", 9, 4), slot("1g.10gb", 19, 1)
    facts3 = MigHandler().setup(three, {}, ops)
    facts1 = MigHandler().setup(one, {}, ops)
    assert smi.mig_enabled(GPU)
    assert facts3 == {"mig_gi": 1, "mig_ci": 0} and facts1 == {"mig_gi": 2, "mig_ci": 0}
    assert placed(smi) == [(9, 4, (0,)), (19, 1, (0,))]
    assert ["nvidia-smi", "mig", "-i", GPU, "-cgi", "9:4", "-C"] in [c.argv for c in smi.calls]
    assert all(c.timeout == 60.0 and c.env == {} for c in smi.calls)
    held = slot("3g.40gb", 9, 4, facts=facts3)
    assert MigHandler().health(held, {}, ops).ok
    MigHandler().cleanup(held, {}, ops)
    assert placed(smi) == [(19, 1, (0,))]
    assert not MigHandler().health(held, {}, ops).ok
    assert smi.mig_enabled(GPU)  # another instance is still there
    MigHandler().cleanup(slot("1g.10gb", 19, 1, facts=facts1), {}, ops)
    assert placed(smi) == []
    # The last one gone, MIG is off again: the GPU goes out whole or for time-sliced vGPUs.
    assert not smi.mig_enabled(GPU)
    assert ["nvidia-smi", "-i", GPU, "-mig", "0"] in [c.argv for c in smi.calls]


def test_mig_stays_on_where_the_gpu_refuses_to_switch_and_the_cleanup_still_succeeds(
    machine: Machine, smi: FakeNvidiaSmi
) -> None:
    ops = ops_for(machine, smi)
    facts = MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    held = slot("1g.10gb", 19, 0, facts=facts)
    # A process holds the GPU: destroying the instance works, switching the mode does not.
    MigHandler().cleanup(held, {}, ops_for(machine, _RefusingModeSwitch(smi)))
    assert placed(smi) == [] and smi.mig_enabled(GPU)
    again = MigHandler().setup(slot("2g.20gb", 14, 2), {}, ops_for(machine, smi))  # MIG used as it is
    assert again["mig_gi"] >= 1 and placed(smi) == [(14, 2, (0,))]


class _RefusingModeSwitch:
    """nvidia-smi whose mode switch fails as on a GPU some process holds."""

    def __init__(self, smi: FakeNvidiaSmi) -> None:
        self.smi = smi

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> RunResult:
        if "-mig" in argv:
            return RunResult(6, "", "Unable to disable MIG Mode: In use by another client", False)
        return self.smi.run(argv, env=env, timeout=timeout)


def test_setup_twice_does_nothing_the_second_time(machine: Machine, smi: FakeNvidiaSmi) -> None:
    ops = ops_for(machine, smi)
    facts = MigHandler().setup(slot("2g.20gb", 14, 2), {}, ops)
    before = len(smi.calls)
    assert MigHandler().setup(slot("2g.20gb", 14, 2, facts=facts), {}, ops) == facts
    assert [c.argv[1:] for c in smi.calls[before:]] == [["mig", "-i", GPU, "-lgi"]]
    assert placed(smi) == [(14, 2, (0,))]


def test_an_overlap_the_tool_refuses_is_a_handler_error(machine: Machine, smi: FakeNvidiaSmi) -> None:
    ops = ops_for(machine, smi)
    MigHandler().setup(slot("3g.40gb", 9, 0), {}, ops)
    with pytest.raises(HandlerError, match="Insufficient Resources"):
        MigHandler().setup(slot("2g.20gb", 14, 2), {}, ops)
    assert placed(smi) == [(9, 0, (0,))]


def test_setup_after_a_crash_adopts_the_instance(machine: Machine, tmp_path: Path) -> None:
    path = tmp_path / "nvidia-smi.json"
    before = FakeNvidiaSmi(path, {GPU: A100})
    MigHandler().setup(slot("1g.20gb", 15, 6), {}, ops_for(machine, before))  # facts never journaled
    after = FakeNvidiaSmi(path)  # the agent restarted
    facts = MigHandler().setup(slot("1g.20gb", 15, 6), {}, ops_for(machine, after))
    assert facts == {"mig_gi": 1, "mig_ci": 0}
    assert placed(after) == [(15, 6, (0,))]
    assert not any("-cgi" in c.argv for c in after.calls)


def test_adopting_an_instance_without_a_compute_instance_adds_one(
    machine: Machine, smi: FakeNvidiaSmi
) -> None:
    smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5)
    smi.run(["nvidia-smi", "mig", "-i", GPU, "-cgi", "14:4"], env={}, timeout=5)
    facts = MigHandler().setup(slot("2g.20gb", 14, 4), {}, ops_for(machine, smi))
    assert facts == {"mig_gi": 1, "mig_ci": 0}
    assert placed(smi) == [(14, 4, (0,))]


def test_stale_facts_do_not_name_another_instance(machine: Machine, smi: FakeNvidiaSmi) -> None:
    """A recorded id at another placement is someone else's: only the placement counts."""
    ops = ops_for(machine, smi)
    other = MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    stale = {"mig_gi": other["mig_gi"], "mig_ci": 0}
    mine = MigHandler().setup(slot("1g.10gb", 19, 3, facts=stale), {}, ops)
    assert mine["mig_gi"] != other["mig_gi"]
    assert not MigHandler().health(slot("1g.10gb", 19, 3, facts=stale), {}, ops).ok
    MigHandler().cleanup(slot("1g.10gb", 19, 3, facts=stale), {}, ops)
    assert placed(smi) == [(19, 0, (0,))]


def test_cleanup_twice_is_harmless(machine: Machine, smi: FakeNvidiaSmi) -> None:
    ops = ops_for(machine, smi)
    facts = MigHandler().setup(slot("4g.40gb", 5, 0), {}, ops)
    done = slot("4g.40gb", 5, 0, facts=facts)
    MigHandler().cleanup(done, {}, ops)
    MigHandler().cleanup(done, {}, ops)
    MigHandler().cleanup(slot("4g.40gb", 5, 0), {}, ops)  # no facts either
    assert placed(smi) == []


def test_cleanup_with_mig_off_has_nothing_to_do(machine: Machine, smi: FakeNvidiaSmi) -> None:
    MigHandler().cleanup(slot("1g.10gb", 19, 0), {}, ops_for(machine, smi))
    assert [c.argv[1:] for c in smi.calls] == [["mig", "-i", GPU, "-lgi"]]


def test_a_busy_gpu_refuses_and_the_error_says_so(machine: Machine, smi: FakeNvidiaSmi) -> None:
    ops = ops_for(machine, smi)
    smi.set_flag(GPU, "busy")
    with pytest.raises(
        HandlerError, match=r"cannot enable MIG mode on 0000:3b:00\.0: .*In use by another client"
    ):
        MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    smi.set_flag(GPU, "busy", False)
    facts = MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    smi.set_flag(GPU, "busy")
    with pytest.raises(HandlerError, match="In use by another client"):
        MigHandler().cleanup(slot("1g.10gb", 19, 0, facts=facts), {}, ops)
    assert placed(smi) == [(19, 0, (0,))]


def test_mig_mode_switch_refused_while_an_instance_exists(machine: Machine, smi: FakeNvidiaSmi) -> None:
    """The handler never switches a GPU that already has instances; the tool would refuse."""
    ops = ops_for(machine, smi)
    MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    refused = smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5)
    assert refused.returncode != 0 and "In use by another client" in refused.stderr
    MigHandler().setup(slot("1g.10gb", 19, 1), {}, ops)
    assert [c.argv for c in smi.calls].count(["nvidia-smi", "-i", GPU, "-mig", "1"]) == 2  # setup's + ours


def test_a_pending_mig_mode_is_an_error(machine: Machine, smi: FakeNvidiaSmi) -> None:
    smi.set_flag(GPU, "needs_reset")
    with pytest.raises(HandlerError, match=r"still off after enabling it.*pending enable state"):
        MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops_for(machine, smi))


def test_health_of_a_free_slot_asks_the_gpu(machine: Machine, smi: FakeNvidiaSmi, tmp_path: Path) -> None:
    machine.pci(GPU, driver="nvidia", group=12)
    free = slot("1g.10gb", 19, 0, consumer=None)
    assert MigHandler().health(free, {}, ops_for(machine, smi)).ok  # MIG still off: fine
    gone = FakeNvidiaSmi(tmp_path / "other.json", {"0000:af:00.0": A100})
    result = MigHandler().health(free, {}, ops_for(machine, gone))
    assert not result.ok and "No devices were found" in (result.reason or "")
    held = slot("1g.10gb", 19, 0)
    result = MigHandler().health(held, {}, ops_for(machine, smi))
    assert not result.ok and "no GPU instance at the assigned placement" in (result.reason or "")
    assert held.consumer == CONSUMER


def test_the_binary_and_timeout_come_from_the_type_config(machine: Machine) -> None:
    runner = RecordingRunner(respond=lambda argv: RunResult(0, "No GPU instances found: Not Found\n"))
    config = {"nvidia_smi": "/opt/nvidia/bin/nvidia-smi", "timeout": 5}
    MigHandler().cleanup(slot("1g.10gb", 19, 0), config, ops_for(machine, runner))
    # -lgi, then -mig 0 (no instance left on the GPU): each with the configured binary and timeout
    assert {(c.argv[0], c.timeout) for c in runner.calls} == {("/opt/nvidia/bin/nvidia-smi", 5.0)}
    runner.respond = lambda argv: RunResult(-9, timed_out=True)
    with pytest.raises(HandlerError, match="timed out after 5 s"):
        MigHandler().setup(slot("1g.10gb", 19, 0), config, ops_for(machine, runner))
    assert not MigHandler().health(slot("1g.10gb", 19, 0), config, ops_for(machine, runner)).ok


@pytest.mark.parametrize(
    ("config", "attributes", "parent"),
    [
        ({"nvidia_smi": ""}, {"mig_profile_id": 19, "mig_start": 0}, GPU),
        ({"timeout": 0}, {"mig_profile_id": 19, "mig_start": 0}, GPU),
        ({}, {"mig_profile_id": "19", "mig_start": 0}, GPU),
        ({}, {"mig_profile_id": 19, "mig_start": True}, GPU),
        ({}, {"mig_profile_id": 19, "mig_start": 0}, "../../x"),
    ],
)
def test_bad_input_is_refused_before_running_anything(
    machine: Machine, smi: FakeNvidiaSmi, config: dict[str, Any], attributes: dict[str, Any], parent: str
) -> None:
    dev = device("x", DeviceKind.STATIC, parent=parent, attributes=attributes)
    with pytest.raises(HandlerError):
        MigHandler().setup(dev, config, ops_for(machine, smi))
    assert smi.calls == []


def test_a_profile_without_a_known_id_goes_by_name(machine: Machine, tmp_path: Path) -> None:
    """B200: no published profile ids; the slot names its profile and the handler finds it by name."""
    smi = FakeNvidiaSmi(tmp_path / "b200.json", {GPU: "2901"})
    ops = ops_for(machine, smi)
    three = device(
        f"{GPU}/mig/3g.90gb@4",
        DeviceKind.STATIC,
        type="MIG",
        parent=GPU,
        attributes={"mig_profile": "3g.90gb", "mig_start": 4},
    )
    facts = MigHandler().setup(three, {}, ops)
    assert ["nvidia-smi", "mig", "-i", GPU, "-cgi", "3g.90gb:4", "-C"] in [c.argv for c in smi.calls]
    assert [(i.start, i.compute_instances) for i in smi.instances(GPU)] == [(4, (0,))]
    assert MigHandler().setup(three, {}, ops) == facts  # found again by name and start
    assert MigHandler().health(replace(three, consumer=CONSUMER, facts=facts), {}, ops).ok
    MigHandler().cleanup(three, {}, ops)
    assert smi.instances(GPU) == []


@pytest.mark.parametrize(
    "attributes",
    [
        {"mig_start": 0},  # neither id nor name
        {"mig_profile": "3g.90gb; reboot", "mig_start": 0},
        {"mig_profile": 9, "mig_start": 0},
    ],
)
def test_a_slot_needs_an_id_or_a_plain_profile_name(
    machine: Machine, smi: FakeNvidiaSmi, attributes: dict[str, Any]
) -> None:
    bad = device(f"{GPU}/mig/x@0", DeviceKind.STATIC, type="MIG", parent=GPU, attributes=attributes)
    with pytest.raises(HandlerError, match="attribute mig_profile"):
        MigHandler().setup(bad, {}, ops_for(machine, smi))
    assert smi.calls == []


def test_a_gpu_instance_named_with_a_superscript_digit_is_refused_not_a_crash() -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` fails: a clear refusal, not a ValueError."""

    class NoComputeInstance:
        def compute_instance(self, gi: int) -> None:
            return None

    inst = GpuInstance(gpu=0, name="\u00b2g.20gb", profile_id=14, instance_id=1, start=4, size=2)
    with pytest.raises(HandlerError, match="has no compute instance"):
        MigHandler()._compute(NoComputeInstance(), inst, Slot(GPU, 14, "2g.20gb", 4))  # type: ignore[arg-type]


def test_a_free_slot_of_a_gpu_off_nvidias_driver_is_unhealthy(machine: Machine, smi: FakeNvidiaSmi) -> None:
    """A GPU bound to vfio-pci at boot, to nouveau or to nothing: nvidia-smi cannot see it, so
    every setup of its slots would fail. Its slots are out of service, and say why."""
    free = slot("1g.10gb", 19, 0, consumer=None)
    for driver, says in ((None, "no driver"), ("vfio-pci", "vfio-pci"), ("nouveau", "nouveau")):
        machine.pci(GPU, driver=driver, group=12)
        result = MigHandler().health(free, {}, ops_for(machine, smi))
        assert not result.ok and f"GPU {GPU} is on {says}, not nvidia" in (result.reason or ""), result
    machine.pci(GPU, driver="nvidia", group=12)
    assert MigHandler().health(free, {}, ops_for(machine, smi)).ok
    # A GPU this agent passed through whole is on vfio-pci: its slots are not unhealthy for it
    # (the pool keeps them from claims, and they are back at once when the GPU is).
    machine.pci(GPU, driver="vfio-pci", group=12)
    held_whole = slot("1g.10gb", 19, 0, consumer=None, facts={"parent_held_whole": True})
    assert MigHandler().health(held_whole, {}, ops_for(machine, smi)).ok


def test_a_simulated_host_answers_nvidia_smi_for_its_gpus(tmp_path: Path) -> None:
    """``agent run --simulate`` recorded nvidia-smi without answering it: every MIG setup failed,
    even on a GPU on NVIDIA's driver. Its runner now acts as nvidia-smi for the tree's GPUs (a
    GPU off NVIDIA's driver is not seen, as on a real host), and what it made lasts across runs."""
    from devassign.testing import host as build

    h = build(tmp_path, vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", iommu_group=12, driver="nvidia")
    h.pci("0000:af:00.0", "10de", "20b2", cls="030200", iommu_group=13, driver="vfio-pci")
    ops = HostOps.simulated(h.root)
    facts = MigHandler().setup(slot("1g.10gb", 19, 0), {}, ops)
    assert facts["mig_gi"] is not None
    assert MigHandler().health(slot("1g.10gb", 19, 0, facts=facts), {}, HostOps.simulated(h.root)).ok
    other = device("0000:af:00.0/mig/1g.10gb/0", DeviceKind.STATIC, type="MIG", parent="0000:af:00.0",
                   attributes={"mig_profile": "1g.10gb", "mig_profile_id": 19, "mig_start": 0})  # fmt: skip
    with pytest.raises(HandlerError):
        MigHandler().setup(other, {}, ops)
    assert ops.runner.calls and ops.runner.calls[0].argv[0] == "nvidia-smi"
