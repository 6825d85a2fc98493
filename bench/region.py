"""A 100,000-host region on PostgreSQL: the reads, claims and periodic reports at that size (run by hand).

    python -m bench.region [--hosts 100000] [--sample 2000] [--threads 4] [--requests 50] [--keep]
    python -m bench.region --reuse [--keep]     # measure again a region an earlier --keep left

1. A fresh database (``bench_region``); one real ``devassign server`` process (``--no-auth``).
2. ``--sample`` hosts report their first inventory through ``PUT /v1/hosts/{h}/inventory``
   (``--threads`` clients): hosts/s and the server's CPU per report, from ``/proc``.
3. The rest of the region is built in SQL from what the store wrote for the first host: the
   same ``hosts`` row (generation, report digest, clocks), its 16 ``devices`` rows with new
   ids, its ``inventory`` counts and its events (``host_registered``, ``device_added``),
   renamed for each host. ``Store.audit`` then has to find nothing.
4. Over HTTP against the server process, ``--requests`` times each (median, p99): the reads
   (types, a page of hosts, one host, a host's devices, capacity, the dashboard's pages),
   claims and releases, the server's RSS, and unchanged periodic reports; the CPU each read
   and report costs the server process and its PostgreSQL backends (``/proc``).

Simulated: the sample's agents are this process's threads; the other hosts never ran an
agent, their rows are copies. Every host is ``up`` (``--down-after`` is a day). The
database is dropped at the end unless ``--keep``; the results go to
``$BENCH_WORK/region.json``. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench.common import (
    PG_ADMIN,
    TYPES,
    WORK,
    Http,
    analyze,
    cpu_seconds,
    fresh_db,
    host_devices,
    host_name,
    machine,
    server_process,
    summary,
)

DB = "bench_region"
LAYOUT = "mixed"  # 16 devices a host: 8 VFs, 4 vGPU slots, 2 GPUs, 2 FPGAs
TEMPLATE = host_name(0)


# ---------------------------------------------------------------- the server process


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_get(port: int, path: str) -> tuple[int, bytes, dict[str, str], float]:
    """A GET whose body is kept as bytes (the dashboard's pages are HTML)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    conn.close()
    return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}, dt


# ---------------------------------------------------------------- building the region


def report_sample(port: int, n: int, threads: int, pid: int, batch: int = 0) -> dict[str, Any]:
    """The first ``n`` hosts' first reports over HTTP; rate and server CPU per report.

    ``batch`` 0: one ``PUT /v1/hosts/{h}/inventory`` per host (an agent's own report); more:
    ``POST /v1/reports`` with ``batch`` hosts a request (an admin's fleet load)."""
    c = Http(port)
    for t in TYPES:
        c.call("POST", "/v1/resource-types", {"name": t})
    lat: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"generation": 1, "devices": host_devices(i, LAYOUT)}
        st, answer, dt = Http(port).call("PUT", f"/v1/hosts/{host_name(i)}/inventory", body)
        if st != 200 or answer["refused"] or len(answer["added"]) != 16:
            raise RuntimeError(f"inventory of {host_name(i)}: HTTP {st} {answer}")
        with lock:
            lat.append(dt)

    def many(lo: int) -> None:
        hi = min(n, lo + batch)
        body = {
            "reports": [
                {"host": host_name(i), "report": {"generation": 1, "devices": host_devices(i, LAYOUT)}}
                for i in range(lo, hi)
            ]
        }
        st, answer, dt = Http(port).call("POST", "/v1/reports", body)
        if st != 200 or answer["failed"] or answer["applied"] != hi - lo:
            raise RuntimeError(f"batch {lo}..{hi - 1}: HTTP {st} {str(answer)[:500]}")
        with lock:
            lat.append(dt)
            if len(lat) % 20 == 0:
                print(f"  {hi} hosts reported, {time.perf_counter() - t0:.0f} s", flush=True)

    cpu0, t0 = cpu_seconds([pid]), time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        if batch:
            list(ex.map(many, range(0, n, batch)))
        else:
            list(ex.map(one, range(n)))
    wall, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
    return {
        "hosts": n,
        "threads": threads,
        "batch": batch or None,
        "wall_s": round(wall, 1),
        "hosts_per_s": round(n / wall, 1),
        "server_cpu_ms_per_report": round(cpu / n * 1000, 2),
        "latency_ms_per_request": summary(lat),
    }


def _columns(table: sa.Table, skip: set[str]) -> list[str]:
    return [c.name for c in table.columns if c.name not in skip]


