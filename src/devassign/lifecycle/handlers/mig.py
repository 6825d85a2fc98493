"""MIG GPU instances as devices: made at one fixed placement for a consumer, destroyed after.

A slot is a profile at a start on a parent GPU (``mig_profile_id`` or, where the profile's id
is not known (the B200), ``mig_profile``, and ``mig_start`` in its attributes), the placement
the scheduler counted against that GPU's memory slices, so the
instance is always created at exactly that start: letting the driver choose could land it on
slices the scheduler gave another slot. Everything goes through ``nvidia-smi`` via
``ops.runner``. Instance ids come from the driver and are reused, so they are trusted only
together with the placement: the journal's ``mig_gi`` counts when the instance at this
slot's placement has that id; otherwise the instance at the placement is the slot's (an
earlier setup that died before its facts were journaled), and nothing elsewhere is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from devassign.domain import ascii_digits
from devassign.lifecycle import names
from devassign.lifecycle.base import (
    LEFTOVER,
    MIG_HELD,
    PARENT_HELD_WHOLE,
    PARENT_IN_USE,
    Facts,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
)
from devassign.lifecycle.handlers.common import pci_dir
from devassign.lifecycle.host import HostOps, RunResult

DEFAULT_BINARY = "nvidia-smi"
DEFAULT_TIMEOUT = 60.0
# The most nvidia-smi runs one action makes: a setup that switches MIG mode on (list, -mig 1,
# list), creates the instance (-cgi, list) and then its compute instance (-lci, -cci, -lci).
RUNS_PER_ACTION = 8
OUTPUT_TAIL = 2000
# What nvidia-smi says instead of a table; none of them is a failure of the GPU.
MIG_OFF = "No MIG-enabled devices found"
NO_GPU_INSTANCES = "No GPU instances found"
NO_COMPUTE_INSTANCES = "No compute instances found"
NOT_FOUND = "Not Found"
# The full-size compute instance's profile id by compute slices (NVML's
# COMPUTE_INSTANCE_PROFILE_<n>_SLICE), for a GPU instance left without one.
FULL_CI_PROFILE = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}

# ``|   0  MIG 3g.40gb          9        1          4:4     |``
_GI_ROW = re.compile(r"^\|\s*(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|\s*$")
# ``|   0      7       MIG 1g.10gb          0         0          0:1     |``
_CI_ROW = re.compile(r"^\|\s*(\d+)\s+(\d+)\s+MIG\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+):(\d+)\s*\|\s*$")
_CREATED_GI = re.compile(r"Successfully created GPU instance ID\s+(\d+)")
_CREATED_CI = re.compile(r"Successfully created compute instance ID\s+(\d+)")


@dataclass(frozen=True)
class GpuInstance:
    """One row of ``nvidia-smi mig -lgi``."""

    gpu: int
    name: str
    profile_id: int
    instance_id: int
    start: int
    size: int


@dataclass(frozen=True)
class ComputeInstance:
    """One row of ``nvidia-smi mig -lci``."""

    gpu: int
    gpu_instance: int
    name: str
    profile_id: int
    instance_id: int


def parse_gpu_instances(text: str) -> list[GpuInstance]:
    out = []
    for line in text.splitlines():
        m = _GI_ROW.match(line.strip())
        if m:
            gpu, name, pid, gi, start, size = m.groups()
            out.append(GpuInstance(int(gpu), name, int(pid), int(gi), int(start), int(size)))
    return out


def parse_compute_instances(text: str) -> list[ComputeInstance]:
    out = []
    for line in text.splitlines():
        m = _CI_ROW.match(line.strip())
        if m:
            gpu, gi, name, pid, ci, _start, _size = m.groups()
            out.append(ComputeInstance(int(gpu), int(gi), name, int(pid), int(ci)))
    return out


def parse_created(text: str) -> tuple[int | None, int | None]:
    """The GPU and compute instance ids a ``-cgi ... -C`` reported (``None`` where it did not)."""
    gi = _CREATED_GI.search(text)
    ci = _CREATED_CI.search(text)
    return (int(gi.group(1)) if gi else None, int(ci.group(1)) if ci else None)


def _output(result: RunResult) -> str:
    """What the tool said, stdout and stderr together (it writes errors to either)."""
    text = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    return text[-OUTPUT_TAIL:]


@dataclass(frozen=True)
class Slot:
    parent: str
    profile_id: int | None
    profile: str | None
    start: int

    def matches(self, inst: GpuInstance) -> bool:
        if inst.start != self.start:
            return False
        if self.profile_id is not None:
            return inst.profile_id == self.profile_id
        return inst.name == self.profile

    @property
    def spec(self) -> str:
        """The ``-cgi`` profile tuple: the id where known, else the name, and the start."""
        return f"{self.profile_id if self.profile_id is not None else self.profile}:{self.start}"

    def __str__(self) -> str:
        return f"MIG {self.profile or f'profile {self.profile_id}'} at start {self.start} on {self.parent}"


_PROFILE_NAME = re.compile(r"^\d+g\.\d+gb$")


def _whole(device: LifecycleDevice, key: str, *, required: bool = True) -> int | None:
    value = device.attributes.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HandlerError(f"{device.address}: attribute {key}={value!r}: expected a whole number >= 0")
    return value


def slot(device: LifecycleDevice) -> Slot:
    """The placement from the device's discovered attributes (never from params or facts)."""
    parent = names.pci_address(device.parent, f"the parent GPU of {device.address}")
    profile = device.attributes.get("mig_profile")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE_NAME.match(profile)):
        raise HandlerError(
            f"{device.address}: attribute mig_profile={profile!r}: expected a name like 3g.40gb"
        )
    profile_id = _whole(device, "mig_profile_id", required=profile is None)
    start = _whole(device, "mig_start")
    assert start is not None
    return Slot(parent, profile_id, profile, start)


