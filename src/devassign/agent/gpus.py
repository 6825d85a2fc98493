"""NVIDIA data-center GPUs that partition with MIG, and where their GPU instances may sit.

The scheduler needs a GPU's MIG geometry before any agent has run ``nvidia-smi`` on it (to
offer ``3g.40gb`` slots and to keep two of them off the same memory slices), so it is a
built-in table, keyed by PCI ids. A placement is a start slot and a size in *memory* slices,
exactly what ``nvidia-smi mig -lgipp`` prints (``{0,4}:4``); two instances may coexist when
their memory slices do not overlap. :func:`counters` and :func:`consumes` turn that into
per-slice counters of capacity 1 plus one compute counter, so the ordinary counter
arithmetic of the scheduler cannot overbook a GPU.

Sources (every fact below comes from one of them; nothing is guessed):

* NVIDIA Multi-Instance GPU User Guide (docs.nvidia.com/datacenter/tesla/mig-user-guide),
  "Supported GPUs" and "Supported MIG Profiles" (profile names, fraction of memory = memory
  slices of 8, fraction of SMs = compute slices of 7; A30: of 4), "Getting Started"
  (``-lgipp`` of the A100: 19 {0..6}:1, 20 {0..6}:1, 15 {0,2,4,6}:2, 14 {0,2,4}:2, 9 {0,4}:4,
  5 {0}:4, 0 {0}:8; the ``-cgi``/``-lgi`` transcripts).
* ``nvidia-smi mig -lgip``/``-lgipp`` transcripts published with the H100 80GB, the H100
  NVL (94GB), the H200 (1g.18gb=19, 1g.18gb+me=20, 2g.35gb=14, 7g.141gb=0) and the A30
  (1g.6gb=14 {0,1,2,3}:1, 1g.6gb+me=21, 2g.12gb=5 {0,2}:2, 4g.24gb=0 {0}:4). The H200's
  1g.35gb=15, 3g.71gb=9 and 4g.71gb=5 follow the numbering every GH100 part shares; no H200
  transcript of those three lines was found.
* PCI device ids: the pci.ids database (pciutils, 2026-08-22): 20b0 A100 SXM4 40GB, 20f1
  A100 PCIe 40GB, 20b2 A100 SXM4 80GB, 20b5 A100 PCIe 80GB, 20b7 A30 PCIe, 2330 H100 SXM5
  80GB, 2331 H100 PCIe, 2321 H100L 94GB (H100 NVL), 2339 H100 SXM5 94GB, 2335 H200 SXM
  141GB, 233b H200 NVL.

* The B200 (180GB): its profile names and fractions from the same guide's "Supported MIG
  Profiles" (1g.23gb 1/8 of memory and 1/7 of the SMs, 1g.45gb 2/8 and 1/7, 2g.45gb 2/8 and
  2/7, 3g.90gb 4/8 and 3/7, 4g.90gb 4/8 and 4/7, 7g.180gb all): the same shapes as every
  8-slice part above, whose placements it is given (no B200 ``-lgipp`` transcript was found;
  the placements follow from the shapes on every part that has one); its PCI device id 2901 from NVIDIA's
  mig-parted default configuration (``device-filter: 0x290110DE  # B200``). The ids
  ``nvidia-smi`` gives the B200's profiles were not found published: its profiles carry no
  id, and the MIG handler names them (``-cgi 3g.90gb:4``, which nvidia-smi accepts: "a profile
  name or ID and an optional placement specifier") and finds its instances by name.

Left out on purpose: the ``+me`` profiles (one per GPU, they hold the media engines, which
these counters do not model).
"""

from __future__ import annotations

from dataclasses import dataclass

from devassign.agent.model import FoundDevice
from devassign.domain import DeviceKind, ascii_digits, mig_address

NVIDIA_VENDOR_ID = "10de"
COMPUTE_COUNTER = "mig_compute"
SLICE_COUNTER = "mig_slice_{}"


@dataclass(frozen=True)
class MigProfile:
    """One GPU instance profile as ``nvidia-smi mig -lgip`` lists it (``MIG 3g.40gb``, id 9);
    ``profile_id`` is ``None`` where no source gives it (the B200): then it goes by its name."""

    name: str
    profile_id: int | None
    compute_slices: int
    memory_slices: int
    starts: tuple[int, ...]


