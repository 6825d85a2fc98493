"""The event stream's position token (``Cursor``) and its gaps, without a database.

No database: ``Cursor.read`` is driven with a ``fetch`` that answers from a set of visible
(committed, in-scope) event ids, as the scoped query does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from devassign.server import stream


@dataclass(frozen=True)
class _Ev:
    id: int


class _Log:
    """The ids a scoped ``fetch`` can see; ``reads`` records each ``after`` asked for."""

    def __init__(self, visible: set[int]) -> None:
        self.visible = set(visible)
        self.reads: list[int | None] = []

    def fetch(self, after: int | None, limit: int) -> list[_Ev]:
        self.reads.append(after)
        start = after or 0
        return [_Ev(i) for i in sorted(i for i in self.visible if i > start)][:limit]


def test_a_forged_gap_seen_in_the_future_is_not_kept_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Last-Event-ID: 1000~1-999@<year 33658>``: the gap's "first seen" time is the client's
    word, and a time in the future never reaches ``LATE_COMMIT_WINDOW``, so the gap is never
    given up. Every poll of that stream (each second, for as long as it stays open) re-reads the
    scoped log from id 1 to the end, in pages of 500, to find nothing: one forged header per
    connection makes the server scan the whole event table every second. The window must be
    measured from a time the server trusts (refuse, or clamp, a "seen" in the future)."""
    now = time.time()
    token = f"1000~1-999@{int(now) + 10**12}"
    try:
        cursor = stream.Cursor.parse(token)
    except ValueError:
        return  # refused: fine
    log = _Log({1000, 1001})  # ids 1..999: other projects' (never visible to this scope)
    monkeypatch.setattr(stream.time, "time", lambda: now + 3 * stream.LATE_COMMIT_WINDOW)
    cursor.read(log.fetch)
    log.reads.clear()
    cursor.read(log.fetch)
    assert log.reads == [1001], (  # from the last id sent, not from the forged gap
        f"{stream.LATE_COMMIT_WINDOW * 3:.0f} s later the stream still re-reads from id "
        f"{log.reads[0]} on every poll ({len(log.reads)} queries per poll)"
    )


def test_overlapping_gaps_in_a_position_do_not_send_an_event_twice() -> None:
    """A position whose gaps overlap (``10~1-9@T,1-9@T``: no stream ever sends one) is taken:
    the first read fills ids 1..9 from the first gap, the next poll finds them again in the
    second and sends them again. One connection delivers every event of the range twice (up to
    32 times with 32 copies of the gap): ``devassign events --follow`` prints each line again.
    Overlapping gaps must be refused (400) or merged."""
    t = int(time.time())
    try:
        cursor = stream.Cursor.parse(f"10~1-9@{t},1-9@{t}")
    except ValueError:
        return
    log = _Log(set(range(1, 11)))
    sent = [e.id for e, _ in cursor.read(log.fetch)]
    sent += [e.id for e, _ in cursor.read(log.fetch)]
    twice = sorted({i for i in sent if sent.count(i) > 1})
    assert twice == [], f"events sent twice on one stream: {twice}"


def test_a_scoped_stream_keeps_a_late_event_behind_many_interleaved_out_of_scope_ids() -> None:
    """A member's (or an agent's) stream: its project's events are interleaved with other
    projects' (ids it never sees), so every one of its events opens a gap. With ``MAX_GAPS`` =
    32, the 33rd of its events within the 30 s window drops the oldest gap, and an event of its
    own committed late in that gap (a claim whose transaction waited on a host lock) is never
    sent: the dashboard and ``--follow`` miss it for good. Before this change the stream kept
    the 100 ids below each event it saw, so this event was sent. Here: id 1 (in scope) commits
    after 40 in-scope events 3, 5, ..., 81 were streamed, each after an out-of-scope id."""
    log = _Log({2 * k + 1 for k in range(1, 101)})  # 3, 5, ..., 201 committed; 1 in flight
    others = {2 * k for k in range(1, 101)}  # other projects' events, committed

    def committed(lo: int, hi: int) -> list[int]:
        return sorted(i for i in log.visible | others if lo <= i <= hi)

    cursor = stream.Cursor(0)
    first = [e.id for e, _ in cursor.read(log.fetch, committed)]
    assert first == sorted(log.visible)
    cursor.read(log.fetch, committed)  # the next poll: the other projects' ids are no gap
    assert cursor.gaps and [(lo, hi) for lo, hi, _ in cursor.gaps] == [(1, 1)], cursor.gaps
    log.visible.add(1)  # the late transaction commits, well within LATE_COMMIT_WINDOW
    second = [e.id for e, _ in cursor.read(log.fetch, committed)]
    assert second == [1], f"the late event 1 was never sent (gaps kept: {cursor.gaps[:3]}...)"
    assert cursor.token() == "201"


def test_an_event_committed_between_the_two_reads_of_a_poll_is_sent() -> None:
    """The ids that exist are asked before the scoped read: an event of this scope committed
    in between is then in the scoped read, never taken for another scope's and dropped."""
    log = _Log({3})
    cursor = stream.Cursor(0)
    assert [e.id for e, _ in cursor.read(log.fetch)] == [3]  # gap 1-2

    def committed(lo: int, hi: int) -> list[int]:
        found = sorted(i for i in log.visible | {2} if lo <= i <= hi)  # 2: another scope's
        log.visible.add(1)  # this scope's event 1 commits right after this question
        return found

    assert [e.id for e, _ in cursor.read(log.fetch, committed)] == [1]
    assert cursor.gaps == []


def test_a_forged_wide_gap_reads_no_further_back_than_the_span_a_stream_watches() -> None:
    """``Last-Event-ID: N~1-(N-1)@now``: a gap the width of the whole event log. Each poll
    re-reads the scope from the first gap and asks which ids exist across the gaps, so one
    header would make every poll read the whole table (up to the 100,000 ids a question
    reads), once a second for the window, per connection. A stream watches at most
    ``MAX_GAP_SPAN`` ids below its last one."""
    last = 1_000_000
    cursor = stream.Cursor.parse(f"{last}~1-{last - 1}@{int(time.time())}")
    log = _Log({last})
    asked: list[tuple[int, int]] = []

    def committed(lo: int, hi: int) -> list[int]:
        asked.append((lo, hi))
        return []

    cursor.read(log.fetch, committed)
    assert asked and min(lo for lo, _ in asked) >= last - stream.MAX_GAP_SPAN, asked
    assert min(a or 0 for a in log.reads) >= last - stream.MAX_GAP_SPAN - 1, log.reads
