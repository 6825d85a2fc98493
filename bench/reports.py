"""How many inventory reports one server process absorbs.

Starts one real ``devassign server`` process, registers N hosts with 16 devices each (their
first, changing report), then sends unchanged periodic reports from C concurrent clients for a
fixed time, and heartbeats likewise. 10,000 hosts reporting every 60 s is 167 reports/s.

    python bench/reports.py --hosts 1000 --clients 16 --seconds 20 [--db postgresql+psycopg://...]

Run by hand; not part of the tests. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.servers import free_port


def devices(i: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in range(8):
        out.append(
            {
                "address": f"0000:3b:{0x10 + n // 8:02x}.{n % 8}",
                "kind": "sriov_vf",
                "type": "NIC_VF_1G",
                "vendor_id": "8086",
                "product_id": "1889",
                "numa_node": n % 2,
                "parent": "0000:3b:00.0",
                "attributes": {"physical_network": "physnet1"},
            }
        )
    for n in range(4):
        out.append(
            {
                "address": f"0000:5e:00.0/nvidia-230/{n}",
                "kind": "mdev_type",
                "type": "VGPU",
                "vendor_id": "10de",
                "product_id": "1eb8",
                "numa_node": 0,
                "parent": "0000:5e:00.0",
            }
        )
    for n in range(4):
        out.append(
            {
                "address": f"0000:{0xAF + n:02x}:00.0",
                "kind": "pci",
                "type": "GPU",
                "vendor_id": "10de",
                "product_id": "20b5",
                "numa_node": 1,
                "iommu_group": 40 + n,
            }
        )
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_for(seconds: float, clients: int, fn: Any) -> tuple[int, list[float]]:
    stop = time.monotonic() + seconds
    lat: list[float] = []
    lock = threading.Lock()
    count = 0

    def worker(k: int) -> None:
        nonlocal count
        with httpx.Client(timeout=30) as c:
            j = k
            while time.monotonic() < stop:
                t = time.perf_counter()
                fn(c, j)
                d = time.perf_counter() - t
                with lock:
                    lat.append(d)
                    count += 1
                j += clients

    with cf.ThreadPoolExecutor(clients) as ex:
        list(ex.map(worker, range(clients)))
    return count, lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="devassign-bench-"))
    db = args.db or f"sqlite:///{tmp / 'bench.db'}"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devassign.cli.main",
            "server",
            "--db",
            db,
            "--port",
            str(port),
            "--no-auth",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as c:
            for t in ("NIC_VF_1G", "VGPU", "GPU"):
                c.post("/v1/resource-types", json={"name": t})
        gens = dict.fromkeys(range(args.hosts), 0)

        def report(c: httpx.Client, j: int) -> None:
            i = j % args.hosts
            gens[i] += 1
            r = c.put(
                f"{url}/v1/hosts/bench-{i}/inventory", json={"generation": gens[i], "devices": devices(i)}
            )
            if r.status_code not in (200, 409):
                raise RuntimeError(r.text)

        t0 = time.perf_counter()
        cpu0 = cpu_seconds(proc.pid)
        with cf.ThreadPoolExecutor(args.clients) as ex:
            list(ex.map(lambda i: report(httpx.Client(timeout=30), i), range(args.hosts)))
        load_s = time.perf_counter() - t0
        load_cpu = cpu_seconds(proc.pid) - cpu0
        print(
            f"db={db.split(':')[0]} hosts={args.hosts} clients={args.clients} load={os.getloadavg()[0]:.2f}"
        )
        print(
            f"first reports (16 devices each, all new): {args.hosts / load_s:.0f}/s, "
            f"server CPU {load_cpu / args.hosts * 1000:.2f} ms/report"
        )

        for name, fn in (
            ("unchanged reports", report),
            ("heartbeats", lambda c, j: c.post(f"{url}/v1/hosts/bench-{j % args.hosts}/heartbeat")),
        ):
            cpu0 = cpu_seconds(proc.pid)
            n, lat = run_for(args.seconds, args.clients, fn)
            cpu = cpu_seconds(proc.pid) - cpu0
            lat.sort()
            print(
                f"{name}: {n / args.seconds:.0f}/s, median {statistics.median(lat) * 1000:.1f} ms, "
                f"p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms, server CPU {cpu / n * 1000:.2f} ms each "
                f"(=> one core absorbs {n / cpu:.0f}/s)"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
