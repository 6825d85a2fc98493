"""The web dashboard as a person sees it: pages render, everything is escaped, roles hold."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import Clock, vf


def _type(api: TestClient, name: str, description: str = "", **headers: str) -> None:
    r = api.post("/v1/resource-types", json={"name": name, "description": description}, headers=headers)
    assert r.status_code == 201, r.text


def _gpu(address: str) -> dict[str, Any]:
    return {**vf(address, type="GPU_A100"), "kind": "pci", "driver": "nvidia", "parent": None}


def _vgpu(parent: str, index: int) -> dict[str, Any]:
    return {
        **vf(f"{parent}/nvidia-230/{index}", type="VGPU_T4_4Q"),
        "kind": "mdev_type",
        "driver": None,
        "parent": parent,
    }


def _report(api: TestClient, host: str, devices: list[dict[str, Any]], **headers: str) -> None:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices}, headers=headers)
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _cloud(api: TestClient, **headers: str) -> None:
    """Two hosts with VFs under a PF, a GPU and two vGPU slots of another GPU; vm-1 holds one VF."""
    _type(api, "NIC_VF_1G", "1G virtual functions", **headers)
    _type(api, "GPU_A100", "whole A100 GPUs", **headers)
    _type(api, "VGPU_T4_4Q", "T4 vGPU slots", **headers)
    for host in ("compute-1", "compute-2"):
        devices = [vf("0000:3b:02.1"), vf("0000:3b:02.2"), _gpu("0000:af:00.0")]
        devices += [_vgpu("0000:d8:00.0", 0), _vgpu("0000:d8:00.0", 1)]
        _report(api, host, devices, **headers)
    r = api.post(
        "/v1/claims",
        json={"consumer": "vm-1", "project": "demo", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}},
        headers=headers,
    )
    assert r.status_code == 201, r.text


def _text(page: str) -> str:
    """The page's visible text, tags dropped, for assertions that read like the page."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _assert_tables_aligned(page: str) -> None:
    """Every row has as many cells as its table has headings (rows spanning all columns aside)."""
    for one in re.findall(r"<table>(.*?)</table>", page, re.S):
        headings = len(re.findall(r"<th[ >]", one.split("</thead>")[0]))
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", one.split("</thead>")[1], re.S):
            if "colspan" not in row:
                assert row.count("<td") == headings, row


def test_root_redirects_to_the_overview(api: TestClient) -> None:
    r = api.get("/", follow_redirects=False)
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/ui/"


def test_overview_shows_counts_per_type_hosts_and_newest_events(api: TestClient) -> None:
    _cloud(api)
    r = api.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # Live updates come from live.js; a browser without scripts reloads the page instead.
    assert '<noscript><meta http-equiv="refresh" content="10"></noscript>' in r.text
    _assert_tables_aligned(r.text)
    text = _text(r.text)
    # type, total, available, reserved, assigned, cleaning, out of service
    assert "NIC_VF_1G 1G virtual functions 4 3 1 0 0 0" in text
    assert "VGPU_T4_4Q T4 vGPU slots 4 4 0 0 0 0" in text
    assert "2 up, 0 down" in text
    assert "compute-1" in text and "compute-2" in text
    assert "vm-1" in text  # the claim's event
    assert 'class="bar"' in r.text
    # One script, the package's own file; never inline (the CSP admits only this server's files).
    assert re.findall(r"<script[^>]*>(.*?)</script>", r.text, re.S | re.I) == [""]
    assert re.search(r'<script src="/ui/static/live\.js\?v=[0-9a-f]{12}" defer>', r.text)


def test_host_page_groups_vfs_under_their_pf_and_vgpu_slots_under_their_gpu(api: TestClient) -> None:
    _cloud(api)
    r = api.get("/ui/hosts")
    assert r.status_code == 200 and "compute-2" in r.text
    page = api.get("/ui/hosts/compute-1")
    assert page.status_code == 200
    _assert_tables_aligned(page.text)
    # The table below the device map: parents as heading rows, their devices under them.
    text = _text(page.text.split("grouped by parent")[1])
    pf = text.index("PF 0000:3b:00.0")
    gpu = text.index("GPU 0000:d8:00.0")
    assert pf < text.index("0000:3b:02.1") < text.index("0000:3b:02.2") < gpu
    assert gpu < text.index("0000:d8:00.0/nvidia-230/0") < text.index("0000:d8:00.0/nvidia-230/1")
    assert "standalone devices" in text and "0000:af:00.0" in text


