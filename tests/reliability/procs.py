"""Server processes that tests kill and restart, and the clients and agent that load them.

A :class:`Server` is one ``devassign server`` process on a fixed loopback port that can be
started (armed with failpoints through ``DEVASSIGN_FAILPOINTS``, see ``devassign.failpoints``),
waited for (until it answers ``/healthz``, or until it is dead) and restarted on the same port.
Every wait polls a condition against a deadline.

:class:`Load` runs the workload the kill tests need while servers die and come back: claim
clients (each claim with an idempotency key, resent to any server until it gets an answer),
releases, and one agent thread for every host (heartbeats, setups and cleanups, and reports
that add and remove a spare device). Each client keeps a :class:`Ledger`: what it meant to
do is written down *before* the request, what the server acknowledged *after* the answer;
the checks compare it with the database without stopping the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.contention import pci
from tests.e2e.servers import DEVASSIGN, free_port

START_DEADLINE_S = 60.0
POLL_S = 0.05
FAILPOINT_LINE = "devassign failpoint {name}: hit"

# The same server as ``devassign server``, with a sweep interval of the test's choosing (the
# command has no option for it, and its 5 s would make every sweeper kill wait that long).
_LAUNCHER = """
import json, logging, sys
from datetime import timedelta
import uvicorn
from devassign.server.app import create_app
from devassign.server.settings import Settings
raw = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING)
settings = Settings(
    db_url=raw["db"], migrate=False, sweep_interval=raw["sweep_interval"],
    down_after=timedelta(seconds=raw["down_after"]),
    reservation_ttl=timedelta(seconds=raw["reservation_ttl"]),
)
uvicorn.run(create_app(settings), host="127.0.0.1", port=raw["port"], log_level="warning", access_log=False)
"""


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {deadline_s:.0f} s")
        time.sleep(POLL_S)


@dataclass
class ServerOptions:
    down_after: float = 3600.0
    reservation_ttl: float = 3600.0
    # None: the ``devassign server`` command (its sweeper runs every 5 s); else the launcher.
    sweep_interval: float | None = None


class Server:
    """One server process on a fixed port, restartable, each incarnation with its own log."""

    def __init__(self, name: str, db_url: str, logs: Path, options: ServerOptions) -> None:
        self.name = name
        self.db_url = db_url
        self.logs = logs
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.starts = 0

    def _args(self) -> list[str]:
        o = self.options
        if o.sweep_interval is None:
            return [
                *DEVASSIGN,
                "server",
                "--db",
                self.db_url,
                "--port",
                str(self.port),
                "--no-migrate",
                "--down-after",
                str(o.down_after),
                "--reservation-ttl",
                str(o.reservation_ttl),
                "--log-level",
                "warning",
            ]
        raw = {
            "db": self.db_url,
            "port": self.port,
            "sweep_interval": o.sweep_interval,
            "down_after": o.down_after,
            "reservation_ttl": o.reservation_ttl,
        }
        return [sys.executable, "-c", _LAUNCHER, json.dumps(raw)]

    def start(self, failpoints: str | None = None) -> None:
        """Start the process (``failpoints``: the value of ``DEVASSIGN_FAILPOINTS``); no wait."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.starts += 1
        self.log = self.logs / f"{self.name}-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if k != "DEVASSIGN_FAILPOINTS"}
        if failpoints:
            env["DEVASSIGN_FAILPOINTS"] = failpoints
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self._args(), stdout=out, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> bool:
        """Until the server answers ``/healthz`` (True) or its process is gone (False)."""
        wait_for(lambda: not self.alive() or self.answers(), deadline_s, f"{self.name} answers /healthz")
        return self.alive()

    def wait_dead(self, deadline_s: float) -> int:
        """Until the process has exited; its exit status (``-9``: killed by SIGKILL)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still alive after {deadline_s:.0f} s; log:\n{self.tail()}"
            ) from None

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def killed_at(self, name: str) -> bool:
        """Whether this incarnation's log says it died at failpoint ``name``."""
        return self.log is not None and FAILPOINT_LINE.format(name=name) in self.log.read_text(
            errors="replace"
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)


# ---------------------------------------------------------------- the load


GPU = "GPU_REL"
SPARE = "SPARE_REL"
PROJECT = "rel"
SPARE_ADDRESS = "0000:ee:00.0"


