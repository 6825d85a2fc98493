"""Shared helpers of the claim benchmarks: inventory shapes, databases, servers, HTTP, statistics.

Run by hand, never by the test suite. All traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/devassign-bench"))
TYPES = ("NIC_VF_1G", "VGPU", "GPU_A100", "FPGA")
LONG = 86400  # seconds: hosts stay "up" and reservations never expire during a run

# ---------------------------------------------------------------- inventory shapes


def _vf(i: int, pf: str, numa: int, fn: int) -> dict[str, Any]:
    bus = pf.split(":")[1]
    return {
        "address": f"0000:{bus}:{2 + fn // 8:02x}.{fn % 8}",
        "kind": "sriov_vf",
        "type": "NIC_VF_1G",
        "vendor_id": "8086",
        "product_id": "154c",
        "numa_node": numa,
        "iommu_group": 100 + fn,
        "driver": "vfio-pci",
        "parent": pf,
        "attributes": {"physical_network": "physnet1"},
    }


def _vgpu(gpu: str, numa: int, k: int) -> dict[str, Any]:
    return {
        "address": f"{gpu}/nvidia-230/{k}",
        "kind": "mdev_type",
        "type": "VGPU",
        "vendor_id": "10de",
        "product_id": "1eb8",
        "numa_node": numa,
        "driver": "nvidia",
        "parent": gpu,
        "attributes": {"mdev_type": "nvidia-230"},
    }


def _pci(address: str, type_: str, numa: int, group: int, vendor: str, product: str) -> dict[str, Any]:
    return {
        "address": address,
        "kind": "pci",
        "type": type_,
        "vendor_id": vendor,
        "product_id": product,
        "numa_node": numa,
        "iommu_group": group,
        "driver": "vfio-pci",
        "parent": None,
        "attributes": {},
    }


def host_devices(i: int, layout: str) -> list[dict[str, Any]]:
    """The devices one host reports.

    ``compare``: 8 NIC_VF_1G VFs of one PF + 4 VGPU slots of one GPU.
    ``mixed``: the same 12 plus 2 GPU_A100 and 2 FPGA (16 devices), spread over 2
    NUMA nodes (VFs on node 0, the vGPU GPU on node 1, one GPU and one FPGA on each).
    ``pools``: ``mixed`` with the vGPU slots partitions of their GPU (a 16 GB framebuffer,
    4 GB a slot, one vGPU type at a time), so each claim checks and counts a pool.
    """
    pf = "0000:3b:00.0"
    vgpu_parent = "0000:af:00.0"
    devs = [_vf(i, pf, 0, f) for f in range(8)] + [_vgpu(vgpu_parent, 1, k) for k in range(4)]
    if layout == "pools":
        share = {"pool_counters": {"framebuffer_mb": 16384}, "consumes": {"framebuffer_mb": 4096}}
        devs = devs[:8] + [{**d, **share, "mode": "4Q"} for d in devs[8:]]
    if layout in ("mixed", "pools"):
        devs += [
            _pci("0000:18:00.0", "GPU_A100", 0, 10, "10de", "20b0"),
            _pci("0000:86:00.0", "GPU_A100", 1, 11, "10de", "20b0"),
            _pci("0000:5e:00.0", "FPGA", 0, 12, "8086", "0b30"),
            _pci("0000:d8:00.0", "FPGA", 1, 13, "8086", "0b30"),
        ]
    return devs


def host_name(i: int) -> str:
    return f"host-{i:05d}"


CLAIM = {"extra_specs": {"hardware_resource:NIC_VF_1G": "1", "hardware_resource:VGPU": "1"}}


def claim_body(consumer: str | None = None) -> dict[str, Any]:
    return {"consumer": consumer or str(uuid.uuid4()), "project": "bench", **CLAIM}


# ---------------------------------------------------------------- databases


def fresh_db(backend: str, name: str) -> str:
    """An empty, migrated database; returns its URL."""
    from devassign.store import Database

    if backend == "sqlite":
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        url = f"sqlite:///{path}"
    else:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


def open_store(url: str, pool_size: int = 20) -> Any:
    from devassign.store import Database, Store

    db = Database(url, pool_size=pool_size)
    return Store(db, down_after=timedelta(seconds=LONG), reservation_ttl=timedelta(seconds=LONG))


def _each(fn: Callable[[int], None], n: int, threads: int) -> None:
    """``fn(0) .. fn(n - 1)``, on ``threads`` threads when more than one."""
    if threads <= 1:
        for i in range(n):
            fn(i)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(fn, range(n)))


def load_inprocess(url: str, n: int, layout: str, threads: int = 1) -> float:
    """Load ``n`` hosts through ``Store.apply_report`` (no HTTP); returns seconds."""
    from devassign import schemas

    store = open_store(url)
    for t in TYPES:
        with contextlib.suppress(Exception):
            store.create_type(schemas.ResourceTypeCreate(name=t), "bench")
    t0 = time.perf_counter()

    def one(i: int) -> None:
        report = schemas.InventoryReport(generation=1, devices=host_devices(i, layout))
        store.apply_report(host_name(i), report, "bench")

    _each(one, n, threads)
    dt = time.perf_counter() - t0
    store.db.dispose()
    analyze(url)
    return dt


def load_http(port: int, n: int, layout: str, threads: int = 1) -> float:
    """Load ``n`` hosts with ``PUT /v1/hosts/{host}/inventory``; returns seconds."""
    c = Http(port)
    for t in TYPES:
        c.call("POST", "/v1/resource-types", {"name": t})
    t0 = time.perf_counter()

    def one(i: int) -> None:
        st, body, _ = Http(port).call(
            "PUT",
            f"/v1/hosts/{host_name(i)}/inventory",
            {"generation": 1, "devices": host_devices(i, layout)},
        )
        if st != 200 or body["refused"]:
            raise RuntimeError(f"inventory of {host_name(i)}: HTTP {st} {body}")

    _each(one, n, threads)
    return time.perf_counter() - t0


def analyze(url: str) -> None:
    """PostgreSQL: VACUUM ANALYZE after a bulk load, as autovacuum would do shortly after.

    Without statistics the planner believes ``inventory`` holds a few rows and hash-joins all
    of it instead of walking the candidate index (seen: 84 ms instead of 0.3 ms at 10,000 hosts).
    """
    if url.startswith("sqlite"):
        return
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def reset_cleaning(url: str) -> int:
    """Stand-in for the agent: devices in ``cleaning`` become ``available`` again.

    A direct SQL update plus ``devassign.store.inventory.recount`` of each touched host, as
    the agent's cleanup report would do. Returns how many devices were reset.
    """
    from devassign.store import Database
    from devassign.store.inventory import recount
    from devassign.store.schema import devices

    db = Database(url)
    with db.write() as conn:
        hids = [
            r.host_id
            for r in conn.execute(
                sa.select(devices.c.host_id).where(devices.c.state == "cleaning").distinct()
            )
        ]
        n = conn.execute(
            devices.update()
            .where(devices.c.state == "cleaning")
            .values(state="available", allocation_id=None)
        ).rowcount
        for h in hids:
            recount(conn, h)
    db.dispose()
    return n


def usage_of(url: str, host: str, type_: str) -> tuple[int, int]:
    """(devices of ``type_`` on ``host`` not available, total) read straight from the database."""
    from devassign.store import Database
    from devassign.store.schema import devices, hosts, resource_types

    db = Database(url)
    with db.read() as conn:
        rows = conn.execute(
            sa.select(devices.c.state)
            .join(hosts, hosts.c.id == devices.c.host_id)
            .join(resource_types, resource_types.c.id == devices.c.type_id)
            .where(hosts.c.name == host, resource_types.c.name == type_, devices.c.state != "removed")
        ).all()
    db.dispose()
    return sum(1 for r in rows if r.state != "available"), len(rows)


def over_allocation(url: str) -> int:
    """Devices held by two live allocations at once, or held without being reserved (must be 0)."""
    from devassign.store import Database

    db = Database(url)
    with db.read() as conn:
        twice = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT device_id FROM allocation_items WHERE released_at IS NULL "
                "GROUP BY device_id HAVING count(*) > 1) x"
            )
        ).scalar_one()
    db.dispose()
    return int(twice)


# ---------------------------------------------------------------- servers and HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far, from ``/proc`` (vanished ones count 0)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pids(*pgrep: str) -> list[int]:
    """The processes ``pgrep`` finds with these arguments."""
    out = subprocess.run(["pgrep", *pgrep], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def server_pids(port: int) -> list[int]:
    """A server's process and its children (``--workers``), by the port it was started on."""
    found = pids("-f", "--", f"--port {port}")
    return found + [child for pid in found for child in pids("-P", str(pid))]


