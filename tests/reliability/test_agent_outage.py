"""An agent cut off from the server, a server restarted under an agent, and the agent's retries.

In process: the real server (FastAPI app and store, SQLite and PostgreSQL) behind a transport
the test can cut, an agent over a simulated (SYNTHETIC) host, and fake time: the agent's
monotonic clock and the server's clock move only when the agent sleeps, and every sleep lets
the server sweep (hosts go down, reservations expire). An hour of outage takes a second.

With processes: ``devassign server`` on SQLite, stopped while the agent is in the middle of a
setup and started again on the same port and database.

Nothing here sleeps a guessed time: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from devassign.agent.config import AgentConfig, DeviceRule
from devassign.agent.reporter import Reporter
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store
from devassign.testing.sysfs import SyntheticHost, host
from tests.conftest import Clock
from tests.e2e.servers import DEVASSIGN, free_port

TYPE = "NIC_VF_OUT"
HOST = "out-1"
PF = "0000:5e:00.0"
SERVER = "http://testserver"
HOUR = 3600.0
POLL_S = 0.05


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {deadline_s:.0f} s")
        time.sleep(POLL_S)


# ---------------------------------------------------------------- the network and the clocks


class Network(httpx.BaseTransport):
    """Between the agent and the in-process server: forwards requests, or fails like an outage
    (``down``: ``"refused"``, ``"timeout"`` or ``"503"``), or loses the answer of a request the
    server did take (``lose_work_answers``: that many ``POST .../work``, as a timeout)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.down: str | None = None
        self.retry_after: str | None = None  # the Retry-After of a "503"
        self.lose_work_answers = 0
        self.delivered: list[tuple[str, str, Any]] = []  # what reached the server
        self.failed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down is not None:
            self.failed += 1
            if self.down == "refused":
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            if self.down == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(503, text="upstream unavailable", headers=headers, request=request)
        body = json.loads(request.content) if request.content else None
        resp = self.inner.handle_request(request)
        resp.read()
        self.delivered.append((request.method, request.url.path, body))
        if self.lose_work_answers and request.method == "POST" and request.url.path.endswith("/work"):
            self.lose_work_answers -= 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return resp

    def posted(self, device_id: str) -> list[dict[str, Any]]:
        """The work results for ``device_id`` that reached the server, in order."""
        return [
            r
            for method, path, body in self.delivered
            if method == "POST" and path.endswith("/work")
            for r in body["results"]
            if r["device_id"] == device_id
        ]


