"""Security headers on every response (pages, API, errors, 404s, an unexpected 500), a CSP the web
page and the API docs still work under (checked in Chromium), and CORS by allow-list only."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moodtunes_cli.localstack import free_port
from tests.browser_wait import wait_until
from tests.gateway.live import serve

CHROMIUM = Path("/usr/bin/chromium")
ALLOWED = "https://allowed.example"


@pytest.fixture(scope="module")
def app_client():
    """The app without its lifespan: these answers need neither the database nor Redis."""
    from moodtunes_gateway.main import create_app

    return TestClient(create_app())


def assert_secured(r, docs: bool = False):
    h = r.headers
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer"
    csp = {d.split()[0]: d.split()[1:] for d in h["Content-Security-Policy"].split("; ")}
    assert csp["frame-ancestors"] == ["'none'"] and csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert ("'unsafe-inline'" in csp["script-src"]) is docs  # inline script on the docs pages only
    return csp


@pytest.mark.parametrize(
    "path,status",
    [
        ("/", 200),
        ("/app.js", 200),
        ("/healthz", 200),
        ("/v1/modes", 200),
        ("/v1/jobs/x", 404),  # an API error
        ("/no/such/page", 404),
        ("/metrics", 200),
        ("/openapi.json", 200),
    ],
)
def test_every_answer_carries_the_headers(app_client, path, status):
    r = app_client.get(path)
    assert r.status_code == status
    assert_secured(r)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_get_their_own_policy(app_client, path):
    r = app_client.get(path)
    assert r.status_code == 200
    assert_secured(r, docs=True)


def test_the_page_policy_allows_what_the_page_uses(app_client):
    csp = assert_secured(app_client.get("/"))
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]  # nothing inline
    assert {"blob:", "data:"} <= set(csp["img-src"])  # photo previews, the favicon
    assert csp["connect-src"] == ["'self'"]


def test_validation_errors_and_wrong_methods_carry_them(app_client):
    assert_secured(app_client.post("/v1/jobs/x/feedback", json={}))  # 404 or 422, either way an error
    r = app_client.put("/v1/modes")
    assert r.status_code == 405
    assert_secured(r)


def test_an_unexpected_500_carries_them(monkeypatch):
    from moodtunes import modes
    from moodtunes_gateway.main import create_app

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(modes, "describe", broken)
    r = TestClient(create_app(), raise_server_exceptions=False).get("/v1/modes")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert_secured(r)


def test_a_route_can_still_set_its_own_header_value(app_client):
    """Headers are added where missing, not forced over what a response chose."""
    from starlette.datastructures import MutableHeaders

    from moodtunes_gateway.middleware import SECURITY_HEADERS

    message = {"type": "http.response.start", "headers": [(b"x-frame-options", b"SAMEORIGIN")]}
    headers = MutableHeaders(scope=message)
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    assert headers["X-Frame-Options"] == "SAMEORIGIN" and headers["X-Content-Type-Options"] == "nosniff"


@pytest.fixture
def cors_client(settings_env):
    from moodtunes_gateway.main import create_app

    settings_env(CORS_ALLOW_ORIGINS=f"{ALLOWED}, https://second.example/")
    return TestClient(create_app())


def preflight(c, origin: str):
    return c.options(
        "/v1/jobs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_cors_allows_listed_origins_only(cors_client):
    ok = preflight(cors_client, ALLOWED)
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "authorization" in ok.headers["Access-Control-Allow-Headers"].lower()
    assert preflight(cors_client, "https://second.example").status_code == 200  # listed with a slash
    refused = preflight(cors_client, "https://evil.example")
    assert refused.status_code == 400 and "Access-Control-Allow-Origin" not in refused.headers
    simple = cors_client.get("/v1/modes", headers={"Origin": ALLOWED})
    assert simple.headers["Access-Control-Allow-Origin"] == ALLOWED
    other = cors_client.get("/v1/modes", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Access-Control-Allow-Credentials" not in other.headers  # never with cookies


def test_no_origin_is_allowed_by_default(app_client):
    r = preflight(app_client, ALLOWED)
    assert r.status_code == 400 and "Access-Control-Allow-Origin" not in r.headers
    simple = app_client.get("/v1/modes", headers={"Origin": ALLOWED})
    assert "Access-Control-Allow-Origin" not in simple.headers


# What the browser reports when the policy blocks something, collected from the first script on.
CSP_SPY = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_the_page_and_the_docs_work_under_the_policy_in_chromium(app_client, tmp_path, face_jpeg):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "face.jpg"
    photo.write_bytes(face_jpeg)
    with serve(app_client.app, free_port()) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.add_init_script(CSP_SPY)
            page.goto(url + "/")
            page.wait_for_selector("body[data-modes-loaded]")  # the module script ran
            page.set_input_files("#photo-input", str(photo))  # the preview is a blob: URL
            page.wait_for_selector("[data-testid=preview]")  # shown once checked and decoded
            assert page.evaluate("document.querySelector('#preview-img').naturalWidth") > 0
            assert page.evaluate("document.styleSheets[0].cssRules.length") > 10  # style.css applied
            assert page.evaluate("window.__csp") == []
            page.goto(url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title")  # Swagger UI rendered the schema
            assert page.evaluate("window.__csp") == []
            page.goto(url + "/redoc")
            wait_until(page, "document.querySelector('redoc')?.textContent.includes('/v1/jobs')", 30_000)
            # ReDoc's bundle links its "powered by" logo from its CDN: blocking other hosts is the point
            blocked = page.evaluate("window.__csp")
            assert all(v.startswith("img-src https://cdn.redoc.ly/") for v in blocked), blocked
        finally:
            browser.close()