@contextlib.contextmanager
def server_process(
    url: str,
    log: Path,
    extra: Sequence[str] = (),
    start_within: float = 60,
    src: Path | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[tuple[int, int]]:
    """A ``devassign server --no-auth`` process on a free loopback port; yields (port, pid).

    ``src``: run the package from this source folder (another checkout's ``src``) instead of
    the installed one. ``prefix``: a command that runs the server (``valgrind ...``)."""
    port = free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    args = [
        *prefix,
        sys.executable,
        "-m",
        "devassign.cli.main",
        "server",
        "--db",
        url,
        "--no-auth",
        "--port",
        str(port),
        "--reservation-ttl",
        str(LONG),
        "--down-after",
        str(LONG),
        "--log-level",
        "warning",
        *extra,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + start_within
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    if Http(port).call("GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"server did not start within {start_within:g} s")
            yield port, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def server(url: str, log: Path, extra: Sequence[str] = (), src: Path | None = None) -> Iterator[int]:
    """:func:`server_process`, yielding the port only."""
    with server_process(url, log, extra, src=src) as (port, _):
        yield port


class Http:
    """One request per connection, like ``placement_bench.HttpClient`` (same cost for both)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body) if body is not None else None
        t0 = time.perf_counter()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        dt = time.perf_counter() - t0
        conn.close()
        return resp.status, (json.loads(raw) if raw else None), dt


# ---------------------------------------------------------------- statistics


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, p90, p99, max (input in seconds)."""
    ms = [x * 1000 for x in xs]
    return {
        "n": len(ms),
        "median": statistics.median(ms),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms),
    }


def concurrent(fn: Callable[[int], Any], clients: int, per_client: int) -> tuple[float, list[Any]]:
    """Run ``fn`` ``clients x per_client`` times from ``clients`` threads; (seconds, results)."""
    t0 = time.perf_counter()

    def worker(k: int) -> list[Any]:
        return [fn(k * per_client + j) for j in range(per_client)]

    with ThreadPoolExecutor(clients) as ex:
        results = [r for chunk in ex.map(worker, range(clients)) for r in chunk]
    return time.perf_counter() - t0, results


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def reference_loop_ns(n: int = 2_000_000) -> float:
    """Nanoseconds per iteration of a plain Python loop (best of 3): how fast this machine runs
    Python now, printed beside CPU figures so runs on different machines can be compared (the
    same code measured 3.8 ms a claim on one 2-CPU machine and 7.9 ms on another)."""
    best = float("inf")
    for _ in range(3):
        t0, total = time.process_time(), 0
        for i in range(n):
            total += i
        best = min(best, time.process_time() - t0)
    return best / n * 1e9


def machine() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    pg = ""
    with contextlib.suppress(Exception):
        e = sa.create_engine(PG_ADMIN)
        with e.connect() as c:
            pg = c.execute(sa.text("SHOW server_version")).scalar_one()
        e.dispose()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "free": free,
        "python": platform.python_version(),
        "postgresql": pg,
        "sqlite": __import__("sqlite3").sqlite_version,
    }
