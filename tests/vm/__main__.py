"""``python -m tests.vm [--short]``: devassign's discovery and handlers on a real Linux kernel.

Builds (once, cached under ~/.cache/devassign-vm) a guest from Debian's kernel and busybox
packages, boots it under QEMU (TCG) with an SR-IOV NVMe, e1000e NICs, a two-function device,
USB devices and two NUMA nodes, runs the checks inside it with this checkout's own code and
virtual environment, and prints pass/fail per check. Exits 0 only when every check passed.
Needs: apt-get install -y qemu-system-x86 busybox-static (and apt to download the kernel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.vm import runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.vm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="the shorter subset (CI)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the console log and results folder")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    args = parser.parse_args(argv)
    mode = "short" if args.short else "full"
    return runner.main(mode, keep=args.keep, json_out=args.json, quiet=args.quiet, limit=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