class FakeTime:
    """The agent's monotonic clock (``agent``: skewed and made to jump by the tests) and the
    server's clock; ``sleep`` moves both and lets the server sweep, as its sweeper would."""

    def __init__(self, server: Clock, store: Store) -> None:
        self.server = server
        self.store = store
        self.mono = 7_000.0
        self.slept: list[float] = []

    def agent(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.slept.append(seconds)
        self.mono += seconds
        self.server.advance(seconds)
        self.store.sweep()

    def server_seconds(self) -> float:
        return self.server.now.timestamp()


@dataclass
class World:
    store: Store
    api: TestClient
    net: Network
    time: FakeTime
    h: SyntheticHost
    vfs: list[str]
    config: AgentConfig
    crash: list[str] = field(default_factory=list)

    def agent(self, *, crash_at: str | None = None, on_crash: Callable[[], None] | None = None) -> Agent:
        """A new agent process over the same state file (a restart: a new instance id)."""
        client = httpx.Client(transport=self.net, base_url=SERVER)
        return Agent(
            self.config,
            self.h.root,
            HostOps.simulated(self.h.root),
            client,
            state=StateFile(self.config.state_file),
            clock=self.time.agent,
            sleep=self.time.sleep,
            rng=random.Random(7),
            pci_ids=None,
            crash_at=crash_at,
            on_crash=on_crash or (lambda: None),
        )

    def claim(self, consumer: str) -> dict[str, Any]:
        body = {"consumer": consumer, "hosts": [HOST], "requests": [{"name": "nic", "type": TYPE}]}
        resp = self.api.post("/v1/claims", json=body)
        assert resp.status_code == 201, resp.text
        device: dict[str, Any] = resp.json()["devices"][0]
        return device

    def device(self, device_id: str) -> dict[str, Any]:
        resp = self.api.get(f"/v1/devices/{device_id}")
        assert resp.status_code == 200, resp.text
        found: dict[str, Any] = resp.json()
        return found

    def allocation(self, consumer: str) -> dict[str, Any]:
        resp = self.api.get(f"/v1/allocations/{consumer}")
        assert resp.status_code == 200, resp.text
        found: dict[str, Any] = resp.json()
        return found

    def host_status(self) -> str:
        resp = self.api.get(f"/v1/hosts/{HOST}")
        return str(resp.json()["status"]) if resp.status_code == 200 else f"unknown ({resp.status_code})"

    def events(self, action: str, device: str | None = None) -> list[dict[str, Any]]:
        found = self.api.get("/v1/events", params={"host": HOST, "limit": 1000}).json()
        return [e for e in found if e["action"] == action and (device is None or e["device"] == device)]

    def driver(self, address: str) -> str | None:
        return HostOps.simulated(self.h.root).sysfs.link_name(f"bus/pci/devices/{address}/driver")

    def journal(self) -> dict[str, Any]:
        """The journal as the state file on disk holds it."""
        return StateFile(self.config.state_file).state.journal


def make_world(
    store: Store, clock: Clock, tmp_path: Path, vfs: int = 3, work_interval: float = 2.0
) -> Iterator[World]:
    settings = Settings(db_url=store.db.url, auth=False, sweep_interval=0)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as api:
        assert api.post("/v1/resource-types", json={"name": TYPE}).status_code == 201
        h = host(tmp_path, vfio=True)
        found = h.sriov_pf(
            PF, "8086", "1572", vfs=vfs, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20
        )
        config = AgentConfig(
            host=HOST,
            server=SERVER,
            state_file=tmp_path / "state.json",
            report_interval=30,
            heartbeat_interval=10,
            work_interval=work_interval,
            devices=(DeviceRule(TYPE, {"product_id": "154c"}),),
        )
        yield World(store, api, Network(api._transport), FakeTime(clock, store), h, found, config)


@pytest.fixture
def world(store: Store, clock: Clock, tmp_path: Path) -> Iterator[World]:
    yield from make_world(store, clock, tmp_path)


def run_until(agent: Agent, condition: Callable[[], bool], what: str, max_steps: int = 500) -> None:
    """``agent.run`` one step at a time (fake time) until ``condition`` holds."""
    for _ in range(max_steps):
        if condition():
            return
        agent.run(iterations=1)
    raise AssertionError(f"{what}: not so after {max_steps} steps of the agent")


def cut(net: Network) -> Callable[[], None]:
    def hook() -> None:
        net.down = "refused"

    return hook


# ---------------------------------------------------------------- an hour without the server


@pytest.mark.parametrize("queued", ["cleanup", "setup"])
def test_an_hour_without_the_server_keeps_devices_and_queues_results(
    world: World, queued: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away right after the agent journaled a result. For an hour the agent
    changes nothing on the host, keeps the result on disk (also through its own restart); the
    server marks the host down and hands none of its devices to anyone. When the server is
    back the result is delivered once and server and host converge."""
    caplog.set_level(logging.INFO, logger="devassign.agent")
    w = world
    agent = w.agent()
    run_until(agent, lambda: w.host_status() == "up", "the first report")
    held = w.claim("held-vm")
    run_until(agent, lambda: w.device(held["id"])["state"] == "assigned", "the held device set up")
    q = w.claim("queued-vm")
    if queued == "cleanup":
        run_until(agent, lambda: w.device(q["id"])["state"] == "assigned", "the second device set up")
        assert w.api.delete("/v1/allocations/queued-vm").status_code == 204
    # The network goes down just after the agent journaled the result of this action.
    agent.crash_at = f"result:{queued}"
    agent.on_crash = cut(w.net)
    agent.run(iterations=1)
    assert w.net.down is not None, f"the agent never ran the {queued}"
    (entry,) = w.journal().values()
    assert (entry["action"], entry["phase"], entry["ok"]) == (queued, "done", True)
    q_driver = "iavf" if queued == "cleanup" else "vfio-pci"
    assert w.driver(q["address"]) == q_driver
    delivered = len(w.net.delivered)
    before = len(w.net.posted(q["id"]))

    # Half an hour, an agent restart, another half hour: the server's clock moves with the agent's.
    start = w.time.server_seconds()
    run_until(agent, lambda: w.time.server_seconds() >= start + HOUR / 2, "half an hour")
    assert [r.getMessage() for r in caplog.records if "server unreachable" in r.getMessage()][:1]
    assert sum("server unreachable" in r.getMessage() for r in caplog.records) == 1, "one line per outage"
    others = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in others if "unreachable" not in m and "test hook" not in m] == []
    agent = w.agent()
    (again,) = w.journal().values()
    assert again == entry, "the queued result survived the agent's restart"
    run_until(agent, lambda: w.time.server_seconds() >= start + HOUR, "an hour")
    assert len(w.net.delivered) == delivered, "nothing reached the server during the outage"
    assert max(w.time.slept) <= 60.0

    # The server: host down, the held device still the held VM's, nothing handed out.
    assert w.host_status() == "down" and len(w.events("host_down")) == 1
    assert w.device(held["id"])["state"] == "assigned" and w.device(held["id"])["consumer"] == "held-vm"
    assert w.allocation("held-vm")["state"] == "assigned"
    assert w.device(q["id"])["state"] == "cleaning"  # a cleanup owed; an unconfirmed setup expired
    for spec in ({"hosts": [HOST]}, {}):
        body = {"consumer": f"thief-{uuid.uuid4()}", "requests": [{"name": "nic", "type": TYPE}], **spec}
        resp = w.api.post("/v1/claims", json=body)
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "no_valid_host", resp.text
    # The host: nothing undone, nothing torn down.
    assert w.driver(held["address"]) == "vfio-pci"
    assert w.driver(q["address"]) == q_driver
    assert list(w.journal().values()) == [entry]

    # The server answers again: one report, the queued result posted once, then convergence.
    w.net.down = None
    run_until(
        agent,
        lambda: not w.journal() and w.device(q["id"])["state"] == "available",
        "the queued result delivered and the device clean",
    )
    assert w.host_status() == "up" and len(w.events("host_up")) == 1
    posted = w.net.posted(q["id"])[before:]
    assert [(r["action"], r["ok"]) for r in posted][:1] == [(queued, True)]
    assert [r["action"] for r in posted].count(queued) == 1, "delivered once"
    assert len(w.events("device_cleaned", q["address"])) == 1
    if queued == "setup":  # expired meanwhile: the late setup is ignored, the device cleaned
        assert not w.events("device_assigned", q["address"])
        assert [r["action"] for r in posted] == ["setup", "cleanup"]
    assert w.driver(q["address"]) == "iavf"
    assert w.device(held["id"])["state"] == "assigned" and w.driver(held["address"]) == "vfio-pci"
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("action", ["setup", "cleanup"])
def test_a_result_whose_answer_was_lost_is_posted_again_and_ignored(world: World, action: str) -> None:
    """The server took a result but its answer never came back (a timeout): the agent keeps
    the result, posts it again after a restart, and the server ignores the second delivery."""
    w = world
    agent = w.agent()
    run_until(agent, lambda: w.host_status() == "up", "the first report")
    d = w.claim("vm")
    if action == "cleanup":
        run_until(agent, lambda: w.device(d["id"])["state"] == "assigned", "the set up")
        assert w.api.delete("/v1/allocations/vm").status_code == 204
    w.net.lose_work_answers = 1
    want = "assigned" if action == "setup" else "available"
    run_until(agent, lambda: w.net.lose_work_answers == 0, "the result posted")
    assert w.device(d["id"])["state"] == want, "the server took the first delivery"
    assert [e["action"] for e in w.journal().values()] == [action], "kept until acknowledged"

    agent = w.agent()  # restarted before it heard the answer
    run_until(agent, lambda: not w.journal(), "the result posted again")
    posted = [r for r in w.net.posted(d["id"]) if r["action"] == action]
    assert len(posted) == 2 and posted[0] == posted[1]
    assert w.device(d["id"])["state"] == want
    event = "device_assigned" if action == "setup" else "device_cleaned"
    assert len(w.events(event, d["address"])) == 1, "the second delivery changed nothing"
    if action == "setup":
        assert d["id"] in StateFile(w.config.state_file).state.assigned  # health-checked from now on


# ---------------------------------------------------------------- a server restarted mid-setup


class ServerProcess:
    """``devassign server`` on a fixed port and SQLite file, stopped and started again."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = f"sqlite:///{tmp_path / 'restart.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        args = [*DEVASSIGN, "server", "--db", self.db, "--port", str(self.port), "--no-auth"]
        args += ["--agent-takeover-after", "1", "--log-level", "warning"]
        with open(self.logs / f"server-{self.starts}.log", "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, 60, "the server answers /healthz")
        except BaseException:
            self.stop()  # a server that never answered is ours to end, not left running
            raise

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.logs / f"server-{self.starts}.log").read_text(errors="replace")
            raise AssertionError(f"the server exited with {self.proc.returncode}:\n{log}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("point", ["intent", "post"])
def test_a_server_restart_mid_setup_loses_no_result(
    server_process: ServerProcess, tmp_path: Path, point: str
) -> None:
    """The server stops while the agent is in the middle of a setup (``point``); the agent keeps
    the result, also through its own restart, until the restarted server acknowledges it. The
    server's work survives its restart: it still owes the setup until the result arrives."""
    server = server_process
    url = server.url
    assert httpx.post(f"{url}/v1/resource-types", json={"name": TYPE}).status_code == 201
    h = host(tmp_path, vfio=True)
    h.sriov_pf(PF, "8086", "1572", vfs=1, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    config = AgentConfig(
        host=HOST,
        server=url,
        state_file=tmp_path / "state.json",
        devices=(DeviceRule(TYPE, {"product_id": "154c"}),),
    )

    def agent(crash_at: str | None = None) -> Agent:
        return Agent(
            config,
            h.root,
            HostOps.simulated(h.root),
            httpx.Client(timeout=5),
            state=StateFile(config.state_file),
            pci_ids=None,
            crash_at=crash_at,
            on_crash=server.stop,
        )

    first = agent(crash_at=f"{point}:setup")
    assert first.step().report is not None
    body = {"consumer": "vm", "hosts": [HOST], "requests": [{"name": "nic", "type": TYPE}]}
    resp = httpx.post(f"{url}/v1/claims", json=body)
    assert resp.status_code == 201, resp.text
    device = resp.json()["devices"][0]
    out = first.step()
    assert out.unreachable, out
    assert server.proc is not None and server.proc.poll() is not None, "the server was stopped"
    (entry,) = StateFile(config.state_file).state.journal.values()
    assert (entry["action"], entry["phase"], entry["ok"]) == ("setup", "done", True)

    second = agent()  # the agent restarts too, while the server is away
    assert second.step().unreachable
    assert list(StateFile(config.state_file).state.journal.values()) == [entry]

    server.start()
    work = httpx.get(f"{url}/v1/hosts/{HOST}/work").json()["items"]
    assert [(i["action"], i["device"]["id"]) for i in work] == [("setup", device["id"])], "work survived"

    def delivered() -> bool:
        second.step()
        return not StateFile(config.state_file).state.journal

    wait_for(delivered, 20, "the journaled setup result delivered")
    assert httpx.get(f"{url}/v1/devices/{device['id']}").json()["state"] == "assigned"
    assert httpx.get(f"{url}/v1/allocations/vm").json()["state"] == "assigned"
    events = httpx.get(f"{url}/v1/events", params={"host": HOST, "limit": 1000}).json()
    assert [e["action"] for e in events].count("device_assigned") == 1
    assert (
        HostOps.simulated(h.root).sysfs.link_name(f"bus/pci/devices/{device['address']}/driver") == "vfio-pci"
    )


# ---------------------------------------------------------------- retries


def reporter(tmp_path: Path, transport: httpx.BaseTransport, t: FakeTime | None = None) -> Reporter:
    config = AgentConfig(host=HOST, server=SERVER, state_file=tmp_path / "state.json")
    return Reporter(
        config,
        lambda: [],
        httpx.Client(transport=transport),
        clock=t.agent if t else time.monotonic,
        sleep=t.sleep if t else time.sleep,
        rng=random.Random(11),
        max_backoff=60.0,
    )


def test_backoff_is_exponential_with_full_jitter_and_capped(tmp_path: Path) -> None:
    r = reporter(tmp_path, httpx.MockTransport(lambda req: httpx.Response(204)))
    for failures in range(1, 15):
        ceiling = min(60.0, 2.0 ** (failures - 1))
        waits = [r.backoff(failures) for _ in range(400)]
        assert all(0.0 <= x <= ceiling for x in waits), (failures, max(waits))
        # full jitter: spread over the whole range, not a fixed wait plus a little
        assert min(waits) < 0.15 * ceiling and max(waits) > 0.85 * ceiling, failures
    assert r.backoff(1_000_000) <= 60.0
    assert 7.0 <= r.backoff(1, retry_after=7.0) <= 60.0
    assert r.backoff(1, retry_after=86_400.0) == 60.0, "Retry-After is honoured up to the cap"


class Scripted:
    """A fake server answering from a script (a Response, an exception), then with success."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        if request.url.path.endswith("/inventory"):
            gen = json.loads(request.content)["generation"]
            empty: dict[str, Any] = {
                k: [] for k in ("added", "updated", "removed", "missing", "refused", "warnings")
            }
            return httpx.Response(200, json={"host": HOST, "generation": gen, "accepted": 0, **empty})
        if request.url.path.endswith("/work") and request.method == "GET":
            return httpx.Response(200, json={"host": HOST, "items": []})
        return httpx.Response(204)


def test_503_and_429_honour_retry_after_capped(tmp_path: Path) -> None:
    fake = Scripted(
        httpx.Response(503, headers={"Retry-After": "7"}, text="busy"),
        httpx.Response(429, headers={"Retry-After": "12"}, text="slow down"),
        httpx.Response(503, headers={"Retry-After": "86400"}, text="maintenance"),
        httpx.Response(503, json={"error": {"code": "database_busy", "message": "x", "retry_after": 9}}),
    )
    store = _NoStore()
    t = FakeTime(Clock(), store)  # type: ignore[arg-type]
    r = reporter(tmp_path, httpx.MockTransport(fake), t)
    r.once_attempts = 10
    assert r.run(once=True) is not None
    assert len(t.slept) == 4
    assert t.slept[0] >= 7.0 and t.slept[1] >= 12.0 and t.slept[3] >= 9.0
    assert t.slept[2] == 60.0, "a Retry-After beyond the cap waits the cap"


class _NoStore:
    def sweep(self) -> list[str]:
        return []


def test_connection_errors_and_timeouts_retry_with_backoff_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused connections, timeouts and 503s for a while: the agent keeps trying, each wait
    within its exponential ceiling (at most 60 s), logs one warning for the whole outage, and
    one line when the server answers again; then it reports at once."""
    caplog.set_level(logging.DEBUG, logger="devassign.agent")
    outage: list[httpx.Response | Exception] = []
    for i in range(8):
        outage.append(httpx.ConnectError("[Errno 111] Connection refused"))
        outage.append(httpx.ReadTimeout("timed out") if i % 2 else httpx.ConnectTimeout("timed out"))
        outage.append(httpx.Response(503, headers={"Retry-After": "3"}, text="starting"))
    fake = Scripted(*outage)
    t = FakeTime(Clock(), _NoStore())  # type: ignore[arg-type]
    h = host(tmp_path)
    config = AgentConfig(host=HOST, server=SERVER, state_file=tmp_path / "state.json")
    agent = Agent(
        config,
        h.root,
        HostOps.simulated(h.root),
        httpx.Client(transport=httpx.MockTransport(fake)),
        clock=t.agent,
        sleep=t.sleep,
        rng=random.Random(5),
        pci_ids=None,
    )
    steps = 0
    while fake.script:
        assert steps < 100, "the agent stopped trying"
        agent.run(iterations=1)
        steps += 1
    waits = list(t.slept)
    assert len(waits) == steps and steps >= 8
    for n, wait in enumerate(waits, start=1):
        assert 0.0 <= wait <= min(60.0, 2.0 ** (n - 1)) or wait == 3.0, (n, wait)
    assert any(w >= 3.0 for w in waits), "the 503's Retry-After was honoured"
    agent.run(iterations=1)
    assert t.slept[-1] == config.work_interval, "back to the normal pace"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "server unreachable" in warnings[0], warnings
    tries = [
        r for r in caplog.records if r.levelno == logging.DEBUG and "still unreachable" in r.getMessage()
    ]
    assert len(tries) == len(outage) - 1, "each failed request at debug level only"
    back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len(back) == 1 and f"({len(outage)} failed requests)" in back[0], back
