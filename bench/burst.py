"""Bursts of concurrent claims on PostgreSQL with several server processes: tail latency, failed
claims, devices given twice, throughput per CPU, and how often claims collide.

    python -m bench.burst                                     # 1,000 hosts, 64 clients, pack and spread
    python -m bench.burst --hosts 10000 --workers 2 --clients 64 --per-client 20 --policies pack
    python -m bench.burst --rate 20 40 60                     # open loop: p99 below saturation

One fresh PostgreSQL database of ``--hosts`` hosts x 16 devices (``bench.common.host_devices(i,
"mixed")``, loaded in-process); for each policy a ``devassign server --workers W --policy P``
serves ``--clients`` threads making ``--per-client`` claims each (1 NIC_VF_1G + 1 VGPU; one
connection per request). The hosts hold 4 such claims each, far more than a burst makes, so
every refused claim is a failure while devices remain. Reported:

- claims per second, median / p99 latency, HTTP results; with ``--rate R`` the clients send at
  R claims/s in all (open loop, each claim at its due time, its latency counted from then), so
  the tail can be read below the machine's saturation, where the closed loop (every client
  sending again at once) always saturates it;
- CPU seconds of the server's processes and of PostgreSQL's backends of this database (from
  /proc): claims per CPU-second, i.e. the throughput one fully used core would give;
- the collision rate: the servers' ``devassign_claim_lost_races`` (attempts that lost a host to
  a concurrent claim: ``busy``, its lock held; ``taken``, its devices gone) per claim made,
  summed over the worker processes through prometheus_client's multiprocess directory;
- devices in two live allocations afterwards (a query; must be 0).

Between policies every claim is released and the devices put back to available (the agent's
cleanup, stood in for by SQL). All traffic on 127.0.0.1; every loop bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    WORK,
    Http,
    claim_body,
    concurrent,
    cpu_seconds,
    fresh_db,
    load_inprocess,
    loadavg,
    over_allocation,
    pids,
    reset_cleaning,
    server,
    server_pids,
    summary,
)


def lost_races(directory: Path) -> dict[str, float]:
    """The servers' lost races by reason, summed over their processes."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "devassign_claim_lost_races":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[s.labels["why"]] = out.get(s.labels["why"], 0) + s.value
    return out


def burst(url: str, db: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    prom = Path(tempfile.mkdtemp(prefix="devassign-prom-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)  # inherited by the server's processes
    out: dict[str, Any] = {
        "policy": policy,
        "workers": args.workers,
        "rate": args.rate,
        "load_avg_start": loadavg(),
    }
    extra = ["--workers", str(args.workers), "--policy", policy]
    try:
        with server(url, WORK / f"burst-{policy}.log", extra) as port:
            made: list[str] = []

            start = [0.0]  # when the measured burst starts (perf_counter)

            def one(i: int) -> tuple[int, float]:
                at = None
                if args.rate and start[0]:
                    # Open loop: claim i is due at its slot whatever came back before; its
                    # latency counts from then (a late client's wait counts too).
                    k, j = divmod(i, args.per_client)
                    at = start[0] + (j * args.clients + k) / args.rate
                    time.sleep(max(0.0, at - time.perf_counter()))
                body = claim_body()
                status, _, seconds = Http(port).call("POST", "/v1/claims", body)
                if at is not None:
                    seconds = time.perf_counter() - at
                if status == 201:
                    made.append(body["consumer"])
                return status, seconds

            concurrent(one, args.workers * 4, 3)  # every worker process warm
            warm_lost = lost_races(prom)
            warm_made = len(made)
            procs = server_pids(port)
            pg = pids("-f", f"postgres: .* {db} ")
            cpu0 = (cpu_seconds(procs), cpu_seconds(pg))
            start[0] = time.perf_counter()
            seconds, results = concurrent(one, args.clients, args.per_client)
            cpu1 = (cpu_seconds(procs), cpu_seconds(pg))
            lost = {k: v - warm_lost.get(k, 0) for k, v in lost_races(prom).items()}
            claims = len(made) - warm_made
            http = Http(port)
            for consumer in made:
                http.call("DELETE", f"/v1/allocations/{consumer}")
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(prom, ignore_errors=True)
    good = [t for status, t in results if status == 201]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    cpu = {"server": cpu1[0] - cpu0[0], "postgresql": cpu1[1] - cpu0[1]}
    out |= {
        "clients": args.clients,
        "claims": claims,
        "claims_per_s": len(good) / seconds,
        "failed": len(results) - len(good),
        "results": statuses,
        "latency": summary(good),
        "cpu_s": cpu,
        "claims_per_cpu_s": len(good) / max(1e-9, cpu["server"] + cpu["postgresql"]),
        "server_cpu_ms_per_claim": cpu["server"] / max(1, len(good)) * 1000,
        "lost_races": lost,
        "collision_rate": sum(lost.values()) / max(1, claims),
        "double_allocated_devices": over_allocation(url),
        "load_avg_end": loadavg(),
    }
    reset_cleaning(url)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=20)
    ap.add_argument("--policies", nargs="+", default=["pack", "spread"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[0.0],
        help="offered claims/s in all, evenly spaced over the clients (open loop; latency from each "
        "claim's due time); 0: every client sends its next claim as soon as the last one answers",
    )
    ap.add_argument("--json", default=str(WORK / "burst.json"))
    args = ap.parse_args(argv)
    db = f"bench_burst_{args.hosts}"
    url = fresh_db("postgresql", db)
    print(f"loaded {args.hosts} hosts in {load_inprocess(url, args.hosts, 'mixed'):.1f} s", flush=True)
    results = []
    rates = args.rate
    for _ in range(args.repeat):
        for policy, rate in [(p, r) for r in rates for p in args.policies]:
            args.rate = rate
            r = burst(url, db, policy, args)
            results.append(r)
            print(json.dumps(r), flush=True)
            time.sleep(1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results))
    print()
    print(
        "| policy | hosts | workers | clients x claims | offered/s | claims/s | median / p99 (ms) | failed | "
        "devices twice | claims per CPU-second (server + PostgreSQL) | server CPU ms per claim | "
        "collision rate (busy / taken) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lost = r["lost_races"]
        print(
            f"| {r['policy']} | {args.hosts:,} | {r['workers']} | {r['clients']} x {args.per_client} | "
            f"{r['rate'] or 'closed'} | {r['claims_per_s']:.0f} | "
            f"{r['latency']['median']:.0f} / {r['latency']['p99']:.0f} | "
            f"{r['failed']} | {r['double_allocated_devices']} | {r['claims_per_cpu_s']:.0f} | "
            f"{r['server_cpu_ms_per_claim']:.2f} | {r['collision_rate']:.2f} "
            f"({lost.get('busy', 0):.0f} / {lost.get('taken', 0):.0f}) | "
            f"{r['load_avg_start'].split()[0]} → {r['load_avg_end'].split()[0]} |"
        )


if __name__ == "__main__":
    main()
