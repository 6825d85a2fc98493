"""``devassign server --workers N``: every scrape of ``/metrics`` on the one port reaches one
worker at a time, and each must answer the counters of all of them. A worker that answered
only its own made every counter jump between the workers' values from scrape to scrape, which
Prometheus reads as resets (``rate()`` and the setup failure alert turn to nonsense)."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fresh_pg_database
from tests.e2e.servers import running_server

pytestmark = [pytest.mark.slow, pytest.mark.pg]  # a server of two processes on PostgreSQL

ROUTE = {"method": "GET", "route": "/v1/resource-types", "status": "200"}


def _requests_counted(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "devassign_http_requests_total" and s.labels == ROUTE:
                return s.value
    return 0.0


def test_every_worker_answers_the_counters_of_all_workers(tmp_path: object) -> None:
    with (
        fresh_pg_database("metrics_workers") as db,
        running_server(db, auth=False, extra=("--workers", "2")) as url,
    ):
        sent = 20
        for _ in range(sent):  # a new connection each: the workers share them out
            assert httpx.get(f"{url}/v1/resource-types", timeout=30).status_code == 200
        seen = [_requests_counted(httpx.get(f"{url}/metrics", timeout=30).text) for _ in range(12)]
        assert seen == [sent] * len(seen)
        # The fleet's gauges are read from the database, once, whichever worker answers.
        text = httpx.get(f"{url}/metrics", timeout=30).text
        assert text.count("devassign_fleet_scrape_ok 1.0") == 1
