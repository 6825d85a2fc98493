"""Reporting to the server: full inventory on start and every interval, heartbeats between.

The server owns the truth about who holds what; the agent only says what the host has.
Full reports are idempotent (the whole inventory with an increasing generation), so any
doubt, a 404 on a heartbeat, a restart, is answered by sending a full report again.
Clock, sleep and HTTP client are injected so the loop runs in tests without waiting.

Each agent process sends a random instance id chosen at its start (``agent_instance`` in
reports, a header on the other calls): the server refuses a second live process with the same
host id (409 ``agent_conflict``: a state file cloned into a machine image, or this agent just
restarted). Such an agent says why once, does no lifecycle work and keeps retrying with its
backoff; a restarted agent takes over once the old process has been silent long enough.

Retries: a connection error, a timeout, a 5xx or a 429 is :class:`ServerUnavailable`; the
loops wait :meth:`Reporter.backoff` (exponential with full jitter, at most ``max_backoff``,
at least the server's ``Retry-After`` within that cap) on ``clock`` (monotonic: a wall clock
set back or forward changes nothing) and :class:`Outage` logs one line per outage, not per try.
The agent sends no timestamps: the server judges liveness and expiry by its own clock.
"""

from __future__ import annotations

import logging
import math
import random
import time
import urllib.parse
import uuid
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from devassign.agent.config import AgentConfig
from devassign.agent.state import StateFile
from devassign.domain import instance_tag
from devassign.redact import shown_url
from devassign.schemas import (
    AGENT_INSTANCE_HEADER,
    MAX_DEVICES_PER_REPORT,
    MAX_INT64,
    InventoryReport,
    InventoryResult,
    ReportedDevice,
)

log = logging.getLogger(__name__)

STALE_GENERATION = "stale_generation"
HOST_NOT_FOUND = "host_not_found"
HOST_ID_MISMATCH = "host_id_mismatch"
AGENT_CONFLICT = "agent_conflict"


class ServerUnavailable(RuntimeError):
    """The server could not be reached, timed out, failed (5xx) or asked to slow down (429):
    try again later. ``retry_after``: the seconds the server asked to wait (``Retry-After``),
    when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.logged = False  # already logged by :class:`Outage` (a request that failed)


class NotTaken(ServerUnavailable):
    """Nothing was sent: the server refuses this process as a second agent of its host (see
    :class:`AgentConflict`). Retried like an outage, but it is not one."""


class ReportRefused(RuntimeError):
    """The server refused the report for a reason retrying will not fix (4xx)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code  # the HTTP status, for the program's exit code


