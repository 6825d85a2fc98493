"""Request params declared per type: the declaration's own rules, and claims checked against it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import devassign.lifecycle.handlers
from devassign.cli.inventory import describe_param
from devassign.domain import DeviceKind
from devassign.lifecycle.handlers.sriov import wanted_config
from devassign.scheduler import ClaimBody, RequestError
from devassign.scheduler.params import request_doc
from devassign.schemas import (
    FACT_NAMES,
    MAX_TYPE_PARAMS,
    ParamSpec,
    ResourceTypeCreate,
    ResourceTypeUpdate,
)
from tests.unit.lifecycle.support import device

VF = {
    "mac": {"type": "mac"},
    "vlan": {"type": "integer", "min": 1, "max": 4094, "allowed": [100, 101, 200]},
    "trust": {"type": "boolean"},
    "queues": {"type": "integer", "min": 1, "max": 16},
    "label": {"type": "string", "max_length": 16, "pattern": "^[a-z0-9-]+$"},
}


def declared(**params: Any) -> dict[str, Any]:
    """A type's declaration as the store hands it over (validated, then stored as JSON)."""
    body = ResourceTypeCreate.model_validate({"name": "T", "params": params})
    return {n: s.model_dump(mode="json", exclude_none=True) for n, s in body.params.items()}


def claim(params: dict[str, Any], *, type: str = "NIC", first_available: tuple[str, ...] = ()) -> ClaimBody:
    request: dict[str, Any] = {"name": "nic", "type": type, "params": params}
    if first_available:
        request["first_available"] = [{"type": t} for t in first_available]
    return ClaimBody.model_validate({"consumer": "vm-1", "requests": [request]})


def refusal(body: ClaimBody, types: dict[str, Any], project: str = "demo") -> RequestError:
    with pytest.raises(RequestError) as caught:
        request_doc(body, types, project)
    assert caught.value.code.value == "invalid_request"
    return caught.value


# ---------------------------------------------------------------- the declaration


def test_a_declaration_is_normalised_and_defaulted() -> None:
    params = ResourceTypeCreate.model_validate(
        {
            "name": "T",
            "params": {
                "mac": {"type": "mac", "allowed": ["52:54:00:AA:BB:CC"]},
                "vlan": {"type": "integer", "allowed": [100]},
                "label": {"type": "string"},
                "link_state": {"type": "string"},
            },
        }
    ).params
    assert params["mac"].allowed == ["52:54:00:aa:bb:cc"]
    # vlan is read by the handlers as 0..4094: a declaration without bounds gets them.
    assert (params["vlan"].min, params["vlan"].max) == (0, 4094)
    assert params["label"].max_length == 64
    assert params["link_state"].allowed == ["auto", "enable", "disable"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"x": {"type": "string", "pattern": "(unclosed"}}, "not a regular expression"),
        ({"x": {"type": "float"}}, "params.x.type"),
        ({"x": {"type": "mac", "min": 1}}, "min: not for mac params"),
        ({"x": {"type": "integer", "max_length": 3}}, "max_length: not for integer params"),
        ({"x": {"type": "integer", "min": 5, "max": 1}}, "min 5 is above max 1"),
        ({"x": {"type": "integer", "max": 10, "allowed": [11]}}, "allowed: 11 is not an integer up to 10"),
        ({"x": {"type": "integer", "allowed": [True]}}, "allowed: True is not an integer"),
        ({"x": {"type": "mac", "allowed": ["01:00:5e:00:00:01"]}}, "unicast MAC"),
        ({"x": {"type": "string", "max_length": 2, "allowed": ["abc"]}}, "at most 2 characters"),
        ({"x": {"type": "integer", "allowed_by_project": {"bad project": [1]}}}, "allowed_by_project"),
        ({"x": {"type": "boolean", "extra": 1}}, "params.x.extra"),
        ({"Vlan": {"type": "integer"}}, "param name 'Vlan'"),
        ({"9x": {"type": "integer"}}, "param name '9x'"),
        ({"x" * 65: {"type": "integer"}}, "param name"),
        ({"mdev_uuid": {"type": "string"}}, "param name 'mdev_uuid' is reserved"),
        ({"original_driver": {"type": "string"}}, "param name 'original_driver' is reserved"),
        ({"vlan": {"type": "string"}}, "param 'vlan' is read by the built-in handlers as integer"),
        ({"vlan": {"type": "integer", "max": 5000}}, "param 'vlan': its values lie within 0..4094"),
        ({"trust": {"type": "integer"}}, "param 'trust' is read by the built-in handlers as boolean"),
        ({"link_state": {"type": "string", "allowed": ["up"]}}, "among auto, enable, disable"),
        ({f"p{i}": {"type": "boolean"} for i in range(MAX_TYPE_PARAMS + 1)}, "at most 32 params"),
    ],
)
def test_bad_declarations_are_refused_naming_the_param(params: dict[str, Any], message: str) -> None:
    for model in (ResourceTypeCreate, ResourceTypeUpdate):
        body: dict[str, Any] = {"params": params} | ({"name": "T"} if model is ResourceTypeCreate else {})
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        assert message in str(caught.value), str(caught.value)


