"""A resource type's ``config`` for the built-in handlers is checked when it is written: a
misspelt key or value is a 400 naming it, not every device of the type going unhealthy on
every host at the next report."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    ("handler", "config", "said"),
    [
        (None, {"reset": "bogus"}, "reset='bogus': expected one of required, bus, none-ok"),
        (None, {"rest": "none-ok"}, "'rest' is no key of the built-in handlers"),
        ("pci", {"link_state": "enable"}, "'link_state' is no key of handler pci"),
        ("sriov_vf", {"spoofchk": "yes"}, "spoofchk='yes': expected true or false"),
        ("sriov_vf", {"host_driver": "../../x"}, "expected a driver name"),
        ("command", {"setup": "rm -rf /"}, "expected a list of strings"),
        ("command", {"timeout": 0}, "expected a positive number of seconds"),
        # Left out, every release ran nothing and called the device clean.
        ("command", {"setup": ["/bin/true"]}, 'a command type says its "cleanup"'),
        ("command", {"setup": ["/bin/true"], "cleanup": []}, "expected a list of strings"),
        ("mig", {"nvidia_smi": ""}, "expected the program to run"),
        (None, {"one_time_use": "true"}, "one_time_use='true': expected true or false"),
    ],
)
def test_a_config_the_handler_cannot_use_is_a_400(
    api: TestClient, handler: str | None, config: dict[str, object], said: str
) -> None:
    r = api.post("/v1/resource-types", json={"name": "T", "handler": handler, "config": config})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert said in r.json()["error"]["message"], r.text
    assert api.get("/v1/resource-types").json() == []
    first = {"cleanup": None} if handler == "command" else {}
    made = api.post("/v1/resource-types", json={"name": "T", "handler": handler, "config": first})
    assert made.status_code == 201, made.text
    r = api.patch("/v1/resource-types/T", json={"config": config})
    assert r.status_code == 400 and said in r.json()["error"]["message"], r.text
    assert api.get("/v1/resource-types/T").json()["config"] == first


def test_configs_the_handlers_take_are_kept(api: TestClient) -> None:
    good = [
        (None, {"reset": "none-ok", "one_time_use": True}),
        (
            "sriov_vf",
            {"reset": "bus", "spoofchk": False, "trust": True, "link_state": "auto", "pf_link": "ignore"},
        ),
        ("command", {"setup": ["/bin/true"], "cleanup": ["/bin/true"], "timeout": 2.5}),
        ("command", {"health": ["/bin/true"], "cleanup": None}),  # nothing outlives a holder
        ("mig", {"nvidia_smi": "/usr/bin/nvidia-smi", "timeout": 60}),
        ("vendor.fpga", {"bitstream": "/srv/clean.bit", "timeout": 30}),  # a third party's keys
    ]
    for i, (handler, config) in enumerate(good):
        r = api.post("/v1/resource-types", json={"name": f"T{i}", "handler": handler, "config": config})
        assert r.status_code == 201 and r.json()["config"] == config, r.text
