"""PostgreSQL connections that stop waiting for a database that never answers.

PostgreSQL ends a statement that runs past ``statement_timeout`` itself, and TCP's keepalives
and ``tcp_user_timeout`` end a connection to a host that is gone from the network. Neither
ends the wait on a database process that is alive but stopped (SIGSTOP, a wedged host, a
frozen VM): its kernel still acknowledges every packet and nothing in it runs to cancel
anything, so each request that reached it waited for as long as it stayed stopped, and with
them the server's threads. Every wait of psycopg's for an answer (a statement, its rows, a
commit or a rollback) goes through :meth:`psycopg.Connection.wait`; here it gives up a little
after the statement timeout, when the database should have ended the statement itself. The
connection is then closed (it is mid-protocol, nothing can follow on it), which SQLAlchemy
counts as a lost connection: the pool is dropped and the request is a 503, as for a restart.

A commit that was cut off this way may still have been applied when the database resumes; the
client learns the outcome as after any lost connection, by retrying with its idempotency key.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import psycopg.errors

# What a database that ends a statement at its timeout may take beyond it to say so.
ANSWER_GRACE = 5.0
UNANSWERED = "the database did not answer"


_URL_TIMEOUT_RE = re.compile(r"(?:-c\s*|--)statement_timeout\s*=\s*(\S+)")
_VALUE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|min|h|d)?$")
_UNIT = {None: 0.001, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def effective_timeout(statement_timeout: float, url_options: str | None) -> float:
    """The statement timeout PostgreSQL applies: the URL's own ``options`` win over the
    server's setting (they come last in the startup options). One the URL gives in a form not
    read here counts as none (0), so no wait is bounded shorter than the database's own."""
    found = _URL_TIMEOUT_RE.findall(url_options or "")
    if not found:
        return statement_timeout
    m = _VALUE_RE.match(found[-1].strip("'\""))
    return float(m.group(1)) * _UNIT[m.group(2)] if m else 0.0


def answer_limit(statement_timeout: float) -> float | None:
    """Seconds a wait for an answer may last: the statement timeout and a grace (at most as long
    as the timeout itself, so a short timeout in tests gives a short wait); ``None`` when
    statements have no timeout (0)."""
    if statement_timeout <= 0:
        return None
    return statement_timeout + min(ANSWER_GRACE, statement_timeout)


class BoundedConnection(psycopg.Connection[Any]):
    """psycopg's connection whose waits for the database end after :attr:`answer_within`
    seconds (``None``: no bound, as for a migration that may run for long)."""

    answer_within: float | None = None

    def wait(self, gen: Any, interval: float | None = None, timeout: float | None = None) -> Any:
        # psycopg's own bounded waits (a cancel after Ctrl-C) keep their timeouts and handling
        ours = timeout is None and self.answer_within is not None
        limit = self.answer_within if ours else timeout
        try:
            if interval is None:
                return super().wait(gen, timeout=limit)
            return super().wait(gen, interval, limit)
        except psycopg.errors._WaitTimeout as exc:
            if not ours:
                raise
            self.pgconn.finish()  # half a message exchanged: the connection is done for
            raise psycopg.OperationalError(
                f"{UNANSWERED} within {limit:g} s (a database process stopped or wedged?); "
                "the connection was closed"
            ) from exc
