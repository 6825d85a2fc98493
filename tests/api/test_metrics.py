"""``GET /metrics``: the fleet's numbers agree with what the API says, on SQLite and PostgreSQL.

Each scrape is parsed with prometheus_client's own parser; the gauges are compared with
``/v1/resource-types``, ``/v1/hosts``, ``/v1/devices`` and ``/v1/quotas`` after claims, releases,
setups, cleanups and a host going down. Counters belong to the process (other tests in it count
too), so they are compared before and after.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store
from tests.api.test_partitions import T4_TYPES, t4
from tests.conftest import Clock, make_client, vf


def per_host_client(store: Store) -> TestClient:
    """A server started with ``--metrics-per-host``."""
    settings = Settings(db_url=store.db.url, auth=False, sweep_interval=0, metrics_per_host=True)
    return TestClient(create_app(settings, store=store), raise_server_exceptions=False)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
STATES = (
    "available",
    "tainted",
    "partitioned",
    "down",
    "reserved",
    "assigned",
    "cleaning",
    "quarantined",
    "unhealthy",
    "missing",
)


def scrape(api: TestClient) -> Samples:
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def _report(api: TestClient, host: str, generation: int, devices: list[dict[str, Any]]) -> None:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _fleet(api: TestClient) -> None:
    for name in ("NIC_VF_1G", "USB_TOKEN"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    for host in ("compute-1", "compute-2"):
        _report(api, host, 1, [vf("0000:3b:02.1"), vf("0000:3b:02.2"), vf("0000:3b:02.3")])


def _claim(api: TestClient, consumer: str, count: int, *, project: str = "demo", status: int = 201) -> Any:
    body = {
        "consumer": consumer,
        "project": project,
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": count}],
    }
    r = api.post("/v1/claims", json=body)
    assert r.status_code == status, r.text
    return r.json()


def assert_agrees_with_api(api: TestClient, samples: Samples, *, per_host: bool) -> None:
    """Every gauge a scrape has about devices and hosts is what the API says."""
    types = api.get("/v1/resource-types").json()
    assert {t["name"] for t in types} == {
        dict(labels)["type"] for labels in series(samples, "devassign_devices")
    }
    for t in types:
        for state in STATES:
            got = value(samples, "devassign_devices", type=t["name"], state=state)
            assert got == t["counts"][state], (t["name"], state, got, t["counts"])
        total = sum(value(samples, "devassign_devices", type=t["name"], state=s) for s in STATES)
        assert total == t["counts"]["total"]
    hosts = api.get("/v1/hosts").json()
    for status in ("up", "down"):
        assert value(samples, "devassign_hosts", state=status) == sum(h["status"] == status for h in hosts)
    quotas = api.get("/v1/quotas").json()
    assert len(series(samples, "devassign_quota_used_devices")) == len(quotas)
    for q in quotas:
        labels = {"project": q["project"], "type": q["type"]}
        assert value(samples, "devassign_quota_used_devices", **labels) == q["used"]
        assert value(samples, "devassign_quota_limit_devices", **labels) == q["limit"]
    if not per_host:
        assert not series(samples, "devassign_host_devices")
        assert not series(samples, "devassign_host_last_seen_age_seconds")
        return
    devices = api.get("/v1/devices", params={"limit": 10_000}).json()
    counted: Counter[tuple[str, str, str]] = Counter()
    up = {h["name"]: h["status"] == "up" for h in hosts}
    for d in devices:
        if d["state"] == "removed":
            continue
        state = d["state"]
        if state == "available" and not up[d["host"]]:
            state = "down"
        elif state == "available" and any(t["effect"] in ("NoSchedule", "Drain") for t in d["taints"]):
            state = "tainted"
        counted[(d["host"], d["type"], state)] += 1
    # Devices do not say which free ones their pool cannot give: per host, ``partitioned`` is
    # compared within the free ones of up hosts.
    got: Counter[tuple[str, str, str]] = Counter()
    for labels, v in series(samples, "devassign_host_devices").items():
        host, type_name, state = dict(labels)["host"], dict(labels)["type"], dict(labels)["state"]
        got[(host, type_name, "available" if state == "partitioned" else state)] += int(v)
    assert +got == +counted
    assert {dict(labels)["host"] for labels in series(samples, "devassign_host_last_seen_age_seconds")} == {
        h["name"] for h in hosts
    }


def test_fleet_gauges_follow_claims_releases_and_a_host_going_down(api: TestClient, clock: Clock) -> None:
    _fleet(api)
    first = scrape(api)
    assert value(first, "devassign_fleet_scrape_ok") == 1
    assert value(first, "devassign_devices", type="NIC_VF_1G", state="available") == 6
    assert value(first, "devassign_devices", type="USB_TOKEN", state="available") == 0
    assert value(first, "devassign_hosts", state="up") == 2
    assert_agrees_with_api(api, first, per_host=False)

    held = _claim(api, "vm-1", 2)
    _claim(api, "vm-2", 1)
    after_claims = scrape(api)
    assert value(after_claims, "devassign_devices", type="NIC_VF_1G", state="reserved") == 3
    assert value(after_claims, "devassign_reservations_unconfirmed") == 2
    assert value(after_claims, "devassign_reservations_overdue") == 0
    assert value(after_claims, "devassign_reservations_next_expiry_seconds") == 300
    assert_agrees_with_api(api, after_claims, per_host=False)

    assert api.delete("/v1/allocations/vm-2").status_code == 204
    after_release = scrape(api)
    assert value(after_release, "devassign_devices", type="NIC_VF_1G", state="cleaning") == 1
    assert value(after_release, "devassign_reservations_unconfirmed") == 1
    assert_agrees_with_api(api, after_release, per_host=False)

    # vm-1's host keeps reporting, the other goes silent past --down-after (90 s).
    clock.advance(120)
    silent = next(h for h in ("compute-1", "compute-2") if h != held["host"])
    assert api.post(f"/v1/hosts/{held['host']}/heartbeat").status_code == 204
    host_down = scrape(api)
    assert value(host_down, "devassign_hosts", state="up") == 1
    assert value(host_down, "devassign_hosts", state="down") == 1
    assert value(host_down, "devassign_hosts_last_seen_max_age_seconds") == 120
    assert api.get(f"/v1/hosts/{silent}").json()["status"] == "down"
    assert value(host_down, "devassign_devices", type="NIC_VF_1G", state="down") > 0
    # The reservation was never confirmed: 300 s after the claim it is overdue.
    clock.advance(200)
    assert api.post(f"/v1/hosts/{held['host']}/heartbeat").status_code == 204
    overdue = scrape(api)
    assert value(overdue, "devassign_reservations_overdue") == 1
    assert value(overdue, "devassign_reservations_next_expiry_seconds") == -20
    assert_agrees_with_api(api, overdue, per_host=False)


def test_tainted_devices_are_counted_apart(store: Store, clock: Clock) -> None:
    with per_host_client(store) as api:
        _fleet(api)
        device = api.get("/v1/devices", params={"host": "compute-1"}).json()[0]
        r = api.post(
            f"/v1/devices/{device['id']}/taints", json={"effect": "NoSchedule", "reason": "flapping link"}
        )
        assert r.status_code == 201, r.text
        samples = scrape(api)
        assert value(samples, "devassign_devices", type=device["type"], state="tainted") == 1
        assert value(samples, "devassign_devices", type=device["type"], state="available") == 5
        assert_agrees_with_api(api, samples, per_host=True)


def test_partitions_their_pool_cannot_give_are_not_counted_available(store: Store, clock: Clock) -> None:
    """A T4 held whole leaves none of its vGPU slots free to claim; one 4Q slot held leaves
    three 4Q and nothing else: the scrape says ``partitioned`` for the rest, as ``types`` does."""
    with per_host_client(store) as api:
        for name in ("GPU_T4", *T4_TYPES):
            assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
        _report(api, "gpu-1", 1, t4("0000:3b:00.0"))
        _report(api, "gpu-2", 1, t4("0000:3b:00.0"))
        for consumer, host, spec in (("vm-whole", "gpu-1", "GPU_T4"), ("vm-4q", "gpu-2", "VGPU_T4_4Q")):
            body = {"consumer": consumer, "hosts": [host], "extra_specs": {f"hardware_resource:{spec}": "1"}}
            r = api.post("/v1/claims", json=body)
            assert r.status_code == 201, r.text
        samples = scrape(api)
        # Of 16 1B slots a host, none can be had: the GPUs run whole and in 4Q mode.
        assert value(samples, "devassign_devices", type="VGPU_T4_1B", state="available") == 0
        assert value(samples, "devassign_devices", type="VGPU_T4_1B", state="partitioned") == 32
        assert value(samples, "devassign_devices", type="VGPU_T4_4Q", state="available") == 3
        assert value(samples, "devassign_devices", type="GPU_T4", state="partitioned") == 1
        per_host = series(samples, "devassign_host_devices")
        assert per_host[frozenset({("host", "gpu-1"), ("type", "VGPU_T4_4Q"), ("state", "partitioned")})] == 4
        assert per_host[frozenset({("host", "gpu-2"), ("type", "VGPU_T4_4Q"), ("state", "available")})] == 3
        assert_agrees_with_api(api, samples, per_host=True)
        # A down host's free slots are ``down``, whatever their pool could give.
        clock.advance(120)
        assert api.post("/v1/hosts/gpu-2/heartbeat").status_code == 204
        later = scrape(api)
        gpu_1 = {dict(k)["state"]: v for k, v in series(later, "devassign_host_devices").items()
                 if dict(k)["host"] == "gpu-1" and dict(k)["type"] == "VGPU_T4_1B" and v}  # fmt: skip
        assert gpu_1 == {"down": 16}
        assert_agrees_with_api(api, later, per_host=True)


def test_per_host_series_only_with_the_option(store: Store, clock: Clock) -> None:
    with make_client(store, auth=False) as plain:
        _fleet(plain)
        _claim(plain, "vm-1", 2)
        text = plain.get("/metrics").text
        assert "compute-1" not in text and "compute-2" not in text
    with per_host_client(store) as api:
        clock.advance(100)
        assert api.post("/v1/hosts/compute-1/heartbeat").status_code == 204
        samples = scrape(api)
        assert value(samples, "devassign_host_last_seen_age_seconds", host="compute-1") == 0
        assert value(samples, "devassign_host_last_seen_age_seconds", host="compute-2") == 100
        assert_agrees_with_api(api, samples, per_host=True)


def test_quota_use_per_project_and_type(api: TestClient) -> None:
    _fleet(api)
    assert api.put("/v1/quotas/p1/NIC_VF_1G", json={"limit": 3}).status_code == 204
    assert api.put("/v1/quotas/p2/NIC_VF_1G", json={"limit": 1}).status_code == 204
    _claim(api, "vm-1", 2, project="p1")
    _claim(api, "vm-2", 1, project="p2")
    _claim(api, "vm-3", 1, project="p2", status=403)
    samples = scrape(api)
    assert value(samples, "devassign_quota_used_devices", project="p1", type="NIC_VF_1G") == 2
    assert value(samples, "devassign_quota_limit_devices", project="p1", type="NIC_VF_1G") == 3
    assert value(samples, "devassign_quota_used_devices", project="p2", type="NIC_VF_1G") == 1
    assert_agrees_with_api(api, samples, per_host=False)


def test_claims_and_refusals_are_counted_by_reason(api: TestClient) -> None:
    _fleet(api)
    before = scrape(api)
    _claim(api, "vm-1", 2)
    replay = {
        "consumer": "vm-2",
        "idempotency_key": "k1",
        "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
    }
    assert api.post("/v1/claims", json=replay).status_code == 201
    assert api.post("/v1/claims", json=replay).status_code == 200
    _claim(api, "vm-3", 4, status=409)  # no host has four free VFs left
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("devassign_claims_total", result="created") == 2
    assert delta("devassign_claims_total", result="replayed") == 1
    assert delta("devassign_claim_refusals_total", reason="no_valid_host") == 1
    assert delta("devassign_claim_duration_seconds_count") == 4
    assert delta("devassign_claim_duration_seconds_bucket", le="+Inf") == 4
    # The HTTP metrics are still there.
    assert delta("devassign_http_requests_total", method="POST", route="/v1/claims", status="201") == 2


def test_gangs_are_counted_with_their_instances_and_refusals(api: TestClient) -> None:
    _fleet(api)
    before = scrape(api)
    gang = {"instances": ["g-1", "g-2"], "requests": [{"name": "nic", "type": "NIC_VF_1G"}], "gang": "job"}
    gang["idempotency_key"] = "k-gang"
    assert api.post("/v1/gangs", json=gang).status_code == 201
    assert api.post("/v1/gangs", json=gang).status_code == 200  # a replay
    big = {"instances": [f"b-{i}" for i in range(9)], "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    assert api.post("/v1/gangs", json=big).status_code == 409  # 4 VFs are left
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("devassign_gangs_total", result="created") == 1
    assert delta("devassign_gangs_total", result="replayed") == 1
    assert delta("devassign_gang_instances_total") == 2
    assert delta("devassign_gang_refusals_total", reason="no_valid_host") == 1
    assert delta("devassign_gang_duration_seconds_count") == 3


def test_setup_and_cleanup_durations_and_failures_per_handler(api: TestClient, clock: Clock) -> None:
    _fleet(api)
    held = _claim(api, "vm-1", 2)
    host = held["host"]
    before = scrape(api)
    clock.advance(7)
    work = api.get(f"/v1/hosts/{host}/work").json()["items"]
    ids = [w["device"]["id"] for w in work if w["action"] == "setup"]
    assert len(ids) == 2
    results = [
        {"device_id": ids[0], "action": "setup", "ok": True, "consumer": "vm-1"},
        {"device_id": ids[1], "action": "setup", "ok": False, "error": "no such VF", "consumer": "vm-1"},
    ]
    r = api.post(f"/v1/hosts/{host}/work", json={"results": results})
    assert r.status_code == 200 and all(o["applied"] for o in r.json()), r.text
    # The failed setup sent both devices to cleaning; one cleanup fails 3 s later.
    clock.advance(3)
    cleanups = [w["device"]["id"] for w in api.get(f"/v1/hosts/{host}/work").json()["items"]]
    assert sorted(cleanups) == sorted(ids)
    results = [
        {"device_id": ids[0], "action": "cleanup", "ok": True},
        {"device_id": ids[1], "action": "cleanup", "ok": False, "error": "still bound"},
    ]
    assert api.post(f"/v1/hosts/{host}/work", json={"results": results}).status_code == 200
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    setup = {"action": "setup", "handler": "sriov_vf"}
    cleanup = {"action": "cleanup", "handler": "sriov_vf"}
    assert delta("devassign_work_duration_seconds_count", **setup) == 2
    assert delta("devassign_work_duration_seconds_sum", **setup) == 14
    assert delta("devassign_work_failures_total", **setup) == 1
    assert delta("devassign_work_duration_seconds_count", **cleanup) == 2
    assert delta("devassign_work_duration_seconds_sum", **cleanup) == 6
    assert delta("devassign_work_failures_total", **cleanup) == 1
    samples = scrape(api)
    assert value(samples, "devassign_devices", type="NIC_VF_1G", state="quarantined") == 1
    assert_agrees_with_api(api, samples, per_host=False)


# ---------------------------------------------------------------- deploy/: alerts and dashboard

DEPLOY = Path(__file__).parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "devassign-alerts.yml"
METRIC_NAME = re.compile(r"\bdevassign_[a-z0-9_]+")


def _known_names(api: TestClient) -> set[str]:
    """Every name a scrape of this server can hold: families, and their samples' names."""
    names: set[str] = set()
    for family in text_string_to_metric_families(api.get("/metrics").text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def _rule_expressions() -> list[str]:
    yaml = pytest.importorskip("yaml")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    exprs = [str(rule["expr"]) for group in groups for rule in group["rules"]]
    assert len(exprs) >= 4
    return exprs


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "devassign.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [str(v.get("definition", "")) for v in dashboard["templating"]["list"]]
    return [e for e in exprs if e]


def test_alert_rules_and_dashboard_use_metrics_the_server_exposes(store: Store) -> None:
    with per_host_client(store) as api:
        known = _known_names(api)
    for expr in [*_rule_expressions(), *_dashboard_expressions()]:
        used = set(METRIC_NAME.findall(expr))
        assert used, expr
        assert used <= known, (sorted(used - known), expr)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (package prometheus) is not installed")
def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", "devassign-alerts.test.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
