"""Throughput against server processes on PostgreSQL, and where one claim's CPU goes.

    python -m bench.workers                                  # 1,000 hosts, --workers 1 2 4
    python -m bench.workers --hosts 10000 --workers 1 2 --clients 16 --per-client 25

One PostgreSQL database with N hosts of the ``bench.compare`` layout (8 NIC_VF_1G VFs of one PF
+ 4 VGPU slots of one GPU per host), loaded in-process. For each ``--workers`` value a
``devassign server --workers W`` runs on it and

- one client makes ``--rounds`` sequential claims over HTTP: median and p99, and the CPU seconds
  per claim of the server's processes, of PostgreSQL's processes and of the client (from
  /proc, so the split is measured, not guessed);
- ``--clients`` clients make ``--per-client`` claims each: successful claims per second,
  median and p99 latency.

Every claim is released between the phases and the devices are put back to available
(stand-in for the agent's cleanup), so each phase starts from the same free capacity. Prints a
Markdown table; ``--json`` keeps the raw figures. All traffic on 127.0.0.1, every loop bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def run(url: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": workers, "load_avg_start": loadavg()}
    with server(url, WORK / f"workers-{workers}.log", ["--workers", str(workers)]) as port:
        made: list[str] = []

        def one(_: int) -> tuple[int, float]:
            body = claim_body()
            status, _, seconds = Http(port).call("POST", "/v1/claims", body)
            if status == 201:
                made.append(body["consumer"])
            return status, seconds

        def release_all() -> None:
            http = Http(port)
            while made:
                http.call("DELETE", f"/v1/allocations/{made.pop()}")
            reset_cleaning(url)

        concurrent(one, args.clients, 3)  # every worker process warm
        release_all()
        served_by = server_pids(port)
        pg_pids = pids("-f", "postgres:")
        me = [os.getpid()]
        cpu0 = (cpu_seconds(served_by), cpu_seconds(pg_pids), cpu_seconds(me))
        t0 = time.perf_counter()
        seq = [one(i) for i in range(args.rounds)]
        wall = time.perf_counter() - t0
        cpu1 = (cpu_seconds(served_by), cpu_seconds(pg_pids), cpu_seconds(me))
        ok = [t for status, t in seq if status == 201]
        out["seq"] = summary(ok) | {"failed": len(seq) - len(ok)}
        out["cpu_ms_per_claim"] = {
            name: (b - a) / len(seq) * 1000
            for name, a, b in zip(("server", "postgresql", "client"), cpu0, cpu1, strict=True)
        }
        out["wall_ms_per_claim"] = wall / len(seq) * 1000
        release_all()
        seconds, results = concurrent(one, args.clients, args.per_client)
        good = [t for status, t in results if status == 201]
        statuses: dict[str, int] = {}
        for status, _ in results:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        out["conc"] = {
            "clients": args.clients,
            "claims_per_s": len(good) / seconds,
            "results": statuses,
            **{k: v for k, v in summary(good).items() if k in ("median", "p90", "p99")},
        }
        release_all()
    out["double_allocated_devices"] = over_allocation(url)
    out["load_avg_end"] = loadavg()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=25)
    ap.add_argument("--json", default=str(WORK / "workers.json"))
    args = ap.parse_args(argv)
    url = fresh_db("postgresql", f"bench_workers_{args.hosts}")
    print(f"loaded {args.hosts} hosts in {load_inprocess(url, args.hosts, 'compare'):.1f} s", flush=True)
    results = []
    for w in args.workers:
        r = run(url, w, args)
        results.append(r)
        print(json.dumps(r), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results))
    print()
    print(
        f"| workers | 1 client median / p99 (ms) | CPU ms per claim: server / PostgreSQL / client | "
        f"{args.clients} clients claims/s | {args.clients} clients median / p99 (ms) | results | "
        "devices in two live allocations | load avg (start → end) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        c, cpu = r["conc"], r["cpu_ms_per_claim"]
        print(
            f"| {r['workers']} | {r['seq']['median']:.1f} / {r['seq']['p99']:.1f} | "
            f"{cpu['server']:.2f} / {cpu['postgresql']:.2f} / {cpu['client']:.2f} | "
            f"{c['claims_per_s']:.1f} | "
            f"{c['median']:.0f} / {c['p99']:.0f} | {c['results']} | {r['double_allocated_devices']} | "
            f"{r['load_avg_start'].split()[0]} → {r['load_avg_end'].split()[0]} |"
        )


if __name__ == "__main__":
    main()