def bulk_build(url: str, first: int, count: int, batch: int = 10_000) -> dict[str, Any]:
    """Hosts ``first .. hosts - 1`` as copies of the template host's rows, in SQL.

    Every column of ``hosts``, ``devices``, ``inventory`` and the host's events is copied
    from what ``PUT /v1/hosts/host-00000/inventory`` wrote; only the names, ids and the
    texts naming the host change.
    """
    from devassign.store.schema import devices, events, hosts, inventory

    engine = sa.create_engine(url)
    host_cols = _columns(hosts, {"id", "name"})
    dev_cols = _columns(devices, {"id", "host_id"})
    inv_cols = _columns(inventory, {"host_id"})
    ev_cols = _columns(events, {"id", "host", "device_id", "message"})
    t0 = time.perf_counter()
    with engine.begin() as c:
        tid = c.execute(sa.text("SELECT id FROM hosts WHERE name = :n"), {"n": TEMPLATE}).scalar_one()
    for lo in range(first, count, batch):
        hi = min(count, lo + batch)
        with engine.begin() as c:
            params = {"lo": lo, "hi": hi - 1, "tid": tid, "tname": TEMPLATE}
            c.execute(
                sa.text(
                    f"INSERT INTO hosts (name, {', '.join(host_cols)}) "
                    f"SELECT 'host-' || lpad(i::text, 5, '0'), {', '.join('t.' + x for x in host_cols)} "
                    "FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) i "
                    "CROSS JOIN hosts t WHERE t.id = :tid ORDER BY i"
                ),
                params,
            )
            new_hosts = (
                "SELECT id, name FROM hosts WHERE name >= 'host-' || lpad(CAST(:lo AS text), 5, '0') "
                "AND name <= 'host-' || lpad(CAST(:hi AS text), 5, '0')"
            )
            c.execute(
                sa.text(
                    f"INSERT INTO devices (id, host_id, {', '.join(dev_cols)}) "
                    f"SELECT gen_random_uuid()::text, h.id, {', '.join('d.' + x for x in dev_cols)} "
                    f"FROM ({new_hosts}) h CROSS JOIN devices d WHERE d.host_id = :tid "
                    "ORDER BY h.id, d.address"
                ),
                params,
            )
            c.execute(
                sa.text(
                    f"INSERT INTO inventory (host_id, {', '.join(inv_cols)}) "
                    f"SELECT h.id, {', '.join('v.' + x for x in inv_cols)} "
                    f"FROM ({new_hosts}) h CROSS JOIN inventory v WHERE v.host_id = :tid"
                ),
                params,
            )
            # The host's events: the registration, then one per device (with the new device's id).
            c.execute(
                sa.text(
                    f"INSERT INTO events (host, device_id, message, {', '.join(ev_cols)}) "
                    f"SELECT h.name, nd.id, replace(e.message, :tname, h.name), "
                    f"{', '.join('e.' + x for x in ev_cols)} "
                    f"FROM ({new_hosts}) h CROSS JOIN events e "
                    "LEFT JOIN devices od ON od.id = e.device_id "
                    "LEFT JOIN devices nd ON nd.host_id = h.id AND nd.address = od.address "
                    "WHERE e.host = :tname ORDER BY h.id, e.id"
                ),
                params,
            )
        print(f"  built hosts up to {hi:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    engine.dispose()
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    analyze(url)
    return {
        "hosts": count - first,
        "build_s": round(built, 1),
        "vacuum_analyze_s": round(time.perf_counter() - t1, 1),
    }


def table_sizes(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT relname, n_live_tup, pg_size_pretty(pg_total_relation_size(relid)) "
                "FROM pg_stat_user_tables WHERE relname IN ('hosts', 'devices', 'inventory', 'events') "
                "ORDER BY relname"
            )
        ).all()
    engine.dispose()
    return {r[0]: {"rows": r[1], "size": r[2]} for r in rows}


def run_audit(url: str) -> dict[str, Any]:
    from bench.common import open_store

    store = open_store(url, pool_size=2)
    t0 = time.perf_counter()
    found = store.audit(down_for=timedelta(hours=1))
    took = time.perf_counter() - t0
    store.db.dispose()
    return {
        "seconds": round(took, 1),
        "findings": len(found.findings),
        "first": [f.message for f in found.findings[:5]],
    }


# ---------------------------------------------------------------- measuring


def backends(url: str) -> list[int]:
    """The PostgreSQL backends serving the region's database (the server's pool)."""
    engine = sa.create_engine(url)
    with engine.connect() as c:
        pids = c.execute(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
            {"d": DB},
        ).scalars()
        found = list(pids)
    engine.dispose()
    return found


