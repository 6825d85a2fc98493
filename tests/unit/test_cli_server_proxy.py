"""``devassign server --forwarded-allow-ips``: the TLS proxy's address reaches uvicorn, which
then believes its ``X-Forwarded-Proto`` (so the dashboard's cookie is marked Secure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from devassign.cli.main import app


@pytest.mark.parametrize(
    ("args", "env", "want"),
    [
        (["--forwarded-allow-ips", "10.0.0.5,10.0.0.6"], {}, "10.0.0.5,10.0.0.6"),
        ([], {"FORWARDED_ALLOW_IPS": "10.0.0.7"}, "10.0.0.7"),
        ([], {}, None),  # uvicorn's own default: 127.0.0.1
    ],
)
def test_the_proxy_addresses_reach_uvicorn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], want: str | None
) -> None:
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: ran.append(kw))
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    result = CliRunner().invoke(
        app, ["server", "--db", f"sqlite:///{tmp_path / 'd.db'}", "--no-auth", *args], env=env
    )
    assert result.exit_code == 0, result.output
    assert [kw["forwarded_allow_ips"] for kw in ran] == [want]