def test_every_fact_a_built_in_handler_returns_is_reserved() -> None:
    """The string keys of the dicts the handlers' setup() builds are facts: none may be a param."""
    keys: set[str] = set()
    for path in Path(devassign.lifecycle.handlers.__file__).parent.glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and fn.name == "setup":
                for node in ast.walk(fn):
                    if isinstance(node, ast.Dict):
                        keys |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    assert {"mdev_uuid", "original_driver", "pf_ifname", "vf_index", "usb_bus_path"} <= keys
    assert keys <= FACT_NAMES
    assert {"usb_bus", "usb_device"} <= FACT_NAMES  # usb.py adds these in a loop


def test_members_see_their_own_projects_values_only() -> None:
    spec = ParamSpec.model_validate(
        {"type": "integer", "allowed": [100, 101], "allowed_by_project": {"demo": [100], "other": [7]}}
    )
    assert spec.seen_by("demo").model_dump(exclude_none=True) == {
        "type": "integer",
        "description": "",
        "allowed": [100],
    }
    assert spec.seen_by("third").allowed == [100, 101]
    only_listed = ParamSpec.model_validate({"type": "integer", "allowed_by_project": {"demo": [1]}})
    assert only_listed.seen_by("third").allowed == []  # not listed, no allowed: nothing


def test_the_cli_describes_a_declaration_in_one_line() -> None:
    spec = declared(vlan={"type": "integer", "min": 1, "allowed": [100], "allowed_by_project": {"demo": []}})
    assert describe_param(spec["vlan"]) == "integer 1..4094, allowed 100; demo: none"
    label = declared(label={"type": "string", "pattern": "^[a-z]+$"})["label"]
    assert describe_param(label) == "string max 64 matching ^[a-z]+$"


# ---------------------------------------------------------------- claims against declarations


def test_declared_params_pass_normalised() -> None:
    doc = request_doc(
        claim({"mac": "52:54:00:AB:CD:EF", "vlan": 100, "trust": True, "label": "web-1"}),
        {"NIC": declared(**VF)},
        "demo",
    )
    assert doc["requests"][0]["params"] == {
        "mac": "52:54:00:ab:cd:ef",
        "vlan": 100,
        "trust": True,
        "label": "web-1",
    }
    assert doc["consumer"] == "vm-1"


def test_a_claim_without_params_is_not_looked_at() -> None:
    # No declaration is even consulted (an unknown type here would fail any lookup).
    doc = request_doc(claim({}), {}, "demo")
    assert doc == claim({}).model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize("name", ["mdev_uuid", "original_driver", "pf_ifname", "vf_index"])
def test_a_fact_is_never_a_param_even_if_a_type_declared_it(name: str) -> None:
    stored = {"NIC": {name: {"type": "string", "max_length": 64}}}  # as if written around the API
    error = refusal(claim({name: "x"}), stored)
    assert f"param {name!r}" in error.message and "cannot supply" in error.message
    assert error.pointer == f"/requests/0/params/{name}"


