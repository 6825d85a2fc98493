"""Where a claim's time goes: SQL statements per claim, per-stage timings, a pyinstrument profile,
and PostgreSQL's EXPLAIN ANALYZE of the candidate query.

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
    ap.add_argument("--stages", action="store_true", help="also time each stage")
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

    @sa.event.listens_for(store.db.engine, "before_cursor_execute")
    def _count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements[" ".join(statement.split())[:110]] += 1

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

    if args.stages:
        stage_timings(args, store, placer)
    if not store.db.is_sqlite:
        explain_candidates(store)
    if args.html or args.text:
        profile(args, one)
    store.db.dispose()


def stage_timings(args, store, placer):  # type: ignore[no-untyped-def]
    """Stage timings (each in its own transaction, as Placer does)."""
    from devassign.scheduler import ClaimBody, claim_order, schedule
    from devassign.server.placement import parse
    from devassign.store.claims import ClaimOrder

    stages: dict[str, list[float]] = {
        k: [] for k in ("parse", "prepare (types, quota, candidates)", "schedule", "claim")
    }
    for _ in range(args.rounds):
        body = ClaimBody.model_validate(claim_body())
        t = time.perf_counter()
        req = parse(body)
        t1 = time.perf_counter()
        t2 = t1
        ctx = store.prepare_claim(
            consumer=req.consumer,
            key=None,
            project="bench",
            types=["NIC_VF_1G", "VGPU"],
            needs={"NIC_VF_1G": 1, "VGPU": 1},
            any_of=[],
            names=[],
            spread=False,
            limit=placer.config.candidate_limit,
        )
        snap = ctx.snapshot
        t3 = time.perf_counter()
        dec = schedule(req, snap, placer.config.policy)
        t4 = time.perf_counter()
        p = claim_order(dec.placements, 3, placer.rng)[0]
        store.claim(
            ClaimOrder(
                host=p.host,
                chosen=[(c.name, (*c.device_ids, *c.companion_ids)) for c in p.chosen],
                consumer=req.consumer,
                project="bench",
                key=None,
                request_doc=body.model_dump(mode="json", exclude_none=True),
                actor="bench",
            )
        )
        t5 = time.perf_counter()
        for k, a, b in (
            ("parse", t, t1),
            ("prepare (types, quota, candidates)", t2, t3),
            ("schedule", t3, t4),
            ("claim", t4, t5),
        ):
            stages[k].append(b - a)
    for k, v in stages.items():
        s = summary(v)
        print(f"  stage {k:<44} median {s['median']:7.2f} ms  p90 {s['p90']:7.2f} ms")


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
