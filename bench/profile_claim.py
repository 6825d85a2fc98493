"""Where a claim's time goes: SQL statements per claim, a pyinstrument profile, and
PostgreSQL's EXPLAIN ANALYZE of the candidate query (each stage's CPU: ``bench.claim_stages``).

    python -m bench.profile_claim --backend postgresql --hosts 1000 [--html out.html]

Builds (or reuses, with --reuse) the database of ``bench.claims`` (mixed layout, loaded in-process).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from bench.common import claim_body, fresh_db, load_inprocess, loadavg, open_store, summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="postgresql")
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--reuse", action="store_true", help="reuse the database of an earlier run")
    ap.add_argument("--html", help="write the pyinstrument profile here")
    ap.add_argument("--text", action="store_true", help="print the pyinstrument profile")
    ap.add_argument("--url", help="use this (already loaded) database")
    args = ap.parse_args(argv)

    from devassign.domain import Role
    from devassign.scheduler import ClaimBody
    from devassign.server.placement import Placer
    from devassign.store import Principal

    name = f"bench_prof_{args.backend[:2]}_{args.hosts}"
    if args.url:
        url = args.url
    elif args.reuse:
        from bench.common import PG_ADMIN, WORK

        url = (
            f"sqlite:///{WORK / (name + '.db')}"
            if args.backend == "sqlite"
            else sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
        )
    else:
        url = fresh_db(args.backend, name)
        print(f"loaded {args.hosts} hosts in {load_inprocess(url, args.hosts, 'mixed'):.1f} s")
    store = open_store(url)
    placer = Placer(store)
    caller = Principal("bench", Role.ADMIN)

    statements: Counter[str] = Counter()

    def _note(statement: object) -> None:
        text = statement.decode() if isinstance(statement, bytes) else str(statement)
        statements[" ".join(text.split())[:110]] += 1

    if store.db.is_sqlite:

        @sa.event.listens_for(store.db.engine, "before_cursor_execute")
        def _count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            _note(statement)
    else:
        # The claim runs its fixed statements on psycopg's cursor (``store.db.driver_rows``),
        # past SQLAlchemy's events: count at the driver, where SQLAlchemy's own arrive too.
        import psycopg

        executing = psycopg.Cursor.execute

        def _counted(self, query, *a, **kw):  # type: ignore[no-untyped-def]
            _note(query.as_string(self) if hasattr(query, "as_string") else query)
            return executing(self, query, *a, **kw)

        psycopg.Cursor.execute = _counted  # type: ignore[method-assign]

    def one() -> float:
        body = ClaimBody.model_validate(claim_body())
        t0 = time.perf_counter()
        placer.claim(body, caller)
        return time.perf_counter() - t0

    for _ in range(10):
        one()
    statements.clear()
    lat = [one() for _ in range(args.rounds)]
    total = sum(statements.values())
    print(f"{args.backend} {args.hosts} hosts: {summary(lat)} (load avg {loadavg()})")
    print(f"SQL statements per claim: {total / args.rounds:.1f}")
    for stmt, n in statements.most_common(40):
        print(f"  {n / args.rounds:5.2f}  {stmt}")

    if not store.db.is_sqlite:
        explain_candidates(store)
    if args.html or args.text:
        profile(args, one)
    store.db.dispose()


def explain_candidates(store):  # type: ignore[no-untyped-def]
    """EXPLAIN ANALYZE of the statement that reads the candidates and their devices."""
    if store.db.is_sqlite:
        return
    from devassign.store.candidates import candidate_snapshot

    ids = store.type_ids(["NIC_VF_1G", "VGPU"])
    captured: list[tuple[str, object]] = []

    @sa.event.listens_for(store.db.engine, "before_cursor_execute")
    def _cap(conn_, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM inventory" in statement and not captured:
            captured.append((statement, parameters))

    with store.db.read() as conn:
        candidate_snapshot(conn, {ids["NIC_VF_1G"]: 1, ids["VGPU"]: 1}, up_since=store.up_since(), limit=8)
    sa.event.remove(store.db.engine, "before_cursor_execute", _cap)
    if captured:
        with store.db.engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN ANALYZE " + captured[0][0], captured[0][1]).all()
        print("EXPLAIN ANALYZE of the candidate query:")
        for (line,) in plan:
            print("   ", line)


def profile(args, one):  # type: ignore[no-untyped-def]
    from pyinstrument import Profiler

    prof = Profiler(interval=0.0005)
    prof.start()
    for _ in range(args.rounds):
        one()
    prof.stop()
    if args.html:
        Path(args.html).write_text(prof.output_html())
    if args.text:
        print(prof.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
