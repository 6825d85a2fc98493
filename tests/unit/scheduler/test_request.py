"""Claim bodies and short forms into one ``Request``; bad input says what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from devassign.scheduler import (
    RequestError,
    RequestErrorCode,
    compile_selector,
    parse_claim,
    parse_extra_specs,
    request_from_specs,
)
from tests.unit.scheduler.helpers import device


def test_short_form_and_extra_specs_give_the_same_requests() -> None:
    a = request_from_specs(["hardware_resource:NIC_VF_1G=1", "hardware_resource:GPU_A100=2"])
    b = parse_claim({"extra_specs": {"hardware_resource:NIC_VF_1G": "1", "hardware_resource:GPU_A100": 2}})
    assert a.requests == b.requests
    assert [(r.name, r.first.type, r.first.count) for r in a.requests] == [
        ("NIC_VF_1G", "NIC_VF_1G", 1),
        ("GPU_A100", "GPU_A100", 2),
    ]


def test_other_extra_spec_namespaces_are_left_alone() -> None:
    assert parse_extra_specs({"hw:cpu_policy": "dedicated"}) == []


def test_full_form() -> None:
    r = parse_claim(
        {
            "consumer": "6f1c",
            "project": "demo",
            "requests": [
                {
                    "name": "gpu",
                    "type": "GPU_A100",
                    "count": 2,
                    "selector": "device.attributes.memory_mib >= 40960",
                    "first_available": [{"type": "GPU_T4", "count": 4}],
                },
                {"name": "nic", "type": "NIC_VF_1G", "count": 1},
            ],
            "constraints": [
                {"requests": ["gpu", "nic"], "match": "numa_node"},
                {"requests": ["nic"], "match": "pcie_root"},
                {"distinct": "iommu_group"},
            ],
            "hosts": ["compute-1"],
            "idempotency_key": "k1",
        }
    )
    assert [a.type for a in r.requests[0].alternatives] == ["GPU_A100", "GPU_T4"]
    assert [(c.attribute, c.mode, c.requests) for c in r.constraints] == [
        ("numa_node", "match", ("gpu", "nic")),
        ("attributes.pcie_root", "match", ("nic",)),
        ("iommu_group", "distinct", ("gpu", "nic")),
    ]
    assert r.hosts == ("compute-1",)
    assert r.idempotency_key == "k1"


BAD: list[tuple[str, dict[str, Any], RequestErrorCode, str, str]] = [
    ("unknown_field", {"requests": [], "hots": []}, RequestErrorCode.INVALID_BODY, "/hots", "unknown field"),
    ("nothing", {"consumer": "c"}, RequestErrorCode.NO_REQUESTS, "/requests", "nothing requested"),
    (
        "zero_count",
        {"requests": [{"name": "g", "type": "GPU", "count": 0}]},
        RequestErrorCode.INVALID_BODY,
        "/requests/0/count",
        "greater than or equal to 1",
    ),
    (
        "duplicate_name",
        {"requests": [{"name": "g", "type": "A"}, {"name": "g", "type": "B"}]},
        RequestErrorCode.DUPLICATE_NAME,
        "/requests/1/name",
        "used twice",
    ),
    (
        "constraint_names_unknown_request",
        {
            "requests": [{"name": "g", "type": "A"}],
            "constraints": [{"requests": ["x"], "match": "numa_node"}],
        },
        RequestErrorCode.INVALID_CONSTRAINT,
        "/constraints/0/requests/0",
        "'x'",
    ),
    (
        "constraint_needs_one_mode",
        {
            "requests": [{"name": "g", "type": "A"}],
            "constraints": [{"match": "numa_node", "distinct": "parent"}],
        },
        RequestErrorCode.INVALID_CONSTRAINT,
        "/constraints/0",
        "exactly one",
    ),
    (
        "unknown_attribute",
        {"requests": [{"name": "g", "type": "A"}], "constraints": [{"match": "numa_nod"}]},
        RequestErrorCode.UNKNOWN_ATTRIBUTE,
        "/constraints/0/match",
        "attributes.NAME",
    ),
    (
        "bad_extra_spec_count",
        {"extra_specs": {"hardware_resource:GPU": "two"}},
        RequestErrorCode.INVALID_SPEC,
        "/extra_specs/hardware_resource:GPU",
        "whole number",
    ),
    (
        "misspelt_extra_spec",
        {"extra_specs": {"hardware_resources:GPU": "1"}},
        RequestErrorCode.INVALID_SPEC,
        "/extra_specs/hardware_resources:GPU",
        "misspelt",
    ),
    (
        "selector_syntax",
        {"requests": [{"name": "gpu", "type": "A", "selector": "device.numa_node == 0 &&"}]},
        RequestErrorCode.INVALID_SELECTOR,
        "/requests/0/selector",
        "request 'gpu': selector is not valid CEL",
    ),
    (
        "selector_undeclared_variable",
        {"requests": [{"name": "gpu", "type": "A", "selector": "dev.numa_node == 0"}]},
        RequestErrorCode.INVALID_SELECTOR,
        "/requests/0/selector",
        "undeclared variable 'dev'",
    ),
    (
        "selector_unknown_field",
        {"requests": [{"name": "gpu", "type": "A", "selector": "device.memory > 1"}]},
        RequestErrorCode.INVALID_SELECTOR,
        "/requests/0/selector",
        "device.memory",
    ),
    (
        "selector_not_boolean",
        {"requests": [{"name": "gpu", "type": "A", "selector": "device.numa_node"}]},
        RequestErrorCode.INVALID_SELECTOR,
        "/requests/0/selector",
        "must be true or false",
    ),
    (
        "selector_in_alternative",
        {
            "requests": [
                {"name": "g", "type": "A", "first_available": [{"type": "B", "selector": "1 + 'a' == 2"}]}
            ]
        },
        RequestErrorCode.INVALID_SELECTOR,
        "/requests/0/first_available/0/selector",
        "cannot be evaluated",
    ),
]


@pytest.mark.parametrize(("body", "code", "pointer", "text"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_bodies(body: dict[str, Any], code: RequestErrorCode, pointer: str, text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_claim(body)
    assert info.value.code is code
    assert info.value.pointer == pointer
    assert text in info.value.message


def test_bad_short_forms() -> None:
    with pytest.raises(RequestError, match="hardware_resource:TYPE=COUNT"):
        request_from_specs(["GPU_A100=1"])
    with pytest.raises(RequestError, match="given twice"):
        request_from_specs(["hardware_resource:A=1", "hardware_resource:A=2"])


def test_selector_evaluation_errors_mean_no_match() -> None:
    s = compile_selector("device.attributes.memory_mib >= 40960")
    assert s.matches(device("0000:01:00.0", "A", attributes={"memory_mib": 81920}))
    assert not s.matches(device("0000:01:00.0", "A"))
    assert not s.matches(device("0000:01:00.0", "A", attributes={"memory_mib": "lots"}))


def test_selector_sees_every_device_field() -> None:
    s = compile_selector(
        "device.vendor_id == '10de' && device.numa_node == 1 && device.kind == 'pci' "
        "&& device.driver.startsWith('vfio') && device.iommu_group == 4 && device.parent == null"
    )
    d = device("0000:01:00.0", "A", vendor_id="10de", numa_node=1, driver="vfio-pci", iommu_group=4)
    assert s.matches(d)
    assert compile_selector("[0, 1].exists(n, n == device.numa_node)").matches(d)
