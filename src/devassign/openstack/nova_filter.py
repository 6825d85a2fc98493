"""A Nova scheduler filter: only hosts where devassign can hold a flavor's devices pass.

Enabled in nova-scheduler's nova.conf (docs/openstack.md)::

    [filter_scheduler]
    available_filters = nova.scheduler.filters.all_filters
    available_filters = devassign.openstack.nova_filter.DevassignFilter
    enabled_filters = ...,DevassignFilter

A flavor asks for devices with ``hardware_resource:TYPE=N`` extra specs, or, in a cloud moving
from Nova's PCI passthrough, with ``pci_passthrough:alias`` (``ALIAS:N,ALIAS2:M``), translated to
devassign types as ``devassign agent import-nova`` names them. Nova asks a filter about one host
at a time; asking devassign per host would cost one HTTP call per host per boot, so the filter
asks once per scheduling request, for all of Nova's candidate hosts at once, and keeps the
answer for a few seconds. The call is ``POST /v1/capacity`` with the flavor's specs: unlike
``/v1/explain``, whose answer lists only the best-ranked placements, capacity counts every host
asked about, and a host passes when at least one instance fits there.

Nova is imported only when present, so devassign imports without it; the Nova-independent part
(:class:`DeviceFilter`) is what the filter class delegates to.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devassign.agent.config import ConfigError
from devassign.agent.nova import _type_name, read_nova

LOG = logging.getLogger(__name__)

GROUP = "devassign"
SPEC_NAMESPACE = "hardware_resource"
PCI_ALIAS_KEY = "pci_passthrough:alias"
# Hosts named in one call; devassign takes at most 1,000 (beyond: ask about all hosts).
MAX_NAMED_HOSTS = 1000
# Answers kept at most, whatever their age: a bound on memory under a storm of requests.
MAX_CACHED = 1024


class SpecError(ValueError):
    """A flavor's device specs that cannot be asked about (a malformed ``pci_passthrough:alias``)."""


@dataclass(frozen=True)
class FilterConfig:
    """The ``[devassign]`` options of nova.conf, as the filter uses them."""

    url: str = "http://127.0.0.1:8470"
    token: str | None = field(default=None, repr=False)  # never in a log line or a repr
    alias_types: Mapping[str, str] = field(default_factory=dict)
    fail_closed: bool = True
    timeout: float = 10.0
    cache_seconds: float = 30.0
    host_prefix: str = ""
    host_suffix: str = ""


def alias_types_from(aliases: Iterable[Mapping[str, Any]], explicit: Mapping[str, str]) -> dict[str, str]:
    """Alias name -> devassign type: ``explicit`` first, else the type ``agent import-nova``
    gives the alias's devices (its ``resource_class`` without ``CUSTOM_``, else its name)."""
    out: dict[str, str] = {}
    for alias in aliases:
        name = alias.get("name")
        if not isinstance(name, str) or name in out:
            continue
        rc = alias.get("resource_class")
        out[name] = _type_name(rc if isinstance(rc, str) else name)
    out.update(explicit)
    return out


def aliases_from_conf(values: Iterable[str], source: str = "[pci] alias") -> list[dict[str, Any]]:
    """The alias objects of Nova's ``[pci] alias`` option (each value a JSON object or list)."""
    out: list[dict[str, Any]] = []
    for value in values:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: not JSON: {exc}") from exc
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(item, dict):
                out.append(item)
    return out


def device_specs(extra_specs: Mapping[str, Any], alias_types: Mapping[str, str]) -> dict[str, str]:
    """The ``hardware_resource:TYPE`` specs devassign is asked about, ``pci_passthrough:alias``
    included; empty when the flavor asks devassign for nothing.

    Keys of a namespace that starts with ``hardware`` are sent as they are, so devassign's
    answer to a misspelling (a 400 that says what to write) reaches the log. An alias with no
    devassign type is left to Nova's own PCI passthrough filter.
    """
    counts: dict[str, int] = {}
    out: dict[str, str] = {}
    for key, value in extra_specs.items():
        namespace = key.partition(":")[0]
        if namespace == SPEC_NAMESPACE:
            text = str(value).strip()
            if text.isascii() and text.isdigit():
                counts[key.partition(":")[2]] = counts.get(key.partition(":")[2], 0) + int(text)
            else:
                out[key] = str(value)  # devassign says what is wrong with it
        elif namespace.lower().startswith("hardware"):
            out[key] = str(value)
    alias_spec = extra_specs.get(PCI_ALIAS_KEY)
    if alias_spec:
        for part in str(alias_spec).split(","):
            name, sep, count = part.strip().partition(":")
            name, count = name.strip(), count.strip()
            if not sep or not name or not (count.isascii() and count.isdigit()) or int(count) < 1:
                raise SpecError(f"{PCI_ALIAS_KEY}={alias_spec!r}: expected ALIAS:COUNT[,ALIAS:COUNT...]")
            type_name = alias_types.get(name)
            if type_name is not None:
                counts[type_name] = counts.get(type_name, 0) + int(count)
    for type_name, n in counts.items():
        out[f"{SPEC_NAMESPACE}:{type_name}"] = str(n)
    return dict(sorted(out.items()))


