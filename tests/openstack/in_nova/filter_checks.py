"""DevassignFilter and the extra-spec validators inside Nova: run in the Nova venv only.

tests/openstack/test_nova.py runs this file with ``.nova-venv/bin/python -m pytest``; the main
test run does not collect it (its name does not start with ``test_``). Nova's own
``HostFilterHandler`` drives the filter over Nova's ``FakeHostState`` hosts and real
``RequestSpec``/``Flavor`` objects; devassign answers as a real server process (Nova's test
package patches the process with eventlet, under which an in-process ASGI client deadlocks).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import nova.conf
import pytest
from nova import exception, objects
from nova.api.validation.extra_specs import validators
from nova.scheduler import filters as nova_filters
from nova.tests.unit.scheduler import fakes

from devassign.openstack.nova_filter import DevassignFilter, FilterConfig
from tests.conftest import vf
from tests.e2e.servers import running_server

objects.register_all()
CONF = nova.conf.CONF
FILTER_PATH = "devassign.openstack.nova_filter.DevassignFilter"
TOKEN = "da_secret-token-never-logged"


class Counting(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.calls = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.inner.handle_request(request)


def spec(extra_specs: dict[str, str], instance: str | None = None) -> Any:
    flavor = objects.Flavor(name="f", extra_specs=extra_specs)
    return objects.RequestSpec(flavor=flavor, instance_uuid=instance or str(uuid.uuid4()), scheduler_hints={})


def hosts(*names: str) -> list[Any]:
    return [fakes.FakeHostState(n, f"{n}-node", {}) for n in names]


def passing(filters: list[Any], spec_obj: Any, candidates: list[Any], index: int = 0) -> list[str]:
    out = nova_filters.HostFilterHandler().get_filtered_objects(filters, candidates, spec_obj, index)
    return [h.host for h in out or []]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real devassign server process, auth off: compute-1 has 4 NIC_VF_1G and 4 nicvf VFs,
    compute-2 has none."""
    db = tmp_path_factory.mktemp("devassign") / "d.db"
    with running_server(f"sqlite:///{db}", auth=False) as url:
        for name in ("NIC_VF_1G", "nicvf"):
            assert httpx.post(f"{url}/v1/resource-types", json={"name": name}).status_code == 201
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        devices += [vf(f"0000:3b:03.{i}", type="nicvf", parent="0000:3b:00.1") for i in range(4)]
        r = httpx.put(f"{url}/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200 and not r.json()["refused"], r.text
        yield url


@pytest.fixture
def counted() -> Counting:
    return Counting(httpx.HTTPTransport())


@pytest.fixture
def make(server_url: str) -> Any:
    def _make(counted: Counting, **config: Any) -> DevassignFilter:
        return DevassignFilter(FilterConfig(url=server_url, token=TOKEN, **config), transport=counted)

    return _make


def test_one_call_for_all_hosts_and_every_instance_of_the_request(make: Any, counted: Counting) -> None:
    f = make(counted)
    request = spec({"hardware_resource:NIC_VF_1G": "2", "hw:cpu_policy": "dedicated"})
    candidates = hosts("compute-1", "compute-2", "compute-3")
    assert passing([f], request, candidates, index=0) == ["compute-1"]
    assert passing([f], request, candidates, index=1) == ["compute-1"]  # the second instance
    assert counted.calls == 1


def test_a_request_that_fits_nowhere_passes_no_host(make: Any, counted: Counting) -> None:
    f = make(counted)
    assert passing([f], spec({"hardware_resource:NIC_VF_1G": "5"}), hosts("compute-1", "compute-2")) == []


def test_a_flavor_without_device_specs_passes_every_host_without_a_call(make: Any, counted: Counting) -> None:
    f = make(counted)
    assert passing([f], spec({"hw:cpu_policy": "dedicated"}), hosts("compute-1", "compute-9")) == [
        "compute-1",
        "compute-9",
    ]
    assert f.host_passes(hosts("compute-9")[0], spec({}))
    assert counted.calls == 0


def test_host_names_map_with_a_prefix_and_suffix(make: Any, counted: Counting) -> None:
    f = make(counted, host_prefix="compute-", host_suffix="")
    assert passing([f], spec({"hardware_resource:NIC_VF_1G": "1"}), hosts("1", "2")) == ["1"]


def test_host_passes_alone_asks_once(make: Any, counted: Counting) -> None:
    f = make(counted)
    request = spec({"hardware_resource:NIC_VF_1G": "1"})
    assert [f.host_passes(h, request) for h in hosts("compute-1", "compute-2", "compute-3")] == [
        True,
        False,
        False,
    ]
    assert counted.calls == 1


def test_pci_passthrough_alias_is_translated(make: Any, counted: Counting) -> None:
    f = make(counted, alias_types={"nic-vf": "NIC_VF_1G"})
    assert passing([f], spec({"pci_passthrough:alias": "nic-vf:3"}), hosts("compute-1", "compute-2")) == [
        "compute-1"
    ]
    assert passing([f], spec({"pci_passthrough:alias": "nic-vf:5"}), hosts("compute-1")) == []
    # an alias devassign does not manage is Nova's own PCI filter's business
    assert passing([f], spec({"pci_passthrough:alias": "other:1"}), hosts("compute-2")) == ["compute-2"]
    assert passing([f], spec({"pci_passthrough:alias": "nic-vf"}), hosts("compute-1")) == []  # malformed


def test_a_wrong_spec_passes_no_host_and_says_why(
    make: Any, counted: Counting, caplog: pytest.LogCaptureFixture
) -> None:
    f = make(counted)
    assert passing([f], spec({"hardware_resource:NO_SUCH_TYPE": "1"}), hosts("compute-1")) == []
    assert passing([f], spec({"hardware_resources:NIC_VF_1G": "1"}), hosts("compute-1")) == []
    assert "unknown resource type NO_SUCH_TYPE" in caplog.text and "misspelt" in caplog.text
    assert TOKEN not in caplog.text


def _unreachable_filter(fail_closed: bool) -> DevassignFilter:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    return DevassignFilter(
        FilterConfig(url="http://devassign.invalid:8470", token=TOKEN, fail_closed=fail_closed),
        transport=httpx.MockTransport(refuse),
    )


def test_unreachable_fails_closed_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    f = _unreachable_filter(fail_closed=True)
    request = spec({"hardware_resource:NIC_VF_1G": "1"})
    assert passing([f], request, hosts("compute-1", "compute-2")) == []
    assert not f.host_passes(hosts("compute-1")[0], request)  # the cached answer: no second line
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("devassign")]
    assert len(lines) == 1, lines
    assert "http://devassign.invalid:8470/v1/capacity" in lines[0] and "Connection refused" in lines[0]
    assert TOKEN not in caplog.text