def test_unknown_host_is_an_html_404(api: TestClient) -> None:
    r = api.get("/ui/hosts/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html") and "nope" in r.text


def test_devices_page_filters_by_host_type_and_state(api: TestClient) -> None:
    _cloud(api)
    all_of_them = _text(api.get("/ui/devices").text)
    assert all_of_them.count("0000:3b:02.1") == 2
    reserved = api.get("/ui/devices", params={"state": "reserved"})
    assert reserved.status_code == 200
    assert _text(reserved.text).count("NIC_VF_1G") >= 1 and "GPU_A100 pci" not in _text(reserved.text)
    one_host = _text(api.get("/ui/devices", params={"host": "compute-2", "type": "GPU_A100"}).text)
    assert "0000:af:00.0" in one_host and "0000:3b:02.1" not in one_host
    assert api.get("/ui/devices", params={"state": "sleepy"}).status_code == 400

    device_id = api.get("/v1/devices", params={"host": "compute-1", "type": "GPU_A100"}).json()[0]["id"]
    detail = api.get(f"/ui/devices/{device_id}")
    assert detail.status_code == 200 and "0000:af:00.0" in detail.text and "nvidia" in detail.text


def test_allocations_page_lists_who_holds_what(api: TestClient) -> None:
    _cloud(api)
    text = _text(api.get("/ui/allocations").text)
    assert "vm-1 demo" in text and "NIC_VF_1G" in text
    assert "no allocations" in _text(api.get("/ui/allocations", params={"consumer": "vm-9"}).text)


def test_events_page_filters_and_pages_back_with_before(api: TestClient) -> None:
    _cloud(api)
    newest = api.get("/v1/events", params={"limit": 1}).json()[0]
    by_consumer = _text(api.get("/ui/events", params={"consumer": "vm-1"}).text)
    assert "vm-1" in by_consumer and "compute-" in by_consumer
    older = api.get("/ui/events", params={"before": newest["id"]})
    assert older.status_code == 200
    assert f'event {newest["id"]}"' not in older.text
    assert "newest" in _text(older.text)
    assert api.get("/ui/events", params={"before": "soon"}).status_code == 400


def test_events_page_links_to_older_ones_when_there_are_more(api: TestClient) -> None:
    _type(api, "NIC_VF_1G")
    for generation in range(1, 60):  # each report with a new device adds an event
        devices = [vf(f"0000:3b:{i:02x}.1") for i in range(1, generation % 5 + 2)]
        api.put("/v1/hosts/h1/inventory", json={"generation": generation, "devices": devices})
    page = api.get("/ui/events")
    assert 'href="/ui/events?before=' in page.text


def test_everything_is_escaped(api: TestClient) -> None:
    _type(api, "EVIL", "<script>alert(1)</script> & co")
    r = api.get("/ui/")
    assert "<script>alert(1)</script>" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in r.text
    hostile = api.get("/ui/events", params={"consumer": '"><script>x</script>'})
    assert "<script>x" not in hostile.text and "&quot;&gt;&lt;script&gt;x" in hostile.text


def test_explain_says_why_a_request_cannot_be_placed_and_claims_nothing(api: TestClient) -> None:
    _cloud(api)
    r = api.get("/ui/explain", params={"specs": "hardware_resource:NIC_VF_1G=5\n", "hosts": "compute-1"})
    assert r.status_code == 200
    text = _text(r.text)
    assert "It does not fit" in text
    assert "compute-1 no" in text  # the host's verdict, with its reason beside it
    verdict = api.post(
        "/v1/explain", json={"extra_specs": {"hardware_resource:NIC_VF_1G": "5"}, "hosts": ["compute-1"]}
    ).json()
    assert verdict["hosts"][0]["message"] in text
    fits = _text(api.get("/ui/explain", params={"specs": "hardware_resource:GPU_A100=1"}).text)
    assert "It fits" in fits and "GPU_A100" in fits
    assert [a["consumer"] for a in api.get("/v1/allocations").json()] == ["vm-1"]


