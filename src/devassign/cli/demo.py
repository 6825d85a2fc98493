"""``devassign demo``: a whole cloud on one machine, in a minute.

A server on a fresh SQLite file, a few simulated hosts (real agents over generated, SYNTHETIC
sysfs trees whose kernel reactions are simulated), then the life of some requests: claims
that fit, one that cannot and says why, setup by the agents, the libvirt XML, a release and
its cleanup. It prints the usage table; ``--keep-running`` leaves the server and the agents up
for the CLI and the browser, and prints the dashboard's address, a one-time sign-in link to it
and the admin token.

Its files go to a temporary folder, removed at the end, or to ``--data-dir``, kept. The demo
deletes only what it made: a ``--data-dir`` must be new, empty, or a folder an earlier demo
made (it holds the :data:`MARKER` file, which lists what that demo wrote).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

from devassign import schemas
from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.cli.client import Client, CliError, ExitCode, api_path
from devassign.cli.inventory import ALLOCATION_COLUMNS, HOST_COLUMNS, type_columns
from devassign.cli.output import Format, console, emit
from devassign.domain import Role
from devassign.lifecycle.host import HostOps
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.testing.sysfs import SyntheticHost, host

TYPES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("NIC_VF_1G", "1G virtual function of an Intel E810", None, {}),
    ("GPU_A100", "NVIDIA A100 80GB, whole GPU", None, {}),
    ("VGPU_T4_4Q", "NVIDIA T4 vGPU slot, profile T4-4Q", None, {}),
    ("Encryption_card", "USB crypto token 0529:0620", "noop", {}),
]
# The request params each type accepts (a type accepts none unless it declares them).
TYPE_PARAMS: dict[str, dict[str, Any]] = {
    "NIC_VF_1G": {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}},
}

AGENT_RULES: dict[str, Any] = {
    "device": [
        {
            "type": "NIC_VF_1G",
            "match": {"vendor_id": "8086", "product_id": "1889", "kind": "sriov_vf"},
            "attributes": {"physical_network": "physnet1"},
        },
        {
            "type": "GPU_A100",
            "match": {"vendor_id": "10de", "product_id": "20b5"},
            "attributes": {"memory_mib": 81920},
        },
        {"type": "VGPU_T4_4Q", "match": {"kind": "mdev_type", "mdev_type": "nvidia-230"}},
    ],
    "resource": [{"type": "Encryption_card", "information": "USB: 0529:0620", "count": 1}],
}


def build_host(root: Path, index: int) -> SyntheticHost:
    """One compute host: an E810 with 8 VFs (4 per NUMA node), two A100s, a T4 cut in 4 slots."""
    h = host(root, vfio=True)
    for numa, pf in enumerate(("0000:3b:00.0", "0000:86:00.0")):
        h.sriov_pf(
            pf,
            "8086",
            "159b",
            vfs=4,
            vf_device="1889",
            ifname=f"ens{numa + 1}f0",
            numa=numa,
            iommu_group=10 + numa * 10,
            vf_iommu_group_start=11 + numa * 10,
        )
    h.pci("0000:af:00.0", "10de", "20b5", cls="030200", numa=1, iommu_group=40, driver="nvidia")
    if index % 2 == 0:
        h.pci("0000:d8:00.0", "10de", "20b5", cls="030200", numa=1, iommu_group=41, driver="nvidia")
    h.mdev_parent(
        "0000:5e:00.0",
        "10de",
        "1eb8",
        types={"nvidia-230": {"name": "GRID T4-4Q", "available": 4}},
        numa=0,
        iommu_group=42,
    )
    return h


MARKER = ".devassign-demo"
LOCK = ".devassign-demo.lock"  # held (flock) by the demo running in the folder
_DEMO_ENTRY_RE = re.compile(r"demo\.db(-wal|-shm|-journal)?|compute-[0-9]+")


def _demo_entries(n_hosts: int) -> list[str]:
    """What a demo with ``n_hosts`` hosts writes in its folder (SQLite adds its journals)."""
    db = ["demo.db", "demo.db-wal", "demo.db-shm", "demo.db-journal"]
    return db + [f"compute-{i + 1}" for i in range(n_hosts)]


def _prepare_data_dir(folder: Path, n_hosts: int) -> IO[str]:
    """Make ``folder`` ready for a demo without touching anything a demo did not write there;
    returns the open lock file that holds it for this demo (keep it open while the demo runs).

    New or empty: used. Holding the marker: what the earlier demo listed in it is deleted,
    the rest is left. Anything else is refused (``--data-dir .`` must never wipe a folder), and
    so is a folder another demo is running in (deleting its files would lose what it keeps).
    """
    folder = folder.expanduser()
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--data-dir {folder}: not a folder", status=ExitCode.USAGE)
    marker = folder / MARKER
    if folder.is_dir() and any(folder.iterdir()) and not marker.is_file():
        raise CliError(
            f"--data-dir {folder}: not empty and not a folder an earlier `devassign demo` made "
            f"(no {MARKER} file); give a new or empty folder",
            status=ExitCode.USAGE,
        )
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / LOCK).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise CliError(
            f"--data-dir {folder}: another `devassign demo` is running in it; stop it first, or give "
            "another folder",
            status=ExitCode.USAGE,
        ) from None
    if marker.is_file():
        try:
            earlier = json.loads(marker.read_text()).get("wrote", [])
        except (OSError, ValueError, AttributeError) as exc:
            lock.close()
            raise CliError(f"{marker}: unreadable ({exc}); remove the folder yourself") from exc
        for name in earlier:
            if not isinstance(name, str) or not _DEMO_ENTRY_RE.fullmatch(name):
                continue  # only names a demo writes; never a path out of the folder
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    marker.write_text(json.dumps({"wrote": _demo_entries(n_hosts)}) + "\n")
    return lock


def _free_port(preferred: int) -> int:
    """``preferred`` unless something listens there, else a free port.

    With SO_REUSEADDR, as the server binds: a port whose connections are in TIME_WAIT (a
    server stopped a minute ago) is free for the server and must not look taken here.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(app: Any, port: int) -> Iterator[uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise CliError(f"the demo server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _step(title: str) -> None:
    console.print(f"\n[bold cyan]== {title}[/bold cyan]")


def _agents_pass(agents: list[Agent]) -> None:
    for agent in agents:
        for done in agent.work():
            console.print(
                f"  {agent.config.host}: {done.action} {done.address} -> {done.state or done.note}",
                highlight=False,
            )


def run_demo(*, port: int, n_hosts: int, keep_running: bool, data_dir: Path | None) -> None:
    if n_hosts < 1:
        raise CliError("--hosts must be at least 1", status=ExitCode.USAGE)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd, `timeout`, a container's stop) ends the demo as Ctrl-C does: its
        # temporary folder is removed and its database closed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if data_dir is not None:
        with _prepare_data_dir(data_dir, n_hosts):
            _run(data_dir.expanduser(), port=port, n_hosts=n_hosts, keep_running=keep_running)
        return
    base = Path(tempfile.mkdtemp(prefix="devassign-demo-"))
    try:
        _run(base, port=port, n_hosts=n_hosts, keep_running=keep_running)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # made by mkdtemp above: all of it is the demo's


def _run(base: Path, *, port: int, n_hosts: int, keep_running: bool) -> None:
    settings = Settings(db_url=f"sqlite:///{base / 'demo.db'}", auth=True, sweep_interval=1.0)
    app = create_app(settings)
    store = app.state.store
    try:
        _show(app, store, base, port=port, n_hosts=n_hosts, keep_running=keep_running)
    finally:
        store.db.dispose()


def _show(app: Any, store: Any, base: Path, *, port: int, n_hosts: int, keep_running: bool) -> None:
    created = store.create_token(schemas.TokenCreate(role=Role.ADMIN, name="demo-admin"), actor="demo")
    admin, admin_id = created.token, created.id
    asked, port = port, _free_port(port)
    if port != asked:
        console.print(f"port {asked} is in use: the demo server takes port {port} instead", highlight=False)
    url = f"http://127.0.0.1:{port}"

    with _serving(app, port):
        api = Client(url, admin)
        _step(f"server on {url} (SQLite {base / 'demo.db'})")
        _step(f"the catalog: {len(TYPES)} resource types ({', '.join(name for name, *_ in TYPES)})")
        for name, description, handler, type_config in TYPES:
            api.post(
                "/v1/resource-types",
                {
                    "name": name,
                    "description": description,
                    "handler": handler,
                    "config": type_config,
                    "params": TYPE_PARAMS.get(name, {}),
                },
            )
        agents = []
        for i in range(n_hosts):
            name = f"compute-{i + 1}"
            h = build_host(base / name, i)
            token = store.create_token(schemas.TokenCreate(role=Role.AGENT, host=name), actor="demo").token
            config = parse_config(
                {
                    "host": name,
                    "server": url,
                    "token": token,
                    "state_file": str(base / name / "state.json"),
                    "report_interval": 5,
                    "work_interval": 1,
                    **AGENT_RULES,
                },
                source=f"demo:{name}",
            )
            agent = Agent(config, h.root, ops=HostOps.simulated(h.root), client=httpx.Client(timeout=10))
            agents.append(agent)

        _step(f"{n_hosts} agents discover their (simulated) sysfs and report")
        for agent in agents:
            result = agent.run_once().report
            added = len(result.added) if result else 0
            console.print(f"  {agent.config.host}: {added} devices reported", highlight=False)
        found = api.get("/v1/resource-types")
        emit(found, Format.table, type_columns(found), title="resource types")

        _step("claims")
        requests: list[tuple[str, str, dict[str, Any]]] = [
            (
                "vm-1",
                "2 NIC VFs on one NUMA node, each with its MAC, on VLAN 100",
                {
                    "requests": [
                        {
                            "name": "nic0",
                            "type": "NIC_VF_1G",
                            "params": {"mac": "52:54:00:00:00:01", "vlan": 100},
                        },
                        {
                            "name": "nic1",
                            "type": "NIC_VF_1G",
                            "params": {"mac": "52:54:00:00:00:02", "vlan": 100},
                        },
                    ],
                    "constraints": [{"requests": ["nic0", "nic1"], "match": "numa_node"}],
                },
            ),
            (
                "vm-2",
                "an A100 and a VF on the same NUMA node",
                {
                    "requests": [
                        {"name": "gpu", "type": "GPU_A100", "count": 1},
                        {"name": "nic", "type": "NIC_VF_1G", "count": 1},
                    ],
                    "constraints": [{"requests": ["gpu", "nic"], "match": "numa_node"}],
                },
            ),
            ("vm-3", "one T4 vGPU slot (short form)", {"extra_specs": {"hardware_resource:VGPU_T4_4Q": "1"}}),
            ("vm-4", "the encryption card", {"extra_specs": {"hardware_resource:Encryption_card": "1"}}),
            (
                "vm-5",
                "3 A100 on one host (no host has 3)",
                {"extra_specs": {"hardware_resource:GPU_A100": "3"}},
            ),
        ]
        for consumer, what, body in requests:
            try:
                made = api.post("/v1/claims", {"consumer": consumer, "project": "demo", **body})
            except CliError as exc:
                console.print(f"  {consumer} ({what}): [red]refused[/red] -- {exc.message}", highlight=False)
                continue
            devices = ", ".join(d["address"] for d in made["devices"])
            console.print(f"  {consumer} ({what}): {made['host']} {devices}", highlight=False)

        _step("agents set the reserved devices up (vfio-pci, VF MAC/VLAN, mdev create)")
        _agents_pass(agents)
        emit(api.get("/v1/allocations"), Format.table, ALLOCATION_COLUMNS, title="allocations")
        _step("libvirt XML for vm-1")
        console.print(api.http.get("/v1/allocations/vm-1/libvirt").text, highlight=False, markup=False)

        _step("release vm-2; the agent cleans its devices before anyone else gets them")
        api.delete("/v1/allocations/vm-2")
        _agents_pass(agents)

        _step("usage")
        found = api.get("/v1/resource-types")
        emit(found, Format.table, type_columns(found), title="resource types")
        emit(api.get("/v1/hosts"), Format.table, HOST_COLUMNS, title="hosts")
        if not keep_running:
            # The server stops with this function: no address to visit.
            print(  # plain: an address wrapped to the terminal's width could not be copied
                "\n(run `devassign demo --keep-running` to keep the server and agents up, with the "
                f"dashboard at {url}/ui/)"
            )
            return
        link = api.post(api_path("/v1/tokens/{}/login-link", admin_id))["url"]
        # Plain prints: a link or a token wrapped to the terminal's width could not be copied.
        print(
            "\nThe demo keeps running until Ctrl-C.\n"
            f"  dashboard:    {url}/ui/\n"
            f"  sign in:      {link}\n"
            "                (one click; the link works once, within 10 minutes)\n"
            f"  API:          {url}/docs\n"
            f"  admin token:  {admin}\n"
            "For the CLI, in another terminal:\n"
            f"  export DEVASSIGN_URL={url} DEVASSIGN_TOKEN={admin}\n"
            "  devassign types\n"
            f"  devassign token login-link {admin_id}    # another sign-in link to the dashboard",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                for agent in agents:
                    agent.step()
                time.sleep(1)
