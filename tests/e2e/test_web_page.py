"""The web page served by the gateway, driven in real headless Chromium against the whole stack.

Uses Debian's `chromium` (/usr/bin/chromium) through Playwright's Python package; Playwright's own
browser download is never used. Screenshots land in test-artifacts/ (git-ignored) at the repo root.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import skimage.data
from PIL import Image

from moodtunes.config import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
JOB_WAIT_MS = 150_000  # the stack fails a job after JOB_TIMEOUT_S=120 s
DESKTOP = {"viewport": {"width": 1366, "height": 900}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
PERCENT = re.compile(r"^\d{1,3}\.\d%$")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # one per thread: both browsers below share it
        yield pw


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture(scope="module")
def fake_camera_browser(playwright):
    """A second Chromium whose camera is Chromium's built-in fake device, permission auto-granted."""
    b = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
    )
    yield b
    b.close()


class PageErrors(list):
    def check(self):
        assert not self, f"JavaScript errors on the page: {list(self)}"


def open_page(browser, url: str, **context_args):
    context = browser.new_context(reduced_motion="reduce", color_scheme="light", **context_args)
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-modes-loaded]")
    return context, page, errors


@pytest.fixture
def photo(tmp_path, face_jpeg) -> Path:
    path = tmp_path / "astronaut.jpg"
    path.write_bytes(face_jpeg)
    return path


