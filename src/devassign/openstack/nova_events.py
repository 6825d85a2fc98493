"""Tell Nova that accelerator requests are bound: ``accelerator-request-bound`` events.

Nova's compute waits for one event per ARQ before it builds the guest (Cyborg sends them
through python-novaclient; devassign with httpx). One POST carries the events of any number
of instances: ``POST {nova_url}/os-server-external-events`` with microversion 2.82 (the first
that knows this event), ``X-Auth-Token`` the configured token. :meth:`NovaEvents.send` makes
one attempt and says what to do with the events; the server's background loop
(``server/cyborg.py``) retries with backoff, so no HTTP answer ever waits for Nova.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

log = logging.getLogger(__name__)

EVENT_NAME = "accelerator-request-bound"
MICROVERSION = "2.82"


class Outcome(StrEnum):
    SENT = "sent"  # Nova accepted them (200, or 207 with per-event codes): done
    DROP = "drop"  # Nova refused them for good (4xx: an instance it does not know...): done
    RETRY = "retry"  # Nova could not be asked (unreachable, 5xx, 401/403): try again later


@dataclass(frozen=True)
class BoundEvent:
    instance: str
    arq: str
    status: str  # completed or failed


def event_body(events: Iterable[BoundEvent]) -> dict[str, Any]:
    """The body Nova's ``server_external_events`` schema (v2.82) accepts."""
    return {
        "events": [
            {"name": EVENT_NAME, "server_uuid": e.instance, "tag": e.arq, "status": e.status} for e in events
        ]
    }


class NovaEvents:
    """One attempt at a time to POST events to Nova's API; never logs the token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/os-server-external-events"
        self._client = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={
                "X-Auth-Token": token,
                "OpenStack-API-Version": f"compute {MICROVERSION}",
                "X-OpenStack-Nova-API-Version": MICROVERSION,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )

    def close(self) -> None:
        self._client.close()

    def send(self, events: list[BoundEvent]) -> tuple[Outcome, str]:
        """One POST: what to do with ``events``, and why in a few words (for the log)."""
        try:
            r = self._client.post(self.url, json=event_body(events))
        except httpx.HTTPError as exc:
            return Outcome.RETRY, f"{self.url} unreachable: {type(exc).__name__}: {exc}"
        if r.status_code in (200, 207):
            return Outcome.SENT, _per_event(r)
        if r.status_code in (401, 403, 408, 429) or r.status_code >= 500:
            return Outcome.RETRY, f"{self.url} answered {r.status_code}: {r.text[:300]}"
        return Outcome.DROP, f"{self.url} refused the events ({r.status_code}): {r.text[:300]}"


def _per_event(r: httpx.Response) -> str:
    """A 207 names each event's own code: say which Nova did not take."""
    if r.status_code == 200:
        return "accepted"
    try:
        items = r.json().get("events") or []
    except ValueError:
        return "accepted in part"
    refused = [
        f"{e.get('server_uuid')}/{e.get('tag')}: {e.get('code')}" for e in items if e.get("code") != 200
    ]
    return "accepted in part; refused: " + ", ".join(refused)
