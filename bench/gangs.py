"""Gang claims: 64 instances x 8 GPUs, all or none, at 1,000 and 10,000 hosts.

    python -m bench.gangs                                   # 1,000 and 10,000 hosts, both backends
    python -m bench.gangs --hosts 1000 --backends postgresql --rounds 5 --json out.json

Each host reports 8 GPU_A100 (one NUMA node each half, own IOMMU groups) whose devices carry
``rack = "rNN"`` (100 hosts a rack), loaded in-process through ``Store.apply_report``. The
gang is timed in-process (``server.gangs.Gangs.claim``, no HTTP), sequentially, for three
layouts: none (pack), ``distinct_hosts`` and ``same: rack``; plus the dry run
(``Gangs.explain``). After each claim the gang is released and its devices reset to
available outside the timing (stand-in for the agent's cleanup), so every round sees the same
cloud. Afterwards no device may be in two live allocations (checked, printed).
Requires PostgreSQL at $BENCH_PG_URL (default postgres@127.0.0.1:5432/test) for that backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    fresh_db,
    host_name,
    loadavg,
    machine,
    open_store,
    over_allocation,
    reset_cleaning,
    summary,
)

GPUS = 8
RACK = 100  # hosts per rack
LAYOUTS: dict[str, dict[str, Any]] = {
    "pack": {},
    "distinct_hosts": {"distinct_hosts": True},
    "same_rack": {"same": "rack"},
}


def gpus(i: int) -> list[dict[str, Any]]:
    rack = f"r{i // RACK:03d}"
    return [
        {
            "address": f"0000:{0x18 + k:02x}:00.0",
            "kind": "pci",
            "type": "GPU_A100",
            "vendor_id": "10de",
            "product_id": "20b0",
            "numa_node": k * 2 // GPUS,
            "iommu_group": 10 + k,
            "driver": "vfio-pci",
            "parent": None,
            "attributes": {"rack": rack},
        }
        for k in range(GPUS)
    ]


def load(url: str, n: int) -> float:
    """``n`` hosts of 8 GPUs through ``Store.apply_report``; seconds."""
    from devassign import schemas

    store = open_store(url)
    store.create_type(schemas.ResourceTypeCreate(name="GPU_A100"), "bench")
    t0 = time.perf_counter()
    for i in range(n):
        report = schemas.InventoryReport(generation=1, devices=gpus(i))
        store.apply_report(host_name(i), report, "bench")
    dt = time.perf_counter() - t0
    store.db.dispose()
    from bench.common import analyze

    analyze(url)
    return dt


def bench(url: str, instances: int, rounds: int) -> dict[str, Any]:
    from devassign.domain import Role
    from devassign.server.gangs import GangBody, Gangs
    from devassign.server.placement import Placer
    from devassign.store import Principal

    store = open_store(url)
    gangs = Gangs(Placer(store))
    caller = Principal("bench", Role.ADMIN)
    out: dict[str, Any] = {}
    seq = 0
    for name, layout in LAYOUTS.items():
        claim_s: list[float] = []  # seconds; summary() gives ms
        explain_s: list[float] = []
        release_s: list[float] = []
        for r in range(rounds + 1):  # the first round warms up
            seq += 1
            body = GangBody(
                instances=[f"b{seq}-{i}" for i in range(instances)],
                extra_specs={"hardware_resource:GPU_A100": str(GPUS)},
                project="bench",
                layout=layout,
                gang=f"bench-{seq}",
            )
            t0 = time.perf_counter()
            exp = gangs.explain(body, caller)
            t1 = time.perf_counter()
            found, created = gangs.claim(body, caller)
            t2 = time.perf_counter()
            store.release_gang(found.gang, None, "bench")
            t3 = time.perf_counter()
            assert exp["fits"] and created and len(found.allocations) == instances
            if r:
                explain_s.append(t1 - t0)
                claim_s.append(t2 - t1)
                release_s.append(t3 - t2)
            reset_cleaning(url)
        out[name] = {
            "claim": summary(claim_s),
            "explain": summary(explain_s),
            "release": summary(release_s),
            "hosts_used": len({a.host for a in found.allocations}),
        }
        c, e, rel = out[name]["claim"], out[name]["explain"], out[name]["release"]
        print(
            f"   {name:<15} claim median {c['median']:8.1f} ms (max {c['max']:7.1f})   "
            f"explain {e['median']:7.1f} ms   release {rel['median']:7.1f} ms   "
            f"on {out[name]['hosts_used']} hosts",
            flush=True,
        )
    store.db.dispose()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--instances", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"machine": machine(), "runs": []}
    for backend in args.backends:
        for n in args.hosts:
            url = fresh_db(backend, f"bench_gangs_{backend[:2]}_{n}")
            load_s = load(url, n)
            print(
                f"== {backend}, {n:,} hosts x {GPUS} GPUs: loaded in {load_s:.1f} s; gang of "
                f"{args.instances} x {GPUS} GPUs, {args.rounds} rounds (load avg {loadavg()})",
                flush=True,
            )
            run = {
                "backend": backend,
                "hosts": n,
                "load_s": load_s,
                **bench(url, args.instances, args.rounds),
            }
            run["double_allocated_devices"] = over_allocation(url)
            print(f"   devices in two live allocations: {run['double_allocated_devices']}", flush=True)
            out["runs"].append(run)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
