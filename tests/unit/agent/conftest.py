"""Shared helpers for the agent's tests: the synthetic sysfs builder and the real trees."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

REALDATA = Path(__file__).resolve().parents[3].parent / "shared" / "realdata"


@pytest.fixture
def realdata(tmp_path: Path) -> Callable[[str], Path]:
    """Unpack ``shared/realdata/<name>`` into ``tmp_path`` and return the folder; skip if absent."""

    def unpack(name: str) -> Path:
        archive = REALDATA / name
        if not archive.exists():
            pytest.skip(f"{archive} is not here")
        dest = tmp_path / archive.name.removesuffix(".tar.gz")
        dest.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="tar")
        return dest

    return unpack
