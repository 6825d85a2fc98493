"""The dashboard at many hosts: the hosts page pages by name, the overview counts every host
but lists only the first few, and the devices page takes a typed host name."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

from devassign.web import pages
from tests.conftest import vf

NAMES = [f"compute-{i}" for i in range(5)]


@pytest.fixture
def fleet(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr(pages, "HOSTS_PER_PAGE", 2)
    monkeypatch.setattr(pages, "OVERVIEW_HOSTS", 3)
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    for name in reversed(NAMES):
        r = api.put(f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1")]})
        assert r.status_code == 200, r.text
    return api


def _hosts(page: str) -> list[str]:
    return re.findall(r'data-host="([^"]+)"', page)


def _next(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)">next</a>', page)
    return html.unescape(found.group(1)) if found else None


def test_the_hosts_page_walks_every_host_a_page_at_a_time(fleet: TestClient) -> None:
    seen: list[str] = []
    url: str | None = "/ui/hosts"
    while url is not None:
        r = fleet.get(url)
        assert r.status_code == 200, r.text
        assert "5 hosts, by name" in r.text
        seen += _hosts(r.text)
        url = _next(r.text)
    assert seen == NAMES
    later = fleet.get("/ui/hosts", params={"after": "compute-1"})
    assert _hosts(later.text) == ["compute-2", "compute-3"]
    assert '<a href="/ui/hosts">first</a>' in later.text
    # The live part follows the same page.
    assert 'data-live="/ui/fragments/hosts?after=compute-1"' in later.text
    part = fleet.get("/ui/fragments/hosts", params={"after": "compute-1"})
    assert _hosts(part.text) == ["compute-2", "compute-3"] and "<html" not in part.text


def test_the_overview_counts_every_host_and_lists_the_first(fleet: TestClient) -> None:
    page = fleet.get("/ui/").text
    assert "5 up, 0 down" in page
    assert _hosts(page) == NAMES[:3]
    assert '<a href="/ui/hosts">all 5 hosts</a>' in page


def test_the_devices_page_takes_a_host_name_not_a_list_of_every_host(fleet: TestClient) -> None:
    page = fleet.get("/ui/devices", params={"host": "compute-3"}).text
    assert '<input type="text" name="host" value="compute-3"' in page
    assert '<select name="host"' not in page
    assert re.findall(r'<a href="/ui/hosts/([^"]+)">', page) == ["compute-3"]


def test_a_too_long_after_is_an_html_400(fleet: TestClient) -> None:
    r = fleet.get("/ui/hosts", params={"after": "h" * 254})
    assert r.status_code == 400 and "text/html" in r.headers["content-type"]