def timed_gets(
    port: int,
    path: str,
    n: int,
    check: Callable[[int, bytes, dict[str, str]], None],
    cpu: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """``n`` GETs after one unmeasured; with ``cpu`` (the server's pid, the database URL), the
    CPU each request cost the server process and its PostgreSQL backends (load-independent)."""
    check(*raw_get(port, path)[:3])
    pids = backends(cpu[1]) if cpu else []
    server0, db0 = (cpu_seconds([cpu[0]]), cpu_seconds(pids)) if cpu else (0.0, 0.0)
    lat = []
    size = 0
    for _ in range(n):
        st, body, headers, dt = raw_get(port, path)
        check(st, body, headers)
        lat.append(dt)
        size = len(body)
    out = {**summary(lat), "bytes": size, "loadavg_1m": round(os.getloadavg()[0], 1)}
    if cpu:
        out["server_cpu_ms"] = round((cpu_seconds([cpu[0]]) - server0) / n * 1000, 1)
        out["db_cpu_ms"] = round((cpu_seconds(pids) - db0) / n * 1000, 1)
    return out


def ok(st: int, body: bytes, headers: dict[str, str]) -> None:
    if st != 200:
        raise RuntimeError(f"HTTP {st}: {body[:500]!r}")


def reads(port: int, hosts: int, n: int, slow: int, cpu: tuple[int, str]) -> dict[str, Any]:
    """Each read ``n`` times over HTTP, sequentially (one request per connection); those that
    take seconds (capacity, the whole listing) ``slow`` times."""
    rng = random.Random(7)
    one = host_name(rng.randrange(hosts))
    deep = host_name(hosts - hosts // 10)
    spec = "spec=hardware_resource:GPU_A100%3D1"
    paths = {
        "GET /v1/resource-types (devassign types)": "/v1/resource-types",
        "GET /v1/hosts?limit=1000 (devassign hosts)": "/v1/hosts?limit=1000",
        f"GET /v1/hosts?limit=1000&after={deep}": f"/v1/hosts?limit=1000&after={deep}",
        f"GET /v1/hosts/{one}": f"/v1/hosts/{one}",
        f"GET /v1/devices?host={one} (devassign devices --host)": f"/v1/devices?host={one}",
        "GET /v1/devices (first 1000)": "/v1/devices",
        "GET /ui/ (overview)": "/ui/",
        "GET /ui/hosts": "/ui/hosts",
        f"GET /ui/hosts/{one}": f"/ui/hosts/{one}",
        "GET /ui/devices": "/ui/devices",
        f"GET /ui/devices?host={one}": f"/ui/devices?host={one}",
    }
    out: dict[str, Any] = {}
    for label, path in paths.items():
        out[label] = timed_gets(port, path, n, ok, cpu)
        print(f"  {label}: {out[label]}", flush=True)
    # Capacity: the placer's path, answered or refused (it reads at most max_hosts hosts).
    st, body, _, dt = raw_get(port, f"/v1/capacity?{spec}")
    answer = json.loads(body)
    out["GET /v1/capacity?" + spec] = {
        "status": st,
        "ms": round(dt * 1000, 1),
        "answer": answer.get("total") if st == 200 else answer.get("error", {}).get("message"),
    }
    named = "&".join(f"host={host_name(i)}" for i in range(0, hosts, hosts // 100))
    out[f"GET /v1/capacity?{spec} (100 hosts named)"] = timed_gets(
        port, f"/v1/capacity?{spec}&{named}", slow, ok, cpu
    )
    # Capacity a page of candidate hosts at a time: pages from the middle of the region, and
    # the whole walk as `devassign capacity` makes it (1,000 hosts a page).
    start, walked, pages, after, middle = time.perf_counter(), 0, 0, "", ""
    while True:
        st, body, _, _ = raw_get(port, f"/v1/capacity?{spec}&limit=1000{after}")
        ok(st, body, {})
        page = json.loads(body)
        walked, pages = walked + page["total"], pages + 1
        if not page["next"]:
            break
        after = f"&after={page['next']}"
        if pages == hosts // 2000:
            middle = after
    out["capacity of the whole region, 1,000 hosts a page"] = {
        "pages": pages,
        "total": walked,
        "seconds": round(time.perf_counter() - start, 1),
    }
    for size in (100, 1000):
        label = f"GET /v1/capacity?{spec}&limit={size}, a page in the middle"
        out[label] = timed_gets(port, f"/v1/capacity?{spec}&limit={size}{middle}", slow, ok, cpu)
    # The whole listing in one answer, as clients that send no limit get it.
    out["GET /v1/hosts (no limit: all hosts)"] = timed_gets(port, "/v1/hosts", slow, ok, cpu)
    for label in list(out)[-6:]:
        print(f"  {label}: {out[label]}", flush=True)
    return out


def claims(port: int, n: int) -> dict[str, Any]:
    """``n`` sequential claims of one GPU_A100 and one NIC VF, then their releases."""
    took, released = [], []
    consumers = []
    for _ in range(n):
        consumer = str(uuid.uuid4())
        body = {
            "consumer": consumer,
            "project": "bench",
            "extra_specs": {"hardware_resource:GPU_A100": "1", "hardware_resource:NIC_VF_1G": "1"},
        }
        st, answer, dt = Http(port).call("POST", "/v1/claims", body)
        if st != 201:
            raise RuntimeError(f"claim: HTTP {st} {answer}")
        took.append(dt)
        consumers.append(consumer)
    for consumer in consumers:
        st, answer, dt = Http(port).call("DELETE", f"/v1/allocations/{consumer}")
        if st != 204:
            raise RuntimeError(f"release: HTTP {st} {answer}")
        released.append(dt)
    return {"claim": summary(took), "release": summary(released)}


def unchanged_reports(
    port: int, pid: int, hosts: int, seconds: float, threads: int, url: str
) -> dict[str, Any]:
    """Periodic reports that change nothing (generation 2, the same devices) of random hosts."""
    stop = time.monotonic() + seconds
    lat: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < stop:
            i = rng.randrange(hosts)
            body = {"generation": 2, "devices": host_devices(i, LAYOUT)}
            st, answer, dt = Http(port).call("PUT", f"/v1/hosts/{host_name(i)}/inventory", body)
            if st != 200 or answer["added"] or answer["removed"]:
                raise RuntimeError(f"report of {host_name(i)}: HTTP {st} {answer}")
            with lock:
                lat.append(dt)

    db0 = cpu_seconds(backends(url))
    cpu0, t0 = cpu_seconds([pid]), time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(worker, range(threads)))
    wall, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
    db = cpu_seconds(backends(url)) - db0
    per = cpu / len(lat)
    needed = hosts / 60 * per
    return {
        "reports": len(lat),
        "per_s": round(len(lat) / wall, 1),
        "server_cpu_ms_per_report": round(per * 1000, 2),
        "db_cpu_ms_per_report": round(db / len(lat) * 1000, 2),
        "reports_per_s_per_core": round(1 / per),
        "cores_for_region_every_60s": round(needed, 2),
        "latency_ms": summary(lat),
    }


# ---------------------------------------------------------------- main


def drop(name: str) -> None:
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=2_000, help="hosts that report through the API")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help="hosts per POST /v1/reports for the API load (0: one PUT per host); "
        "with --sample equal to --hosts the whole region is loaded through the API",
    )
    ap.add_argument("--requests", type=int, default=50, help="requests per read")
    ap.add_argument("--slow-requests", type=int, default=5, help="requests per read that takes seconds")
    ap.add_argument("--claims", type=int, default=300)
    ap.add_argument("--report-seconds", type=float, default=30)
    ap.add_argument("--reuse", action="store_true", help="measure a region built by an earlier --keep run")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument(
        "--build-only", action="store_true", help="build and audit the region, then stop (keeps it)"
    )
    args = ap.parse_args()
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": {k: v for k, v in machine().items() if k != "free"}}
    url = sa.engine.make_url(PG_ADMIN).set(database=DB).render_as_string(hide_password=False)
    log = WORK / "region-server.log"
    try:
        if not args.reuse:
            url = fresh_db("postgresql", DB)
            with server_process(url, log, start_within=120) as (port, pid):
                results["api_load"] = report_sample(
                    port, min(args.sample, args.hosts), args.threads, pid, args.batch
                )
                print("api load:", results["api_load"], flush=True)
            results["bulk"] = bulk_build(url, args.sample, args.hosts)
            print("bulk:", results["bulk"], flush=True)
            results["audit"] = run_audit(url)
            print("audit:", results["audit"], flush=True)
            if args.build_only:
                args.keep = True
                return
        results["tables"] = table_sizes(url)
        print("tables:", results["tables"], flush=True)
        with server_process(url, log, start_within=120) as (port, pid):
            results["rss_mib_idle"] = round(rss_mib(pid), 1)
            results["reads"] = reads(port, args.hosts, args.requests, args.slow_requests, (pid, url))
            results["claims"] = claims(port, args.claims)
            print("claims:", results["claims"], flush=True)
            results["unchanged_reports"] = unchanged_reports(
                port, pid, args.hosts, args.report_seconds, args.threads, url
            )
            print("unchanged reports:", results["unchanged_reports"], flush=True)
            results["rss_mib_after"] = round(rss_mib(pid), 1)
    finally:
        if not args.keep:
            drop(DB)
    results["total_s"] = round(time.perf_counter() - started)
    results["loadavg"] = os.getloadavg()
    print(json.dumps(results, indent=1, default=str))
    out = WORK / "region.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"written {out}")


if __name__ == "__main__":
    main()
