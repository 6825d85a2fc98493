"""A fake ``nvidia-smi`` for the MIG commands devassign runs, with its GPUs kept in a JSON file.

The MIG handler acts only through ``ops.runner``; this runner answers like the real tool
(same wording, same tables, non-zero exits for refusals) so the handler's parsing and its
error paths are exercised without a GPU. The state lives in a file the caller names, read
before and written after every command, so an agent restarted mid-way (or a second runner
on the same file) sees the instances the first one made.

What it models: GPUs by PCI bus id (``0000:3b:00.0`` or nvidia-smi's ``00000000:3B:00.0``,
or the index), each a :class:`~devassign.agent.gpus.GpuModel`; MIG mode; GPU instances at
placements from that model's table, refused when they overlap; one full-size compute
instance per GPU instance; a ``busy`` flag standing for processes on the GPU (it blocks
mode switches and destroying compute instances); a ``needs_reset`` flag for hosts where
enabling MIG stays pending until a GPU reset. Without a start, ``-cgi`` takes the lowest
free start; the real driver picks by its own order (often the highest), which is why the
handler always names the start. Instance ids are the lowest free ones; the driver's differ,
so nothing may rely on them. Anything else is refused as unsupported by the fake.

Wording and tables follow published transcripts (NVIDIA's MIG User Guide and others); the
exit codes are those of nvidia-smi(1) (2 invalid argument, 3 not supported, 6 not found,
255 other) as best known, and error text goes to stderr. A GPU whose profile ids are not
published (the B200) gets the ids of the other 8-slice parts here, by shape: the fake has to
print some id, and the handler never relies on them for such a GPU (it goes by name).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devassign.agent.gpus import EIGHT_SLICE_SHAPES, NVIDIA_VENDOR_ID, GpuModel, MigProfile, lookup, placement
from devassign.lifecycle.host import RecordedRun, RecordingRunner, RunResult

RC_INVALID = 2
RC_NOT_SUPPORTED = 3
RC_NOT_FOUND = 6
RC_OTHER = 255
# The full-size compute instance's profile id, by compute slices: NVML's
# COMPUTE_INSTANCE_PROFILE_<n>_SLICE (``-C`` on a 3g instance prints ``(ID  2)``).
CI_PROFILE_IDS: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}
_BUS_RE = re.compile(r"^([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
MIG_MODE_QUERY = "--query-gpu=mig.mode.current"
CSV_NO_HEADER = "--format=csv,noheader"
_VALUED = {"-i", "-mig", "-cgi", "-cci", "-gi", "-ci"}
_FLAGS = {"-C", "-lgi", "-lci", "-dci", "-dgi"}
_ACTIONS = ("-cgi", "-cci", "-lgi", "-lci", "-dci", "-dgi")
# The fake's ids for profiles without a published one, by (compute slices, memory slices).
_SIM_IDS = {(compute, memory): pid for pid, compute, memory, _ in EIGHT_SLICE_SHAPES}


def sim_id(profile: MigProfile) -> int:
    """The profile's id as the fake prints it: the real one where known."""
    if profile.profile_id is not None:
        return profile.profile_id
    return _SIM_IDS[(profile.compute_slices, profile.memory_slices)]


def bus_id(value: str) -> str | None:
    """``00000000:3B:00.0`` or ``0000:3b:00.0`` -> ``0000:3b:00.0``; ``None`` if neither."""
    m = _BUS_RE.fullmatch(value.strip())
    if not m:
        return None
    domain, bus, slot, fn = m.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{slot.lower()}.{fn}"


def smi_bus_id(address: str) -> str:
    """How nvidia-smi prints a bus id: eight-digit domain, upper case."""
    domain, bus, rest = address.split(":")
    return f"{int(domain, 16):08X}:{bus.upper()}:{rest.upper()}"


@dataclass(frozen=True)
class FakeInstance:
    """A GPU instance as the fake holds it (for a test's assertions)."""

    gpu_instance: int
    profile_id: int
    start: int
    compute_instances: tuple[int, ...]


