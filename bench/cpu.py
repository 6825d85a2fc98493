"""Server CPU per claim, from /proc: what one claim costs the server process, whatever the load.

    python -m bench.cpu                                   # SQLite and PostgreSQL, 1,000 hosts
    python -m bench.cpu --backends postgresql --rounds 300 --repeat 3 --py-spy /tmp/pg.txt

On a shared machine wall-clock latency is noisy; the CPU seconds a process was given are not
(much): the server's ``utime + stime`` over ``--rounds`` sequential ``POST /v1/claims`` is
divided by the claims made. Each backend gets one fresh database of ``--hosts`` hosts x 16
devices (``bench.common.host_devices(i, "mixed")``, loaded in-process) and one ``devassign
server`` process (uvicorn, one worker); the claim is 1 NIC_VF_1G + 1 VGPU, as in
``bench.claims``. ``--repeat`` runs the measurement several times on the same server (the
minimum and the median are printed; the minimum is the least disturbed by other processes).
PostgreSQL's own CPU per claim (its backends' ``/proc``) is printed too. ``--py-spy FILE``
records the server with py-spy during one more measurement (``py-spy record -f raw``, folded
stacks; ``--py-spy-bin`` names the binary) and prints the top frames.

A change is judged against its parent with ``--against``: a second server runs the other
checkout's code (on its own database, loaded the same way) and the two are measured in
turns, A B A B ..., so both see the same machine. On a shared machine the CPU a claim costs
drifts by 10-20 % from one minute to the next; only a comparison in one run is worth reading::

    git worktree add /tmp/base HEAD~1
    python -m bench.cpu --backends postgresql --against /tmp/base --repeat 5

(Both checkouts must expect the same database schema revision.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    WORK,
    Http,
    claim_body,
    cpu_seconds,
    fresh_db,
    load_inprocess,
    loadavg,
    pids,
    reference_loop_ns,
    server,
    server_pids,
    summary,
)


def measure(port: int, rounds: int, pg_db: str | None) -> dict[str, Any]:
    """``rounds`` sequential claims: latencies and CPU ms per claim (server, PostgreSQL, client).

    PostgreSQL's CPU is that of the backends serving ``pg_db`` (their process title names the
    database), not of other users of the same PostgreSQL."""
    mine = server_pids(port)
    pg_pids = pids("-f", f"postgres: .* {pg_db} ") if pg_db else []
    me = [os.getpid()]
    before = (cpu_seconds(mine), cpu_seconds(pg_pids), cpu_seconds(me))
    lat, failed = [], 0
    for _ in range(rounds):
        status, _, seconds = Http(port).call("POST", "/v1/claims", claim_body())
        if status == 201:
            lat.append(seconds)
        else:
            failed += 1
    after = (cpu_seconds(mine), cpu_seconds(pg_pids), cpu_seconds(me))
    names = ("server", "postgresql", "client")
    cpu = {k: (b - a) / rounds * 1000 for k, a, b in zip(names, before, after, strict=True)}
    return {
        "cpu_ms": cpu,
        "latency": summary(lat),
        "failed": failed,
        "load": loadavg(),
        "reference_loop_ns": round(reference_loop_ns(), 1),
    }


def folded_top(path: Path, n: int = 25) -> list[tuple[str, float]]:
    """Share of samples per frame (inclusive) from py-spy's raw (folded) output."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        for frame in set(stack.split(";")):
            inclusive[frame] += k
    return [(f, c / total) for f, c in inclusive.most_common(n)] if total else []