@dataclass
class _Listing:
    mig_on: bool
    instances: list[GpuInstance]

    def at(self, where: Slot) -> GpuInstance | None:
        return next((i for i in self.instances if where.matches(i)), None)


class _Smi:
    """nvidia-smi for one GPU, through the host's runner."""

    def __init__(self, config: TypeConfig, ops: HostOps, parent: str) -> None:
        binary: Any = config.get("nvidia_smi", DEFAULT_BINARY)
        if not isinstance(binary, str) or not binary.strip():
            raise HandlerError(f"type config nvidia_smi={binary!r}: expected the nvidia-smi command")
        timeout: Any = config.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise HandlerError(f"type config timeout={timeout!r}: expected a positive number of seconds")
        self.binary, self.timeout, self.ops, self.parent = binary, float(timeout), ops, parent

    def run(self, *args: str) -> RunResult:
        argv = [self.binary, *args]
        result = self.ops.runner.run(argv, env={}, timeout=self.timeout)
        if result.timed_out:
            raise HandlerError(
                f"{' '.join(argv)} timed out after {self.timeout:g} s: {_output(result)}".rstrip(": ")
            )
        return result

    def mig(self, *args: str) -> RunResult:
        return self.run("mig", "-i", self.parent, *args)

    def mig_mode_on(self) -> bool:
        """Whether nvidia-smi says the GPU's current MIG mode is on (``Enabled``); any other
        answer (``Disabled``, ``[N/A]``, none) is not."""
        result = self.run("-i", self.parent, "--query-gpu=mig.mode.current", "--format=csv,noheader")
        return result.returncode == 0 and result.stdout.strip() == "Enabled"

    def listing(self) -> _Listing:
        """MIG mode and the GPU instances; :class:`HandlerError` when the GPU does not answer."""
        result = self.mig("-lgi")
        text = _output(result)
        if MIG_OFF in text:
            return _Listing(False, [])
        if NO_GPU_INSTANCES in text:
            return _Listing(True, [])
        if result.returncode != 0:
            raise HandlerError(f"nvidia-smi cannot list the MIG instances of {self.parent}: {text}")
        return _Listing(True, parse_gpu_instances(result.stdout))

    def compute_instance(self, gi: int) -> int | None:
        result = self.mig("-lci", "-gi", str(gi))
        text = _output(result)
        if result.returncode != 0:
            if NO_COMPUTE_INSTANCES in text or NOT_FOUND in text:
                return None
            raise HandlerError(
                f"nvidia-smi cannot list compute instances of GPU instance {gi} on {self.parent}: {text}"
            )
        found = [c.instance_id for c in parse_compute_instances(result.stdout) if c.gpu_instance == gi]
        return min(found) if found else None


