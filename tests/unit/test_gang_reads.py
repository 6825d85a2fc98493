"""How many candidate hosts a gang reads, in turn: never fewer than one claim reads first."""

from __future__ import annotations

from devassign.scheduler.gang import Layout
from devassign.server.gangs import MAX_HOSTS_READ, hosts_to_read


def test_a_gang_reads_4_per_instance_then_wider() -> None:
    assert hosts_to_read(64, Layout(), 8) == [256, MAX_HOSTS_READ]
    assert hosts_to_read(64, Layout(same="rack"), 8) == [256, 1024, MAX_HOSTS_READ]
    assert hosts_to_read(1000, Layout(same="rack"), 8) == [MAX_HOSTS_READ]


def test_the_first_read_is_at_least_one_claims_and_reads_only_widen() -> None:
    assert hosts_to_read(2, Layout(same="rack"), 64) == [64, MAX_HOSTS_READ]
    assert hosts_to_read(2, Layout(same="rack"), 8) == [8, 32, MAX_HOSTS_READ]
    for n in (1, 2, 5, 64, 499, 500, 501):
        for limit in (1, 8, 64, 5000):
            reads = hosts_to_read(n, Layout(same="rack"), limit)
            assert reads == sorted(set(reads)) and reads[-1] == MAX_HOSTS_READ
            assert reads[0] == min(MAX_HOSTS_READ, max(limit, 4 * n))
