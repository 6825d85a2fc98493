"""``/docs`` and ``/redoc``: scripts of one pinned release, each checked by the browser against
its digest, and pages no other site may frame."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_the_api_pages_load_pinned_scripts_with_their_digests(api: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        r = api.get(path)
        assert r.status_code == 200, r.text
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        loaded = re.findall(r'<(?:script|link)[^>]*(?:src|href)="(https?://[^"]+)"[^>]*>', r.text)
        assert loaded, r.text
        for tag in re.findall(r'<(?:script|link)[^>]*(?:src|href)="https?://[^>]*>', r.text):
            assert re.search(r'integrity="sha384-[A-Za-z0-9+/=]{64}"', tag), tag
            assert 'crossorigin="anonymous"' in tag, tag
            assert re.search(r"@\d+\.\d+\.\d+/", tag), f"not one release: {tag}"
        assert "fonts.googleapis" not in r.text and "tiangolo" not in r.text
