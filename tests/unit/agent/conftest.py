"""Shared helpers for the agent's tests: the synthetic sysfs builder and the real trees."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

REALDATA = Path(__file__).resolve().parents[2] / "data" / "realdata"


@pytest.fixture
def realdata(tmp_path: Path) -> Callable[[str], Path]:
    """Unpack ``tests/data/realdata/<name>`` into ``tmp_path`` and return the folder.

    The samples are part of the repository: a missing one fails the test, it never skips.
    """

    def unpack(name: str) -> Path:
        archive = REALDATA / name
        if not archive.exists():
            pytest.fail(f"{archive} is missing: the real-data samples belong to the repository")
        dest = tmp_path / archive.name.removesuffix(".tar.gz")
        dest.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="tar")
        return dest

    return unpack