def _unheld_overlap(device: LifecycleDevice, where: Slot, instances: list[GpuInstance]) -> GpuInstance | None:
    """An instance on the GPU that takes some of this free slot's memory slices and is no held
    slot's (:data:`MIG_HELD`: held, in flight, or set up and not cleaned yet): one made by hand
    at a placement devassign does not offer, or at another free slot's. The slot cannot be
    created while it is there, so it must not be claimed."""
    raw = device.facts.get(MIG_HELD) or []
    held = {(int(p[0]), int(p[1])) for p in raw if isinstance(p, list | tuple) and len(p) == 2}
    mine = device.attributes.get("mig_slices")
    slices = {int(i) for i in mine} if isinstance(mine, list) else {where.start}
    for inst in instances:
        if (inst.start, inst.size) in held or where.matches(inst):
            continue
        if slices & set(range(inst.start, inst.start + inst.size)):
            return inst
    return None


class MigHandler:
    """``mig`` slots. Config: ``nvidia_smi`` (the command, default ``nvidia-smi``), ``timeout`` (s)."""

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        where = slot(device)
        smi = _Smi(config, ops, where.parent)
        state = smi.listing()
        if not state.mig_on:
            done = smi.run("-i", where.parent, "-mig", "1")
            if done.returncode != 0:
                raise HandlerError(f"cannot enable MIG mode on {where.parent}: {_output(done)}")
            state = smi.listing()
            if not state.mig_on:
                raise HandlerError(
                    f"MIG mode on {where.parent} is still off after enabling it (a GPU reset pending?): "
                    f"{_output(done)}"
                )
        here = state.at(where)
        if here is not None:
            ci = device.facts.get("mig_ci")
            if device.facts.get("mig_gi") == here.instance_id and isinstance(ci, int):
                return {"mig_gi": here.instance_id, "mig_ci": ci}
            return {"mig_gi": here.instance_id, "mig_ci": self._compute(smi, here, where)}
        made = smi.mig("-cgi", where.spec, "-C")
        if made.returncode != 0:
            raise HandlerError(f"cannot create {where}: {_output(made)}")
        gi, ci = parse_created(made.stdout)
        here = smi.listing().at(where)
        if here is None or (gi is not None and here.instance_id != gi):
            raise HandlerError(
                f"{where}: nvidia-smi reported {_output(made)!r} but -lgi shows no such instance"
            )
        return {
            "mig_gi": here.instance_id,
            "mig_ci": ci if ci is not None else self._compute(smi, here, where),
        }

    def _compute(self, smi: _Smi, inst: GpuInstance, where: Slot) -> int:
        """The GPU instance's compute instance, made (full size) when it has none."""
        found = smi.compute_instance(inst.instance_id)
        if found is not None:
            return found
        slices = (
            int(inst.name.split("g.", 1)[0])
            if ascii_digits(inst.name.split("g.", 1)[0]) and "g." in inst.name
            else 0
        )
        if slices not in FULL_CI_PROFILE:
            raise HandlerError(
                f"{where}: GPU instance {inst.instance_id} ({inst.name}) has no compute instance"
            )
        made = smi.mig("-cci", str(FULL_CI_PROFILE[slices]), "-gi", str(inst.instance_id))
        if made.returncode != 0:
            raise HandlerError(f"{where}: cannot create a compute instance: {_output(made)}")
        found = smi.compute_instance(inst.instance_id)
        if found is None:
            raise HandlerError(f"{where}: no compute instance after creating one: {_output(made)}")
        return found

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        where = slot(device)
        smi = _Smi(config, ops, where.parent)
        state = smi.listing()
        here = state.at(where)
        if here is None:
            # Destroyed already (by hand, or a reboot took every instance): the GPU may have
            # none left, and then it goes out of MIG mode as after any last instance.
            if state.mig_on and not state.instances:
                smi.run("-i", smi.parent, "-mig", "0")
            return
        gi = str(here.instance_id)
        done = smi.mig("-dci", "-gi", gi)
        if done.returncode != 0 and NOT_FOUND not in _output(done):
            raise HandlerError(f"cannot destroy the compute instances of {where}: {_output(done)}")
        done = smi.mig("-dgi", "-gi", gi)
        if done.returncode != 0 and NOT_FOUND not in _output(done):
            raise HandlerError(f"cannot destroy GPU instance {gi} ({where}): {_output(done)}")
        self._mig_off_when_empty(smi)

    def _mig_off_when_empty(self, smi: _Smi) -> None:
        """After the GPU's last instance, MIG mode goes off again, so the GPU is given whole or
        for time-sliced vGPUs (which need MIG off) as it was before. Best effort: the slot is
        clean whatever happens here; where the tool refuses (processes hold the GPU) or the
        switch waits for a reset, MIG stays on and the next MIG setup uses it as it is."""
        try:
            left = smi.listing()
        except HandlerError:
            return
        if left.mig_on and not left.instances:
            smi.run("-i", smi.parent, "-mig", "0")

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        where = slot(device)
        driver = ops.sysfs.link_name(f"{pci_dir(where.parent)}/driver")
        if device.consumer is None and driver != "nvidia" and not device.facts.get(PARENT_HELD_WHOLE):
            # nvidia-smi sees only GPUs on NVIDIA's driver: every setup here would fail. (A GPU
            # this agent holds whole is on vfio-pci: its slots wait for it, as the pool says.)
            return HealthResult(
                False,
                f"GPU {where.parent} is on {driver or 'no driver'}, not nvidia: MIG instances need "
                "NVIDIA's driver",
            )
        try:
            state = _Smi(config, ops, where.parent).listing()
        except HandlerError as exc:
            return HealthResult(False, str(exc))
        here = state.at(where)
        if device.consumer is None:
            if here is not None:
                # Nobody holds this slot, yet its placement has an instance (made by hand for
                # the host): a setup would adopt it for a tenant, a cleanup destroy it.
                return HealthResult(
                    False,
                    f"GPU instance {here.instance_id} is at {where}, which nobody holds "
                    "(made by hand?): destroy it, or leave it and the slot stays out of service",
                    details={LEFTOVER: True, PARENT_IN_USE: True},
                )
            other = _unheld_overlap(device, where, state.instances)
            if other is not None:
                return HealthResult(
                    False,
                    f"GPU instance {other.instance_id} ({other.name} at {other.start}:{other.size}) on "
                    f"{where.parent} takes memory slices of {where}, and no slot this agent set up is "
                    "it (made by hand?): destroy it, or the slots it overlaps stay out of service",
                    details={PARENT_IN_USE: True},
                )
            return HealthResult(True)
        if here is None:
            return HealthResult(False, f"no GPU instance at the assigned placement: {where}")
        recorded = device.facts.get("mig_gi")
        if recorded is not None and recorded != here.instance_id:
            return HealthResult(
                False, f"{where} is GPU instance {here.instance_id}, not the recorded {recorded}"
            )
        return HealthResult(True, details={"mig_gi": here.instance_id})


