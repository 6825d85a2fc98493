"""The reporter against a fake server (httpx.MockTransport), with a fake clock and sleep."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import parse_config
from devassign.agent.reporter import AgentConflict, Reporter, ReportRefused, ServerUnavailable
from devassign.agent.state import StateError, StateFile
from devassign.domain import DeviceKind, instance_tag
from devassign.schemas import ReportedDevice

DEVICE = ReportedDevice(address="0000:5e:10.0", kind=DeviceKind.SRIOV_VF, type="NIC_VF_1G")


class FakeServer:
    """Records requests; answers from a script, then with a plain success."""

    def __init__(self, script: list[Any] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, body, dict(request.headers)))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            if isinstance(step, httpx.Response):
                return step
        if request.method == "POST":
            return httpx.Response(204)
        host = request.url.path.split("/")[3]
        return httpx.Response(200, json=result(host, body["generation"]))

    def reports(self) -> list[dict[str, Any]]:
        return [b for m, _, b, _ in self.requests if m == "PUT"]


def result(host: str, generation: int, **extra: Any) -> dict[str, Any]:
    return {
        "host": host,
        "generation": generation,
        "accepted": 1,
        "added": [],
        "updated": [],
        "removed": [],
        "missing": [],
        "refused": [],
        "warnings": [],
        **extra,
    }


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(tmp_path: Path, server: FakeServer, t: FakeTime | None = None, **cfg: Any) -> Reporter:
    t = t or FakeTime()
    config = parse_config(
        {"host": "compute-1", "server": "http://ctl:8470", "state_file": "state.json", **cfg},
        base_dir=tmp_path,
    )
    return Reporter(
        config,
        lambda: [DEVICE],
        httpx.Client(transport=httpx.MockTransport(server)),
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(1),
    )


def test_first_report(tmp_path: Path) -> None:
    server = FakeServer()
    reporter = make(tmp_path, server, token="s3cret")
    res = reporter.run(once=True)
    assert res is not None and res.generation == 1
    method, path, body, headers = server.requests[0]
    assert (method, path) == ("PUT", "/v1/hosts/compute-1/inventory")
    assert headers["authorization"] == "Bearer s3cret"
    assert body["generation"] == 1 and body["devices"][0]["address"] == "0000:5e:10.0"
    state = json.loads((tmp_path / "state.json").read_text())
    assert body["host_id"] == state["host_id"] and state["generation"] == 1


def test_no_token_no_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVASSIGN_TOKEN", raising=False)
    server = FakeServer()
    make(tmp_path, server).run(once=True)
    assert "authorization" not in server.requests[0][3]


def test_stale_generation_recovery(tmp_path: Path) -> None:
    stale = httpx.Response(
        409,
        json={"error": {"code": "stale_generation", "message": "old", "current_generation": 41}},
    )
    server = FakeServer([stale])
    res = make(tmp_path, server).run(once=True)
    assert [r["generation"] for r in server.reports()] == [1, 42]
    assert res is not None and res.generation == 42
    assert json.loads((tmp_path / "state.json").read_text())["generation"] == 42


def test_generation_increases_across_restarts(tmp_path: Path) -> None:
    server = FakeServer()
    make(tmp_path, server).run(once=True)
    make(tmp_path, server).run(once=True)
    assert [r["generation"] for r in server.reports()] == [1, 2]


def test_backoff_while_server_is_away(tmp_path: Path) -> None:
    down = httpx.ConnectError("connection refused")
    server = FakeServer([down, down, down, httpx.Response(503, text="starting")])
    t = FakeTime()
    res = make(tmp_path, server, t).run(once=True)
    assert res is not None and len(server.reports()) == 5
    assert len(t.sleeps) == 4
    # exponential with full jitter: the n-th wait is anywhere in [0, min(60, 2**n)]
    assert all(0.0 <= s <= min(60.0, 2.0**n) for n, s in enumerate(t.sleeps))


def test_once_gives_up_when_server_stays_away(tmp_path: Path) -> None:
    server = FakeServer([httpx.ConnectError("refused")] * 10)
    with pytest.raises(ServerUnavailable, match="refused"):
        make(tmp_path, server).run(once=True)
    assert len(server.reports()) == 5


def test_refusal_is_not_retried_with_once(tmp_path: Path) -> None:
    denied = httpx.Response(403, json={"error": {"code": "forbidden", "message": "wrong host"}})
    server = FakeServer([denied])
    with pytest.raises(ReportRefused, match="wrong host"):
        make(tmp_path, server).run(once=True)


def test_heartbeats_between_reports_and_periodic_report(tmp_path: Path) -> None:
    server = FakeServer()
    t = FakeTime()
    reporter = make(tmp_path, server, t, report_interval=30, heartbeat_interval=10)
    reporter.run(iterations=8)
    kinds = [path.rsplit("/", 1)[1] for _, path, _, _ in server.requests]
    assert kinds[0] == "inventory"
    assert "heartbeat" in kinds
    assert kinds.count("inventory") >= 2  # reported again once the interval passed
    first_again = kinds.index("inventory", 1)
    assert kinds[1:first_again] == ["heartbeat"] * (first_again - 1)


def test_heartbeat_404_host_not_found_sends_full_report(tmp_path: Path) -> None:
    gone = httpx.Response(404, json={"error": {"code": "host_not_found", "message": "who?"}})
    t = FakeTime()
    server = FakeServer([None, None, gone])  # report ok, heartbeat ok, heartbeat 404
    make(tmp_path, server, t, report_interval=300, heartbeat_interval=10).run(iterations=5)
    kinds = [path.rsplit("/", 1)[1] for _, path, _, _ in server.requests]
    assert kinds == ["inventory", "heartbeat", "heartbeat", "inventory", "heartbeat"]


def test_host_id_survives_a_rename(tmp_path: Path) -> None:
    """A state file is one host's: a configuration naming another host is refused with what to
    do, and once the file says the new name (after `devassign host rename`), the id stays."""
    server = FakeServer()
    make(tmp_path, server, host="old-name").run(once=True)
    with pytest.raises(StateError, match="devassign host rename old-name new-name"):
        make(tmp_path, server, host="new-name").run(once=True)
    assert len(server.requests) == 1  # nothing sent under the new name
    path = tmp_path / "state.json"
    path.write_text(path.read_text().replace('"old-name"', '"new-name"'))
    make(tmp_path, server, host="new-name").run(once=True)
    (_, p1, b1, _), (_, p2, b2, _) = server.requests
    assert p1 == "/v1/hosts/old-name/inventory" and p2 == "/v1/hosts/new-name/inventory"
    assert b1["host_id"] == b2["host_id"]


def test_corrupt_state_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(StateError, match="makes this machine a new host"):
        _ = StateFile(path).state
    assert path.read_text() == "{not json"


def test_refused_devices_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refused = result(
        "compute-1",
        1,
        refused=[{"address": "0000:5e:10.0", "code": "unknown_type", "reason": "no type NIC_VF_1G"}],
        warnings=["1 device refused"],
    )
    server = FakeServer([httpx.Response(200, json=refused)])
    make(tmp_path, server).run(once=True)
    assert "0000:5e:10.0 refused (unknown_type)" in caplog.text
    assert "1 device refused" in caplog.text


def test_a_refusal_is_logged_once_while_it_lasts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    why = {"address": "0000:3b:00.0", "code": "no_iommu_group", "reason": "the IOMMU is off"}
    answers = [result("compute-1", n, refused=[why]) for n in (1, 2)] + [result("compute-1", 3)]
    answers.append(result("compute-1", 4, refused=[why]))
    reporter = make(tmp_path, FakeServer([httpx.Response(200, json=a) for a in answers]))
    for _ in answers:
        reporter.report()
    assert caplog.text.count("0000:3b:00.0 refused (no_iommu_group)") == 2  # reports 1 and 4


def test_a_refusal_reads_as_one_line_with_its_code_and_whole_message() -> None:
    """The work pass of ``agent run --once`` beside a live agent: the server's 409 said as its
    code and message, not its JSON cut at 200 characters."""
    import httpx

    from devassign.agent.reporter import refusal

    message = "agent instance #31fc1d0d holds host 'h3' and was seen moments ago: " + "x" * 300
    resp = httpx.Response(409, json={"error": {"code": "agent_conflict", "message": message}})
    assert refusal(resp) == f"409 agent_conflict: {message}"
    assert refusal(httpx.Response(502, text="<html>bad gateway</html>")) == "502: <html>bad gateway</html>"


def test_the_takeover_line_names_the_instance_as_the_events_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events and the refusal show an agent process as ``#tag`` (never its id, which fences the
    host's work); the agent's own line when the server takes it must too, or an operator
    cannot match it to the ``agent_conflict`` events."""
    conflict = {"code": "agent_conflict", "message": "another agent of this host is live", "retry_after": 1}
    server = FakeServer([httpx.Response(409, json={"error": conflict})])
    reporter = make(tmp_path, server)
    with pytest.raises(AgentConflict):
        reporter.report()
    reporter.report()
    assert reporter.instance is not None
    line = next(r.getMessage() for r in caplog.records if "takes this agent" in r.getMessage())
    assert instance_tag(reporter.instance) in line and reporter.instance not in line
