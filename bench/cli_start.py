"""What starting a ``devassign`` command costs before it does anything: a fresh Python that
imports the CLI, and ``devassign --version``, each run ``--runs`` times.

    python -m bench.cli_start
    python -m bench.cli_start --against /tmp/base     # another checkout, measured in turns

Every command a user or a script runs pays this (a shell loop over ``devassign claim``, the
agent's ``run --once`` from a timer, each CLI call of the end-to-end tests and of the
real-kernel guest, where QEMU's emulation makes it ten times dearer). Printed: the median
and the minimum of the wall-clock seconds and of the CPU seconds the child was given
(``resource.getrusage(RUSAGE_CHILDREN)``), and the modules imported at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBES = {
    "import devassign.cli.main": ["-c", "import devassign.cli.main"],
    "devassign --version": ["-m", "devassign", "--version"],
}


def _run(src: Path, argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one child Python running ``argv`` with ``src`` first on its path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True, timeout=60)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _modules(src: Path) -> int:
    code = "import sys, devassign.cli.main; print(len(sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--against", type=Path, help="another checkout, measured in turns with this one")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    trees = {"this checkout": ROOT / "src"}
    if args.against is not None:
        trees["against"] = args.against.resolve() / "src"
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        for name, src in trees.items():  # in turns, so both see the same machine
            for probe, probe_argv in PROBES.items():
                samples.setdefault((name, probe), []).append(_run(src, probe_argv))
    result = []
    for (name, probe), runs in samples.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        row = {
            "tree": name,
            "probe": probe,
            "wall_median_s": round(statistics.median(walls), 3),
            "wall_min_s": round(min(walls), 3),
            "cpu_median_s": round(statistics.median(cpus), 3),
            "cpu_min_s": round(min(cpus), 3),
            "modules": _modules(trees[name]),
        }
        result.append(row)
        print(
            f"{name:14} {probe:28} wall median {row['wall_median_s']:.3f} s (min {row['wall_min_s']:.3f}), "
            f"CPU median {row['cpu_median_s']:.3f} s (min {row['cpu_min_s']:.3f}), {row['modules']} modules"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.runs} runs each")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