def whole_gpu_mig_off(address: str, config: TypeConfig, ops: HostOps) -> None:
    """A MIG-capable GPU given whole, or given back, has MIG mode off: the mode outlives resets
    and reboots, so a tenant that switched it on in its guest (or a slot's cleanup that could
    not switch it off) would hand the next tenant a GPU that runs no CUDA until it is off.
    Switched off where it is on with no instance; :class:`HandlerError` where it stays on or
    instances are there (made by hand: not this GPU's holder's to destroy). Nothing is done
    where nvidia-smi does not say the mode is on (not installed, no MIG on this GPU)."""
    smi = _Smi(config, ops, address)
    if not smi.mig_mode_on():
        return
    state = smi.listing()
    if state.instances:
        raise HandlerError(
            f"{address} runs MIG with {len(state.instances)} GPU instance(s) that no slot of devassign "
            "holds (made by hand?): it cannot be given whole until they are destroyed"
        )
    done = smi.run("-i", address, "-mig", "0")
    if smi.mig_mode_on():
        raise HandlerError(
            f"{address} has MIG mode on and it does not go off ({_output(done) or 'no answer'}): "
            f"it cannot be given whole until it is (nvidia-smi -i {address} -mig 0, then a GPU reset "
            "where nvidia-smi asks for one)"
        )