def submit_photo(page, photo: Path, mode: str, limit: int) -> dict:
    """Chooses the photo, mode and length, presses the button; returns the 202 body of POST /v1/jobs."""
    page.set_input_files("#photo-input", str(photo))
    assert page.get_by_test_id("preview").is_visible()
    page.get_by_test_id(f"mode-{mode}").check(force=True)  # the radio is styled as a card
    page.get_by_text("Filters and playlist length").click()
    page.fill("#limit", str(limit))
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as resp:
        page.get_by_test_id("submit").click()
    assert resp.value.status == 202, resp.value.text()
    return resp.value.json()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_page_is_served_beside_the_api(stack):
    with httpx.Client(base_url=stack["url"], timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and "moodtunes" in page.text and 'src="app.js"' in page.text
        for asset, kind in (("app.js", "javascript"), ("style.css", "css")):
            r = client.get(f"/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
        assert client.get("/docs").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        metrics = client.get("/metrics", follow_redirects=True)
        assert metrics.status_code == 200 and "moodtunes_jobs_created_total" in metrics.text
        assert client.get("/v1/jobs/not-a-job").json()["error"]["code"] == "job_not_found"


def test_upload_a_face_photo_and_get_a_playlist(stack, browser, photo):
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    modes = page.locator('input[name="mode"]').evaluate_all("els => els.map(e => e.value)")
    assert {"match", "uplift", "calm"} <= set(modes)

    accepted = submit_photo(page, photo, mode="uplift", limit=8)
    assert page.get_by_test_id("progress").is_visible()
    page.wait_for_selector("[data-testid=track]", timeout=JOB_WAIT_MS)
    # The job is the browser session's: read it with the page's (HttpOnly) session cookie, which
    # page scripts never see; without it the gateway says there is no such job.
    session = {c["name"]: c["value"] for c in context.cookies() if c["name"] == "moodtunes_session"}
    assert session and next(c for c in context.cookies() if c["name"] == "moodtunes_session")["httpOnly"]
    assert page.evaluate("document.cookie") == ""
    job_url = f"{stack['url']}/v1/jobs/{accepted['id']}"
    assert httpx.get(job_url, timeout=10).json()["error"]["code"] == "job_not_found"
    job = httpx.get(job_url, cookies=session, timeout=10).json()
    assert job["status"] == "done", job["error"]
    rec = job["recommendation"]

    # progress: every stage ticked, a plain-words summary announced
    assert page.get_by_test_id("progress").get_attribute("data-status") == "done"
    assert page.locator("[data-stage].is-done").count() == 4
    assert "8 songs" in page.get_by_test_id("progress-text").inner_text()

    # the chart: 5 bars, each with its value as text, matching the API's probabilities
    bars = page.get_by_test_id("emotion-bar")
    assert bars.count() == 5
    probs = rec["emotion_probabilities"]
    for i in range(5):
        bar = bars.nth(i)
        emotion = bar.get_attribute("data-emotion")
        assert float(bar.get_attribute("data-value")) == pytest.approx(probs[emotion], abs=1e-4)
        text = bar.get_by_test_id("emotion-value").inner_text()
        assert PERCENT.match(text) and float(text[:-1]) == pytest.approx(probs[emotion] * 100, abs=0.051)
        width = bar.locator(".bar-fill").bounding_box()["width"]
        track = bar.locator(".bar-track").bounding_box()["width"]
        assert width == pytest.approx(max(probs[emotion] * track, 3), abs=3)  # min-width 3px
    top = max(probs, key=probs.get)
    assert page.get_by_test_id("emotion-top").inner_text().lower()[:3] == top[:3]

    # the face box: drawn where the API says, scaled to the displayed photo
    boxes = page.get_by_test_id("face-box")
    assert boxes.count() == len(job["faces"]) >= 1
    chosen = page.locator('[data-testid=face-box][data-chosen="true"]')
    assert chosen.count() == 1
    img = page.get_by_test_id("result-photo")
    page.wait_for_function("document.querySelector('#result-img').complete")
    shown = img.bounding_box()
    box = chosen.bounding_box()
    api = job["faces"][job["chosen_face"]]["box"]
    scale = shown["width"] / job["image"]["width"]
    assert box["x"] - shown["x"] == pytest.approx(api["x"] * scale, abs=4)
    assert box["y"] - shown["y"] == pytest.approx(api["y"] * scale, abs=4)
    assert box["width"] == pytest.approx(api["width"] * scale, abs=4)

    # the playlist: title, artists, year, Spotify links, in the API's order
    tracks = page.get_by_test_id("track")
    assert tracks.count() == len(rec["tracks"]) == 8
    for i, t in enumerate(rec["tracks"]):
        row = tracks.nth(i)
        assert row.get_attribute("data-track-id") == t["track_id"]
        assert row.get_by_test_id("track-title").inner_text() == t["name"]
        assert row.get_by_test_id("track-artists").inner_text() == ", ".join(t["artists"])
        if t["year"]:
            assert row.get_by_test_id("track-year").inner_text() == str(t["year"])
        link = row.get_by_test_id("spotify-link")
        if t["spotify_url"]:
            assert link.get_attribute("href") == t["spotify_url"] and "Open in Spotify" in link.inner_text()
        else:
            assert link.count() == 0
    assert any(t["spotify_url"] for t in rec["tracks"])

    # target vs playlist features and the mood map
    assert page.get_by_test_id("feature-row").count() == 5
    tempo = page.locator('[data-feature="tempo"]').inner_text()
    assert f"Target {round(rec['target']['tempo'])} BPM" in tempo
    assert page.locator("[data-testid=mood-map] .map-dot").count() == 8

    # like the first song: the feedback endpoint stores it and the page says so
    first = tracks.nth(0)
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as fb:
        first.get_by_test_id("like-button").click()
    assert fb.value.status == 201, fb.value.text()
    assert fb.value.json()["liked"] is True
    status = first.get_by_test_id("feedback-status")
    status.filter(has_text="Thanks").wait_for()
    assert first.get_by_test_id("like-button").get_attribute("aria-pressed") == "true"
    with page.expect_response(lambda r: r.url.endswith("/feedback")) as fb:
        tracks.nth(1).get_by_test_id("dislike-button").click()
    assert fb.value.status == 201
    tracks.nth(1).get_by_test_id("feedback-status").filter(has_text="won't suggest").wait_for()

    assert no_horizontal_scroll(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)
    # a gateway without the feedback endpoint: a clear message, no pretend success
    page.route(
        "**/feedback",
        lambda route: route.fulfill(
            status=405, json={"error": {"code": "method_not_allowed", "message": "Method Not Allowed"}}
        ),
    )
    tracks.nth(2).get_by_test_id("like-button").click()
    tracks.nth(2).get_by_test_id("feedback-status").filter(has_text="isn't available").wait_for()
    assert tracks.nth(2).get_by_test_id("like-button").get_attribute("aria-pressed") == "false"
    errors.check()
    context.close()


def test_phone_sized_page(stack, browser, photo):
    context, page, errors = open_page(browser, stack["url"], **PHONE)
    assert no_horizontal_scroll(page)
    submit_photo(page, photo, mode="match", limit=5)
    page.wait_for_selector("[data-testid=track]", timeout=JOB_WAIT_MS)
    assert page.get_by_test_id("track").count() == 5
    assert page.get_by_test_id("emotion-bar").count() == 5
    assert page.get_by_test_id("face-box").count() >= 1
    # one column: the results sit below the form, nothing overflows sideways
    form, results = (
        page.get_by_test_id("job-form").bounding_box(),
        page.get_by_test_id("results").bounding_box(),
    )
    assert results["y"] > form["y"] + form["height"] - 1
    assert no_horizontal_scroll(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-mobile.png"), full_page=True)
    errors.check()
    context.close()


def test_a_file_that_is_not_an_image_gets_plain_words(stack, browser, tmp_path):
    notes = tmp_path / "notes.jpg"  # a text file with a photo's name
    notes.write_text("these are my notes, not a photo\n")
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    page.set_input_files("#photo-input", str(notes))
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs")) as resp:
        page.get_by_test_id("submit").click()
    assert resp.value.status == 422 and resp.value.json()["error"]["code"] == "invalid_image"
    error = page.get_by_test_id("error")
    error.wait_for()
    assert error.get_attribute("data-code") == "invalid_image"
    assert error.get_attribute("role") == "alert"
    assert page.get_by_test_id("error-title").inner_text() == "We couldn't read that file as a photo"
    assert "JPEG, PNG or WebP" in page.get_by_test_id("error-help").inner_text()
    assert page.get_by_test_id("results").is_hidden()
    assert page.evaluate("document.activeElement.id") == "error"  # focus moved to the message
    errors.check()
    context.close()


def test_a_photo_without_a_face_says_what_to_do(stack, browser, tmp_path):
    coffee = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(coffee)
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    page.set_input_files("#photo-input", str(coffee))
    page.get_by_test_id("submit").click()
    page.get_by_test_id("error").wait_for(timeout=JOB_WAIT_MS)
    assert page.get_by_test_id("error").get_attribute("data-code") == "no_face"
    assert page.get_by_test_id("error-title").inner_text() == "We couldn't find a face in that photo"
    assert "clearly visible" in page.get_by_test_id("error-help").inner_text()
    assert page.get_by_test_id("progress").get_attribute("data-status") == "failed"
    errors.check()
    context.close()


def test_busy_server_and_oversized_photo_messages(stack, browser, photo):
    """503 and 413 answers (forced here by intercepting the request) become plain words with a way out."""
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    answers = [
        (503, {"error": {"code": "queue_unavailable", "message": "The work queue is unavailable."}}),
        (413, {"error": {"code": "file_too_large", "message": "The file is over the limit."}}),
    ]
    seen = []

    def fake(route):
        if route.request.method != "POST" or not answers:
            return route.fallback()
        status, body = answers.pop(0)
        seen.append(route.request.post_data_buffer)
        route.fulfill(status=status, json=body)

    page.route("**/v1/jobs", fake)
    page.set_input_files("#photo-input", str(photo))
    page.get_by_test_id("submit").click()
    page.get_by_test_id("error").wait_for()
    assert page.get_by_test_id("error-title").inner_text() == "The service is busy right now"
    assert page.get_by_test_id("error-retry").is_visible()
    page.get_by_test_id("error-retry").click()  # answered 413 this time
    page.locator('[data-testid=error][data-code="file_too_large"]').wait_for()
    assert "too big" in page.get_by_test_id("error-title").inner_text()
    shrink = page.get_by_test_id("error-shrink")
    assert shrink.is_visible()
    shrink.click()  # shrinks in the browser, then the real server takes it
    page.wait_for_selector("[data-testid=track]", timeout=JOB_WAIT_MS)
    assert "astronaut-small.jpg" in page.get_by_test_id("preview-name").inner_text()
    assert len(seen) == 2
    errors.check()
    context.close()


def test_camera_blocked_or_missing_is_explained(stack, browser):
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    page.add_init_script("""
        navigator.mediaDevices.getUserMedia = () =>
          Promise.reject(new DOMException('denied', 'NotAllowedError'));""")
    page.reload()
    page.wait_for_selector("body[data-modes-loaded]")
    # keyboard: the photo-source tabs follow the ARIA tabs pattern
    page.get_by_test_id("tab-upload").focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-camera"
    assert page.get_by_test_id("tab-camera").get_attribute("aria-selected") == "true"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "camera-start"
    page.keyboard.press("Enter")
    message = page.get_by_test_id("camera-message")
    message.filter(has_text="blocked").wait_for()
    assert "upload a photo" in message.inner_text()
    assert page.get_by_test_id("camera-video").is_hidden()
    errors.check()
    context.close()


def test_take_a_photo_with_the_camera(stack, fake_camera_browser):
    context, page, errors = open_page(fake_camera_browser, stack["url"], **DESKTOP)
    page.get_by_test_id("tab-camera").click()
    page.get_by_test_id("camera-start").click()
    page.get_by_test_id("camera-capture").wait_for()
    page.wait_for_function("document.querySelector('#camera-video').videoWidth > 0")
    page.get_by_test_id("camera-capture").click()
    preview = page.get_by_test_id("preview")
    preview.wait_for()
    assert "camera-photo.jpg" in page.get_by_test_id("preview-name").inner_text()
    page.wait_for_function("document.querySelector('#preview-img').naturalWidth > 0")
    assert page.get_by_test_id("camera-video").is_hidden()  # the camera is switched off after the shot
    assert page.evaluate("document.activeElement.id") == "submit"
    errors.check()
    context.close()


def test_the_page_degrades_without_the_modes_endpoint(stack, browser):
    """An older gateway without /v1/modes: the three documented modes are still offered."""
    context = browser.new_context(reduced_motion="reduce", **DESKTOP)
    page = context.new_page()
    page.route(
        "**/v1/modes",
        lambda route: route.fulfill(
            status=404, json={"error": {"code": "not_found", "message": "Not Found"}}
        ),
    )
    page.goto(stack["url"] + "/")
    page.wait_for_selector("body[data-modes-loaded]")
    modes = page.locator('input[name="mode"]').evaluate_all("els => els.map(e => e.value)")
    assert modes == ["match", "uplift", "calm"]
    assert page.locator('[data-filter="genres"]').is_visible() is False  # inside the closed <details>
    page.get_by_text("Filters and playlist length").click()
    assert page.locator('[data-filter="genres"]').is_visible()
    context.close()
