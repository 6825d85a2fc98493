"""USB tokens that share a serial keep their names while another one comes or goes.

Two tokens with one serial are named by port (``usb:1-5``) and a lone one by its serial, so
before, pulling out or plugging in another token renamed a token a consumer held: the server
saw the held one missing and offered the "new" name, the same token, to a second consumer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.agent.state import HeldType, StateFile
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import SyntheticHost, host

SERIAL_NAME = "usb:096e:0006:0001"
CONFIG = parse_config({"device": [{"type": "FEITIAN", "match": {"kind": "usb", "vendor_id": "096e"}}]})


def names(h: SyntheticHost, memory: dict[str, dict[str, Any]] | None, **kw: Any) -> dict[str, str]:
    """bus path -> address of every USB device found."""
    inv = build_inventory(Sysfs(h.root), CONFIG, pci_ids=None, usb_names=memory, **kw)
    return {str(d.attributes["bus_path"]): d.address for d in inv.devices if d.offered}


def token(h: SyntheticHost, bus_path: str, serial: str = "0001") -> None:
    h.usb(bus_path, "096e", "0006", serial=serial)


def test_pulling_out_a_token_that_shares_the_serial_does_not_rename_the_other(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-4")
    token(h, "1-5")
    memory: dict[str, dict[str, Any]] = {}
    assert names(h, memory) == {"1-4": "usb:1-4", "1-5": "usb:1-5"}
    h.remove("1-4")
    assert names(h, memory) == {"1-5": "usb:1-5"}  # was usb:096e:0006:0001: the held one "missing"
    token(h, "1-8")  # a third one with the same serial: a newcomer, named by its port
    assert names(h, memory) == {"1-5": "usb:1-5", "1-8": "usb:1-8"}


def test_plugging_in_a_token_with_the_same_serial_does_not_rename_the_first(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-4")
    memory: dict[str, dict[str, Any]] = {}
    assert names(h, memory) == {"1-4": SERIAL_NAME}
    token(h, "1-5")
    assert names(h, memory) == {"1-4": SERIAL_NAME, "1-5": "usb:1-5"}  # the serial name once only
    h.remove("1-4")
    assert names(h, memory) == {"1-5": "usb:1-5"}
    h.remove("1-5")
    token(h, "1-6")  # alone again, and new: its serial is its name
    assert names(h, memory) == {"1-6": SERIAL_NAME}


def test_another_token_at_the_port_is_a_newcomer(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-4")
    token(h, "1-5")
    memory: dict[str, dict[str, Any]] = {}
    names(h, memory)
    h.remove("1-4")
    h.remove("1-5")
    token(h, "1-5", serial="0002")  # another serial at the held token's port
    assert names(h, memory) == {"1-5": "usb:096e:0006:0002"}


def test_the_names_survive_a_restart_through_the_state_file(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-4")
    token(h, "1-5")
    path = tmp_path / "state.json"
    state = StateFile(path, host="hw-1", durable=False)
    names(h, state.state.usb_names)
    state.save()
    h.remove("1-4")
    again = StateFile(path, host="hw-1", durable=False)  # a restarted agent
    assert names(h, again.state.usb_names) == {"1-5": "usb:1-5"}


def test_a_held_token_away_for_a_while_gets_its_name_back(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-4")
    token(h, "1-5")
    memory: dict[str, dict[str, Any]] = {}
    names(h, memory)
    held = {"usb:1-5": HeldType("FEITIAN", "usb", "096e", "0006")}
    h.remove("1-5")  # re-enumerated, or pulled out and put back
    assert names(h, memory, held_types=held) == {"1-4": "usb:1-4"}
    h.remove("1-4")
    token(h, "1-5")
    assert names(h, memory, held_types=held) == {"1-5": "usb:1-5"}


def test_without_memory_tokens_sharing_a_serial_are_named_by_port(tmp_path: Path) -> None:
    h = host(tmp_path)
    token(h, "1-2")
    token(h, "1-3")
    assert names(h, None) == {"1-2": "usb:1-2", "1-3": "usb:1-3"}


def test_the_shared_serial_is_logged_once_per_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = host(tmp_path)
    token(h, "1-2")
    token(h, "1-3")
    warned: set[str] = set()
    memory: dict[str, dict[str, Any]] = {}
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            names(h, memory, warned=warned)
            memory.clear()  # newcomers each time: the warning is still not repeated
    shared = [r.getMessage() for r in caplog.records if "identity shared" in r.getMessage()]
    assert len(shared) == 2, shared


def test_a_held_tokens_serial_name_is_not_given_to_a_twin_while_it_is_away(tmp_path: Path) -> None:
    """A held token named by its serial, pulled out; a twin with the same serial plugged in
    elsewhere meanwhile took the held name: the server took the twin for the held token."""
    h = host(tmp_path)
    token(h, "1-4")
    memory: dict[str, dict[str, Any]] = {}
    held = {SERIAL_NAME: HeldType("FEITIAN", "usb", "096e", "0006")}
    assert names(h, memory, held_types=held) == {"1-4": SERIAL_NAME}
    h.remove("1-4")
    token(h, "1-7")
    assert names(h, memory, held_types=held) == {"1-7": "usb:1-7"}
    token(h, "1-4")  # the held one back at its port: its name again
    assert names(h, memory, held_types=held) == {"1-4": SERIAL_NAME, "1-7": "usb:1-7"}
