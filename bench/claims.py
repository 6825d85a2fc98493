"""Schedule-and-claim latency and throughput.

    python -m bench.claims                      # 1,000 and 10,000 hosts, SQLite and PostgreSQL
    python -m bench.claims --hosts 1000 --backends postgresql --rounds 300 --json out.json

Each host reports 16 devices on 2 NUMA nodes (``bench.common.host_devices(i, "mixed")``:
8 NIC_VF_1G VFs of one PF, 4 VGPU mdev slots of one GPU, 2 GPU_A100, 2 FPGA). Inventory is
loaded in-process through ``Store.apply_report`` (no HTTP: faster; the load time is printed).
The claim is one instance needing 1 NIC_VF_1G and 1 VGPU. It is timed

- in-process: ``Placer.claim`` called directly (no HTTP, no JSON);
- over HTTP: ``POST /v1/claims`` to a ``devassign server`` process on 127.0.0.1;

with 1 client (``--rounds`` sequential claims: median, p90, p99) and with ``--clients``
concurrent clients (claims per second, and their latencies). Claims are never released: a
host holds 4 VGPU, so N hosts hold 4N claims, far more than one run makes; between phases
``--reset`` releases nothing but turns ``cleaning`` devices back to ``available`` (stand-in
for the agent). Afterwards no device may be in two live allocations (checked, printed).
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
    WORK,
    Http,
    claim_body,
    concurrent,
    fresh_db,
    load_inprocess,
    loadavg,
    open_store,
    over_allocation,
    server,
    summary,
)


def _fmt(name: str, s: dict[str, float], extra: str = "") -> str:
    return (
        f"{name:<44} n={s['n']:<4} median={s['median']:7.2f} ms  p90={s['p90']:7.2f}  "
        f"p99={s['p99']:7.2f}  max={s['max']:7.2f} {extra}"
    )


def _print_mode(mode: str, r: dict[str, Any]) -> None:
    print(_fmt(f"{mode}, 1 client", r["seq"]), flush=True)
    extra = f"{r['conc_per_s']:.0f} claims/s errors={r['errors']}"
    print(_fmt(f"{mode}, {r['clients']} clients", r["conc"], extra), flush=True)


def bench_inprocess(url: str, rounds: int, clients: int, per_client: int) -> dict[str, Any]:
    from devassign.domain import Role
    from devassign.errors import DevassignError
    from devassign.scheduler import ClaimBody
    from devassign.server.placement import Placer
    from devassign.store import Principal

    store = open_store(url, pool_size=clients + 4)
    placer = Placer(store)
    caller = Principal("bench", Role.ADMIN)

    errors: dict[str, int] = {}

    def one(_: int) -> float:
        body = ClaimBody.model_validate(claim_body())
        t0 = time.perf_counter()
        try:
            placer.claim(body, caller)
        except DevassignError as exc:
            errors[exc.code] = errors.get(exc.code, 0) + 1
            if sum(errors.values()) == 1:
                print(f"   claim failed: {exc.code}: {str(exc)[:300]}", flush=True)
        return time.perf_counter() - t0

    for i in range(10):  # warm-up
        one(i)
    seq = [one(i) for i in range(rounds)]
    wall, lat = concurrent(one, clients, per_client)
    store.db.dispose()
    return {
        "seq": summary(seq),
        "conc": summary(lat),
        "conc_per_s": len(lat) / wall,
        "clients": clients,
        "errors": errors,
    }


def bench_http(port: int, rounds: int, clients: int, per_client: int) -> dict[str, Any]:
    errors: dict[int, int] = {}

    def one(_: int) -> float:
        st, body, dt = Http(port).call("POST", "/v1/claims", claim_body())
        if st != 201:
            errors[st] = errors.get(st, 0) + 1
            if len(errors) == 1 and errors[st] == 1:
                print(f"   claim failed: HTTP {st} {str(body)[:300]}", flush=True)
        return dt

    for i in range(10):
        one(i)
    seq = [one(i) for i in range(rounds)]
    wall, lat = concurrent(one, clients, per_client)
    return {
        "seq": summary(seq),
        "conc": summary(lat),
        "conc_per_s": len(lat) / wall,
        "clients": clients,
        "errors": errors,
    }


def markdown(out: dict[str, Any]) -> str:
    """The results as a markdown table (ms; claims/s)."""
    rows = [
        "| backend | hosts | load (s, in-process) | mode | 1 client median / p90 / p99 (ms) "
        "| 16 clients claims/s (median / p99 ms) | failed claims | load avg after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in out["runs"]:
        for mode in ("inprocess", "http"):
            r = run.get(mode)
            if not r:
                continue
            s, c = r["seq"], r["conc"]
            rows.append(
                f"| {run['backend']} | {run['hosts']:,} | {run['load_s']:.0f} | {mode} | "
                f"{s['median']:.1f} / {s['p90']:.1f} / {s['p99']:.1f} | {r['conc_per_s']:.1f} "
                f"({c['median']:.0f} / {c['p99']:.0f}) | {r.get('errors') or 0} | {run['load_avg']} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--modes", nargs="+", default=["inprocess", "http"])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=20)
    ap.add_argument("--load-threads", type=int, default=1)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `devassign server` option")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--from-json", help="no run: print the markdown table of an earlier --json")
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return {}
    out: dict[str, Any] = {"runs": []}
    for backend in args.backends:
        for n in args.hosts:
            name = f"bench_claims_{backend[:2]}_{n}"
            url = fresh_db(backend, name)
            load_s = load_inprocess(url, n, "mixed", threads=args.load_threads)
            print(
                f"== {backend}, {n} hosts x 16 devices: loaded in-process in {load_s:.1f} s "
                f"(load avg {loadavg()})",
                flush=True,
            )
            run: dict[str, Any] = {"backend": backend, "hosts": n, "load_s": load_s}
            if "inprocess" in args.modes:
                r = bench_inprocess(url, args.rounds, args.clients, args.per_client)
                run["inprocess"] = r
                _print_mode("in-process", r)
            if "http" in args.modes:
                log = WORK / f"{name}.server.log"
                with server(url, log, args.server_arg) as port:
                    r = bench_http(port, args.rounds, args.clients, args.per_client)
                run["http"] = r
                _print_mode("HTTP", r)
            run["double_allocated_devices"] = over_allocation(url)
            run["load_avg"] = loadavg()
            print(
                f"   devices in two live allocations: {run['double_allocated_devices']}; "
                f"load avg {run['load_avg']}",
                flush=True,
            )
            out["runs"].append(run)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
