"""Many gang instances on one large host: what planning them costs, in-process (no database).

    python -m bench.gang_host                                  # 1,000 instances, 20,000 VFs
    python -m bench.gang_host --instances 300 --devices 2000 --per-instance

A gang places a host's second and later instances with the earlier ones' devices held. With
one search kept from instance to instance (``fit.Instances``) that grows with instances +
devices; ``--per-instance`` measures the other way, a view of the whole host per instance (as
for requests with alternatives and hosts with pools), which grows with their product and is
cut off at ``gang.MAX_VIEW_DEVICES`` (raised here, so the whole plan is timed). The host has
``--devices`` VFs of one type (8 per PF, each in its own IOMMU group, two NUMA nodes); the
request is one VF per instance. Printed: the plan's thread CPU seconds and the instances placed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devassign.scheduler import ClaimBody, DeviceView, HostView, Snapshot, parse_claim
from devassign.scheduler import gang as gang_module
from devassign.scheduler.fit import Instances


def big_host(n: int) -> HostView:
    devices = []
    for i in range(n):
        pf = f"0000:{3 + i // 2048:02x}:{(i // 8) % 256:02x}.0"
        address = f"0000:{0x40 + i // 2048:02x}:{(i // 8) % 256:02x}.{i % 8}"
        devices.append(DeviceView(address, address, "sriov_vf", "NIC_VF_1G", i % 2, 1000 + i, pf))
    return HostView("big", tuple(devices))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--per-instance", action="store_true", help="a view of the host per instance")
    args = ap.parse_args()
    request = parse_claim(
        ClaimBody.model_validate(
            {"consumer": "job", "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 1}]}
        )
    )
    host = big_host(args.devices)
    if args.per_instance:
        Instances.next = lambda self, quota_left: (None, 0)  # type: ignore[method-assign]
        gang_module.MAX_VIEW_DEVICES = 10**12
    t0 = time.thread_time()
    found = gang_module.plan(request, args.instances, Snapshot((host,)))
    spent = time.thread_time() - t0
    how = "a view of the host per instance" if args.per_instance else "one search for the host"
    print(
        f"{args.instances} instances over a host of {args.devices:,} devices ({how}): "
        f"{found.placed} placed, {spent:.2f} s of thread CPU"
    )


if __name__ == "__main__":
    main()
