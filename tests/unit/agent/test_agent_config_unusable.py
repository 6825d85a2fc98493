"""Agent configuration a person must fix is a configuration error (exit 2, one line; a systemd
unit stops on 2 and restarts on 1 and 3): intervals that are not finite or past a day (TOML has
``nan`` and ``inf``; ``nan <= 0`` is false, and ``time.sleep`` failed with a traceback), a
``server`` the HTTP client cannot use (``http://[::1``), a ``token`` no header can carry
(non-ASCII: a traceback; a newline: "server unavailable" for ever, exit 3)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devassign.agent.config import ConfigError, load_config
from devassign.testing.sysfs import host
from tests.e2e.servers import cli


@pytest.fixture
def listening() -> Iterator[str]:
    """Something listening over HTTP (the agent never gets as far as a real exchange)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _write(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "agent.toml"
    conf.write_text(body + f'\nstate_file = "{tmp_path / "agent.state"}"\n', encoding="utf-8")
    return conf


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("work_interval", "nan"),
        ("work_interval", "inf"),
        ("work_interval", "1e300"),  # time.sleep: timestamp out of range
        ("report_interval", "nan"),
        ("heartbeat_interval", "nan"),
        ("health_interval", "nan"),
    ],
)
def test_a_non_finite_interval_is_a_config_error(tmp_path: Path, key: str, value: str) -> None:
    conf = _write(tmp_path, f'host = "h1"\nserver = "http://127.0.0.1:9"\ntoken = "da_x"\n{key} = {value}')
    with pytest.raises(ConfigError):
        load_config(conf)


def test_agent_run_with_work_interval_nan_exits_2_without_a_traceback(tmp_path: Path, listening: str) -> None:
    h = host(tmp_path)
    conf = _write(tmp_path, f'host = "h1"\nserver = "{listening}"\ntoken = "da_x"\nwork_interval = nan')
    result = cli("agent", "run", "-c", str(conf), "--sysfs-root", str(h.root), check=False)
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])


@pytest.mark.parametrize(
    ("server", "token"),
    [
        ("http://[::1", "da_x"),  # not a URL httpx can parse
        (None, "da_\u00e9"),  # a token no HTTP header can carry
        (None, "da_x\\nda_y"),  # a pasted newline (TOML escape)
    ],
    ids=["bad-url", "non-ascii-token", "newline-token"],
)
def test_agent_run_with_an_unusable_server_or_token_exits_2(
    tmp_path: Path, listening: str, server: str | None, token: str
) -> None:
    h = host(tmp_path)
    conf = _write(tmp_path, f'host = "h1"\nserver = "{server or listening}"\ntoken = "{token}"')
    result = cli("agent", "run", "--once", "-c", str(conf), "--sysfs-root", str(h.root), check=False)
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert result.returncode == 2, (result.returncode, result.stderr[-500:])
