"""The API docs work without internet (their assets come from the gateway itself) and /metrics
answers at its own address."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def app_client():
    """The app without its lifespan: these pages need neither the database nor Redis."""
    from moodtunes_gateway.main import create_app

    return TestClient(create_app())


def assets(html: str) -> list[str]:
    return re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) + re.findall(r'<link[^>]*\bhref="([^"]+)"', html)


@pytest.mark.parametrize(
    "page,needs", [("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])]
)
def test_docs_pages_load_every_asset_from_the_app(app_client, page, needs):
    r = app_client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    urls = assets(r.text)
    for name in needs:
        assert any(u.endswith(name) for u in urls), f"{page} does not load {name}: {urls}"
    assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", r.text), f"{page} still points at another host"
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        asset = app_client.get(url)
        assert asset.status_code == 200, f"{url}: {asset.status_code}"
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"] and len(asset.content) > 100_000
        if url.endswith(".css"):
            assert "text/css" in asset.headers["content-type"] and len(asset.content) > 10_000
    spec = re.search(r"""(?:url: |spec-url=)['"]([^'"]+)['"]""", r.text).group(1)
    assert app_client.get(spec).json()["info"]["title"] == "moodtunes"


def test_swagger_ui_bundle_defines_what_the_page_calls(app_client):
    page = app_client.get("/docs").text
    js = app_client.get(next(u for u in assets(page) if u.endswith("swagger-ui-bundle.js"))).text
    assert "SwaggerUIBundle(" in page and "SwaggerUIBundle" in js


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
def test_metrics_answers_200_without_a_redirect(app_client, path):
    r = app_client.get(path, follow_redirects=False)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE moodtunes_jobs_created_total counter" in r.text


def test_metrics_speaks_openmetrics_when_asked(app_client):
    r = app_client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_schema_says_the_api_key_is_optional(client):
    """A first job from a browser carries no key: every secured operation also allows none."""
    paths = client.get("/openapi.json").json()["paths"]
    post_jobs = paths["/v1/jobs"]["post"]["security"]
    assert {"HTTPBearer": []} in post_jobs and {} in post_jobs
    assert {} in paths["/v1/jobs/{job_id}"]["get"]["security"]


def _sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in a Prometheus text exposition (None when absent), labels in any order."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_metrics_show_requests_by_route_queue_depth_and_jobs_by_status(client, face_jpeg):
    from moodtunes import jobs

    assert client.get("/v1/modes").status_code == 200
    assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    queued = client.post("/v1/jobs", files={"image": ("a.jpg", face_jpeg)})  # no worker: stays queued
    assert queued.status_code == 202
    failed = client.post("/v1/jobs", files={"image": ("b.jpg", face_jpeg)}).json()["id"]
    assert jobs.fail(failed, "no_face", "test")
    text = client.get("/metrics").text
    assert _sample(text, "http_requests_total", handler="/v1/modes", method="GET", status="2xx") == 1
    assert _sample(text, "http_requests_total", handler="/v1/jobs/{job_id}", method="GET", status="4xx") == 1
    assert _sample(text, "http_request_duration_seconds_count", handler="/v1/jobs", method="POST") == 2
    assert _sample(text, "moodtunes_queue_depth", queue="fer") == 2  # both messages wait in Redis
    assert _sample(text, "moodtunes_jobs_unfinished", status="queued") == 1
    assert _sample(text, "moodtunes_jobs_finished_last_hour", status="failed", code="no_face") == 1
    assert _sample(text, "moodtunes_jobs_created_total", mode="match") is not None  # the gateway's own