def test_an_undeclared_param_is_refused_listing_the_accepted_ones() -> None:
    error = refusal(claim({"colour": "red"}), {"NIC": declared(**VF)})
    assert "requests/0 (nic)" in error.message
    assert "type NIC accepts no param 'colour'; it accepts label, mac, queues, trust, vlan" in error.message
    bare = refusal(claim({"vlan": 100}), {"NIC": None})
    assert "type NIC accepts no param 'vlan'; it accepts no params" in bare.message


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"queues": "4"}, "param 'queues' of type NIC is an integer from 1 to 16, not \"4\""),
        ({"queues": 17}, "an integer from 1 to 16, not 17"),
        ({"queues": True}, "an integer from 1 to 16, not true"),
        (
            {"vlan": 102},
            "param 'vlan' of type NIC: 102 is not allowed for project demo; allowed: 100, 101, 200",
        ),
        ({"trust": 1}, "param 'trust' of type NIC is true or false, not 1"),
        ({"mac": "33:33:00:00:00:01"}, "a unicast MAC address"),
        ({"mac": "00:00:00:00:00:00"}, "a unicast MAC address"),
        ({"mac": "52:54:00:00:00"}, "a unicast MAC address"),
        ({"label": "Web"}, "a string of at most 16 characters matching ^[a-z0-9-]+$"),
        ({"label": "a" * 17}, "a string of at most 16 characters"),
    ],
)
def test_wrong_values_are_refused_saying_what_is_expected(params: dict[str, Any], message: str) -> None:
    error = refusal(claim(params), {"NIC": declared(**VF)})
    assert message in error.message, error.message


def test_values_per_project() -> None:
    types = {
        "NIC": declared(
            vlan={"type": "integer", "allowed": [100, 101], "allowed_by_project": {"demo": [100]}}
        )
    }
    assert request_doc(claim({"vlan": 100}), types, "demo")["requests"][0]["params"] == {"vlan": 100}
    error = refusal(claim({"vlan": 101}), types, "demo")
    assert "101 is not allowed for project demo; allowed: 100" in error.message
    assert request_doc(claim({"vlan": 101}), types, "other")["requests"][0]["params"] == {"vlan": 101}
    closed = {"NIC": declared(vlan={"type": "integer", "allowed_by_project": {"demo": [100]}})}
    assert "allowed: none" in refusal(claim({"vlan": 100}), closed, "other").message


def test_first_available_alternatives_each_accept_the_params() -> None:
    types = {"NIC": declared(**VF), "NIC_OLD": declared(mac={"type": "mac"})}
    body = claim({"mac": "52:54:00:00:00:01"}, first_available=("NIC_OLD",))
    assert request_doc(body, types, "demo")["requests"][0]["params"] == {"mac": "52:54:00:00:00:01"}
    error = refusal(claim({"vlan": 100}, first_available=("NIC_OLD",)), types)
    assert "type NIC_OLD accepts no param 'vlan'; it accepts mac" in error.message


def test_a_stored_declaration_no_longer_valid_refuses_its_param() -> None:
    stored = {"NIC": {"label": {"type": "string", "pattern": "("}}}
    assert "no longer valid" in refusal(claim({"label": "x"}), stored).message


# ---------------------------------------------------------------- the sriov_vf handler's policy


def test_the_vf_policy_is_the_types_config_unless_a_declared_param_says_otherwise() -> None:
    config = {"trust": False, "spoofchk": True, "link_state": "auto"}
    plain = wanted_config(device("0000:3b:02.1", DeviceKind.SRIOV_VF), config)
    assert (plain.trust, plain.spoofchk, plain.link_state) == (False, True, "auto")
    # The server lets these through only where the type declares them (trust: boolean...).
    asked = device(
        "0000:3b:02.1", DeviceKind.SRIOV_VF, params={"trust": True, "link_state": "enable", "vlan": 100}
    )
    chosen = wanted_config(asked, config)
    assert (chosen.trust, chosen.spoofchk, chosen.link_state, chosen.vlan) == (True, True, "enable", 100)
