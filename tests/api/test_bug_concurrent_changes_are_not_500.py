"""Concurrent changes that collide in the database are answered in the domain's terms (404,
409, a refused device), never with a 500.

On PostgreSQL (READ COMMITTED) a concurrent commit between a check and a write made foreign
key and unique violations escape as 500s: a type deleted while a report inserted devices of
it, a host deleted while a claim reserved its devices (or ``NoResultFound`` when the claim
looked the host up again), two recounts of one host's inventory. The threads below repeat
those pairs; the assertion is on the answers only, whatever the interleaving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf

pytestmark = pytest.mark.slow  # threads racing for ROUNDS rounds

ROUNDS = 60


def _run(*loops: Callable[[int], httpx.Response]) -> list[str]:
    failures: list[str] = []

    def worker(loop: Callable[[int], httpx.Response]) -> None:
        for i in range(ROUNDS):
            r = loop(i)
            if r.status_code >= 500 or (r.is_error and "error" not in r.json()):
                failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def _report(api: TestClient, host: str, offset: int) -> Callable[[int], httpx.Response]:
    def loop(i: int) -> httpx.Response:
        devices = [vf(f"0000:5e:00.{j}", "RACE" if (i + j) % 2 else "NIC_VF_1G") for j in range(i % 4)]
        return api.put(f"/v1/hosts/{host}/inventory", json={"generation": offset + i, "devices": devices})

    return loop


def test_deleting_a_type_while_hosts_report_it(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201

    def types(i: int) -> httpx.Response:
        if i % 2:
            return api.delete("/v1/resource-types/RACE")
        return api.post("/v1/resource-types", json={"name": "RACE"})

    assert _run(types, _report(api, "h1", 1), _report(api, "h2", 1)) == []


def test_deleting_a_host_while_it_reports_and_is_claimed(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert api.post("/v1/resource-types", json={"name": "RACE"}).status_code == 201

    def delete_host(i: int) -> httpx.Response:
        return api.delete("/v1/hosts/h1")

    def claim(i: int) -> httpx.Response:
        consumer = f"vm{i % 3}"
        if i % 3 == 2:
            return api.delete(f"/v1/allocations/{consumer}")
        body = {"consumer": consumer, "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
        return api.post("/v1/claims", json=body)

    assert _run(delete_host, claim, claim, _report(api, "h1", 1_000_000)) == []
