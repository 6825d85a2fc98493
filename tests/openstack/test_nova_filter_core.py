"""The Nova filter's Nova-independent core, in the main venv: which specs it asks about, how
aliases map to types, one call per request, and failing closed."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi.testclient import TestClient

from devassign.agent.nova import convert
from devassign.openstack.nova_filter import (
    DeviceFilter,
    FilterConfig,
    SpecError,
    alias_types_from,
    aliases_from_conf,
    device_specs,
)
from tests.openstack.conftest import Switch, transport_of

TOKEN = "da_secret-token-never-logged"


def test_device_specs_keeps_ours_and_translates_aliases() -> None:
    aliases = {"nic": "NIC_VF_1G", "gpu": "GPU_A100"}
    extra = {
        "hw:cpu_policy": "dedicated",
        "hardware_resource:NIC_VF_1G": "1",
        "pci_passthrough:alias": "nic:2, gpu:1,other:4",
    }
    assert device_specs(extra, aliases) == {
        "hardware_resource:GPU_A100": "1",
        "hardware_resource:NIC_VF_1G": "3",  # the flavor's own and the alias's, added up
    }
    assert device_specs({"hw:mem_page_size": "large"}, aliases) == {}
    assert device_specs({"hardware_resources:X": "1"}, {}) == {
        "hardware_resources:X": "1"
    }  # for devassign to refuse
    for bad in ("nic", "nic:0", "nic:x", ":1", "nic:1,,"):
        with pytest.raises(SpecError):
            device_specs({"pci_passthrough:alias": bad}, aliases)


def test_aliases_map_to_the_types_import_nova_gives_their_devices() -> None:
    aliases = aliases_from_conf(
        [
            '{"name": "a1", "vendor_id": "8086", "product_id": "154c", "device_type": "type-VF"}',
            '[{"name": "big-gpu", "vendor_id": "10de", "product_id": "20b5"}]',
            '{"name": "rc", "resource_class": "CUSTOM_FAST_NIC"}',
        ]
    )
    types = alias_types_from(aliases, {"a1": "NIC_VF_10G"})
    assert types == {"a1": "NIC_VF_10G", "big-gpu": "big_gpu", "rc": "FAST_NIC"}
    # the same type name `devassign agent import-nova` writes for that alias
    text, _ = convert([{"vendor_id": "10de", "product_id": "20b5"}], aliases[1:2])
    assert 'type = "big_gpu"' in text


@pytest.fixture
def switch(devassign_api: TestClient) -> Switch:
    return Switch(transport_of(devassign_api))


def test_one_call_per_request_then_the_cache(switch: Switch) -> None:
    f = DeviceFilter(FilterConfig(url="http://testserver", token=TOKEN), transport=switch)
    specs = {"hardware_resource:NIC_VF_1G": "2"}
    assert f.fitting_hosts("i-1", specs, ["compute-1", "compute-2"]) == frozenset({"compute-1"})
    assert f.passes("i-1", specs, "compute-1") and not f.passes("i-1", specs, "compute-2")
    assert switch.calls == 1
    f.fitting_hosts("i-2", specs, ["compute-1"])  # another instance: asked again
    assert switch.calls == 2
    assert f.fitting_hosts("i-3", {"hardware_resource:NIC_VF_1G": "9"}, ["compute-1"]) == frozenset()


def test_fails_closed_once_and_never_logs_the_token(switch: Switch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    switch.up = False
    f = DeviceFilter(FilterConfig(url="http://devassign.example:8470", token=TOKEN), transport=switch)
    specs = {"hardware_resource:NIC_VF_1G": "1"}
    assert not f.passes("i-1", specs, "compute-1", ["compute-1", "compute-2"])
    assert not f.passes("i-1", specs, "compute-2", ["compute-1", "compute-2"])
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "http://devassign.example:8470/v1/capacity" in caplog.text and "ConnectError" in caplog.text
    assert TOKEN not in caplog.text
    g = DeviceFilter(FilterConfig(url="http://x", token=TOKEN, fail_closed=False), transport=switch)
    assert g.passes("i-1", specs, "compute-9")


def test_a_member_token_answer_without_per_host_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    answer = httpx.Response(200, json={"total": 3, "truncated": False})  # what a member gets
    f = DeviceFilter(FilterConfig(url="http://x"), transport=httpx.MockTransport(lambda r: answer))
    assert not f.passes("i-1", {"hardware_resource:NIC_VF_1G": "1"}, "compute-1")
    assert "admin token" in caplog.text
