"""What one PostgreSQL round trip costs the server's thread, bare and through the store's layers.

    python -m bench.roundtrip                 # 3 x 3,000 of each, best of 3, microseconds
    python -m bench.roundtrip --runs 5000 --repeat 5

A claim makes six round trips on PostgreSQL (the type-and-quota read, the candidate read,
BEGIN, open, take, COMMIT). Whether cutting them is worth a change depends on what one costs
the server's CPU, not its latency: each probe below runs a one-row ``SELECT`` many times and
divides the thread's CPU time (``time.thread_time``: user and system, the socket calls
included) by the runs. Probes, from the bare driver up:

- ``psycopg, autocommit``: one prepared statement on psycopg's own cursor;
- ``psycopg, BEGIN + statement + COMMIT``: the same in a transaction (three round trips);
- ``psycopg, pipeline``: the same with BEGIN and the statement sent together (two);
- ``Database.reading``: the store's read (a pooled SQLAlchemy connection in autocommit) with
  the statement run by ``driver_rows``, as the claim's reads are;
- ``Database.write``: the store's write transaction around the same statement, as the
  claim's writes are (BEGIN, the statement, COMMIT).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import sqlalchemy as sa
from bench.common import fresh_db, loadavg

SQL = "SELECT %(a)s::int AS x"


def probes(url: str) -> dict[str, Callable[[], Any]]:
    from devassign.store.db import Database, driver_rows

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    bare = psycopg.connect(dsn, autocommit=True)
    tx = psycopg.connect(dsn)
    db = Database(url)

    def autocommit() -> Any:
        with bare.cursor() as c:
            c.execute(SQL, {"a": 1}, prepare=True)
            return c.fetchall()

    def transaction() -> Any:
        with tx.cursor() as c:
            c.execute(SQL, {"a": 1}, prepare=True)
            rows = c.fetchall()
        tx.commit()
        return rows

    def pipeline() -> Any:
        with tx.pipeline(), tx.cursor() as c:
            c.execute(SQL, {"a": 1}, prepare=True)
            rows = c.fetchall()
        tx.commit()
        return rows

    def reading() -> Any:
        return db.reading(lambda c: driver_rows(c, SQL, {"a": 1}))

    def writing() -> Any:
        with db.write() as c:
            return driver_rows(c, SQL, {"a": 1})

    return {
        "psycopg, autocommit (1 round trip)": autocommit,
        "psycopg, BEGIN + statement + COMMIT (3)": transaction,
        "psycopg, pipeline: BEGIN with the statement, COMMIT (2)": pipeline,
        "Database.reading + driver_rows (1)": reading,
        "Database.write + driver_rows (3)": writing,
    }


def best_us(fn: Callable[[], Any], runs: int, repeat: int) -> float:
    for _ in range(200):  # warm: prepared statements, pool
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        for _ in range(runs):
            fn()
        best = min(best, (time.thread_time() - t0) / runs)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    url = fresh_db("postgresql", "bench_roundtrip")
    print(f"load avg {loadavg()}")
    for name, fn in probes(url).items():
        print(f"{name:58s} {best_us(fn, args.runs, args.repeat):7.1f} us of thread CPU")
    print(f"load avg {loadavg()}")


if __name__ == "__main__":
    main()
