"""What one more taint costs on a large host that already has many: in-process, SQLite.

    python -m bench.taints                          # 20,000 VFs, 99 taints, then one more
    python -m bench.taints --devices 2000 --taints 60

Every taint added or removed, every applied report and every expiry recomputes the marks of
the host's devices under the host's lock (on SQLite, the one writer lock of the cloud). The
host reports ``--devices`` VFs; ``--taints`` taints go on it (a third whole-host, a third on
PFs, a third on single devices), then one more is timed (wall and thread CPU seconds of
``Store.add_taint``). Run it against another checkout with ``PYTHONPATH=DIR/src``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_db, open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--taints", type=int, default=99)
    args = ap.parse_args()
    from devassign import schemas

    store = open_store(fresh_db("sqlite", "bench_taints"))
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    pfs = [f"0000:{3 + i // 256:02x}:{i % 256:02x}.0" for i in range((args.devices + 7) // 8)]
    devices = [
        schemas.ReportedDevice(
            address=f"0000:{0x40 + i // 2048:02x}:{(i // 8) % 256:02x}.{i % 8}",
            kind="sriov_vf",
            type="NIC_VF_1G",
            parent=pfs[i // 8],
            iommu_group=1000 + i,
        )
        for i in range(args.devices)
    ]
    store.apply_report("big", schemas.InventoryReport(generation=1, devices=devices), "agent")
    ids = [d.id for d in store.list_devices(host="big", limit=100)]
    for k in range(args.taints):
        body = {"effect": "NoSchedule", "reason": f"flap {k}"}
        if k % 3 == 1:
            body["parent"] = pfs[k % len(pfs)]
        target = {"device_id": ids[k % len(ids)]} if k % 3 == 2 else {"host": "big"}
        store.add_taint(schemas.TaintCreate(**body), "agent", **target)
    t0, c0 = time.perf_counter(), time.thread_time()
    store.add_taint(schemas.TaintCreate(effect="NoSchedule", reason="one more"), "agent", host="big")
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    where = f"a host of {args.devices:,} devices with {args.taints} taints"
    print(f"one more taint on {where}: {wall:.3f} s, CPU {cpu:.3f} s")


if __name__ == "__main__":
    main()
