"""Reporting to the server: full inventory on start and every interval, heartbeats between.

The server owns the truth about who holds what; the agent only says what the host has.
Full reports are idempotent (the whole inventory with an increasing generation), so any
doubt, a 404 on a heartbeat, a restart, is answered by sending a full report again.
Clock, sleep and HTTP client are injected so the loop runs in tests without waiting.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx

from devassign.agent.config import AgentConfig
from devassign.agent.state import StateFile
from devassign.schemas import InventoryReport, InventoryResult, ReportedDevice

log = logging.getLogger(__name__)

STALE_GENERATION = "stale_generation"
HOST_NOT_FOUND = "host_not_found"


class ServerUnavailable(RuntimeError):
    """The server could not be reached or failed (5xx): try again later."""


class ReportRefused(RuntimeError):
    """The server refused the report for a reason retrying will not fix (4xx)."""


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The ``{"error": {...}}`` body of a refusal, or an empty dict."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


class Reporter:
    """Sends this host's inventory to the server and keeps it fresh."""

    def __init__(
        self,
        config: AgentConfig,
        inventory: Callable[[], list[ReportedDevice]],
        client: httpx.Client | None = None,
        *,
        state: StateFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_backoff: float = 60.0,
        once_attempts: int = 5,
    ) -> None:
        self.config = config
        self.inventory = inventory
        self.client = client or httpx.Client(timeout=10.0)
        self.state = state or StateFile(config.state_file)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_backoff = max_backoff
        self.once_attempts = once_attempts

    # ------------------------------------------------------------------ one exchange
    def _url(self, suffix: str) -> str:
        return f"{self.config.server}/v1/hosts/{self.config.host}/{suffix}"

    def _headers(self) -> dict[str, str]:
        token = self.config.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def report(self) -> InventoryResult:
        """Discover and send the full inventory; recovers from a stale generation."""
        devices = self.inventory()
        for _ in range(5):
            generation = self.state.next_generation()
            body = InventoryReport(
                generation=generation, host_id=self.state.state.host_id, devices=devices
            ).model_dump(mode="json")
            resp = self._send("PUT", self._url("inventory"), body)
            err = _error(resp)
            if resp.status_code == 409 and err.get("code") == STALE_GENERATION:
                current = err.get("current_generation")
                if not isinstance(current, int):
                    raise ReportRefused(f"stale generation without current_generation: {err}")
                log.info("generation %d is stale, server has %d; resending", generation, current)
                self.state.set_generation(current)
                continue
            if resp.status_code >= 400:
                raise ReportRefused(
                    f"server refused the report ({resp.status_code} {err.get('code', '')}): "
                    f"{err.get('message', resp.text[:200])}"
                )
            result = InventoryResult.model_validate(resp.json())
            self._log_result(result)
            return result
        raise ReportRefused("the generation stayed stale after 5 tries; another agent for this host?")

    def heartbeat(self) -> bool:
        """Tell the server we are alive; ``False`` means it wants a full report."""
        body = {"host_id": self.state.state.host_id, "generation": self.state.state.generation}
        resp = self._send("POST", self._url("heartbeat"), body)
        if resp.status_code < 400:
            return True
        err = _error(resp)
        if err.get("code") == HOST_NOT_FOUND:
            log.info("server does not know host %s; sending a full report", self.config.host)
        else:
            log.warning("heartbeat refused (%s %s); sending a full report", resp.status_code, err)
        return False

    def request(self, method: str, suffix: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One call to this host's ``/v1/hosts/{host}/<suffix>``; 5xx and transport errors raise
        :class:`ServerUnavailable`, other answers are returned (the lifecycle worker uses it)."""
        return self._send(method, self._url(suffix), body)

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        try:
            resp = self.client.request(method, url, json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{self.config.server}: {exc}") from exc
        if resp.status_code >= 500:
            raise ServerUnavailable(f"{self.config.server}: {resp.status_code} {resp.text[:200]}")
        return resp

    def _log_result(self, result: InventoryResult) -> None:
        log.info(
            "report %d taken: %d devices (%d added, %d removed, %d missing)",
            result.generation,
            result.accepted,
            len(result.added),
            len(result.removed),
            len(result.missing),
        )
        for refused in result.refused:
            log.warning("device %s refused (%s): %s", refused.address, refused.code, refused.reason)
        for warning in result.warnings:
            log.warning("server: %s", warning)

    # ------------------------------------------------------------------ the loop
    def backoff(self, failures: int) -> float:
        """1, 2, 4 ... seconds up to ``max_backoff``, with up to 10% jitter."""
        base = min(self.max_backoff, 2.0 ** max(0, failures - 1))
        return base * (1.0 + self.rng.uniform(0.0, 0.1))

    def run(self, *, once: bool = False, iterations: int | None = None) -> InventoryResult | None:
        """Report, then heartbeat until the next report is due; forever unless bounded.

        With ``once`` it returns after the first report taken, giving up (raising) after
        ``once_attempts`` failed tries. ``iterations`` bounds the loop for tests.
        """
        failures = 0
        need_report = True
        next_report = self.clock()
        result: InventoryResult | None = None
        n = 0
        while iterations is None or n < iterations:
            n += 1
            try:
                if need_report or self.clock() >= next_report:
                    result = self.report()
                    need_report = False
                    if once:
                        return result
                    jitter = self.rng.uniform(0.0, 0.1 * self.config.report_interval)
                    next_report = self.clock() + self.config.report_interval + jitter
                elif not self.heartbeat():
                    need_report = True
                    continue
                failures = 0
            except (ServerUnavailable, ReportRefused) as exc:
                failures += 1
                if once and (failures >= self.once_attempts or isinstance(exc, ReportRefused)):
                    raise
                delay = self.backoff(failures)
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.sleep(delay)
                continue
            wait = min(self.config.heartbeat_interval, max(0.0, next_report - self.clock()))
            self.sleep(wait)
        return result
