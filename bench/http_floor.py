"""What the HTTP stack alone costs the server, under devassign's own: server CPU per request.

    python -m bench.http_floor                 # 3,000 requests each, one connection per request
    python -m bench.http_floor --requests 5000

A claim's server CPU has an HTTP part that no change in the claim removes. This measures its
floor, each in a fresh ``uvicorn`` process (httptools, uvloop where installed, as ``devassign
server`` runs), answering ``GET /healthz`` over a new connection per request (as the claim
benchmarks' clients and Placement's do), with the server's CPU read from ``/proc``:

- ``bare ASGI``: an ASGI function that writes a fixed JSON answer (uvicorn and the socket);
- ``FastAPI, async route`` and ``FastAPI, sync route`` (the sync one runs in the thread pool,
  as devassign's routes do): the framework's routing, dependency and response machinery;
- ``devassign``: ``devassign server``'s app on SQLite (its middleware: metrics, the version
  header, the NUL and body-size checks; its routes).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, free_port, loadavg

APPS = {
    "bare ASGI": """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
""",
    "FastAPI, async route": """
from fastapi import FastAPI
app = FastAPI()
@app.get("/healthz")
async def healthz():
    return {"status": "ok"}
""",
    "FastAPI, sync route": """
from fastapi import FastAPI
app = FastAPI()
@app.get("/healthz")
def healthz():
    return {"status": "ok"}
""",
}


def _get(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


def _measure(cmd: list[str], cwd: Path, port: int, requests: int, env: dict[str, str]) -> float:
    """Server CPU ms per request of the server ``cmd`` starts, after a warm-up."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # bounded wait for the server to listen
            try:
                _get(port)
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(300):
            _get(port)
        before = cpu_seconds([proc.pid])
        for _ in range(requests):
            _get(port)
        return (cpu_seconds([proc.pid]) - before) / requests * 1000
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args(argv)
    print(f"load avg {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(work)}
        servers: list[tuple[str, list[str]]] = []
        for name, source in APPS.items():
            module = "app_" + "".join(c if c.isalnum() else "_" for c in name.lower())
            (work / f"{module}.py").write_text(source)
            quiet = ["--log-level", "warning", "--no-access-log"]
            servers.append((name, [sys.executable, "-m", "uvicorn", f"{module}:app", *quiet]))
        db = f"sqlite:///{work / 'floor.db'}"
        servers.append(("devassign", [sys.executable, "-m", "devassign", "server", "--no-auth", "--db", db]))
        for name, cmd in servers:
            port = free_port()
            ms = _measure([*cmd, "--port", str(port)], work, port, args.requests, env)
            print(f"{name:<24} {ms:.3f} ms of server CPU a request")
    print(f"load avg {loadavg()}")


if __name__ == "__main__":
    main()
