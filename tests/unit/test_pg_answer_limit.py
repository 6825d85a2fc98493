"""How long the server waits for PostgreSQL's answer: past the statement timeout that
PostgreSQL applies, which a URL's own options set over the server's setting."""

from __future__ import annotations

import pytest

from devassign.store.pgconn import answer_limit, effective_timeout


@pytest.mark.parametrize(
    ("options", "seconds"),
    [
        (None, 30.0),
        ("", 30.0),
        ("-c statement_timeout=20000", 20.0),
        ("-c lock_timeout=100 -c statement_timeout=2min", 120.0),
        ("--statement_timeout=500ms", 0.5),
        ("-c statement_timeout=1h -c statement_timeout=5s", 5.0),  # the last one wins
        ("-c statement_timeout=0", 0.0),
        ("-c statement_timeout=soon", 0.0),  # not read here: no bound shorter than the database's
    ],
)
def test_the_urls_statement_timeout_wins(options: str | None, seconds: float) -> None:
    assert effective_timeout(30.0, options) == seconds


def test_the_wait_is_the_timeout_and_a_grace_and_none_without_a_timeout() -> None:
    assert answer_limit(30.0) == 35.0
    assert answer_limit(1.0) == 2.0
    assert answer_limit(0.0) is None
