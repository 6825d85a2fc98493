"""Instructions per claim in the server process, counted by valgrind: a figure that does not
drift with the machine.

    python -m bench.instructions                              # SQLite and PostgreSQL
    python -m bench.instructions --against /tmp/base          # and another checkout's

The CPU time a claim costs (``bench.cpu``) drifts by 10-20 % between runs on a shared
machine, more than most single changes give. The instructions the server executes for the
same claims do not (callgrind counts them; the run is ~50x slower, so fewer claims). Each
server runs under ``valgrind --tool=callgrind --instr-atstart=no``; after ``--warmup`` claims
counting is switched on (``callgrind_control -i on``) for ``--rounds`` claims, then dumped.
The claim and the database are those of ``bench.cpu`` (1 NIC_VF_1G + 1 VGPU, 1,000 hosts x 16
devices, ``mixed``); ``PYTHONHASHSEED=0``. PostgreSQL's own work is not counted (another
process). ``--against DIR`` counts a second checkout's server too, on its own database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import WORK, Http, claim_body, fresh_db, load_inprocess, server_process


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def count(backend: str, args: argparse.Namespace, side: str, src: Path | None) -> float:
    """Instructions per claim of one server (this checkout's, or ``src``'s)."""
    name = f"bench_ins_{backend[:2]}_{args.hosts}_{side}"
    url = fresh_db(backend, name)
    load_inprocess(url, args.hosts, args.layout)
    out = WORK / f"callgrind-{backend}-{side}.out"
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    os.environ["PYTHONHASHSEED"] = "0"
    log = WORK / f"ins-{backend}-{side}.log"
    with server_process(url, log, args.server_args, start_within=600, src=src, prefix=prefix) as (port, pid):
        for _ in range(args.warmup):
            Http(port).call("POST", "/v1/claims", claim_body())
        _control(pid, "-i", "on")
        failed = 0
        for _ in range(args.rounds):
            failed += Http(port).call("POST", "/v1/claims", claim_body())[0] != 201
        _control(pid, "-d")
        _control(pid, "-i", "off")
        time.sleep(1)
    dumps = sorted(p for p in out.parent.glob(out.name + ".*") if p.suffix[1:].isdigit())
    total = 0
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
            break
    if failed:
        print(f"  {failed} claims failed: see {log}")
    return total / args.rounds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--layout", default="mixed", choices=("mixed", "pools"), help="bench.common.host_devices")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--against", help="another checkout (its folder): count its server too")
    ap.add_argument("--server-args", nargs="*", default=[], help="extra `devassign server` options")
    ap.add_argument("--json", default=str(WORK / "instructions.json"))
    args = ap.parse_args(argv)
    results: list[dict[str, Any]] = []
    for backend in args.backends:
        r: dict[str, Any] = {"backend": backend, "hosts": args.hosts, "rounds": args.rounds}
        r["this"] = count(backend, args, "a", None)
        line = f"{backend}: {r['this'] / 1e6:.2f} M instructions per claim"
        if args.against:
            r["against"] = count(backend, args, "b", Path(args.against).resolve() / "src")
            line += f"; {args.against}: {r['against'] / 1e6:.2f} M ({r['this'] / r['against']:.3f}x)"
        print(line, flush=True)
        results.append(r)
    with contextlib.suppress(OSError):
        Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
