"""The candidate read's statements are built safely from many threads at once.

Every shape of the read (how many types, by name, rotation, policy) is built once and shared.
Built by several claims' threads at the same moment, a statement could come out unable to
compile ("Can't determine which FROM clause to join from"): a 500 for the claim. Here 8
threads ask for each new shape at once, with the interpreter switching threads as often as
it can, and every statement must compile on both databases.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from devassign.store import candidates

SHAPES = [
    (1, False, False, "all", False),
    (2, False, False, "all", True),
    (1, False, False, "best", False),
    (3, False, True, "", False),
    (1, True, False, "", True),
]


@pytest.fixture
def often_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)
    candidates._candidates.cache_clear()
    candidates._build_candidate_devices.cache_clear()


def test_eight_threads_building_each_new_shape_at_once_all_compile(often_switching: None) -> None:
    failures: list[str] = []

    def build(barrier: threading.Barrier, shape: tuple[int, bool, bool, str, bool]) -> None:
        barrier.wait()
        try:
            statement = candidates._candidate_devices(*shape)
            statement.compile(dialect=postgresql.dialect())
            statement.compile(dialect=sqlite.dialect())
        except Exception as exc:
            failures.append(f"{shape}: {exc!r}"[:200])

    for round_ in range(100):
        candidates._candidates.cache_clear()
        candidates._build_candidate_devices.cache_clear()
        barrier = threading.Barrier(8)
        shape = SHAPES[round_ % len(SHAPES)]
        threads = [threading.Thread(target=build, args=(barrier, shape)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not failures, f"{len(failures)} failed builds, e.g. {failures[:2]}"