def host_devices(gpus: int, spare: bool) -> list[dict[str, Any]]:
    devs = [pci(f"0000:{0x10 + i:02x}:00.0", GPU) for i in range(gpus)]
    if spare:
        devs.append(pci(SPARE_ADDRESS, SPARE))
    return devs


class Unresolved(Exception):
    """No server gave an answer before the deadline."""


@dataclass
class Ledger:
    """One client's claims and releases: intents before the request, acknowledgements after."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tried: set[str] = field(default_factory=set)  # a claim was sent (it may have committed)
    acked: dict[str, frozenset[str]] = field(default_factory=dict)  # 200/201: its device ids
    releasing: set[str] = field(default_factory=set)  # a release was sent
    released: set[str] = field(default_factory=set)  # 204
    refused: int = 0
    doubts: int = 0  # requests that got no answer (server killed or restarting) and were resent
    unexpected: list[str] = field(default_factory=list)


class Client:
    """Claims (1 or 2 GPUs), holds up to three, releases; where ``lazy_share`` is set, some
    claims are lazy: abandoned at once, never set up, left for the sweeper to expire."""

    def __init__(self, load: Load, index: int, token: str, seed: int) -> None:
        self.load = load
        self.index = index
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.held: list[str] = []
        self.n = 0

    def send(self, http: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
        """Send to a random server until one answers (not 5xx); the same request every time."""
        deadline = time.monotonic() + self.load.resolve_deadline_s
        while True:
            url = self.rng.choice(self.load.urls)
            try:
                r = http.request(method, f"{url}{path}", json=body, headers=self.headers)
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code < 500:
                return r
            with self.ledger.lock:
                self.ledger.doubts += 1
            if time.monotonic() > deadline:
                raise Unresolved(f"{method} {path}: no answer within {self.load.resolve_deadline_s:.0f} s")
            time.sleep(POLL_S)  # poll: a server is dead or restarting

    def step(self, http: httpx.Client) -> None:
        if len(self.held) >= 3 or (self.held and self.rng.random() < 0.4):
            self.release(http, self.held.pop(self.rng.randrange(len(self.held))))
        else:
            self.claim(http)

    def claim(self, http: httpx.Client) -> None:
        self.n += 1
        lazy = self.load.lazy_share > 0 and self.rng.random() < self.load.lazy_share
        consumer = f"{'lazy' if lazy else 'c'}{self.index}-{self.n}"
        body = {
            "consumer": consumer,
            "project": PROJECT,
            "idempotency_key": f"k-{consumer}",
            "extra_specs": {f"hardware_resource:{GPU}": str(self.rng.choice((1, 1, 2)))},
        }
        with self.ledger.lock:
            self.ledger.tried.add(consumer)
        r = self.send(http, "POST", "/v1/claims", body)
        if r.status_code in (200, 201):
            ids = frozenset(d["id"] for d in r.json()["devices"])
            with self.ledger.lock:
                self.ledger.acked[consumer] = ids
            if not lazy:  # a lazy claim is abandoned: no setup, no release; the sweeper expires it
                self.held.append(consumer)
        elif r.status_code == 409 and _code(r) == "no_valid_host":
            with self.ledger.lock:
                self.ledger.refused += 1
        else:
            self.ledger.unexpected.append(f"claim {consumer}: {r.status_code} {r.text[:200]}")

    def release(self, http: httpx.Client, consumer: str) -> None:
        with self.ledger.lock:
            self.ledger.releasing.add(consumer)
        r = self.send(http, "DELETE", f"/v1/allocations/{consumer}")
        if r.status_code == 204:
            with self.ledger.lock:
                self.ledger.released.add(consumer)
        else:
            self.ledger.unexpected.append(f"release {consumer}: {r.status_code} {r.text[:200]}")


class Agent:
    """One host's agent: heartbeats, setups (not for lazy consumers) and cleanups, and a report
    every few rounds with the spare device added or removed (so each report changes something)."""

    def __init__(self, load: Load, host: str, token: str, gpus: int, seed: int) -> None:
        self.load = load
        self.host = host
        self.headers = {"Authorization": f"Bearer {token}"}
        self.gpus = gpus
        self.rng = random.Random(seed)
        self.generation = 1
        self.spare = True
        self.rounds = 0
        self.errors: list[str] = []

    def report(self, http: httpx.Client, url: str) -> None:
        # Every report a higher generation, whatever became of the last: a report lost with
        # its server must not make the next one stale.
        self.generation += 1
        self.spare = not self.spare
        body = {"generation": self.generation, "devices": host_devices(self.gpus, self.spare)}
        r = http.put(f"{url}/v1/hosts/{self.host}/inventory", json=body, headers=self.headers)
        if r.status_code != 200 or r.json()["refused"]:
            self.errors.append(f"report {self.host}: {r.status_code} {r.text[:200]}")

    def step(self, http: httpx.Client) -> None:
        self.rounds += 1
        if self.load.silent(self.host):
            return
        url = self.rng.choice(self.load.urls)
        try:
            if self.rounds % self.load.report_every == 0:
                self.report(http, url)
            else:
                http.post(f"{url}/v1/hosts/{self.host}/heartbeat", headers=self.headers)
            work = http.get(f"{url}/v1/hosts/{self.host}/work", headers=self.headers)
            if work.status_code != 200:
                return
            results = [
                {"device_id": i["device"]["id"], "action": i["action"], "ok": True}
                for i in work.json()["items"]
                if not (i["action"] == "setup" and (i["device"]["consumer"] or "").startswith("lazy"))
            ]
            if results:
                http.post(f"{url}/v1/hosts/{self.host}/work", json={"results": results}, headers=self.headers)
        except httpx.TransportError:
            pass  # that server is dead or restarting: the next round goes elsewhere


class Load:
    """Clients and agents in threads, until stopped; the servers' URLs may die and return."""

    def __init__(
        self,
        urls: Sequence[str],
        client_tokens: Sequence[str],
        agent_tokens: dict[str, str],
        *,
        gpus: int,
        seed: int,
        lazy_share: float = 0.0,
        flapping: str | None = None,
        flap_period_s: float = 2.0,
        report_every: int = 3,
        resolve_deadline_s: float = 90.0,
    ) -> None:
        self.urls = list(urls)
        self.lazy_share = lazy_share
        self.flapping = flapping
        self.flap_period_s = flap_period_s
        self.report_every = report_every
        self.resolve_deadline_s = resolve_deadline_s
        self.clients = [Client(self, i, t, seed * 100 + i) for i, t in enumerate(client_tokens)]
        self.agents = [
            Agent(self, host, t, gpus, seed * 100 + 50 + i)
            for i, (host, t) in enumerate(agent_tokens.items())
        ]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.failures: list[str] = []

    def silent(self, host: str) -> bool:
        """The flapping host's agent is silent every other period (long enough to go down)."""
        return host == self.flapping and int(time.monotonic() / self.flap_period_s) % 2 == 1

    def _run(self, name: str, step: Callable[[httpx.Client], None], pause_s: float) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
                while not self._stop.is_set():
                    step(http)
                    if pause_s:
                        self._stop.wait(pause_s)
        except Exception as exc:
            self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        for c in self.clients:
            self._threads.append(threading.Thread(target=self._run, args=(f"client {c.index}", c.step, 0)))
        for a in self.agents:
            self._threads.append(threading.Thread(target=self._run, args=(f"agent {a.host}", a.step, 0.05)))
        for t in self._threads:
            t.daemon = True
            t.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop after the operations in flight got their answers (a server must be up)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.resolve_deadline_s + 30)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            self.failures.append(f"threads still running after stop: {stuck}")

    # What the clients were told, read under their locks.
    def acked(self) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for c in self.clients:
            with c.ledger.lock:
                out.update(c.ledger.acked)
        return out

    def intents(self) -> tuple[set[str], set[str], set[str]]:
        """(claims tried, releases sent, releases acknowledged)."""
        tried: set[str] = set()
        releasing: set[str] = set()
        released: set[str] = set()
        for c in self.clients:
            with c.ledger.lock:
                tried |= c.ledger.tried
                releasing |= c.ledger.releasing
                released |= c.ledger.released
        return tried, releasing, released

    def totals(self) -> dict[str, int]:
        ledgers = [c.ledger for c in self.clients]
        return {
            "claims_acked": sum(len(x.acked) for x in ledgers),
            "releases_acked": sum(len(x.released) for x in ledgers),
            "refused": sum(x.refused for x in ledgers),
            "resent": sum(x.doubts for x in ledgers),
        }

    def unexpected(self) -> list[str]:
        found = [u for c in self.clients for u in c.ledger.unexpected]
        found += [e for a in self.agents for e in a.errors]
        return found + self.failures


def _code(r: httpx.Response) -> str | None:
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None