class _Refused(Exception):
    def __init__(self, rc: int, message: str, stdout: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.message = message
        self.stdout = stdout


def _unsupported(args: Sequence[str]) -> _Refused:
    return _Refused(RC_INVALID, f"nvidia-smi {' '.join(args)}: unsupported by the fake")


class FakeNvidiaSmi:
    """A :class:`~devassign.lifecycle.host.Runner` that acts as ``nvidia-smi`` for MIG.

    ``gpus`` maps bus ids to PCI device ids (``{"0000:3b:00.0": "20b2"}``); GPUs already in
    the state file keep their state. ``calls`` records every command, like RecordingRunner.
    """

    def __init__(self, path: str | os.PathLike[str], gpus: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.calls: list[RecordedRun] = []
        state = self._load()
        for address, device_id in (gpus or {}).items():
            key = self._key(address)
            if key not in state["gpus"]:
                state["gpus"][key] = self._new_gpu(device_id)
        self._save(state)

    # ------------------------------------------------------------ state, for tests

    def add_gpu(self, address: str, device_id: str, *, mig: bool = False) -> None:
        state = self._load()
        gpu = self._new_gpu(device_id)
        gpu["mig"] = mig
        state["gpus"][self._key(address)] = gpu
        self._save(state)

    def set_flag(self, address: str, flag: str, value: bool = True) -> None:
        """Set ``busy`` (processes hold the GPU) or ``needs_reset`` (enabling MIG stays pending)."""
        if flag not in ("busy", "needs_reset"):
            raise ValueError(f"no flag {flag!r}")
        state = self._load()
        state["gpus"][self._key(address)][flag] = value
        self._save(state)

    def mig_enabled(self, address: str) -> bool:
        return bool(self._load()["gpus"][self._key(address)]["mig"])

    def instances(self, address: str) -> list[FakeInstance]:
        gpu = self._load()["gpus"][self._key(address)]
        return [
            FakeInstance(i["id"], i["profile"], i["start"], tuple(i["cis"]))
            for i in sorted(gpu["instances"], key=lambda i: i["id"])
        ]

    # ------------------------------------------------------------ the runner

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult:
        self.calls.append(RecordedRun(list(argv), dict(env), timeout))
        args = list(argv[1:])
        state = self._load()
        try:
            out = self._dispatch(state, args)
        except _Refused as refused:
            return RunResult(refused.rc, refused.stdout, refused.message + "\n")
        self._save(state)
        return RunResult(0, out + "\n")

    def _dispatch(self, state: dict[str, Any], args: list[str]) -> str:
        if len(args) == 4 and args[0] == "-i" and set(args[2:]) == {MIG_MODE_QUERY, CSV_NO_HEADER}:
            # ``nvidia-smi -i GPU --query-gpu=mig.mode.current --format=csv,noheader``
            return "Enabled" if self._gpu(state, args[1])[1]["mig"] else "Disabled"
        sub = bool(args) and args[0] == "mig"
        opts: dict[str, str] = {}
        rest = args[1:] if sub else args
        i = 0
        while i < len(rest):
            tok = rest[i]
            if tok in _VALUED and i + 1 < len(rest) and tok not in opts:
                opts[tok] = rest[i + 1]
                i += 2
            elif tok in _FLAGS and tok not in opts:
                opts[tok] = ""
                i += 1
            else:
                raise _unsupported(args)
        if "-i" not in opts:
            raise _unsupported(args)
        address, gpu = self._gpu(state, opts["-i"])
        index = sorted(state["gpus"]).index(address)
        if not sub:
            if set(opts) != {"-i", "-mig"}:
                raise _unsupported(args)
            return self._mode(gpu, address, opts["-mig"])
        actions = [a for a in _ACTIONS if a in opts]
        if len(actions) != 1 or ("-C" in opts and actions != ["-cgi"]):
            raise _unsupported(args)
        if not gpu["mig"]:
            raise _Refused(RC_NOT_FOUND, "No MIG-enabled devices found.")
        model = self._model(gpu)
        action = actions[0]
        allowed = {
            "-cgi": {"-i", "-cgi", "-C"},
            "-lgi": {"-i", "-lgi"},
            "-lci": {"-i", "-lci", "-gi"},
            "-cci": {"-i", "-cci", "-gi"},
            "-dci": {"-i", "-dci", "-gi", "-ci"},
            "-dgi": {"-i", "-dgi", "-gi"},
        }[action]
        if not set(opts) <= allowed or (action in ("-cci", "-dci", "-dgi") and "-gi" not in opts):
            raise _unsupported(args)
        if action == "-cgi":
            return self._create(gpu, model, index, opts["-cgi"], "-C" in opts)
        if action == "-lgi":
            return self._list_gi(gpu, model, index)
        gi_filter = self._int(opts["-gi"], args) if "-gi" in opts else None
        if action == "-lci":
            return self._list_ci(gpu, model, index, gi_filter)
        assert gi_filter is not None
        if action == "-cci":
            return self._create_ci(gpu, model, index, gi_filter, self._int(opts["-cci"], args), args)
        if action == "-dci":
            ci = self._int(opts["-ci"], args) if "-ci" in opts else None
            return self._destroy_ci(gpu, index, gi_filter, ci)
        return self._destroy_gi(gpu, index, gi_filter)

    # ------------------------------------------------------------ commands

    def _mode(self, gpu: dict[str, Any], address: str, value: str) -> str:
        smi = smi_bus_id(address)
        if value not in ("0", "1"):
            raise _Refused(RC_INVALID, f'Invalid MIG mode "{value}"')
        verb = "enable" if value == "1" else "disable"
        if gpu["busy"] or gpu["instances"]:
            raise _Refused(
                RC_OTHER,
                f"Unable to {verb} MIG Mode for GPU {smi}: In use by another client\n"
                "Terminating early due to previous errors.",
            )
        if value == "1" and gpu["needs_reset"]:
            return (
                f"Warning: MIG mode is in pending enable state for GPU {smi}:Not Supported\n"
                f"Reboot the system or try nvidia-smi --gpu-reset to make MIG mode effective on GPU {smi}\n"
                "All done."
            )
        gpu["mig"] = value == "1"
        return f"{verb.capitalize()}d MIG Mode for GPU {smi}\nAll done."

    def _create(self, gpu: dict[str, Any], model: GpuModel, index: int, spec: str, with_ci: bool) -> str:
        lines: list[str] = []
        for item in spec.split(","):
            key, _, start_text = item.partition(":")
            profile = model.profile(key)

            def refuse(rc: int, reason: str, key: str = key) -> _Refused:
                return _Refused(
                    rc,
                    f"Unable to create a GPU instance on GPU {index:2d} using profile {key}: {reason}\n"
                    f"Failed to create GPU instances: {reason}",
                    "\n".join(lines),
                )

            if profile is None or (start_text and not start_text.isdecimal()):
                raise refuse(RC_INVALID, "Invalid Argument")
            used = self._used(gpu, model)
            if start_text:
                where = placement(model, profile.name, int(start_text))
                if where is None:
                    raise refuse(RC_INVALID, "Invalid Argument")
                if used & set(where.slices):
                    raise refuse(RC_OTHER, "Insufficient Resources")
                start = where.start
            else:
                free = [s for s in profile.starts if not used & set(range(s, s + profile.memory_slices))]
                if not free:
                    raise refuse(RC_OTHER, "Insufficient Resources")
                start = free[0]
            gi = self._free_id(i["id"] for i in gpu["instances"])
            entry: dict[str, Any] = {"id": gi, "profile": sim_id(profile), "start": start, "cis": []}
            gpu["instances"].append(entry)
            lines.append(
                f"Successfully created GPU instance ID {gi:2d} on GPU {index:2d} "
                f"using profile MIG {profile.name} (ID {sim_id(profile):2d})"
            )
            if with_ci:
                entry["cis"].append(0)
                lines.append(self._ci_line(index, gi, 0, profile))
        return "\n".join(lines)

    def _list_gi(self, gpu: dict[str, Any], model: GpuModel, index: int) -> str:
        if not gpu["instances"]:
            raise _Refused(RC_NOT_FOUND, "No GPU instances found: Not Found")
        width = 55
        rows = [
            "+" + "-" * width + "+",
            "| GPU instances:".ljust(width + 1) + "|",
            "| GPU   Name             Profile  Instance   Placement".ljust(width + 1) + "|",
            "|                          ID       ID       Start:Size".ljust(width + 1) + "|",
            "|" + "=" * width + "|",
        ]
        for inst in sorted(gpu["instances"], key=lambda i: (-i["profile"], i["id"])):
            profile = self._profile(model, inst["profile"])
            place = f"{inst['start']}:{profile.memory_slices}"
            body = f"{index:4d}  {'MIG ' + profile.name:<16}{sim_id(profile):6d}{inst['id']:9d}{place:>13}"
            rows += ["|" + body.ljust(width) + "|", "+" + "-" * width + "+"]
        return "\n".join(rows)

    def _list_ci(self, gpu: dict[str, Any], model: GpuModel, index: int, gi: int | None) -> str:
        found = [
            (inst, ci)
            for inst in sorted(gpu["instances"], key=lambda i: i["id"])
            if gi is None or inst["id"] == gi
            for ci in inst["cis"]
        ]
        if not found:
            raise _Refused(RC_NOT_FOUND, "No compute instances found: Not Found")
        width = 68
        rows = [
            "+" + "-" * width + "+",
            "| Compute instances:".ljust(width + 1) + "|",
            "| GPU     GPU       Name             Profile   Instance   Placement".ljust(width + 1) + "|",
            "|       Instance                       ID        ID       Start:Size".ljust(width + 1) + "|",
            "|         ID".ljust(width + 1) + "|",
            "|" + "=" * width + "|",
        ]
        for inst, ci in found:
            profile = self._profile(model, inst["profile"])
            place = f"0:{profile.compute_slices}"
            cip = CI_PROFILE_IDS[profile.compute_slices]
            body = f"{index:4d}{inst['id']:7d}       {'MIG ' + profile.name:<16}{cip:6d}{ci:10d}{place:>13}"
            rows += ["|" + body.ljust(width) + "|", "+" + "-" * width + "+"]
        return "\n".join(rows)

    def _create_ci(
        self, gpu: dict[str, Any], model: GpuModel, index: int, gi: int, cip: int, args: Sequence[str]
    ) -> str:
        inst = self._instance(gpu, gi)
        if inst is None:
            raise _Refused(
                RC_NOT_FOUND,
                f"Unable to find GPU instance ID {gi:2d} on GPU {index:2d}: Not Found\n"
                "Failed to create compute instances: Not Found",
            )
        profile = self._profile(model, inst["profile"])
        if cip != CI_PROFILE_IDS[profile.compute_slices]:
            raise _unsupported(args)  # only the full-size compute instance is modelled
        if inst["cis"]:
            raise _Refused(
                RC_OTHER,
                f"Unable to create a compute instance on GPU {index:2d} GPU instance ID {gi:2d} "
                f"using profile {cip}: Insufficient Resources\n"
                "Failed to create compute instances: Insufficient Resources",
            )
        inst["cis"].append(0)
        return self._ci_line(index, gi, 0, profile)

    def _destroy_ci(self, gpu: dict[str, Any], index: int, gi: int, ci: int | None) -> str:
        inst = self._instance(gpu, gi)
        doomed = [c for c in (inst["cis"] if inst else []) if ci is None or c == ci]
        if inst is None or not doomed:
            raise _Refused(RC_NOT_FOUND, "Failed to destroy compute instances: Not Found")
        if gpu["busy"]:
            raise _Refused(
                RC_OTHER,
                f"Unable to destroy compute instance ID {doomed[0]:2d} from GPU {index:2d} "
                f"GPU instance ID {gi:2d}: In use by another client\n"
                "Failed to destroy compute instances: In use by another client",
            )
        inst["cis"] = [c for c in inst["cis"] if c not in doomed]
        return "\n".join(
            f"Successfully destroyed compute instance ID {c:2d} from GPU {index:2d} GPU instance ID {gi:2d}"
            for c in doomed
        )

    def _destroy_gi(self, gpu: dict[str, Any], index: int, gi: int) -> str:
        inst = self._instance(gpu, gi)
        reason = "Not Found" if inst is None else "In use by another client" if inst["cis"] else None
        if reason:
            raise _Refused(
                RC_NOT_FOUND if inst is None else RC_OTHER,
                f"Unable to destroy GPU instance ID {gi:2d} from GPU {index:2d}: {reason}\n"
                f"Failed to destroy GPU instances: {reason}",
            )
        gpu["instances"] = [i for i in gpu["instances"] if i["id"] != gi]
        return f"Successfully destroyed GPU instance ID {gi:2d} from GPU {index:2d}"

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _ci_line(index: int, gi: int, ci: int, profile: MigProfile) -> str:
        cip = CI_PROFILE_IDS[profile.compute_slices]
        return (
            f"Successfully created compute instance ID {ci:2d} on GPU {index:2d} GPU instance ID {gi:2d} "
            f"using profile MIG {profile.name} (ID {cip:2d})"
        )

    @staticmethod
    def _free_id(taken: Any) -> int:
        used = set(taken)
        n = 1
        while n in used:
            n += 1
        return n

    @staticmethod
    def _instance(gpu: dict[str, Any], gi: int) -> dict[str, Any] | None:
        return next((i for i in gpu["instances"] if i["id"] == gi), None)

    def _used(self, gpu: dict[str, Any], model: GpuModel) -> set[int]:
        used: set[int] = set()
        for inst in gpu["instances"]:
            profile = self._profile(model, inst["profile"])
            used |= set(range(inst["start"], inst["start"] + profile.memory_slices))
        return used

    @staticmethod
    def _profile(model: GpuModel, profile_id: int) -> MigProfile:
        found = next((p for p in model.mig_profiles if sim_id(p) == profile_id), None)
        assert found is not None, f"state holds profile {profile_id}, unknown to {model.name}"
        return found

    @staticmethod
    def _int(value: str, args: Sequence[str]) -> int:
        if not value.isdecimal():
            raise _unsupported(args)
        return int(value)

    @staticmethod
    def _model(gpu: dict[str, Any]) -> GpuModel:
        model = lookup(gpu["vendor_id"], gpu["device_id"])
        assert model is not None
        return model

    def _gpu(self, state: dict[str, Any], ident: str) -> tuple[str, dict[str, Any]]:
        order = sorted(state["gpus"])
        address = order[int(ident)] if ident.isdecimal() and int(ident) < len(order) else bus_id(ident)
        if address is None or address not in state["gpus"]:
            raise _Refused(RC_NOT_FOUND, "No devices were found")
        return address, state["gpus"][address]

    @staticmethod
    def _key(address: str) -> str:
        key = bus_id(address)
        if key is None:
            raise ValueError(f"{address!r} is not a PCI bus id")
        return key

    @staticmethod
    def _new_gpu(device_id: str) -> dict[str, Any]:
        if lookup(NVIDIA_VENDOR_ID, device_id) is None:
            raise ValueError(f"device {device_id} is no MIG-capable GPU in devassign.agent.gpus")
        return {
            "vendor_id": NVIDIA_VENDOR_ID,
            "device_id": device_id.lower(),
            "mig": False,
            "busy": False,
            "needs_reset": False,
            "instances": [],
        }

    def _load(self) -> dict[str, Any]:
        try:
            raw: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        raw.setdefault("gpus", {})
        return raw

    def _save(self, state: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


@dataclass
class SimulatedRunner(RecordingRunner):
    """``agent run --simulate``'s runner: ``nvidia-smi`` answers as :class:`FakeNvidiaSmi`
    does for the tree's MIG-capable NVIDIA GPUs on NVIDIA's driver (its state kept beside the
    tree, so it lasts across agent runs); every other command is recorded and answered
    ``respond`` (exit 0), as :class:`RecordingRunner` does."""

    root: Path = field(default_factory=Path)
    _smi: FakeNvidiaSmi | None = None

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult:
        if not argv or os.path.basename(argv[0]) != "nvidia-smi":
            return super().run(argv, env=env, timeout=timeout)
        self.calls.append(RecordedRun(list(argv), dict(env), timeout))
        if self._smi is None:
            self._smi = FakeNvidiaSmi(self.root / ".simulated-nvidia-smi.json", _tree_gpus(self.root))
        return self._smi.run(argv, env=env, timeout=timeout)


def _tree_gpus(root: Path) -> dict[str, str]:
    """Bus id -> device id of the tree's MIG-capable NVIDIA GPUs bound to ``nvidia``."""
    out: dict[str, str] = {}
    devices = root / "bus" / "pci" / "devices"
    for entry in sorted(devices.iterdir()) if devices.is_dir() else []:
        try:
            vendor = (entry / "vendor").read_text().strip().lower().removeprefix("0x")
            device = (entry / "device").read_text().strip().lower().removeprefix("0x")
            driver = (
                os.path.basename(os.readlink(entry / "driver")) if (entry / "driver").is_symlink() else None
            )
        except (OSError, UnicodeDecodeError):
            continue
        if vendor == NVIDIA_VENDOR_ID and driver == "nvidia" and lookup(vendor, device) is not None:
            out[entry.name] = device
    return out
