"""The dashboard in a real browser: headless Chromium, driven by Playwright, against a real
``devassign server`` process.

A person signs in with a token, reads the same numbers as the API, and sees a claim, a taint
and a release appear on the open page without reloading it, each within
:data:`LIVE_SECONDS` (the one time-bounded check here: it is what a live view promises).
Screenshots go to the test's temporary folder, or with ``DEVASSIGN_SCREENSHOTS=docs`` to
``docs/dashboard-live.png`` and ``docs/dashboard-host.png`` (how the docs' pictures are made).

Chromium is Debian's (``apt-get install chromium``; ``DEVASSIGN_CHROMIUM`` names another
binary) and Playwright the Python package (its driver is inside it; no browser download). The
test skips when either is missing, and fails instead under ``DEVASSIGN_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a server process and a browser

CHROMIUM = os.environ.get("DEVASSIGN_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("DEVASSIGN_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIVE_SECONDS = 2.0  # a change made through the API is on the open page within this
LIVE_MS = int(LIVE_SECONDS * 1000)
SHOTS_ENV = "DEVASSIGN_SCREENSHOTS"


def _playwright() -> Any:
    """Playwright's sync API, or a skip (a failure under DEVASSIGN_REQUIRE_BROWSER=1)."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed: pip install -e '.[test]'"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM}: apt-get install chromium (or set DEVASSIGN_CHROMIUM)"
    if problem is not None:
        if REQUIRE:
            pytest.fail(f"DEVASSIGN_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_playwright


def _gpu(address: str, numa: int) -> dict[str, Any]:
    return {
        **vf(address, type="GPU_A100"),
        "kind": "pci",
        "driver": "nvidia",
        "parent": None,
        "numa_node": numa,
    }


def _vgpu(parent: str, index: int, numa: int) -> dict[str, Any]:
    slot = vf(f"{parent}/nvidia-230/{index}", type="VGPU_T4_4Q")
    return {**slot, "kind": "mdev_type", "driver": None, "parent": parent, "numa_node": numa}


def _cloud(api: httpx.Client) -> None:
    """Two hosts: VFs of two PFs on NUMA nodes 0 and 1, a T4's vGPU slots and A100s."""
    for name, text in (
        ("NIC_VF_1G", "1G virtual functions of an E810"),
        ("GPU_A100", "whole A100 GPUs"),
        ("VGPU_T4_4Q", "T4 vGPU slots"),
    ):
        assert api.post("/v1/resource-types", json={"name": name, "description": text}).status_code == 201
    for host, gpus in (("compute-1", 2), ("compute-2", 1)):
        devices = [vf(f"0000:3b:02.{i}") for i in range(8)]
        devices += [vf(f"0000:86:02.{i}", parent="0000:86:00.0", numa_node=1) for i in range(4)]
        devices += [_vgpu("0000:d8:00.0", i, 1) for i in range(4)]
        devices += [_gpu(f"0000:{0xAF + n:02x}:00.0", 1) for n in range(gpus)]
        r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200 and not r.json()["refused"], r.text
    r = api.post(
        "/v1/claims",
        json={"consumer": "vm-early", "project": "demo", "extra_specs": {"hardware_resource:GPU_A100": "1"}},
    )
    assert r.status_code == 201, r.text


def _numbers_match_the_api(page: Any, api: httpx.Client) -> None:
    for t in api.get("/v1/resource-types").json():
        row = page.locator(f'tr[data-type="{t["name"]}"]')
        for key in ("total", "available", "reserved", "assigned", "cleaning", "tainted"):
            shown = row.locator(f'[data-count="{key}"]').inner_text()
            assert int(shown) == t["counts"][key], (t["name"], key, shown)
    for h in api.get("/v1/hosts").json():
        assert page.locator(f'tr[data-host="{h["name"]}"]').get_attribute("data-status") == h["status"]


def _wait_live(page: Any, check: str, arg: Any, what: str) -> None:
    """Wait, at most :data:`LIVE_SECONDS`, for ``check`` (a JavaScript predicate) on the page."""
    try:
        page.wait_for_function(check, arg=arg, timeout=LIVE_MS)
    except Exception as exc:  # Playwright's TimeoutError, with the page's state for the reader
        status = page.locator("#live-status").inner_text()
        raise AssertionError(
            f"{what}: not on the page within {LIVE_SECONDS} s (live status: {status!r})"
        ) from exc


COUNT_IS = """([type, key, want]) => {
  const cell = document.querySelector(`tr[data-type="${type}"] [data-count="${key}"]`);
  return cell !== null && cell.textContent === want;
}"""
TEXT_SHOWN = "(text) => document.querySelector('main').textContent.includes(text)"
SELECTOR_FOUND = "(selector) => document.querySelector(selector) !== null"


def test_a_signed_in_browser_sees_claims_and_taints_without_reloading(tmp_path: Path) -> None:
    sync_playwright = _playwright()
    db = f"sqlite:///{tmp_path / 'devassign.db'}"
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    with running_server(db, log=tmp_path / "server.log") as url:
        token = cli("token", "create", "--role", "admin", "--db", db).stdout.strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            _cloud(api)
            with sync_playwright() as pw:
                browser = pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=CHROMIUM_ARGS,
                    viewport={"width": 1360, "height": 900},
                )
                try:
                    _drive(browser, url, token, api, shots)
                finally:
                    browser.close()