class AgentConflict(ReportRefused):
    """Another agent process with this host id is live (409 ``agent_conflict``): retry later.

    ``retry_after``: when the server would let this process take over if the other one stays
    silent (seconds). The full explanation is in the first one raised; later ones are short.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, 409)
        self.retry_after = retry_after


def retry_after(resp: httpx.Response) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delta-seconds, or an HTTP date measured
    against the answer's own ``Date``: both are the server's clock, never compared with this
    host's); else a number ``retry_after`` in the error body; ``None`` when neither is there.
    Never negative; the caller caps it."""
    value = resp.headers.get("retry-after", "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
            try:
                when = parsedate_to_datetime(value)
                sent = parsedate_to_datetime(resp.headers.get("date", ""))
            except (TypeError, ValueError, IndexError):
                pass
            else:
                if (when.tzinfo is None) == (sent.tzinfo is None):
                    seconds = (when - sent).total_seconds()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return _seconds(_error(resp).get("retry_after"))


def _seconds(value: Any) -> float | None:
    """A JSON number of seconds to wait, never negative (an int past a float's range is
    ``inf``: the caller caps it); ``None`` for anything else, NaN included."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    return None if math.isnan(seconds) else max(0.0, seconds)


# The most of an answer the agent reads: work lists and report answers are a few MiB at most.
MAX_ANSWER_BYTES = 64 << 20


# The longest the agent reads one answer's body (after its headers came): each read has the
# client's timeout, but a server sending a byte just within it would hold the agent, its
# heartbeats and its cleanups, for ever. 64 MiB at 1 MiB/s fits.
MAX_ANSWER_SECONDS = 120.0


class TooLarge(Exception):
    """An answer past :data:`MAX_ANSWER_BYTES`, or read for longer than
    :data:`MAX_ANSWER_SECONDS`: read no further."""


def payload(resp: httpx.Response, where: str) -> Any:
    """The JSON of a 2xx answer; an answer that is not JSON (a proxy's error page while the
    server is away) is :class:`ServerUnavailable`, retried, never a crash."""
    try:
        return resp.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past what Python reads
        raise ServerUnavailable(
            f"{where}: {resp.status_code} answer is not JSON it can read: {resp.text[:120]!r}"
        ) from exc


class Outage:
    """Logs an outage once: one warning at the first request that fails, the failures after it
    at debug level, and one info line at the first answer (how long, how many failures).

    A server that fails only some requests (writes refused, reads answered) ends and starts an
    outage at every cycle: an outage that starts within :data:`QUIET_S` of the last one logged
    is logged at debug level, start and end, so the log says it once, not every few seconds.

    ``clock`` is the agent's monotonic clock.
    """

    QUIET_S = 300.0

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self._warned_at: float | None = None
        self._quiet = False

    def failed(self, exc: ServerUnavailable) -> None:
        exc.logged = True
        self.failures += 1
        if self.since is None:
            self.since = now = self.clock()
            ago = None if self._warned_at is None else now - self._warned_at
            self._quiet = ago is not None and ago < self.QUIET_S
            if self._quiet:
                log.debug("server unreachable again (an outage was logged %.0f s ago): %s", ago, exc)
                return
            self._warned_at = now
            log.warning(
                "server unreachable: %s; retrying with backoff until it answers (logged once "
                "per outage); assigned devices stay as they are, work results stay queued in "
                "the state file",
                exc,
            )
        else:
            log.debug("server still unreachable (%d failed requests): %s", self.failures, exc)

    def ended(self) -> None:
        if self.since is None:
            return
        lasted = max(0.0, self.clock() - self.since)
        (log.debug if self._quiet else log.info)(
            "server answers again after %.0f s (%d failed requests)", lasted, self.failures
        )
        self.since = None
        self.failures = 0

    @property
    def active(self) -> bool:
        return self.since is not None


def _error(resp: httpx.Response) -> dict[str, Any]:
    """The ``{"error": {...}}`` body of a refusal, or an empty dict."""
    try:
        body = resp.json()
    except (ValueError, RecursionError):
        return {}
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


def refusal(resp: httpx.Response) -> str:
    """A refusal as one line: its status, code and message (not its JSON, cut mid-word)."""
    err = _error(resp)
    message = err.get("message")
    if not isinstance(message, str):
        return f"{resp.status_code}: {resp.text[:200]}"
    return f"{resp.status_code} {err.get('code', '')}: {message[:500]}"


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
        self.state = state or StateFile(config.state_file, host=config.host, adopt=config.legacy_state_file)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_backoff = max_backoff
        self.once_attempts = once_attempts
        # This process's id: the server tells two live agents with one host id apart by it.
        self.instance: str | None = uuid.uuid4().hex
        # Set while the server refuses this process as a second agent of the host (the reason
        # is logged once); no lifecycle work is asked for or posted until it is taken again.
        self.conflict: str | None = None
        self.outage = Outage(clock)
        # (address, code, reason) of each device the last answer refused: logged when it starts,
        # not again at every report while it lasts.
        self._refused: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------ one exchange
    def _url(self, suffix: str) -> str:
        return f"{self.config.server}/v1/hosts/{self.config.host}/{suffix}"

    def _headers(self) -> dict[str, str]:
        token = self.config.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.instance is not None:
            headers[AGENT_INSTANCE_HEADER] = self.instance
        return headers

    def report(self) -> InventoryResult:
        """Discover and send the full inventory; recovers from a stale generation."""
        devices = self.inventory()
        if len(devices) > MAX_DEVICES_PER_REPORT:
            # Cut short, the report would tell the server the others were removed.
            raise ReportRefused(
                f"this host offers {len(devices)} devices, more than the {MAX_DEVICES_PER_REPORT} one "
                "report may hold: narrow the [[device]] rules or the [[resource]] counts"
            )
        for _ in range(5):
            generation = self.state.next_generation()
            body = InventoryReport(
                generation=generation,
                host_id=self.state.state.host_id,
                agent_instance=self.instance,
                devices=devices,
            ).model_dump(mode="json")
            if self.instance is None:
                del body["agent_instance"]
            resp = self._send("PUT", self._url("inventory"), body)
            err = _error(resp)
            if resp.status_code == 409 and err.get("code") == AGENT_CONFLICT:
                raise self._conflict(err)
            if resp.status_code == 409 and err.get("code") == STALE_GENERATION:
                current = err.get("current_generation")
                if not isinstance(current, int) or isinstance(current, bool) or not 0 <= current < MAX_INT64:
                    # None, or one no report could go above: not an answer to trust (it would
                    # be kept in the state file and stop every report after it)
                    failure = ServerUnavailable(
                        f"{self.where}: a stale_generation answer without a usable current_generation"
                    )
                    self.outage.failed(failure)
                    raise failure
                log.info("generation %d is stale, server has %d; resending", generation, current)
                self.state.set_generation(current)
                continue
            if resp.status_code >= 400:
                where = ""
                if err.get("code") == HOST_ID_MISMATCH:
                    where = f" (this agent's state file: {self.state.path})"
                raise ReportRefused(
                    f"server refused the report ({resp.status_code} {err.get('code', '')}): "
                    f"{err.get('message', resp.text[:200])}{where}",
                    resp.status_code,
                )
            try:
                result = InventoryResult.model_validate(payload(resp, self.where))
            except ValueError as exc:  # a 2xx that is not an inventory result: not our server
                raise ServerUnavailable(f"{self.where}: unexpected answer to a report: {exc}") from exc
            self._taken()
            self._log_result(result)
            return result
        raise ReportRefused("the generation stayed stale after 5 tries; another agent for this host?")

    def heartbeat(self) -> bool:
        """Tell the server we are alive; ``False`` means it wants a full report."""
        body = {"host_id": self.state.state.host_id, "generation": self.state.state.generation}
        resp = self._send("POST", self._url("heartbeat"), body)
        if resp.status_code < 400:
            self._taken()
            return True
        err = _error(resp)
        if err.get("code") == AGENT_CONFLICT:
            log.debug("heartbeat refused: another agent with this host id is live")
        elif err.get("code") == HOST_NOT_FOUND:
            log.info("server does not know host %s; sending a full report", self.config.host)
        else:
            log.warning("heartbeat refused (%s %s); sending a full report", resp.status_code, err)
        return False

    def request(self, method: str, suffix: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One call to this host's ``/v1/hosts/{host}/<suffix>``; 5xx and transport errors raise
        :class:`ServerUnavailable`, other answers are returned (the lifecycle worker uses it).

        While the server refuses this process as a second agent of the host, nothing is sent
        (:class:`ServerUnavailable`): only the agent the server takes may touch its devices.
        """
        if self.conflict is not None:
            raise NotTaken(f"no lifecycle work while {self.conflict}")
        return self._send(method, self._url(suffix), body)

    def host_record(self, host_id: str) -> dict[str, Any] | None:
        """The server's record of this agent's host (``GET /v1/hosts/{host}``), or ``None``
        when it has none this token may read; :class:`ServerUnavailable` (not logged as an
        outage: the caller says it) when the server does not answer. Its ``host_id`` is there
        only where it is ``host_id`` (an agent is shown its host's id only where it names it)."""
        proof = urllib.parse.urlencode({"host_id": host_id})
        try:
            resp = self._exchange("GET", f"{self.config.server}/v1/hosts/{self.config.host}?{proof}", None)
        except (httpx.TransportError, httpx.DecodingError, TooLarge) as exc:
            raise ServerUnavailable(f"{self.where}: {type(exc).__name__}: {exc or 'no answer'}") from exc
        found = payload(resp, self.where) if resp.status_code == 200 else None
        return found if isinstance(found, dict) else None

    def device_at(self, address: str) -> dict[str, Any] | None:
        """The server's record of this host's device at ``address`` (``GET /v1/devices``), or
        ``None`` where it has none; :class:`ServerUnavailable` when it cannot say."""
        mine = [d for d in self._devices(address=address) if d.get("address") == address]
        return mine[0] if mine else None

    def held_devices(self) -> list[dict[str, Any]]:
        """The server's records of this host's devices that someone holds (a consumer named):
        what a state file that was lost, or restored from an older backup, no longer tells
        the agent. :class:`ServerUnavailable` when it cannot say."""
        return [d for d in self._devices(limit=100_000) if d.get("consumer")]

    def _devices(self, **query: object) -> list[dict[str, Any]]:
        """``GET /v1/devices`` of this host, filtered by ``query``."""
        if self.conflict is not None:
            raise NotTaken(f"no device lookups while {self.conflict}")
        text = urllib.parse.urlencode({"host": self.config.host, **query})
        resp = self._send("GET", f"{self.config.server}/v1/devices?{text}", None)
        found = payload(resp, self.where) if resp.status_code < 400 else None
        if not isinstance(found, list):
            raise ServerUnavailable(f"{self.where}: cannot read the server's devices ({resp.status_code})")
        return [d for d in found if isinstance(d, dict)]

    def _conflict(self, err: dict[str, Any]) -> AgentConflict:
        """The refusal as an exception: its full message the first time, then a short one
        (the worker's loop logs each), so the reason is logged once per conflict."""
        wait = _seconds(err.get("retry_after")) or 0.0
        if self.conflict is None:
            self.conflict = (
                f"refused as a second agent of host {self.config.host} ({AGENT_CONFLICT}, see above)"
            )
            return AgentConflict(
                f"server refused this agent ({AGENT_CONFLICT}): {err.get('message', '')}", wait
            )
        return AgentConflict(f"still {self.conflict}", wait)

    def _taken(self) -> None:
        if self.conflict is not None:
            log.warning(
                "the server takes this agent (instance %s) now: the other one with this host id fell silent",
                instance_tag(self.instance) if self.instance else "-",
            )
            self.conflict = None

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """One request; connection errors, timeouts, 5xx and 429 raise :class:`ServerUnavailable`
        (with the server's ``Retry-After``); any other answer ends an outage and is returned."""
        try:
            resp = self._exchange(method, url, body)
        except (httpx.TransportError, httpx.DecodingError, TooLarge) as exc:
            what = str(exc) or "no answer"
            failure = ServerUnavailable(f"{self.where}: {type(exc).__name__}: {what}")
            self.outage.failed(failure)
            raise failure from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            failure = ServerUnavailable(
                f"{self.where}: {resp.status_code} {resp.text[:200]}", retry_after(resp)
            )
            self.outage.failed(failure)
            raise failure
        self.outage.ended()
        return resp

    def _exchange(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """The request and its answer, read up to :data:`MAX_ANSWER_BYTES` and
        :data:`MAX_ANSWER_SECONDS` (the agent is root on a host whose memory is its tenants': a
        server that never stops sending must not fill it, nor hold it by sending slowly)."""
        request = self.client.build_request(method, url, json=body, headers=self._headers())
        resp = self.client.send(request, stream=True)
        deadline = time.monotonic() + MAX_ANSWER_SECONDS
        try:
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise TooLarge(f"an answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
                if time.monotonic() > deadline:
                    raise TooLarge(f"an answer still coming after {MAX_ANSWER_SECONDS:.0f} s")
                chunks.append(chunk)
        finally:
            resp.close()
        return httpx.Response(
            resp.status_code, headers=resp.headers, content=b"".join(chunks), request=request
        )

    @property
    def where(self) -> str:
        """The server's URL as messages and logs show it: no password, no query."""
        return shown_url(self.config.server)

    def _log_result(self, result: InventoryResult) -> None:
        log.info(
            "report %d taken: %d devices (%d added, %d removed, %d missing)",
            result.generation,
            result.accepted,
            len(result.added),
            len(result.removed),
            len(result.missing),
        )
        now = {(r.address, r.code, r.reason) for r in result.refused}
        for address, code, reason in sorted(now - self._refused):
            log.warning("device %s refused (%s): %s", address, code, reason)
        self._refused = now
        for warning in result.warnings:
            log.warning("server: %s", warning)

    # ------------------------------------------------------------------ the loop
    def takeover_delay(self, retry_after: float) -> float:
        """When to try again after a refusal as a second agent: the moment the server said it
        would take this process (so a restart reports as soon as the old process's silence
        allows, not after an exponential backoff), plus up to a second of jitter; never less
        than a second (no busy loop), never more than ``max_backoff``."""
        return min(self.max_backoff, max(1.0, retry_after) + self.rng.uniform(0.0, 1.0))

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """The wait before try ``failures + 1``: exponential with full jitter, uniform in
        [0, min(``max_backoff``, 2^(failures-1))] seconds (agents that lost the server together
        do not come back together), and at least the server's ``retry_after``; never more
        than ``max_backoff``."""
        ceiling = min(self.max_backoff, 2.0 ** min(max(0, failures - 1), 62))
        delay = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(self.max_backoff, max(0.0, delay))

    def run(self, *, once: bool = False, iterations: int | None = None) -> InventoryResult | None:
        """Report, then heartbeat until the next report is due; forever unless bounded.

        With ``once`` it returns after the first report taken, giving up (raising) after
        ``once_attempts`` failed tries. ``iterations`` bounds the loop for tests.

        A one-shot run sends no agent instance: it does not stay live, and the next run (a new
        process, moments later) must not wait for it to fall silent.
        """
        if once:
            self.instance = None
        failures = 0
        need_report = True
        next_report = self.clock()
        result: InventoryResult | None = None
        n = 0
        while iterations is None or n < iterations:
            n += 1
            # A clock that went back (``time.monotonic`` never does; an injected one may) must
            # not postpone the next report by more than its interval.
            next_report = min(next_report, self.clock() + 1.1 * self.config.report_interval)
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
                if isinstance(exc, ServerUnavailable):  # logged once per outage (Outage)
                    need_report = True  # after an outage, a full report: the server may have lost state
                    delay = self.backoff(failures, exc.retry_after)
                    if exc.logged:
                        log.debug("retrying in %.1f s", delay)
                    else:  # an answer that made no sense, not a failed request
                        log.warning("%s; retrying in %.1f s", exc, delay)
                else:
                    if isinstance(exc, AgentConflict):
                        need_report = True
                        delay = self.takeover_delay(exc.retry_after)
                    else:
                        delay = self.backoff(failures)
                    log.warning("%s; retrying in %.1f s", exc, delay)
                self.sleep(delay)
                continue
            wait = min(self.config.heartbeat_interval, max(0.0, next_report - self.clock()))
            self.sleep(wait)
        return result
