"""``devassign gang`` with a --request file whose ``layout`` is not an object: a one-line error.

``cli/gangs.gang_body`` did ``dict(body.get("layout") or {})``: a layout of ``"distinct"``
raised ValueError, ``7`` TypeError -- a Python traceback instead of a message (the server
would have answered 400 "layout: Input should be a valid dictionary"). A layout of ``["ab"]``
became ``{"a": "b"}`` (which the server happened to refuse); it is the same one-line error now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign.cli import gangs as gangs_cli
from devassign.cli.client import Client
from devassign.cli.main import run
from tests.api.test_gangs import _cloud


@pytest.mark.parametrize("layout", ["distinct", 7, ["ab"]], ids=["string", "number", "list"])
def test_a_layout_that_is_not_an_object_is_a_message(
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    layout: Any,
) -> None:
    _cloud(api, {"a": 8})
    client = Client("http://testserver", None, transport=api._transport, retry_for=0)
    monkeypatch.setattr(gangs_cli, "client", lambda ctx: client)
    request = tmp_path / "gang.json"
    request.write_text(
        json.dumps({"instances": ["vm-1"], "extra_specs": {"hardware_resource:GPU": "1"}, "layout": layout})
    )
    status = run(["gang", "claim", "--request", str(request)])  # raised: a traceback
    assert status == 2  # the file is wrong: fix it, a retry will not help
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "layout" in err and len(err.strip().splitlines()) == 1, err
    assert api.get("/v1/allocations").json() == []  # nothing claimed with a made-up layout
