"""The API's interactive pages, ``/docs`` (Swagger UI) and ``/redoc``: scripts of one pinned
release each from the CDN, checked by the browser against their digests (Subresource
Integrity), so that a changed file at the CDN never runs on the dashboard's origin; and, like
the dashboard, never framed by another site. FastAPI's own pages load whatever the newest
release of a major version is, with no such check.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

_CDN = "https://cdn.jsdelivr.net/npm"
# Each file with its SHA-384, as `openssl dgst -sha384 -binary FILE | openssl base64 -A` gives
# for the file of the npm package (`npm pack swagger-ui-dist@5.36.0 redoc@2.5.4`). A new release
# is a new pin and a new digest.
SWAGGER_JS = (
    f"{_CDN}/swagger-ui-dist@5.36.0/swagger-ui-bundle.js",
    "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+",
)
SWAGGER_CSS = (
    f"{_CDN}/swagger-ui-dist@5.36.0/swagger-ui.css",
    "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc",
)
REDOC_JS = (
    f"{_CDN}/redoc@2.5.4/bundles/redoc.standalone.js",
    "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5",
)

_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _checked(html: str, *pinned: tuple[str, str]) -> str:
    """``html`` with each pinned file's tag carrying its digest; a page whose tags are not
    found as expected (another FastAPI's markup) is refused rather than served unchecked."""
    for url, digest in pinned:
        for attr in ("src", "href"):
            found = f'{attr}="{url}"'
            if found in html:
                html = html.replace(found, f'{found} integrity="{digest}" crossorigin="anonymous"')
                break
        else:
            raise RuntimeError(f"the API page does not load {url} as expected")
    return html


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="devassign API",
        swagger_js_url=SWAGGER_JS[0],
        swagger_css_url=SWAGGER_CSS[0],
        swagger_favicon_url="data:,",
    )
    html = _checked(bytes(page.body).decode(), SWAGGER_JS, SWAGGER_CSS)
    return HTMLResponse(html, headers=_HEADERS)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="devassign API",
        redoc_js_url=REDOC_JS[0],
        redoc_favicon_url="data:,",
        with_google_fonts=False,
    )
    return HTMLResponse(_checked(bytes(page.body).decode(), REDOC_JS), headers=_HEADERS)
