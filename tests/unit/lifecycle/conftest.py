"""Fixtures of the lifecycle tests; the SYNTHETIC host itself is in support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.lifecycle.support import Machine, new_machine


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return new_machine(tmp_path)