def test_unreachable_fails_open_when_configured() -> None:
    f = _unreachable_filter(fail_closed=False)
    assert passing([f], spec({"hardware_resource:NIC_VF_1G": "1"}), hosts("compute-1", "compute-2")) == [
        "compute-1",
        "compute-2",
    ]


def test_server_errors_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    answer = httpx.Response(503, json={"error": {"code": "database_busy", "message": "busy"}})
    f = DevassignFilter(
        FilterConfig(url="http://devassign:8470", token=TOKEN),
        transport=httpx.MockTransport(lambda r: answer),
    )
    assert passing([f], spec({"hardware_resource:NIC_VF_1G": "1"}), hosts("compute-1")) == []
    assert "HTTP 503 database_busy" in caplog.text


# --------------------------------------------------------------- loaded from nova.conf


def test_loaded_by_path_from_nova_conf(server_url: str) -> None:
    CONF.set_override(
        "available_filters", ["nova.scheduler.filters.all_filters", FILTER_PATH], group="filter_scheduler"
    )
    CONF.set_override("enabled_filters", ["AllHostsFilter", "DevassignFilter"], group="filter_scheduler")
    CONF.set_override("url", server_url, group="devassign")
    CONF.set_override("token", TOKEN, group="devassign")
    alias = {"name": "nicvf", "vendor_id": "8086", "product_id": "154c", "device_type": "type-VF"}
    CONF.set_override("alias", [json.dumps(alias)], group="pci")
    try:
        # as nova's HostManager does: the available classes, then the enabled ones by name
        handler = nova_filters.HostFilterHandler()
        classes = {
            c.__name__: c for c in handler.get_matching_classes(CONF.filter_scheduler.available_filters)
        }
        assert classes["DevassignFilter"] is DevassignFilter
        enabled = [classes[name]() for name in CONF.filter_scheduler.enabled_filters]
        candidates = hosts("compute-1", "compute-2")
        assert passing(enabled, spec({"hardware_resource:nicvf": "4"}), candidates) == ["compute-1"]
        # [pci] alias of nova.conf: the alias maps to the type import-nova gives it
        assert passing(enabled, spec({"pci_passthrough:alias": "nicvf:2"}), candidates) == ["compute-1"]
        assert passing(enabled, spec({"pci_passthrough:alias": "nicvf:5"}), candidates) == []
    finally:
        CONF.clear_override("available_filters", group="filter_scheduler")
        CONF.clear_override("enabled_filters", group="filter_scheduler")
        for name in ("url", "token"):
            CONF.clear_override(name, group="devassign")
        CONF.clear_override("alias", group="pci")


# ------------------------------------------------------------------ extra-spec validation


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hardware_resource:NIC_VF_1G", "1"),
        ("hardware_resource:GPU_A100", "256"),
        ("hardware_resource:VGPU_T4_4Q", "12"),
        ("hw:cpu_policy", "dedicated"),  # Nova's own still pass
    ],
)
def test_validator_accepts(name: str, value: str) -> None:
    validators.validate(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hardware_resource:NIC_VF_1G", "0"),
        ("hardware_resource:NIC_VF_1G", "257"),
        ("hardware_resource:NIC_VF_1G", "two"),
        ("hardware_resource:NIC_VF_1G", " 1"),
        ("hardware_resource:NIC_VF_1G", "٣"),
        ("hardware_resource:NIC-VF", "1"),
        ("hardware_resource:", "1"),
        ("hardware_resources:NIC_VF_1G", "1"),
        ("Hardware_resource:NIC_VF_1G", "1"),
        ("hardware:NIC_VF_1G", "1"),
    ],
)
def test_validator_refuses(name: str, value: str) -> None:
    with pytest.raises(exception.ValidationError):
        validators.validate(name, value)


def test_validators_come_from_the_entry_point() -> None:
    assert "hardware_resource:{type}" in validators.VALIDATORS