@dataclass(frozen=True)
class GpuModel:
    name: str
    vendor_id: str
    device_ids: tuple[str, ...]
    memory_gb: int
    mig_profiles: tuple[MigProfile, ...]

    @property
    def memory_mib(self) -> int:
        """The framebuffer, nominal: the table's GB x 1024 (an A100 40GB: 40960)."""
        return self.memory_gb * 1024

    @property
    def memory_slices(self) -> int:
        """Memory slices of the whole GPU: what its largest profile spans (8; the A30 has 4)."""
        return max(p.memory_slices for p in self.mig_profiles)

    @property
    def compute_slices(self) -> int:
        return max(p.compute_slices for p in self.mig_profiles)

    def profile(self, key: int | str) -> MigProfile | None:
        """A profile by id (``9``, ``"9"``) or name (``"3g.40gb"``, ``"MIG 3g.40gb"``)."""
        text = str(key).strip()
        if ascii_digits(text):
            return next((p for p in self.mig_profiles if p.profile_id == int(text)), None)
        name = text.removeprefix("MIG ").strip()
        return next((p for p in self.mig_profiles if p.name == name), None)


@dataclass(frozen=True)
class MigPlacement:
    """A profile at one start: the memory slices an instance there occupies."""

    profile: MigProfile
    start: int
    slices: tuple[int, ...]