def _drive(browser: Any, url: str, token: str, api: httpx.Client, shots: Path) -> None:
    page = browser.pages[0] if browser.pages else browser.new_page()
    problems: list[str] = []  # script errors, CSP refusals, requests to anywhere else
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: None if r.url.startswith(url) else problems.append(f"request to {r.url}"))

    # Sign in with the token, as a person pastes it.
    page.goto(f"{url}/ui/login")
    page.fill('input[name="token"]', token)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{url}/ui/")
    page.wait_for_selector("#live-status.on")  # the event stream is open
    _numbers_match_the_api(page, api)

    # A claim through the API appears on the open overview: counts and the event log.
    page.evaluate("window.devassignNotReloaded = true")
    nic = next(t for t in api.get("/v1/resource-types").json() if t["name"] == "NIC_VF_1G")["counts"]
    r = api.post(
        "/v1/claims",
        json={
            "consumer": "vm-browser",
            "project": "demo",
            "extra_specs": {"hardware_resource:NIC_VF_1G": "2"},
        },
    )
    assert r.status_code == 201, r.text
    claim = r.json()
    _wait_live(page, COUNT_IS, ["NIC_VF_1G", "available", str(nic["available"] - 2)], "the claim's counts")
    _wait_live(page, TEXT_SHOWN, "vm-browser", "the claim's event")
    assert page.evaluate("window.devassignNotReloaded === true"), "the page was reloaded"
    _numbers_match_the_api(page, api)
    page.screenshot(path=str(shots / "dashboard-live.png"), full_page=True)

    # The claimed host's device map: the claim's devices reserved, then a taint and a release.
    host = claim["host"]
    page.goto(f"{url}/ui/hosts/{host}")
    page.wait_for_selector("#live-status.on")
    page.evaluate("window.devassignNotReloaded = true")
    for d in claim["devices"]:
        assert page.locator(f'[data-device="{d["id"]}"]').get_attribute("data-state") == "reserved"
    free = [
        d
        for d in api.get(
            "/v1/devices", params={"host": host, "type": "NIC_VF_1G", "state": "available"}
        ).json()
    ]
    victim = free[-1]["id"]
    r = api.post(f"/v1/devices/{victim}/taints", json={"effect": "NoSchedule", "reason": "flapping link"})
    assert r.status_code == 201, r.text
    _wait_live(page, SELECTOR_FOUND, f'[data-device="{victim}"][data-taint~="NoSchedule"]', "the taint")
    # A parent's taint covers it and every device under it: the PF's VFs on NUMA node 0.
    drain = {"effect": "Drain", "reason": "cable replacement", "parent": "0000:3b:00.0"}
    assert api.post(f"/v1/hosts/{host}/taints", json=drain).status_code == 201
    assert api.delete("/v1/allocations/vm-browser").status_code in (200, 204)
    released = f'[data-device="{claim["devices"][0]["id"]}"][data-state="cleaning"]'
    _wait_live(page, SELECTOR_FOUND, released, "the release")
    assert page.evaluate("window.devassignNotReloaded === true"), "the page was reloaded"
    for d in api.get("/v1/devices", params={"host": host}).json():
        cell = page.locator(f'[data-device="{d["id"]}"]')
        assert cell.get_attribute("data-state") == d["state"], d["address"]
        assert (cell.get_attribute("data-taint") or "") == " ".join(
            sorted({t["effect"] for t in d["taints"]})
        )
    page.screenshot(path=str(shots / "dashboard-host.png"), full_page=True)

    # The tainted device's page says why; its history has the taint.
    page.click(f'[data-device="{victim}"]')
    page.wait_for_selector("text=flapping link")
    assert "device_tainted" in page.locator("main").inner_text()
    assert problems == [], problems
