"""How many server processes x pool sizes one PostgreSQL takes before clients see 503.

    python -m bench.pg_connections                                   # max_connections 50
    python -m bench.pg_connections --max-connections 100 --processes 1 2 4 --pools 5 10

Builds a PostgreSQL cluster of its own (``tests/reliability/pgcluster.py``: the binaries of
``pg_config --bindir``, a temporary folder, a free port; the machine's own cluster is only
read, for its ``max_connections``) with ``--max-connections`` slots, 3 of them reserved for
superusers as by default. The servers connect as an ordinary role, as in production.

For every processes x pool size: that many ``devassign server --db-pool-size P`` processes
(each one replica, PostgreSQL's default overflow of half the pool on top) and a burst in
which every process needs all its connections at once: P + P/2 claims per process while
another connection holds the lock of every host, so each claim keeps its connection while it
waits. Once every claim either waits on the lock or was answered, the lock is released. The
table gives the connections the processes need, the most the database served at once, and
the claims answered 201 and 503 (with their reasons). Prints a Markdown table; ``--json``
keeps the raw figures. All traffic on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
import sqlalchemy as sa
from bench.common import PG_ADMIN
from tests.reliability.pgcluster import Cluster, free_port, wait_for

HOSTS = 4
VFS = 64
ROLE = "devassign"


def _vf(i: int) -> dict[str, Any]:
    return {
        "address": f"0000:3b:{2 + i // 8:02x}.{i % 8}",
        "kind": "sriov_vf",
        "type": "NIC_VF_1G",
        "vendor_id": "8086",
        "product_id": "154c",
        "numa_node": 0,
        "iommu_group": None,
        "driver": "iavf",
        "parent": "0000:3b:00.0",
        "attributes": {},
    }


def machine_max_connections() -> str:
    """The machine's own PostgreSQL's max_connections (read only), or why it is unknown."""
    try:
        engine = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            value = str(conn.execute(sa.text("SHOW max_connections")).scalar_one())
        engine.dispose()
        return value
    except Exception as exc:
        return f"unknown ({str(exc).splitlines()[0]})"


@contextlib.contextmanager
def servers(url: str, count: int, pool: int, work: Path) -> Iterator[list[str]]:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    logs = []
    try:
        for i in range(count):
            port = free_port()
            log = open(work / f"server-{count}x{pool}-{i}.log", "wb")  # noqa: SIM115
            logs.append(log)
            args = [sys.executable, "-m", "devassign.cli.main", "server", "--db", url, "--port", str(port)]
            args += ["--no-auth", "--no-migrate", "--db-pool-size", str(pool), "--log-level", "warning"]
            procs.append(
                (f"http://127.0.0.1:{port}", subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            )
        for base, proc in procs:
            wait_for(f"{base} to start", lambda base=base, proc=proc: _up(base, proc), timeout=300)  # type: ignore[misc]
        yield [base for base, _ in procs]
    finally:
        for _, proc in procs:
            proc.terminate()
        for _, proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        for log in logs:
            log.close()


def _up(base: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"server {base} exited with {proc.returncode}")
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def burst(cluster: Cluster, processes: int, pool: int, work: Path) -> dict[str, Any]:
    name = f"bench_{processes}x{pool}"
    cluster.primary.query(f'CREATE DATABASE "{name}" OWNER {ROLE}')
    url = f"postgresql+psycopg://{ROLE}@127.0.0.1:{cluster.primary.port}/{name}"
    migrate = subprocess.run(
        [sys.executable, "-m", "devassign.cli.main", "db", "upgrade", "--db", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if migrate.returncode != 0:
        raise RuntimeError(migrate.stderr)
    per_process = pool + pool // 2
    with servers(url, processes, pool, work) as bases:
        first = bases[0]
        httpx.post(f"{first}/v1/resource-types", json={"name": "NIC_VF_1G"}, timeout=30).raise_for_status()
        for h in range(HOSTS):
            report = {"generation": 1, "devices": [_vf(i) for i in range(VFS)]}
            httpx.put(f"{first}/v1/hosts/h{h}/inventory", json=report, timeout=30).raise_for_status()
        # Every host's lock held: each claim keeps its connection while it waits for one.
        locker = psycopg.connect(cluster.primary.conninfo(name))
        locker.execute("SELECT id FROM hosts FOR UPDATE")
        answers: list[tuple[int, str]] = []
        lock = threading.Lock()
        peak = 0

        def claim(i: int) -> None:
            base = bases[i % processes]
            body = {"consumer": f"vm-{i}", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
            try:
                r = httpx.post(f"{base}/v1/claims", json=body, timeout=120)
                reason = r.json().get("error", {}).get("reason", "") if r.status_code >= 400 else ""
                answer = (r.status_code, reason)
            except httpx.HTTPError as exc:
                answer = (0, type(exc).__name__)
            with lock:
                answers.append(answer)

        total = processes * per_process
        monitor = psycopg.connect(cluster.primary.conninfo(name), autocommit=True)

        def settled() -> bool:
            nonlocal peak
            row = monitor.execute(
                "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') FROM pg_stat_activity "
                "WHERE datname = %s AND usename = %s",
                (name, ROLE),
            ).fetchone()
            assert row is not None
            backends, waiting = int(row[0]), int(row[1])
            peak = max(peak, backends)
            with lock:
                answered = len(answers)
            return waiting + answered >= total

        with ThreadPoolExecutor(total) as pool_threads:
            futures = [pool_threads.submit(claim, i) for i in range(total)]
            try:
                wait_for("every claim to wait on the lock or be answered", settled, timeout=90, every=0.05)
            finally:
                locker.rollback()
                locker.close()
            for f in futures:
                f.result()
        monitor.close()
    counts = Counter(answers)
    return {
        "processes": processes,
        "pool": pool,
        "per_process": per_process,
        "needed": total,
        "peak_backends": peak,
        "ok": sum(n for (status, _), n in counts.items() if status in (200, 201)),
        "busy": {reason: n for (status, reason), n in counts.items() if status == 503},
        "other": {
            f"{status} {reason}": n for (status, reason), n in counts.items() if status not in (200, 201, 503)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-connections", type=int, default=50)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--pools", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    machine = machine_max_connections()
    rows = []
    with Cluster(max_connections=args.max_connections) as cluster:
        cluster.init_primary(synchronous=False)
        cluster.primary.query(f"CREATE ROLE {ROLE} LOGIN")
        usable = args.max_connections - 3  # superuser_reserved_connections
        for pool in args.pools:
            for processes in args.processes:
                started = time.monotonic()
                row = burst(cluster, processes, pool, cluster.root)
                row["seconds"] = round(time.monotonic() - started, 1)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    print(
        f"\nmax_connections {args.max_connections} ({usable} for the servers' role); "
        f"this machine's own PostgreSQL: {machine}\n"
    )
    print(
        "| processes | pool (+overflow) | connections needed | most served at once "
        "| claims 201 | 503 (reason) |"
    )
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        busy = ", ".join(f"{n} {reason}" for reason, n in sorted(r["busy"].items())) or "0"
        if r["other"]:
            busy += "; other: " + ", ".join(f"{n} {k}" for k, n in r["other"].items())
        print(
            f"| {r['processes']} | {r['pool']} (+{r['pool'] // 2}) | {r['needed']} | {r['peak_backends']} "
            f"| {r['ok']} | {busy} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"max_connections": args.max_connections, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