@dataclass
class _Answer:
    at: float
    fits: frozenset[str] | None  # devassign host names where it fits; None: pass every host
    asked: frozenset[str] | None  # the hosts asked about; None: all of them


class DeviceFilter:
    """Which hosts can hold a request's devices, asked of devassign once per request."""

    def __init__(self, config: FilterConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.http = httpx.Client(
            base_url=config.url.rstrip("/"), headers=headers, timeout=config.timeout, transport=transport
        )
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], _Answer] = {}
        self._lock = threading.Lock()
        self.calls = 0  # requests sent to devassign, for tests and debugging

    def close(self) -> None:
        self.http.close()

    def devassign_host(self, nova_host: str) -> str:
        return f"{self.config.host_prefix}{nova_host}{self.config.host_suffix}"

    def passes(
        self,
        request_key: str,
        specs: Mapping[str, str],
        nova_host: str,
        candidates: Sequence[str] | None = None,
    ) -> bool:
        """Whether ``nova_host`` can hold ``specs``; ``candidates``: every host Nova is weighing now,
        asked about together when the answer for ``request_key`` is not known yet."""
        fits = self.fitting_hosts(request_key, specs, [nova_host] if candidates is None else candidates)
        return fits is None or self.devassign_host(nova_host) in fits

    def fitting_hosts(
        self, request_key: str, specs: Mapping[str, str], nova_hosts: Sequence[str]
    ) -> frozenset[str] | None:
        """The devassign hosts among ``nova_hosts`` where ``specs`` fit (None: let every host pass)."""
        key = (request_key, tuple(sorted(specs.items())))
        wanted = frozenset(self.devassign_host(h) for h in nova_hosts)
        now = time.monotonic()
        with self._lock:
            answer = self._cache.get(key)
            if (
                answer is not None
                and now - answer.at <= self.config.cache_seconds
                and (answer.asked is None or wanted <= answer.asked)
            ):
                return answer.fits
        asked = wanted if 0 < len(wanted) <= MAX_NAMED_HOSTS else None
        fits = self._ask(request_key, specs, asked)
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                for k in [k for k, a in self._cache.items() if now - a.at > self.config.cache_seconds]:
                    del self._cache[k]
                while len(self._cache) >= MAX_CACHED:
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = _Answer(now, fits, asked)
        return fits

    def _ask(
        self, request_key: str, specs: Mapping[str, str], hosts: frozenset[str] | None
    ) -> frozenset[str] | None:
        body: dict[str, Any] = {"extra_specs": dict(specs)}
        if hosts is not None:
            body["hosts"] = sorted(hosts)
        where = f"{self.config.url.rstrip('/')}/v1/capacity"
        self.calls += 1
        try:
            response = self.http.post("/v1/capacity", json=body)
        except httpx.HTTPError as exc:
            return self._unavailable(request_key, where, f"{type(exc).__name__}: {exc}")
        if response.status_code >= 500 or response.status_code in (401, 403):
            return self._unavailable(request_key, where, f"HTTP {response.status_code}{_message(response)}")
        if response.is_error:  # the flavor's specs are wrong: no host can hold them
            LOG.warning(
                "devassign refused the device specs %s of instance %s: HTTP %s%s; no host passes",
                dict(specs),
                request_key,
                response.status_code,
                _message(response),
            )
            return frozenset()
        try:
            per_host = response.json()["per_host"]
            return frozenset(str(h) for h, n in per_host.items() if int(n) >= 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            return self._unavailable(
                request_key, where, "an answer without per_host (is the token an admin token?)"
            )

    def _unavailable(self, request_key: str, where: str, error: str) -> frozenset[str] | None:
        if self.config.fail_closed:
            LOG.error(
                "devassign at %s could not be asked about instance %s (%s): no host passes "
                "([devassign] fail_closed = true)",
                where,
                request_key,
                error,
            )
            return frozenset()
        LOG.error(
            "devassign at %s could not be asked about instance %s (%s): every host passes "
            "([devassign] fail_closed = false)",
            where,
            request_key,
            error,
        )
        return None


def _message(response: httpx.Response) -> str:
    try:
        err = response.json().get("error") or {}
        return f" {err.get('code')}: {err.get('message')}" if err else ""
    except (ValueError, AttributeError):
        return ""


# ------------------------------------------------------------------------------ Nova's side

try:  # only inside a Nova service: devassign itself never needs Nova
    import nova.conf  # type: ignore[import-not-found, unused-ignore]
    from nova.scheduler import filters as _nova_filters  # type: ignore[import-not-found, unused-ignore]
    from nova.scheduler import utils as _nova_utils  # type: ignore[import-not-found, unused-ignore]
    from oslo_config import cfg  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - without Nova
    _BaseHostFilter: Any = object
    HAVE_NOVA = False
else:
    _BaseHostFilter = _nova_filters.BaseHostFilter
    HAVE_NOVA = True

    OPTS = [
        cfg.StrOpt("url", default="http://127.0.0.1:8470", help="devassign's API (DEVASSIGN_URL)."),
        cfg.StrOpt(
            "token",
            secret=True,
            help="An admin token of devassign: the filter reads which hosts can hold a request.",
        ),
        cfg.DictOpt(
            "alias_types",
            default={},
            help="PCI alias name to devassign type, for flavors with pci_passthrough:alias "
            "(e.g. a1:NIC_VF_10G,gpu:GPU_A100); aliases of [pci] alias not listed here map "
            "as `devassign agent import-nova` names them.",
        ),
        cfg.StrOpt(
            "pci_alias_file",
            help="Another nova.conf (or JSON file) whose [pci] alias entries are read too.",
        ),
        cfg.BoolOpt(
            "fail_closed",
            default=True,
            help="When devassign cannot be asked, no host passes (true) or every host passes (false).",
        ),
        cfg.FloatOpt("timeout", default=10.0, min=0.1, help="Seconds to wait for devassign."),
        cfg.FloatOpt(
            "cache_seconds",
            default=30.0,
            min=0.0,
            help="Seconds an answer is kept for the same instance and specs.",
        ),
        cfg.StrOpt("host_prefix", default="", help="devassign's host name is prefix + Nova's + suffix."),
        cfg.StrOpt("host_suffix", default="", help="devassign's host name is prefix + Nova's + suffix."),
    ]
    nova.conf.CONF.register_opts(OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[Any]]]:
    """For oslo-config-generator: the ``[devassign]`` options."""
    return [(GROUP, list(OPTS))] if HAVE_NOVA else []


