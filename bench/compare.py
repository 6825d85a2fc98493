"""devassign and OpenStack Placement 16.0.0 side by side: one command.

    python -m bench.compare                                   # everything (long)
    python -m bench.compare --hosts 100 1000 --placement-hosts 100 1000 --backends sqlite

Same inventory for both: N hosts, each with 8 NIC_VF_1G and 4 VGPU (devassign: 8 VFs of one
PF and 4 vGPU slots of one GPU, ``bench.common.host_devices(i, "compare")``; Placement: one
provider per host with inventories CUSTOM_NIC_VF_1G=8 and CUSTOM_VGPU=4). Same operation: place
and claim one instance needing 1 NIC_VF_1G and 1 VGPU, over HTTP (Placement: GET
/allocation_candidates?...&limit=1 then PUT /allocations/{consumer}; devassign: one POST
/v1/claims). Both load their inventory over HTTP, one request at a time (devassign: one PUT
/v1/hosts/{host}/inventory per host; Placement: POST provider + PUT inventories), unless
``--devassign-load inprocess`` (``Store.apply_report``, then VACUUM ANALYZE on PostgreSQL). Both
HTTP clients open one connection per request. Between the sequential and the concurrent phase
both release every claim (untimed); devassign's released devices are then reset from cleaning to
available with SQL + recount (stand-in for the agent).

Placement runs in its own venv ($PLACEMENT_PYTHON, default /tmp/placement-venv/bin/python) via
``bench/placement_driver.py``; on SQLite with the threaded stdlib WSGI server of
``placement_bench.py``, on PostgreSQL under gunicorn (--placement-workers). devassign runs
``devassign server`` (uvicorn, one process) from this venv.

Results: JSON (--json), a generated section of docs/benchmarks.md (between the
``compare:begin``/``compare:end`` markers) and docs/latency_vs_hosts.png (needs matplotlib in
this venv; it is not a devassign dependency).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from bench.common import (
    PG_ADMIN,
    WORK,
    Http,
    claim_body,
    concurrent,
    fresh_db,
    host_name,
    load_http,
    load_inprocess,
    loadavg,
    machine,
    over_allocation,
    reset_cleaning,
    server,
    summary,
    usage_of,
)

ROOT = Path(__file__).resolve().parent.parent
PLACEMENT_PY = os.environ.get("PLACEMENT_PYTHON", "/tmp/placement-venv/bin/python")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {loadavg()}] {msg}", flush=True)


# ---------------------------------------------------------------- devassign


def run_devassign(backend: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench_cmp_{backend[:2]}_{n}"
    url = fresh_db(backend, name)
    out: dict[str, Any] = {"system": "devassign", "backend": backend, "hosts": n, "load_avg_start": loadavg()}
    with server(url, WORK / f"{name}.server.log", args.server_arg) as port:
        if args.devassign_load == "http":
            out["load_s"] = load_http(port, n, "compare")
        else:
            out["load_s"] = load_inprocess(url, n, "compare", threads=2)
            out["load_via"] = "in-process (Store.apply_report, 2 threads)"
        log(f"devassign {backend} {n}: loaded in {out['load_s']:.1f} s")
        c = Http(port)
        fails: dict[str, int] = {}

        made: list[str] = []

        def one(_: int) -> tuple[int, float]:
            b = claim_body()
            st, _, t = Http(port).call("POST", "/v1/claims", b)
            if st != 201:
                fails[str(st)] = fails.get(str(st), 0) + 1
            else:
                made.append(b["consumer"])
            return st, t

        for i in range(5):
            one(i)
        seq = [one(i) for i in range(args.rounds)]
        out["seq"] = {"total": [t for st, t in seq if st == 201], "failures": dict(fails)}
        fails.clear()
        # Untimed, between phases (as for Placement): release every claim, and stand in for
        # the agent by turning the released (cleaning) devices back to available.
        while made:
            c.call("DELETE", f"/v1/allocations/{made.pop()}")
        reset_cleaning(url)
        wall, res = concurrent(one, args.clients, args.per_client)
        ok = sum(1 for st, _ in res if st == 201)
        out["conc"] = {
            "clients": args.clients,
            "attempts": len(res),
            "succeeded": ok,
            "wall_s": wall,
            "claims_per_s": ok / wall,
            "results": dict(fails) | {"201": ok},
        }
        # The race: 16 claims of one VGPU pinned to one host with 4 free (the last host,
        # untouched by the pack policy, checked).
        host = next(host_name(i) for i in range(n - 1, -1, -1) if usage_of(url, host_name(i), "VGPU")[0] == 0)
        before = usage_of(url, host, "VGPU")[0]
        body = {"extra_specs": {"hardware_resource:VGPU": "1"}, "hosts": [host], "project": "bench"}

        def racer(_: int) -> int:
            return Http(port).call("POST", "/v1/claims", {**claim_body(), **body})[0]

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.race) as ex:
            codes = list(ex.map(racer, range(args.race)))
        hist: dict[str, int] = {}
        for code in codes:
            hist[str(code)] = hist.get(str(code), 0) + 1
        out["race"] = {
            "claims": args.race,
            "free_before": 4 - before,
            "succeeded": hist.get("201", 0),
            "usage_after": usage_of(url, host, "VGPU")[0],
            "capacity": 4,
            "results": hist,
        }
    out["double_allocated_devices"] = over_allocation(url)
    out["load_avg_end"] = loadavg()
    return out


# ---------------------------------------------------------------- Placement


def run_placement(backend: str, n: int, args: argparse.Namespace, layout: str = "flat") -> dict[str, Any]:
    cmd = [
        PLACEMENT_PY,
        str(ROOT / "bench" / "placement_driver.py"),
        "--layout",
        layout,
        "--hosts",
        str(n),
        "--rounds",
        str(args.rounds),
        "--clients",
        str(args.clients),
        "--per-client",
        str(args.per_client),
        "--race",
        str(args.race),
    ]
    if backend == "postgresql":
        dbname = "bench_placement"
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{dbname}"'))
        admin.dispose()
        pg = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg2", database=dbname)
        cmd += [
            "--db-url",
            pg.render_as_string(hide_password=False),
            "--server",
            "gunicorn",
            "--workers",
            str(args.placement_workers),
        ]
    start = loadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.placement_timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"placement driver failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out.update(system=PLACEMENT[layout], backend=backend, load_avg_start=start, load_avg_end=loadavg())
    return out


# The system names in results, per Placement layout.
PLACEMENT = {"flat": "placement", "nested": "placement (nested)"}


# ---------------------------------------------------------------- report


def _s(run: dict[str, Any] | None, key: str = "total") -> dict[str, float] | None:
    if not run or not run.get("seq", {}).get(key):
        return None
    return summary(run["seq"][key])


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if x is None else fmt.format(x)


def _mpp(s: dict[str, float] | None) -> str:
    return f"{s['median']:.1f} / {s['p90']:.1f} / {s['p99']:.1f}" if s else "not run"


def _tput(r: dict[str, Any] | None) -> str:
    return f"{r['conc']['claims_per_s']:.1f} ({r['conc']['results']})" if r else "not run"


def _abbrev(system: str) -> str:
    return {"placement": "P", "placement (nested)": "PN", "devassign": "D"}.get(system, system)


def report(results: list[dict[str, Any]], args: argparse.Namespace, argv: list[str], started: str) -> str:
    m = machine()
    by = {(r["system"], r["backend"], r["hosts"]): r for r in results}
    lines = [
        "<!-- compare:begin (generated by python -m bench.compare; edits here are overwritten) -->",
        "## devassign vs OpenStack Placement 16.0.0 (generated)",
        "",
        f"- Date: {started} (UTC); "
        + (
            "; ".join(f"`{c}`" for c in args.command)
            if args.command
            else f"command: `python -m bench.compare {shlex.join(argv)}`"
        ),
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}; PostgreSQL {m['postgresql']}; "
        f"SQLite {m['sqlite']}; shared with other engineers' test runs (load averages below).",
        "",
        "```",
        m["free"].rstrip(),
        "```",
        "",
        "Operation: place and claim one instance needing 1 NIC_VF_1G + 1 VGPU over HTTP. Placement ="
        " `GET /allocation_candidates?resources=CUSTOM_NIC_VF_1G:1,CUSTOM_VGPU:1&limit=1` +"
        " `PUT /allocations/{consumer}` timed together; devassign = one `POST /v1/claims`."
        f" {args.rounds} sequential rounds after 5 warm-up; then {args.clients} concurrent clients x"
        f" {args.per_client} operations each.",
        "",
        f"Host counts run: Placement {', '.join(f'{n:,}' for n in args.placement_hosts) or 'none'}; "
        f"devassign {', '.join(f'{n:,}' for n in args.hosts)} (`not run` below: not asked for).",
        "",
        "### Sequential latency (ms) and load time",
        "",
        "Placement flat: one provider per host with both inventories; nested: a root provider per"
        " host with a NIC PF child (8 NIC_VF_1G) and a GPU child (4 VGPU), as Nova models vGPUs."
        " Ratio: Placement median / devassign median.",
        "",
        "| backend | hosts | Placement flat median / p90 / p99 | Placement nested median / p90 / p99 |"
        " devassign median / p90 / p99 | ratio flat | ratio nested |"
        " load: Placement flat / nested / devassign (s) | load avg (start → end) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend in args.backends:
        for n in sorted(set(args.hosts) | set(args.placement_hosts)):
            p, q, d = (by.get((sys_, backend, n)) for sys_ in (*PLACEMENT.values(), "devassign"))
            sp, sq, sd = _s(p), _s(q), _s(d)
            loads = " ; ".join(
                f"{_abbrev(r['system'])}: {r['load_avg_start'].split()[0]} → {r['load_avg_end'].split()[0]}"
                for r in (p, q, d)
                if r
            )
            lines.append(
                f"| {backend} | {n:,} | {_mpp(sp)} | {_mpp(sq)} | {_mpp(sd)} | "
                f"{_f(sp['median'] / sd['median'] if sp and sd else None, '{:.1f}x')} | "
                f"{_f(sq['median'] / sd['median'] if sq and sd else None, '{:.1f}x')} | "
                f"{_f(p and p.get('load_s'))} / {_f(q and q.get('load_s'))} / {_f(d and d.get('load_s'))} | "
                f"{loads} |"
            )
    lines += [
        "",
        "Placement's two calls separately (median ms): "
        + "; ".join(
            f"{r['system']} {r['backend']} {r['hosts']:,}: GET {summary(r['seq']['get'])['median']:.1f}, PUT "
            f"{summary(r['seq']['put'])['median']:.1f}"
            for r in results
            if r["system"].startswith("placement") and r["seq"]["get"]
        ),
        "",
        f"### {args.clients} concurrent clients (successful claims per second)",
        "",
        "| backend | hosts | Placement flat claims/s (results) | Placement nested claims/s (results) |"
        " devassign claims/s (results) | ratio flat | ratio nested |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in args.backends:
        for n in sorted(set(args.hosts) | set(args.placement_hosts)):
            p, q, d = (by.get((sys_, backend, n)) for sys_ in (*PLACEMENT.values(), "devassign"))
            cp, cq, cd = (r["conc"]["claims_per_s"] if r else None for r in (p, q, d))
            lines.append(
                f"| {backend} | {n:,} | {_tput(p)} | {_tput(q)} | {_tput(d)} | "
                f"{_f(cd / cp if cp and cd else None, '{:.1f}x')} | "
                f"{_f(cd / cq if cq and cd else None, '{:.1f}x')} |"
            )
    lines += [
        "",
        f"### Concurrency check: {args.race} simultaneous claims of 1 VGPU on one host with 4 free",
        "",
        "| system | backend | hosts | free before | succeeded | usage after (capacity 4) | HTTP results |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "race" in r:
            x = r["race"]
            bad = " **over-allocated**" if x["usage_after"] > x["capacity"] else ""
            lines.append(
                f"| {r['system']} | {r['backend']} | {r['hosts']:,} | {x['free_before']} | "
                f"{x['succeeded']} | "
                f"{x['usage_after']}{bad} | {x['results']} |"
            )
    dbl = [
        f"{r['backend']} {r['hosts']:,}: {r['double_allocated_devices']}"
        for r in results
        if r["system"] == "devassign"
    ]
    lines += [
        "",
        "devassign devices in two live allocations after each run (must be 0): " + "; ".join(dbl),
        "",
        "Servers: Placement on SQLite = threaded stdlib WSGI server (one process), on PostgreSQL = gunicorn "
        f"{args.placement_workers} sync worker(s); devassign = `devassign server` (uvicorn, one process"
        + (f", extra: {' '.join(args.server_arg)}" if args.server_arg else "")
        + ").",
        "",
        "![latency vs hosts](latency_vs_hosts.png)",
        "<!-- compare:end -->",
    ]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed in this venv: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        ("placement", "sqlite"): "o--",
        ("placement", "postgresql"): "s--",
        ("placement (nested)", "sqlite"): "o:",
        ("placement (nested)", "postgresql"): "s:",
        ("devassign", "sqlite"): "o-",
        ("devassign", "postgresql"): "s-",
    }
    for (system, backend), style in styles.items():
        pts = sorted(
            (r["hosts"], summary(r["seq"]["total"]))
            for r in results
            if r["system"] == system and r["backend"] == backend and r["seq"]["total"]
        )
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ax.plot(xs, [s["median"] for _, s in pts], style, label=f"{system} {backend} median")
        ax.fill_between(xs, [s["median"] for _, s in pts], [s["p90"] for _, s in pts], alpha=0.12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hosts")
    ax.set_ylabel("place-and-claim latency over HTTP (ms; band: median..p90)")
    ax.set_title("Place and claim 1 NIC_VF_1G + 1 VGPU: Placement GET+PUT vs devassign", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def write_doc(section: str, path: Path) -> None:
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\n<!-- compare:begin -->\n<!-- compare:end -->\n"
    )
    begin, end = text.find("<!-- compare:begin"), text.find("<!-- compare:end -->")
    if begin < 0 or end < 0:
        text = text.rstrip() + "\n\n" + section + "\n"
    else:
        text = text[:begin] + section + text[end + len("<!-- compare:end -->") :]
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[100, 1000, 10000], help="devassign host counts")
    ap.add_argument("--placement-hosts", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--race", type=int, default=16)
    ap.add_argument(
        "--devassign-load",
        choices=("http", "inprocess"),
        default="http",
        help="load devassign's inventory over HTTP (default, like Placement) or in-process (faster)",
    )
    ap.add_argument("--placement-workers", type=int, default=2)
    ap.add_argument("--placement-layouts", nargs="+", choices=tuple(PLACEMENT), default=["flat", "nested"])
    ap.add_argument("--placement-timeout", type=int, default=3600)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `devassign server` option")
    ap.add_argument("--json", default=str(WORK / "compare.json"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "latency_vs_hosts.png"))
    ap.add_argument("--no-doc", action="store_true", help="only print and write JSON")
    ap.add_argument(
        "--from-json",
        nargs="+",
        help="no run: write the report and plot from earlier --json files (a later file's result "
        "replaces an earlier one of the same system, backend and host count)",
    )
    ap.add_argument("--started", help="with --from-json: when those runs happened (UTC)")
    ap.add_argument(
        "--command", action="append", default=[], help="with --from-json: the commands that made the files"
    )
    args = ap.parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    if args.from_json:
        merged: dict[tuple[str, str, int], dict[str, Any]] = {}
        for path in args.from_json:
            for r in json.loads(Path(path).read_text()):
                merged[(r["system"], r["backend"], r["hosts"])] = r
        order = [*PLACEMENT.values(), "devassign"]
        results = sorted(
            merged.values(),
            key=lambda r: (r["backend"] != "sqlite", r["hosts"], order.index(r["system"])),
        )
        section = report(results, args, argv, args.started or started)
        print(section)
        if not args.no_doc:
            write_doc(section, Path(args.doc))
            plot(results, Path(args.plot))
        return
    results: list[dict[str, Any]] = []
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    for backend in args.backends:
        for n in sorted(set(args.hosts) | set(args.placement_hosts)):
            runs: list[tuple[str, Any, list[int]]] = [
                (PLACEMENT[lay], functools.partial(run_placement, layout=lay), args.placement_hosts)
                for lay in args.placement_layouts
            ]
            runs.append(("devassign", run_devassign, args.hosts))
            for system, fn, wanted in runs:
                if n not in wanted:
                    continue
                log(f"{system} {backend} {n} hosts ...")
                r = fn(backend, n, args)
                results.append(r)
                s = _s(r)
                log(
                    f"{system} {backend} {n}: load {r['load_s']:.1f} s; "
                    + (f"median {s['median']:.1f} p90 {s['p90']:.1f} p99 {s['p99']:.1f} ms; " if s else "")
                    + f"{r['conc']['claims_per_s']:.1f} claims/s ({r['conc']['results']}); "
                    + f"race {r.get('race')}"
                )
                Path(args.json).write_text(json.dumps(results))
    section = report(results, args, argv, started)
    print(section)
    if not args.no_doc:
        write_doc(section, Path(args.doc))
        plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
