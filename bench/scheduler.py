"""Time ``schedule()`` over 50 hosts x 16 devices (run by hand: python bench/scheduler.py).

Mixed types on 2 NUMA nodes, a quarter of the VFs in use, one request of a GPU with a
selector and two VFs on the GPU's NUMA node: the shape of a typical claim.
"""

from __future__ import annotations

import statistics
import time

from devassign.scheduler import DeviceView, HostView, Snapshot, parse_claim, schedule


def make_host(i: int) -> HostView:
    devices: list[DeviceView] = []
    for numa in (0, 1):
        pf = f"0000:{0x3B + numa * 0x23:02x}:00.0"
        for v in range(6):
            address = f"{pf[:7]}:02.{v}"
            devices.append(
                DeviceView(
                    f"h{i}/{address}",
                    address,
                    "sriov_vf",
                    "NIC_VF_1G",
                    numa,
                    100 + numa * 10 + v,
                    pf,
                    "8086",
                    "154c",
                    "vfio-pci",
                    {"physical_network": "physnet1"},
                    "assigned" if (v + i) % 4 == 0 else "available",
                )
            )
        for g in range(2):
            address = f"0000:{0x80 + numa * 0x10 + g:02x}:00.0"
            devices.append(
                DeviceView(
                    f"h{i}/{address}",
                    address,
                    "pci",
                    "GPU_A100",
                    numa,
                    200 + numa * 10 + g,
                    None,
                    "10de",
                    "20b2",
                    "vfio-pci",
                    {"memory_mib": 81920 if g else 40960},
                )
            )
    return HostView(f"compute-{i}", tuple(devices))


def main() -> None:
    snapshot = Snapshot(tuple(make_host(i) for i in range(50)))
    request = parse_claim(
        {
            "consumer": "bench",
            "requests": [
                {"name": "gpu", "type": "GPU_A100", "selector": "device.attributes.memory_mib >= 81920"},
                {"name": "nic", "type": "NIC_VF_1G", "count": 2},
            ],
            "constraints": [{"requests": ["gpu", "nic"], "match": "numa_node"}],
        }
    )
    for _ in range(20):
        schedule(request, snapshot)
    times = []
    for _ in range(500):
        start = time.perf_counter()
        decision = schedule(request, snapshot)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(
        f"schedule() 50 hosts x 16 devices: median {statistics.median(times):.2f} ms, "
        f"p99 {times[int(len(times) * 0.99)]:.2f} ms, {len(decision.placements)} placements, "
        f"{decision.steps} steps"
    )


if __name__ == "__main__":
    main()
