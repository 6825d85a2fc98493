"""URLs as messages and logs show them: a server URL may carry a password (``user:pw@host``)
or a token in its query, which must never reach a terminal, a log or a bug report."""

from __future__ import annotations

import httpx


def shown_url(url: str) -> str:
    """``url`` with the password of its user part as ``***`` and without a query or fragment."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(the configured server URL)"
    if parsed.password:
        parsed = parsed.copy_with(username=parsed.username, password="***")
    return str(parsed.copy_with(query=None, fragment=None))