# The ids and placements every 8-memory-slice part shares, by shape (compute, memory slices).
EIGHT_SLICE_SHAPES: tuple[tuple[int, int, int, tuple[int, ...]], ...] = (
    (19, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
    (15, 1, 2, (0, 2, 4, 6)),
    (14, 2, 2, (0, 2, 4)),
    (9, 3, 4, (0, 4)),
    (5, 4, 4, (0,)),
    (0, 7, 8, (0,)),
)


def _eight_slices(names: tuple[str, str, str, str, str, str], *, ids: bool = True) -> tuple[MigProfile, ...]:
    """The profiles every 8-memory-slice part (A100, H100, H200, B200) shares, by its names for
    1g, 1g with two memory slices, 2g, 3g, 4g and 7g; placements are the same, and so are the
    ids where they are known (``ids=False``: not published for this part)."""
    return tuple(
        MigProfile(name, pid if ids else None, compute, memory, starts)
        for name, (pid, compute, memory, starts) in zip(names, EIGHT_SLICE_SHAPES, strict=True)
    )


MODELS: tuple[GpuModel, ...] = (
    GpuModel(
        "A100 40GB",
        NVIDIA_VENDOR_ID,
        ("20b0", "20f1"),
        40,
        _eight_slices(("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")),
    ),
    GpuModel(
        "A100 80GB",
        NVIDIA_VENDOR_ID,
        ("20b2", "20b5"),
        80,
        _eight_slices(("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    ),
    GpuModel(
        "A30 24GB",
        NVIDIA_VENDOR_ID,
        ("20b7",),
        24,
        (
            MigProfile("1g.6gb", 14, 1, 1, (0, 1, 2, 3)),
            MigProfile("2g.12gb", 5, 2, 2, (0, 2)),
            MigProfile("4g.24gb", 0, 4, 4, (0,)),
        ),
    ),
    GpuModel(
        "H100 80GB",
        NVIDIA_VENDOR_ID,
        ("2330", "2331"),
        80,
        _eight_slices(("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    ),
    GpuModel(
        "H100 94GB",
        NVIDIA_VENDOR_ID,
        ("2321", "2339"),
        94,
        _eight_slices(("1g.12gb", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb")),
    ),
    GpuModel(
        "H200 141GB",
        NVIDIA_VENDOR_ID,
        ("2335", "233b"),
        141,
        _eight_slices(("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")),
    ),
    GpuModel(
        "B200 180GB",
        NVIDIA_VENDOR_ID,
        ("2901",),
        180,
        _eight_slices(("1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb"), ids=False),
    ),
)


def _pci_id(value: str) -> str:
    return value.strip().lower().removeprefix("0x")


def lookup(vendor_id: str, device_id: str) -> GpuModel | None:
    """The model with these PCI ids (``10de``/``0x10DE`` alike), ``None`` for any other device."""
    vendor, device = _pci_id(vendor_id), _pci_id(device_id)
    for model in MODELS:
        if model.vendor_id == vendor and device in model.device_ids:
            return model
    return None


def placements(model: GpuModel) -> list[MigPlacement]:
    """Every (profile, start) the model allows, with the memory slices each one occupies."""
    return [
        MigPlacement(p, start, tuple(range(start, start + p.memory_slices)))
        for p in model.mig_profiles
        for start in p.starts
    ]


def placement(model: GpuModel, profile: int | str, start: int) -> MigPlacement | None:
    """The placement of ``profile`` (id or name) at ``start``; ``None`` when the GPU has none."""
    found = model.profile(profile)
    if found is None or start not in found.starts:
        return None
    return MigPlacement(found, start, tuple(range(start, start + found.memory_slices)))


def counters(model: GpuModel) -> dict[str, int]:
    """The parent GPU's counters: each memory slice once, and its compute slices."""
    out = {SLICE_COUNTER.format(i): 1 for i in range(model.memory_slices)}
    out[COMPUTE_COUNTER] = model.compute_slices
    return out


def consumes(placement: MigPlacement) -> dict[str, int]:
    """What an instance at ``placement`` takes from :func:`counters`."""
    out = {SLICE_COUNTER.format(i): 1 for i in placement.slices}
    out[COMPUTE_COUNTER] = placement.profile.compute_slices
    return out


def add_mig_placements(devices: list[FoundDevice]) -> None:
    """Append every MIG placement of every GPU in the table (not its VFs) as a device, and give
    the GPU its ``memory_mib`` and ``gpu_model``: a
    partition of the GPU (scheduler/shares.py) that takes its memory slices and compute
    slices, in mode ``MIG`` (a GPU runs MIG instances, or vGPUs, or is held whole). Only those
    an agent rule types are reported (``kind = "mig"`` or ``mig_profile``)."""
    for gpu in list(devices):
        if gpu.kind not in (DeviceKind.PCI, DeviceKind.SRIOV_PF) or not gpu.vendor_id or not gpu.product_id:
            continue
        model = lookup(gpu.vendor_id, gpu.product_id)
        if model is None:
            continue
        # The whole GPU's size from the same table, so a selector such as
        # ``device.attributes.memory_mib >= 40960`` works without a rule saying it (a rule's
        # own ``attributes`` still win): nominal, GB x 1024, as the demo's A100s carry it.
        gpu.attributes.setdefault("memory_mib", model.memory_mib)
        gpu.attributes.setdefault("gpu_model", model.name)
        pool = counters(model)
        for p in placements(model):
            devices.append(
                FoundDevice(
                    address=mig_address(gpu.address, p.profile.name, p.start),
                    kind=DeviceKind.MIG,
                    vendor_id=gpu.vendor_id,
                    product_id=gpu.product_id,
                    numa_node=gpu.numa_node,
                    parent=gpu.address,
                    attributes={
                        "mig_profile": p.profile.name,
                        "mig_start": p.start,
                        "mig_slices": list(p.slices),
                        "gpu_model": model.name,
                    }
                    | ({} if p.profile.profile_id is None else {"mig_profile_id": p.profile.profile_id}),
                    pool=gpu.address,
                    pool_counters=dict(pool),
                    consumes=consumes(p),
                    mode="MIG",
                )
            )


# GPUs without MIG that run vGPU 17+ (a vGPU type per VF): their framebuffer in GB (pci.ids
# names, NVIDIA's data sheets). A GPU that runs one vGPU type lists only that type on its VFs,
# so an agent that first sees it then cannot tell its size from the types; with it here, the
# pool is the whole card from the start.
VGPU_ONLY_GB: dict[tuple[str, str], int] = {
    (NVIDIA_VENDOR_ID, "26b5"): 48,  # AD102GL [L40]
    (NVIDIA_VENDOR_ID, "26b9"): 48,  # AD102GL [L40S]
    (NVIDIA_VENDOR_ID, "27b8"): 24,  # AD104GL [L4]
}


def memory_mb(devices: list[FoundDevice]) -> dict[str, int]:
    """The framebuffer of every GPU in the tables among ``devices``, by address."""
    out = {}
    for d in devices:
        if d.kind is DeviceKind.SRIOV_VF:
            continue
        vendor, product = (d.vendor_id or "").lower(), (d.product_id or "").lower()
        model = lookup(vendor, product)
        if model is not None:
            out[d.address] = model.memory_mib
        elif (vendor, product) in VGPU_ONLY_GB:
            out[d.address] = VGPU_ONLY_GB[(vendor, product)] * 1024
    return out
