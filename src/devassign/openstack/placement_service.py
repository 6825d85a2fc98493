"""``devassign placement-mirror`` as a service: a full sync every ``interval`` seconds, and the
hosts named by devassign's event stream synced within about a second of each change.

The stream (``GET /v1/events/stream``) is read by a thread of its own that only notes which
hosts changed; the main loop syncs them. When the stream cannot be read (an old server, a
proxy that buffers) the periodic full sync still keeps Placement right, only later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import httpx

from devassign.cli.follow import LineTooLong, server_sent_events, sse_lines
from devassign.openstack.placement_mirror import MirrorError, PlacementMirror, SyncResult

LOG = logging.getLogger(__name__)

# Changes that come together (a claim of 4 devices is 4 events) are synced together.
SETTLE_SECONDS = 0.2
# The server sends a comment every 15 s on a quiet stream: three missed ones mean a dead link.
STREAM_READ_TIMEOUT = 45.0
MAX_BACKOFF = 30.0


class EventFollower:
    """Reads devassign's event stream and notes the hosts its events name."""

    def __init__(self, client: httpx.Client, wake: threading.Event) -> None:
        self.client = client
        self.wake = wake
        self.pending: set[str] = set()
        self.last_id: str | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def take(self) -> set[str]:
        with self._lock:
            hosts, self.pending = self.pending, set()
            return hosts

    def run(self) -> None:
        backoff = 1.0
        failing = False
        while not self.stopped.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with self.client.stream(
                    "GET",
                    "/v1/events/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
                ) as response:
                    if response.is_error:
                        raise MirrorError(f"HTTP {response.status_code} (an admin token?)")
                    LOG.info("following devassign's event stream%s", " again" if failing else "")
                    failing, backoff = False, 1.0
                    for event_id, data in server_sent_events(sse_lines(response.iter_text())):
                        self._note(event_id, data)
                        if self.stopped.is_set():
                            return
            except (httpx.HTTPError, MirrorError, LineTooLong) as exc:
                if not failing:
                    LOG.warning("devassign's event stream: %s; the periodic sync goes on, reconnecting", exc)
                failing = True
            self.stopped.wait(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    def _note(self, event_id: str | None, data: str) -> None:
        if event_id:
            self.last_id = event_id
        try:
            host = json.loads(data).get("host")
        except (ValueError, AttributeError, RecursionError):  # not an event it can read: skipped
            return
        if isinstance(host, str) and host:
            with self._lock:
                self.pending.add(host)
            self.wake.set()


class MirrorService:
    """Runs syncs until ``stop`` is called: full ones on a timer, per host on events."""

    def __init__(
        self,
        mirror: PlacementMirror,
        *,
        interval: float = 30.0,
        follow: bool = True,
        placement_token: Callable[[], str] | None = None,
    ) -> None:
        self.mirror = mirror
        self.interval = interval
        self.placement_token = placement_token
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.follower = EventFollower(mirror.devassign, self.wake) if follow else None

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        if self.follower is not None:
            self.follower.stopped.set()

    def sync(self, only: set[str] | None = None) -> SyncResult | None:
        """One sync, logged; None when devassign or Placement could not be read."""
        try:
            if self.placement_token is not None:
                self.mirror.placement.headers["X-Auth-Token"] = self.placement_token()
            result = self.mirror.sync(only)
        except (MirrorError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            LOG.error("sync failed: %s", exc)
            return None
        if result.changed or result.errors:
            LOG.info(
                "synced%s: %d created, %d updated, %d deleted, %d conflicts retried, %d errors",
                f" {', '.join(sorted(only))}" if only else "",
                len(result.created),
                len(result.updated),
                len(result.deleted),
                result.conflicts,
                len(result.errors),
            )
        return result

    def run(self) -> None:
        if self.follower is not None:
            threading.Thread(target=self.follower.run, name="devassign-events", daemon=True).start()
        next_full = 0.0
        first = True
        while not self.stopped.is_set():
            now = time.monotonic()
            if now >= next_full:
                result = self.sync()
                if first and result is not None:
                    LOG.info("first full sync done; the next in %.0f s", self.interval)
                    first = False
                next_full = time.monotonic() + self.interval
                continue
            if self.wake.wait(next_full - now) and not self.stopped.is_set():
                self.stopped.wait(SETTLE_SECONDS)
                self.wake.clear()
                hosts = self.follower.take() if self.follower is not None else set()
                if hosts:
                    self.sync(hosts)