def record(port: int, rounds: int, out: Path, binary: str) -> None:
    """py-spy on the server during ``rounds`` more claims."""
    pid = pids("-f", "--", f"--port {port}")[0]
    spy = subprocess.Popen(
        # --gil: only the thread holding the GIL, so waits for the database are not counted.
        [binary, "record", "--gil", "-f", "raw", "-r", "1000", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    for _ in range(rounds):
        Http(port).call("POST", "/v1/claims", claim_body())
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)
    for frame, share in folded_top(out):
        print(f"  {share * 100:5.1f} %  {frame}")


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_cpu_{backend[:2]}_{args.hosts}"
    url = fresh_db(backend, name)
    loaded = load_inprocess(url, args.hosts, args.layout)
    print(f"{backend}: loaded {args.hosts} hosts in {loaded:.1f} s", flush=True)
    out: dict[str, Any] = {"backend": backend, "hosts": args.hosts, "runs": []}
    with server(url, WORK / f"cpu-{backend}.log", args.server_args) as port:
        for _ in range(args.warmup):
            Http(port).call("POST", "/v1/claims", claim_body())
        for _ in range(args.repeat):
            r = measure(port, args.rounds, name if backend == "postgresql" else None)
            out["runs"].append(r)
            print(f"  {json.dumps(r)}", flush=True)
        if args.py_spy:
            target = Path(f"{args.py_spy}.{backend}")
            record(port, args.rounds, target, args.py_spy_bin)
    server_ms = [r["cpu_ms"]["server"] for r in out["runs"]]
    out["server_ms_min"], out["server_ms_median"] = min(server_ms), statistics.median(server_ms)
    out["pg_ms_median"] = statistics.median(r["cpu_ms"]["postgresql"] for r in out["runs"])
    out["latency_median"] = statistics.median(r["latency"]["median"] for r in out["runs"])
    return out


def ab(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """This checkout (A) against ``--against`` (B), measured in turns on one machine."""
    other = Path(args.against).resolve() / "src"
    ports, names = [], []
    with contextlib.ExitStack() as stack:
        for side, src in (("a", None), ("b", other)):
            name = f"bench_cpu_{backend[:2]}_{args.hosts}_{side}"
            url = fresh_db(backend, name)
            load_inprocess(url, args.hosts, args.layout)
            log = WORK / f"cpu-{backend}-{side}.log"
            ports.append(stack.enter_context(server(url, log, args.server_args, src=src)))
            names.append(name if backend == "postgresql" else None)
        for port in ports:
            for _ in range(args.warmup):
                Http(port).call("POST", "/v1/claims", claim_body())
        runs: dict[str, list[float]] = {"a": [], "b": []}
        for _ in range(args.repeat):
            for side, port, name in zip("ab", ports, names, strict=True):
                r = measure(port, args.rounds, name)
                runs[side].append(r["cpu_ms"]["server"])
                cpu = r["cpu_ms"]
                print(f"  {side}: server {cpu['server']:.2f} ms, PostgreSQL {cpu['postgresql']:.2f} ms")
    a, b = statistics.median(runs["a"]), statistics.median(runs["b"])
    print(f"{backend}: this checkout {a:.2f} ms, {args.against} {b:.2f} ms ({a / b:.3f}x; medians)")
    return {"backend": backend, "a": runs["a"], "b": runs["b"], "ratio": a / b}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--layout", default="mixed", choices=("mixed", "pools"), help="bench.common.host_devices")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--py-spy", help="record the server with py-spy into FILE.<backend> (folded stacks)")
    ap.add_argument("--py-spy-bin", default=shutil.which("py-spy") or "/tmp/pyspy-venv/bin/py-spy")
    ap.add_argument("--server-args", nargs="*", default=[], help="extra `devassign server` options")
    ap.add_argument("--json", default=str(WORK / "cpu.json"))
    ap.add_argument("--against", help="another checkout (its folder): measure both, in turns")
    args = ap.parse_args(argv)
    if args.against:
        Path(args.json).write_text(json.dumps([ab(b, args) for b in args.backends]))
        return
    results = [run(b, args) for b in args.backends]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results))
    print()
    print(
        "| backend | hosts | server CPU ms per claim (min / median of runs) | PostgreSQL CPU ms | "
        "median latency (ms) | load avg | reference loop (ns) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        pg = f"{r['pg_ms_median']:.2f}" if r["backend"] == "postgresql" else "-"
        print(
            f"| {r['backend']} | {r['hosts']:,} | {r['server_ms_min']:.2f} / "
            f"{r['server_ms_median']:.2f} | {pg} | "
            f"{r['latency_median']:.1f} | {r['runs'][0]['load']} → {r['runs'][-1]['load']} | "
            f"{min(x['reference_loop_ns'] for x in r['runs'])} |"
        )


if __name__ == "__main__":
    main()
