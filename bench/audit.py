"""Time the audit on a loaded fleet (run by hand).

    python -m bench.audit [--hosts 10000] [--backends sqlite postgresql] [--claims 2000]

Loads ``--hosts`` hosts (the usual bench layout: ~12 devices each) through the store, claims
``--claims`` instances, then times ``Store.audit`` (the read-only checks) and the audit with
its repairs. Prints seconds per backend. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from bench.common import claim_body, fresh_db, load_inprocess, machine, open_store

from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal


def run(backend: str, hosts: int, claims: int) -> dict[str, float]:
    url = fresh_db(backend, f"bench_audit_{hosts}")
    load = load_inprocess(url, hosts, "flat", threads=1)
    store = open_store(url)
    placer = Placer(store)
    admin = Principal(name="bench", role=Role.ADMIN)
    for i in range(claims):
        placer.claim(ClaimBody.model_validate(claim_body(f"vm-{i}")), admin)
    timings = {"load_s": round(load, 1)}
    for label, repair in (("audit_s", False), ("audit_fix_s", True)):
        t0 = time.perf_counter()
        report = store.audit(down_for=timedelta(hours=1), repair=repair)
        timings[label] = round(time.perf_counter() - t0, 3)
        timings[f"{label}_findings"] = len(report.findings)
    store.db.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=2_000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(machine())
    for backend in args.backends:
        print(backend, args.hosts, "hosts", run(backend, args.hosts, args.claims))


if __name__ == "__main__":
    main()
