"""Drive OpenStack Placement 16.0.0 for ``bench.compare`` (runs in Placement's own venv).

    /tmp/placement-venv/bin/python bench/placement_driver.py --hosts 1000 [--db-url URL] ...

Reuses ``placement_bench.py`` from the folder ``PLACEMENT_BENCH_DIR`` names (its config,
server start, population and HTTP client: one request per connection) and adds what
``bench.compare`` needs: the same place-and-claim operation timed as one unit (GET
/allocation_candidates?...&limit=1 then PUT /allocations/{consumer}), 16 concurrent clients
doing it (claims per second), and the race check returned as data. Prints one JSON line
(prefixed ``RESULT ``) at the end. Never imports devassign; all traffic on 127.0.0.1; every
loop bounded.
"""

# ruff: noqa: UP031  (the style of placement_bench.py, which it extends)
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
import uuid

PEERS = os.environ.get("PLACEMENT_BENCH_DIR")
if not PEERS:
    sys.exit("set PLACEMENT_BENCH_DIR to the folder that holds placement_bench.py (Placement's benchmark)")
sys.path.insert(0, PEERS)
import placement_bench as pb  # noqa: E402

CONSUMERS = []


def place_and_claim(c, path=pb.AC_PATH):
    """One instance: GET candidates (limit=1), PUT the first. (status, get_s, put_s)."""
    t0 = time.perf_counter()
    st, b, g = c.call("GET", path + "&limit=1")
    if st != 200:
        return "GET %s" % st, g, 0.0
    if not b["allocation_requests"]:
        return "none", g, 0.0
    consumer = str(uuid.uuid4())
    st, _, _p = c.call("PUT", "/allocations/%s" % consumer, pb.claim_body(b["allocation_requests"][0]))
    if st == 204:
        CONSUMERS.append(consumer)
    return (st if st == 204 else "PUT %s" % st), g, time.perf_counter() - t0 - g


def release_all(c):
    """Untimed, between phases: delete every allocation made so far (frees capacity)."""
    while CONSUMERS:
        c.call("DELETE", "/allocations/%s" % CONSUMERS.pop())


def race(c, threads):
    """16 concurrent claims of 1 VGPU at one provider with 4 free (fresh provider)."""
    st, b, _ = c.call("GET", "/allocation_candidates?resources=%s:4&limit=1" % pb.RC_VGPU)
    pb.expect(st, (200,), "GET a_c VGPU:4", b)
    rp = next(iter(b["allocation_requests"][0]["allocations"]))
    st, u, _ = c.call("GET", "/resource_providers/%s/usages" % rp)
    before = u["usages"].get(pb.RC_VGPU, 0)
    body = {
        "allocations": {rp: {"resources": {pb.RC_VGPU: 1}}},
        "consumer_generation": None,
        "project_id": pb.PROJECT,
        "user_id": pb.USER,
        "consumer_type": "INSTANCE",
    }

    def one(_):
        try:
            return c.call("PUT", "/allocations/%s" % uuid.uuid4(), body)[0]
        except Exception as e:
            return repr(e)[:80]

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        codes = list(ex.map(one, range(threads)))
    st, u, _ = c.call("GET", "/resource_providers/%s/usages" % rp)
    hist = {}
    for x in codes:
        hist[str(x)] = hist.get(str(x), 0) + 1
    return {
        "claims": threads,
        "free_before": 4 - before,
        "succeeded": hist.get("204", 0),
        "usage_after": u["usages"][pb.RC_VGPU],
        "capacity": 4,
        "results": hist,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--race", type=int, default=16)
    ap.add_argument("--server", default="wsgiref", choices=("wsgiref", "gunicorn"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--workdir", default="/tmp/devassign-bench/placement")
    ap.add_argument(
        "--layout",
        default="flat",
        choices=("flat", "nested"),
        help="flat: one provider per host with both inventories; nested: a root per host with a "
        "NIC PF child (NIC_VF_1G=8) and a GPU child (VGPU=4), as Nova models vGPUs",
    )
    args = ap.parse_args()

    workdir = pb.write_conf(os.path.join(args.workdir, "%s-n%d" % (args.layout, args.hosts)), args.db_url, "")
    proc, port = pb.start_server(args.server, workdir, args.workers)
    out = {"hosts": args.hosts, "server": args.server, "workers": args.workers, "layout": args.layout}
    try:
        c = pb.HttpClient(port)
        out["load_s"] = pb.populate(c, args.hosts, args.layout)
        print(
            "placement: loaded %d providers in %.1f s" % (args.hosts, out["load_s"]),
            file=sys.stderr,
            flush=True,
        )
        for _ in range(5):
            place_and_claim(c)
        total, gets, puts, fails = [], [], [], {}
        for _ in range(args.rounds):
            st, g, p = place_and_claim(c)
            if st != 204:
                fails[str(st)] = fails.get(str(st), 0) + 1
                continue
            total.append(g + p)
            gets.append(g)
            puts.append(p)
        out["seq"] = {"total": total, "get": gets, "put": puts, "failures": fails}
        release_all(c)
        # Concurrent clients, each doing whole place-and-claim operations.
        statuses = []
        lat = []

        def worker(_):
            res = []
            for _ in range(args.per_client):
                st, g, p = place_and_claim(c)
                res.append((st, g + p))
            return res

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as ex:
            for chunk in ex.map(worker, range(args.clients)):
                for st, dt in chunk:
                    statuses.append(str(st))
                    lat.append(dt)
        wall = time.perf_counter() - t0
        ok = statuses.count("204")
        hist = {}
        for s in statuses:
            hist[s] = hist.get(s, 0) + 1
        out["conc"] = {
            "clients": args.clients,
            "attempts": len(statuses),
            "succeeded": ok,
            "wall_s": wall,
            "claims_per_s": ok / wall,
            "results": hist,
            "latency_median_ms": statistics.median(lat) * 1000,
        }
        if args.race:
            out["race"] = race(c, args.race)
    finally:
        proc.terminate()
        proc.wait(10)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
