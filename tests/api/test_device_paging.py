"""``GET /v1/devices`` a page at a time: ``after=HOST/ADDRESS`` gives the same devices as
``offset`` in the same order, with the filters, and a ``Link`` to the next page; the CLI's
``devices --after``/``--all`` follow it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf


def _fleet(api: TestClient) -> list[tuple[str, str]]:
    for name in ("NIC_VF_1G", "VGPU"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    for h in ("b-host", "a-host", "c-host"):
        devices = [vf(f"0000:3b:02.{i}") for i in range(5)]
        slot = {"kind": "mdev_type", "driver": None, "parent": "0000:af:00.0"}
        devices += [{**vf(f"0000:af:00.0/nvidia-230/{i}", type="VGPU"), **slot} for i in range(3)]
        assert (
            api.put(f"/v1/hosts/{h}/inventory", json={"generation": 1, "devices": devices}).status_code == 200
        )
    return [(d["host"], d["address"]) for d in api.get("/v1/devices", params={"limit": 100}).json()]


def test_keyset_pages_are_the_offset_pages(api: TestClient) -> None:
    every = _fleet(api)
    assert len(every) == 24 and every == sorted(every)
    seen: list[tuple[str, str]] = []
    params: dict[str, str | int] = {"limit": 5}
    pages = 0
    while True:
        r = api.get("/v1/devices", params=params)
        assert r.status_code == 200, r.text
        page = [(d["host"], d["address"]) for d in r.json()]
        seen += page
        pages += 1
        if "link" not in r.headers:
            assert len(page) < 5
            break
        assert len(page) == 5 and 'rel="next"' in r.headers["link"]
        params = {"limit": 5, "after": f"{page[-1][0]}/{page[-1][1]}"}
    assert seen == every and pages == 5
    # An address with slashes (an mdev) is a keyset like any other; filters still apply.
    r = api.get(
        "/v1/devices", params={"after": "a-host/0000:af:00.0/nvidia-230/0", "type": "VGPU", "limit": 3}
    )
    assert [(d["host"], d["address"]) for d in r.json()] == [
        ("a-host", "0000:af:00.0/nvidia-230/1"),
        ("a-host", "0000:af:00.0/nvidia-230/2"),
        ("b-host", "0000:af:00.0/nvidia-230/0"),
    ]


def test_a_malformed_after_is_a_400_that_says_what_to_give(api: TestClient) -> None:
    _fleet(api)
    for bad in ("a-host", "a-host/", "x" * 600):
        r = api.get("/v1/devices", params={"after": bad})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request"
    assert "HOST/ADDRESS" in api.get("/v1/devices", params={"after": "a-host"}).json()["error"]["message"]
