"""Registers the ``vm`` marker for tests/vm/test_real_kernel.py while pyproject.toml has no
``markers`` line for it (``--strict-markers`` would refuse to collect the file); harmless once
it has one."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.split(":", 1)[0].strip() == "vm" for line in config.getini("markers")):
        config.addinivalue_line("markers", "vm: boots a QEMU guest with a real Linux kernel (tests/vm)")
