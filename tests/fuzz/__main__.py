"""``python -m tests.fuzz``: fuzz the API as an admin, a member and an agent, and report.

Exits 1 when any case found a failure (a 5xx, a response that breaks the OpenAPI document, an
error without the stable body, a hostile body that was not refused with a 4xx).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tests.fuzz.harness import run

SHORT_CASES = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all, split between the tokens")
    parser.add_argument("--short", action="store_true", help=f"a short run ({SHORT_CASES} cases)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    # The application logs every 500 with its traceback; the report says what matters.
    logging.basicConfig(level=logging.CRITICAL)
    cases = SHORT_CASES if args.short else args.cases
    report = run(cases=cases, db=args.db, seed=args.seed, progress=lambda line: print(line, flush=True))
    print(report.text())
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 1 if report.failures or report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
