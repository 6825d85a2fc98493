"""A selector's results are cached by the device fields it reads: read from its CEL tokens, so a
raw or triple-quoted string before ``device.numa_node`` does not hide the field (the first
device's answer was then every device's, and a claim was refused or given the wrong device)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


def _world(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf("0000:3b:02.0", numa_node=0), vf("0000:3b:02.1", numa_node=1)]
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("'''it's''' != '' && ", " && 'TAG' != ''"),  # triple-quoted text with an apostrophe
        ("r'\\' != '' && ", " && 'TAG' != ''"),  # a raw string ending in a backslash
        ('r"\\" != "" && ', ' && "TAG" != ""'),
    ],
)
def test_a_selector_with_a_raw_or_triple_quoted_string_still_reads_the_device(
    api: TestClient, prefix: str, suffix: str
) -> None:
    _world(api)
    tag = uuid.uuid4().hex[:8]  # a source of its own: results are cached per source process-wide
    for numa in (1, 0):
        selector = f"{prefix}device.numa_node == {numa}{suffix.replace('TAG', tag)}"
        body = {
            "consumer": f"vm-{numa}",
            "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 1, "selector": selector}],
        }
        r = api.post("/v1/claims", json=body)
        assert r.status_code == 201, (selector, r.status_code, r.text[:300])
        got = r.json()["devices"][0]["address"]
        assert got == f"0000:3b:02.{numa}", (selector, got)


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("device.numa_node == 0", ("numa_node",)),
        ("'''it's''' != '' && device.numa_node == 1 && 'x' != ''", ("numa_node",)),
        ("r'\\' != '' && device . address == 'a'", ("address",)),
        ("// device.address is not read\ndevice.numa_node == 0", ("numa_node",)),
        ("'device.address' == device.attributes.model", ("attributes",)),
        ('device["numa_node"] == 0', None),  # the device whole: every field
    ],
)
def test_the_fields_a_selector_reads_come_from_its_tokens(
    source: str, fields: tuple[str, ...] | None
) -> None:
    from devassign.scheduler.selector import DEVICE_FIELDS, _fields_read

    assert _fields_read(source) == (fields if fields is not None else tuple(sorted(DEVICE_FIELDS)))