def test_explain_counts_each_host_the_pre_filter_left_out_once(api: TestClient, clock: Clock) -> None:
    """One host down and two whose only VF is tainted: three hosts, said as the CLI and a refused
    claim say it, not as the funnel's keys added up (down 1, lacking 2, tainted 2)."""
    _type(api, "NIC_VF_1G")
    for host in ("c1", "c2", "c3"):
        _report(api, host, [vf("0000:3b:02.1")])
    clock.advance(120)
    for host in ("c2", "c3"):
        assert api.post(f"/v1/hosts/{host}/heartbeat").status_code == 204
        device = api.get("/v1/devices", params={"host": host}).json()[0]
        taint = {"effect": "NoSchedule", "reason": "link flaps"}
        assert api.post(f"/v1/devices/{device['id']}/taints", json=taint).status_code == 201
    sentence = (
        "1 host down, 2 up hosts with too few free NIC_VF_1G (2 of them only because 2 NIC_VF_1G devices "
        "are tainted NoSchedule (link flaps, by no-auth))"
    )
    refused = api.post(
        "/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    )
    assert refused.status_code == 409 and sentence in refused.json()["error"]["message"]
    text = _text(api.get("/ui/explain", params={"specs": "hardware_resource:NIC_VF_1G=1"}).text)
    assert f"before scheduling: {sentence}" in text, text
    assert "tainted_NIC_VF_1G removed" not in text


def test_explain_form_reports_bad_input(api: TestClient) -> None:
    _cloud(api)
    assert api.get("/ui/explain").status_code == 200  # just the form
    bad = api.get("/ui/explain", params={"specs": "GPU please"})
    assert bad.status_code == 400 and "hardware_resource:TYPE=COUNT" in bad.text
    unknown = api.get("/ui/explain", params={"specs": "hardware_resource:NOPE=1"})
    assert unknown.status_code == 400 and "unknown resource type NOPE" in unknown.text


def test_dashboard_routes_stay_out_of_the_openapi_schema(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


# ---------------------------------------------------------------- with auth on


def _token(store: Store, role: str, **scope: str) -> str:
    made = store.create_token(schemas.TokenCreate(role=Role(role), **scope), actor="test")  # type: ignore[arg-type]
    return made.token


def test_without_a_token_the_dashboard_asks_to_sign_in(secure_api: TestClient) -> None:
    r = secure_api.get("/ui/hosts", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fhosts"
    form = secure_api.get(r.headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text


def test_login_with_a_bad_token_is_refused(secure_api: TestClient) -> None:
    r = secure_api.post("/ui/login", data={"token": "da_not-a-token", "next": "/ui/"}, follow_redirects=False)
    assert r.status_code == 401 and "unknown or revoked" in r.text
    assert "devassign_token" not in r.headers.get("set-cookie", "")


def test_admin_signs_in_and_out(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    r = secure_api.post("/ui/login", data={"token": admin, "next": "/ui/hosts"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/hosts"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert secure_api.get("/ui/hosts").status_code == 200
    secure_api.post("/ui/logout")
    assert secure_api.get("/ui/", follow_redirects=False).status_code == 303


def test_login_never_sends_you_to_another_site(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    r = secure_api.post("/ui/login", data={"token": admin, "next": "//evil.example/"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/"


def test_a_revoked_or_unknown_cookie_is_cleared(secure_api: TestClient) -> None:
    secure_api.cookies.set("devassign_token", "da_gone")
    r = secure_api.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert 'devassign_token=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]


@pytest.mark.parametrize("path", ["/ui/hosts", "/ui/hosts/compute-1", "/ui/devices"])
def test_a_member_cannot_see_hosts(secure_api: TestClient, store: Store, path: str) -> None:
    admin = {"Authorization": f"Bearer {_token(store, 'admin')}"}
    _cloud(secure_api, **admin)
    secure_api.cookies.set("devassign_token", _token(store, "member", project="other"))
    r = secure_api.get(path)
    assert r.status_code == 403 and "members see resource types" in r.text


def test_a_member_sees_types_and_only_its_projects_allocations(secure_api: TestClient, store: Store) -> None:
    admin = {"Authorization": f"Bearer {_token(store, 'admin')}"}
    _cloud(secure_api, **admin)
    secure_api.cookies.set("devassign_token", _token(store, "member", project="other"))
    overview = secure_api.get("/ui/")
    assert overview.status_code == 200
    text = _text(overview.text)
    assert "NIC_VF_1G" in text and "Your project's allocations" in text
    assert "compute-1" not in text and 'href="/ui/hosts"' not in overview.text
    assert "vm-1" not in _text(secure_api.get("/ui/allocations").text)
    assert "vm-1" not in _text(secure_api.get("/ui/events").text)

    secure_api.cookies.set("devassign_token", _token(store, "member", project="demo"))
    assert "vm-1" in _text(secure_api.get("/ui/allocations").text)


# ---------------------------------------------------------------- live pages


def _regions(page: str) -> dict[str, str]:
    """Each live part of a page: its fragment route -> its HTML."""
    found = re.findall(r'<div data-live="([^"]+)">(.*)</div></main>', page, re.S)
    return {html.unescape(src): body for src, body in found}


def test_live_pages_name_their_stream_and_fragments_that_render_the_same(api: TestClient) -> None:
    _cloud(api)
    newest = api.get("/v1/events", params={"limit": 1}).json()[0]["id"]
    device = api.get("/v1/devices", params={"host": "compute-1", "type": "GPU_A100"}).json()[0]["id"]
    on_host = "/ui/events/stream?host=compute-1&after="
    pages = {
        "/ui/": ("/ui/fragments/overview", f"/ui/events/stream?after={newest}"),
        "/ui/hosts/compute-1": ("/ui/fragments/hosts/compute-1", on_host),
        f"/ui/devices/{device}": (f"/ui/fragments/devices/{device}", on_host),
    }
    for path, (fragment, stream) in pages.items():
        r = api.get(path)
        assert r.status_code == 200, path
        assert f'data-stream="{html.escape(stream)}' in r.text, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        part = api.get(fragment)
        assert part.status_code == 200 and part.headers["x-devassign-fragment"] == "1"
        assert part.headers["cache-control"] == "no-store" and "<html" not in part.text
        # The fragment is the page's live part, as the page rendered it (ages aside).
        assert _text(_regions(r.text)[fragment]).split(" ago")[0] == _text(part.text).split(" ago")[0]

    events = api.get("/ui/events", params={"consumer": "vm-1"})
    assert 'data-live="/ui/fragments/events?consumer=vm-1"' in events.text
    assert "vm-1" in _text(api.get("/ui/fragments/events", params={"consumer": "vm-1"}).text)
    hosts = api.get("/ui/hosts")
    assert 'data-live="/ui/fragments/hosts"' in hosts.text and 'data-host="compute-2"' in hosts.text
    # An older page of events or of a device's history stands still.
    older = api.get("/ui/events", params={"before": newest})
    assert "data-live" not in older.text and "data-stream" not in older.text


def test_the_overview_numbers_carry_their_names(api: TestClient) -> None:
    _cloud(api)
    page = api.get("/ui/").text
    for t in api.get("/v1/resource-types").json():
        row = re.search(rf'<tr data-type="{t["name"]}">(.*?)</tr>', page, re.S)
        assert row, t["name"]
        shown = dict(re.findall(r'<span data-count="(\w+)">(\d+)</span>', row.group(1)))
        for key in ("total", "available", "reserved", "assigned", "cleaning", "tainted"):
            assert int(shown[key]) == t["counts"][key], (t["name"], key)


def test_the_overview_counts_the_free_devices_of_down_hosts(api: TestClient, clock: Clock) -> None:
    """A host gone silent: its free devices are ``down``, in a column and a part of the bar of
    their own, so the row adds up to the total as ``devassign types`` and /metrics do."""
    _cloud(api)
    clock.advance(120)
    assert api.post("/v1/hosts/compute-1/heartbeat").status_code == 204
    page = api.get("/ui/").text
    for t in api.get("/v1/resource-types").json():
        assert t["counts"]["down"] > 0, t
        row = re.search(rf'<tr data-type="{t["name"]}">(.*?)</tr>', page, re.S)
        assert row, t["name"]
        shown = {k: int(v) for k, v in re.findall(r'<span data-count="(\w+)">(\d+)</span>', row.group(1))}
        assert shown.get("down") == t["counts"]["down"], (t["name"], shown)
        assert sum(n for k, n in shown.items() if k != "total") == shown["total"], (t["name"], shown)
        assert f'title="{t["counts"]["down"]} down"' in row.group(1), row.group(1)


def test_the_script_is_served_by_the_package_and_builds_no_markup_from_data(api: TestClient) -> None:
    r = api.get("/ui/static/live.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in r.text, sink
    assert "textContent" in r.text and "X-Devassign-Fragment" in r.text
    versioned = re.search(r'<script src="([^"]+)"', api.get("/ui/").text)
    assert versioned and api.get(html.unescape(versioned.group(1))).text == r.text


def _stream_ids(client: TestClient, path: str, headers: dict[str, str] | None = None) -> list[int]:
    r = client.get(path, params={"after": "0", "once": "true"}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    # the events' ids (an `id:` line is the stream's position: an id, perhaps with gaps)
    return [json.loads(d)["id"] for d in re.findall(r"^data: (.*)$", r.text, re.M)]


def test_the_dashboard_stream_is_the_api_stream_signed_in_by_the_cookie(
    secure_api: TestClient, store: Store
) -> None:
    admin = _token(store, "admin")
    _cloud(secure_api, Authorization=f"Bearer {admin}")
    secure_api.cookies.set("devassign_token", admin)
    everything = _stream_ids(secure_api, "/ui/events/stream")
    assert everything and everything == sorted(everything)
    secure_api.cookies.clear()
    api_ids = _stream_ids(secure_api, "/v1/events/stream", {"Authorization": f"Bearer {admin}"})
    assert api_ids == everything
    # Scoped as /v1/events: a member sees its project's consumers' events, an agent its host's.
    secure_api.cookies.set("devassign_token", _token(store, "member", project="other"))
    assert _stream_ids(secure_api, "/ui/events/stream") == []
    secure_api.cookies.set("devassign_token", _token(store, "member", project="demo"))
    demo = _stream_ids(secure_api, "/ui/events/stream")
    assert demo and set(demo) < set(everything)
    secure_api.cookies.set("devassign_token", _token(store, "agent", host="compute-2"))
    own = secure_api.get("/ui/events/stream", params={"after": "0", "once": "true"})
    assert own.status_code == 200 and "compute-1" not in own.text
    other = secure_api.get("/ui/events/stream", params={"host": "compute-1", "once": "true"})
    assert other.status_code == 403
    secure_api.cookies.clear()
    signed_out = secure_api.get("/ui/events/stream", params={"once": "true"}, follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/ui/login")


def test_fragments_are_scoped_like_their_pages(secure_api: TestClient, store: Store) -> None:
    admin = {"Authorization": f"Bearer {_token(store, 'admin')}"}
    _cloud(secure_api, **admin)
    device = secure_api.get("/v1/devices", params={"host": "compute-1"}, headers=admin).json()[0]["id"]
    secure_api.cookies.set("devassign_token", _token(store, "member", project="other"))
    for path in ("/ui/fragments/hosts", "/ui/fragments/hosts/compute-1", f"/ui/fragments/devices/{device}"):
        assert secure_api.get(path).status_code == 403, path
    overview = _text(secure_api.get("/ui/fragments/overview").text)
    assert "NIC_VF_1G" in overview and "compute-1" not in overview and "vm-1" not in overview
    assert "vm-1" not in _text(secure_api.get("/ui/fragments/events").text)
    secure_api.cookies.set("devassign_token", _token(store, "agent", host="compute-2"))
    assert secure_api.get("/ui/fragments/hosts/compute-1").status_code == 403
    assert secure_api.get(f"/ui/fragments/devices/{device}").status_code == 404
    assert "compute-1" not in _text(secure_api.get("/ui/fragments/hosts").text)
    assert secure_api.get("/ui/fragments/events", params={"host": "compute-1"}).status_code == 403


def test_the_device_map_groups_by_numa_node_and_parent_and_marks_taints(api: TestClient) -> None:
    _type(api, "NIC_VF_1G")
    _type(api, "VGPU_T4_4Q")
    devices = [vf("0000:3b:02.1"), vf("0000:3b:02.2")]
    devices += [{**_vgpu("0000:d8:00.0", i), "numa_node": 1} for i in range(3)]
    devices.append({**vf("0000:5e:00.1"), "parent": None, "numa_node": None})
    _report(api, "compute-1", devices)
    listed = {d["address"]: d for d in api.get("/v1/devices", params={"host": "compute-1"}).json()}
    slot = listed["0000:d8:00.0/nvidia-230/1"]["id"]
    r = api.post(f"/v1/devices/{slot}/taints", json={"effect": "NoSchedule", "reason": "<b>fan</b> noise"})
    assert r.status_code == 201, r.text

    page = api.get("/ui/hosts/compute-1").text
    numa = re.findall(r'data-numa="(\w+)"', page)
    assert numa == ["0", "1", "none"]
    text = _text(page.split('id="device-map"')[1])
    assert text.index("NUMA node 0") < text.index("PF 0000:3b:00.0") < text.index("NUMA node 1")
    assert text.index("NUMA node 1") < text.index("GPU 0000:d8:00.0") < text.index("no NUMA node")
    cells = dict(re.findall(r'<a href="/ui/devices/([^"]+)" class="([^"]+)"', page))
    assert cells[slot] == "cell s-available tainted"
    assert cells[listed["0000:3b:02.1"]["id"]] == "cell s-available"
    assert f'data-device="{slot}" data-state="available" data-taint="NoSchedule"' in page
    assert "&lt;b&gt;fan&lt;/b&gt; noise" in page and "<b>fan" not in page
    assert "taint NoSchedule" in _text(page)  # in the devices table, beside the state
    # The types count it apart from the available ones, and the device page says why.
    assert 'data-count="tainted">1<' in api.get("/ui/").text
    assert "&lt;b&gt;fan&lt;/b&gt; noise" in api.get(f"/ui/devices/{slot}").text

    r = api.post("/v1/hosts/compute-1/taints", json={"effect": "Drain", "reason": "maintenance"})
    assert r.status_code == 201, r.text
    hosts = api.get("/ui/hosts").text
    assert re.search(r'data-host="compute-1".*?taint Drain', hosts, re.S)


def test_a_device_page_shows_its_whole_history_a_page_at_a_time(api: TestClient) -> None:
    _type(api, "NIC_VF_1G")
    _report(api, "compute-1", [vf("0000:3b:02.1")])
    device = api.get("/v1/devices").json()[0]["id"]
    for n in range(30):  # two events each: tainted, untainted
        assert api.post(f"/v1/devices/{device}/taints", json={"effect": "None", "reason": f"r{n}"}).is_success
        assert api.delete(f"/v1/devices/{device}/taints").is_success
    history = api.get("/v1/events", params={"device": device, "limit": 1000}).json()
    assert len(history) > 60
    first = api.get(f"/ui/devices/{device}").text
    assert len(re.findall(r"event (\d+)\"", first)) == 50  # each event's time has its id on hover
    older = re.search(r'href="(/ui/devices/[^"]+\?before=\d+)">older<', first)
    assert older, "no link to older events"
    second = api.get(html.unescape(older.group(1)))
    assert second.status_code == 200 and "newest" in _text(second.text)
    assert "data-live" not in second.text
    shown = set(re.findall(r"event (\d+)\"", first)) | set(re.findall(r"event (\d+)\"", second.text))
    assert shown == {str(e["id"]) for e in history}
