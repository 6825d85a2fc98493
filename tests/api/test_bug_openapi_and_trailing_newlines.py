"""The OpenAPI document describes the errors the API returns (400 with the error body, never
FastAPI's 422), and a name with a trailing newline is refused (Python's ``$`` matched before
it)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_openapi_documents_400_with_the_error_body_and_no_422(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            assert "422" not in op["responses"], (method, path)
            assert op["responses"]["400"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert set(spec["components"]["schemas"]["ErrorDetail"]["required"]) == {"code", "message"}


def test_names_with_a_trailing_newline_are_refused(api: TestClient) -> None:
    r = api.post("/v1/resource-types", json={"name": "GPU\n"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = api.put("/v1/hosts/h1%0A/inventory", json={"generation": 1, "devices": []})
    assert r.status_code == 400
    r = api.post("/v1/tokens", json={"role": "agent", "host": "h1\n"})
    assert r.status_code == 400