def config_from_nova(conf: Any) -> FilterConfig:
    """The filter's configuration from Nova's ``CONF`` (its ``[devassign]`` and ``[pci] alias``)."""
    group = conf[GROUP]
    aliases = aliases_from_conf(conf.pci.alias)
    if group.pci_alias_file:
        aliases += read_nova(Path(group.pci_alias_file))[1]
    return FilterConfig(
        url=group.url,
        token=group.token,
        alias_types=alias_types_from(aliases, dict(group.alias_types)),
        fail_closed=group.fail_closed,
        timeout=group.timeout,
        cache_seconds=group.cache_seconds,
        host_prefix=group.host_prefix,
        host_suffix=group.host_suffix,
    )


class DevassignFilter(_BaseHostFilter):  # type: ignore[misc]
    """Passes the hosts where devassign can hold the flavor's devices; a flavor without
    device specs passes every host without asking devassign."""

    # Run for every instance of a multi-instance request too (Nova skips a filter for the
    # second and later instances when this is true); the cached answer makes that free.
    run_filter_once_per_request = False
    RUN_ON_REBUILD = False

    def __init__(
        self, config: FilterConfig | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        super().__init__()
        if config is None:
            config = config_from_nova(nova.conf.CONF)
        self.devices = DeviceFilter(config, transport=transport)

    def _specs(self, spec_obj: Any) -> dict[str, str] | None:
        """The flavor's device specs (empty: none), or None when they cannot be read."""
        flavor = getattr(spec_obj, "flavor", None)
        extra = getattr(flavor, "extra_specs", None) or {}
        try:
            return device_specs(extra, self.devices.config.alias_types)
        except SpecError as exc:
            LOG.warning("instance %s: %s; no host passes", _key(spec_obj), exc)
            return None

    def filter_all(self, filter_obj_list: Iterable[Any], spec_obj: Any) -> Iterator[Any]:
        """One call to devassign for all of Nova's candidate hosts, then a set lookup per host."""
        hosts = list(filter_obj_list)
        specs = self._specs(spec_obj)
        if specs is None:
            return
        if not specs or _nova_utils.request_is_rebuild(spec_obj):
            yield from hosts
            return
        fits = self.devices.fitting_hosts(_key(spec_obj), specs, [h.host for h in hosts])
        for host_state in hosts:
            if fits is None or self.devices.devassign_host(host_state.host) in fits:
                yield host_state

    def host_passes(self, host_state: Any, spec_obj: Any) -> bool:
        """One host on its own (filter_all asks for all of them at once): asks about every
        devassign host the first time, then answers from the cached answer."""
        specs = self._specs(spec_obj)
        if specs is None:
            return False
        if not specs:
            return True
        fits = self.devices.fitting_hosts(_key(spec_obj), specs, [])
        return fits is None or self.devices.devassign_host(host_state.host) in fits


def _key(spec_obj: Any) -> str:
    """The scheduling request's key: its instance, or the object itself when it has none."""
    try:
        uuid = spec_obj.instance_uuid
    except Exception:  # an unset field of a Nova object raises on access
        uuid = None
    return str(uuid) if uuid else f"request-{id(spec_obj)}"
