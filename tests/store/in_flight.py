"""A claim held open in flight: its devices taken, its transaction not yet committed, while
another operation starts, for the tests of what must wait for it (a quota set, a type's
deletion)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, claims


def waits_for_a_claim_in_flight(
    monkeypatch: pytest.MonkeyPatch,
    placer: Placer,
    body: ClaimBody,
    caller: Principal,
    operation: Callable[[], None],
) -> bool:
    """Claim ``body`` in a thread, held open once it took its devices; run ``operation`` in
    another meanwhile; then let the claim commit and both end. Whether ``operation`` was still
    running half a second after it started: it waited for the claim."""
    real_answer = claims._answer
    taken, go = threading.Event(), threading.Event()

    def answer_slowly(conn: Any, t: Any, rows: Any, ttl: Any) -> Any:
        if t.order.consumer == body.consumer:
            taken.set()
            go.wait(30)
        return real_answer(conn, t, rows, ttl)

    monkeypatch.setattr(claims, "_answer", answer_slowly)
    claim = threading.Thread(target=placer.claim, args=(body, caller))
    claim.start()
    assert taken.wait(30), "the claim never took its devices"
    other = threading.Thread(target=operation)
    other.start()
    other.join(0.5)
    waited = other.is_alive()
    go.set()
    claim.join(30)
    other.join(30)
    return waited
