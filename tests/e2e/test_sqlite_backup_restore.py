"""An operator's SQLite backup and restore, as the operations guide writes them: a stopped
server leaves one self-contained database file (its write-ahead log moved into it), so a
backup copied over that file is what the next start reads, not undone by an old ``-wal``."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow


def _types(url: str) -> set[str]:
    resp = httpx.get(f"{url}/v1/resource-types")
    assert resp.status_code == 200, resp.text
    return {t["name"] for t in resp.json()}


def test_a_stopped_server_leaves_no_write_ahead_log(tmp_path: Path) -> None:
    db = tmp_path / "devassign.db"
    with running_server(f"sqlite:///{db}", auth=False) as url:
        cli("type", "create", "GPU_X", "--description", "x", env={"DEVASSIGN_URL": url})
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # The file alone (no journal beside it) holds what the server wrote.
    alone = tmp_path / "alone.db"
    shutil.copyfile(db, alone)
    with sqlite3.connect(alone) as conn:
        assert conn.execute("SELECT name FROM resource_types").fetchall() == [("GPU_X",)]


def test_a_backup_restored_over_a_stopped_servers_file_is_what_it_reads(tmp_path: Path) -> None:
    db = tmp_path / "devassign.db"
    backup = tmp_path / "backup.db"
    with running_server(f"sqlite:///{db}", auth=False) as url:
        cli("type", "create", "BEFORE", "--description", "x", env={"DEVASSIGN_URL": url})
        with sqlite3.connect(db) as live, sqlite3.connect(backup) as out:
            live.backup(out)  # what `sqlite3 devassign.db ".backup FILE"` does
        cli("type", "create", "AFTER", "--description", "x", env={"DEVASSIGN_URL": url})
    shutil.copyfile(backup, db)  # the restore, with the server stopped
    with running_server(f"sqlite:///{db}", auth=False) as url:
        assert _types(url) == {"BEFORE"}
