"""The web page served by the gateway, driven in real headless Chromium against the whole stack.

Uses Debian's `chromium` (/usr/bin/chromium) through Playwright's Python package; Playwright's own
browser download is never used. Screenshots land in test-artifacts/ (git-ignored) at the repo root;
with UPDATE_README_SCREENSHOTS=1 the two full-page ones (a real photo through the real stack) are
also written over the README's docs/web-page.png and docs/web-page-mobile.png:

    UPDATE_README_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/e2e/test_web_page.py \
        -k "get_a_playlist or phone_sized"

The page-polish tests at the end show a real job's result reshaped (faces close together, songs
piled in a corner, songs without Spotify links, a 20 px photo) through the real page, by answering
the page's job requests with that JSON, and assert layout facts from bounding boxes.
"""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import skimage.data
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from moodtunes.config import REPO_ROOT
from tests.browser_wait import wait_until

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
README_SHOTS = REPO_ROOT / "docs"  # README.md shows docs/web-page.png
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
    page.get_by_test_id("preview").wait_for()  # shown once the browser has checked and decoded it
    page.get_by_test_id(f"mode-{mode}").check(force=True)  # the radio is styled as a card
    page.get_by_text("Filters and playlist length").click()
    page.fill("#limit", str(limit))
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as resp:
        page.get_by_test_id("submit").click()
    assert resp.value.status == 202, resp.value.text()
    return resp.value.json()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def save_screenshot(page, name: str, *, readme: bool = False, **options) -> Path:
    """test-artifacts/<name>; a README one is copied over docs/<name> when UPDATE_README_SCREENSHOTS=1."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    (options.pop("locator", None) or page).screenshot(path=str(path), **options)
    if readme and os.environ.get("UPDATE_README_SCREENSHOTS") == "1":
        shutil.copyfile(path, README_SHOTS / name)
    return path


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
    wait_until(page, "document.querySelector('#result-img').complete")
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
    assert_map_readable(page)  # uplift: the start of the journey and the goal are labelled too
    assert page.get_by_test_id("map-label").count() == 2

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

    # the page says what feedback does: dislikes leave songs out, likes pull later playlists
    note = page.get_by_test_id("feedback-note").inner_text()
    assert "won't be suggested to you again in this mode" in note
    assert "your next playlists in this mode lean toward their sound" in note
    assert "lean toward songs like this" in status.inner_text()
    # pressing the like again undoes it: DELETE, the button unpressed, the page says so
    with page.expect_response(lambda r: "/feedback/" in r.url and r.request.method == "DELETE") as fb:
        first.get_by_test_id("like-button").click()
    assert fb.value.status == 204
    status.filter(has_text="Undone").wait_for()
    assert first.get_by_test_id("like-button").get_attribute("aria-pressed") == "false"

    assert no_horizontal_scroll(page)
    save_screenshot(page, "web-page.png", readme=True, full_page=True)
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
    save_screenshot(page, "web-page-mobile.png", readme=True, full_page=True)
    errors.check()
    context.close()


def test_a_file_that_is_not_an_image_gets_plain_words(stack, browser, tmp_path):
    """A text file is refused in the browser: nothing is sent, no broken picture is shown. A file
    that starts like a TIFF but is not one gets through to the server, whose 422 reads the same."""
    notes = tmp_path / "notes.jpg"  # a text file with a photo's name
    notes.write_text("these are my notes, not a photo\n")
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.set_input_files("#photo-input", str(notes))
    error = page.get_by_test_id("error")
    error.wait_for()
    assert error.get_attribute("data-code") == "invalid_image"
    assert error.get_attribute("role") == "alert"
    assert page.get_by_test_id("error-title").inner_text() == "We couldn't read that file as a photo"
    help_text = page.get_by_test_id("error-help").inner_text()
    assert "“notes.jpg” isn't a photo" in help_text and "nothing was sent" in help_text
    assert "JPEG, PNG or WebP" in help_text
    assert page.get_by_test_id("preview").is_hidden()  # no broken-image preview
    assert page.get_by_test_id("preview-img").get_attribute("src") is None
    assert page.get_by_test_id("progress").is_hidden() and page.get_by_test_id("results").is_hidden()
    assert page.evaluate("document.activeElement.id") == "error"  # focus moved to the message
    page.get_by_test_id("submit").click()  # still nothing to send
    page.locator('[data-testid=error][data-code="missing_image"]').wait_for()
    assert posts == []

    fake_tiff = tmp_path / "scan.tif"
    fake_tiff.write_bytes(b"II*\x00" + b"not really a tiff " * 20)
    page.set_input_files("#photo-input", str(fake_tiff))
    page.get_by_test_id("preview-none").wait_for()  # Chromium shows no TIFF: said in words
    assert "can't show TIFF" in page.get_by_test_id("preview-none").inner_text()
    assert error.is_hidden()
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs")) as resp:
        page.get_by_test_id("submit").click()
    assert resp.value.status == 422 and resp.value.json()["error"]["code"] == "invalid_image"
    page.locator('[data-testid=error][data-code="invalid_image"]').wait_for()
    assert page.get_by_test_id("error-title").inner_text() == "We couldn't read that file as a photo"
    assert "JPEG, PNG or WebP" in page.get_by_test_id("error-help").inner_text()
    assert page.get_by_test_id("results").is_hidden()
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
    wait_until(page, "document.querySelector('#camera-video').videoWidth > 0")
    page.get_by_test_id("camera-capture").click()
    preview = page.get_by_test_id("preview")
    preview.wait_for()
    assert "camera-photo.jpg" in page.get_by_test_id("preview-name").inner_text()
    wait_until(page, "document.querySelector('#preview-img').naturalWidth > 0")
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


# ───────────────────────── page polish: layout facts from bounding boxes ─────────────────────────


def intersects(a: dict, b: dict, slack: float = 0.0) -> bool:
    """Two bounding boxes overlap by more than `slack` px in both directions."""
    return (
        min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]) > slack
        and min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]) > slack
    )


def inside(a: dict, b: dict, slack: float = 0.5) -> bool:
    return (
        a["x"] >= b["x"] - slack
        and a["y"] >= b["y"] - slack
        and a["x"] + a["width"] <= b["x"] + b["width"] + slack
        and a["y"] + a["height"] <= b["y"] + b["height"] + slack
    )


def boxes_of(locator) -> list[dict]:
    return [locator.nth(i).bounding_box() for i in range(locator.count())]


@pytest.fixture(scope="module")
def real_job(stack, face_jpeg) -> dict:
    """One finished job of the real stack (the astronaut, match mode, 8 songs), as the API serves it."""
    with httpx.Client(base_url=stack["url"], timeout=30) as client:
        r = client.post("/v1/jobs", files={"image": ("face.jpg", face_jpeg)}, data={"limit": "8"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + JOB_WAIT_MS / 1000
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{r.json()['id']}").json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
    assert job["status"] == "done", job
    return job


@pytest.fixture(scope="module")
def desktop(stack, browser):
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    yield page, errors
    context.close()


@pytest.fixture(scope="module")
def phone(stack, browser):
    context, page, errors = open_page(browser, stack["url"], **PHONE)
    yield page, errors
    context.close()


def show_job(page, url: str, job: dict, photo: Path) -> None:
    """The real page, fresh, with `job` as the answer to its submit and poll requests."""
    page.unroute_all(behavior="ignoreErrors")
    page.goto(url + "/")
    page.wait_for_selector("body[data-modes-loaded]")
    job_id = job["id"]
    page.route("**/v1/jobs", lambda route: route.fulfill(status=202, json={"id": job_id, "status": "queued"}))
    page.route(f"**/v1/jobs/{job_id}", lambda route: route.fulfill(json=job))
    page.set_input_files("#photo-input", str(photo))
    page.get_by_test_id("preview").wait_for()
    page.get_by_test_id("submit").click()
    page.wait_for_selector("[data-testid=track]")
    # set once the face tags are placed on the loaded photo (a selector: the page's CSP forbids the
    # eval that a polled wait_for_function needs)
    page.wait_for_selector("#face-layer[data-tags-placed]", state="attached")


def piled_up(job: dict, n: int = 10, seed: int = 7) -> dict:
    """The real job with n songs piled into the sad/calm corner of the valence-energy plane."""
    job = copy.deepcopy(job)
    rnd = random.Random(seed)
    tracks = job["recommendation"]["tracks"]
    job["recommendation"]["tracks"] = piled = []
    for i in range(n):
        t = copy.deepcopy(tracks[i % len(tracks)])
        t["track_id"] = f"{t['track_id'][:-2]}{i:02d}"
        t["features"]["valence"] = round(0.03 + rnd.random() * 0.09, 3)
        t["features"]["energy"] = round(0.04 + rnd.random() * 0.09, 3)
        piled.append(t)
    rec = job["recommendation"]
    rec["target"] = {**rec["target"], "valence": 0.07, "energy": 0.08}
    rec["targets"] = None
    rec["playlist_mean"] = None
    return job


SVG_BOXES = """sel => [...document.querySelectorAll(sel)].map(e => {
    const b = e.getBBox(), m = e.getScreenCTM();
    const p = new DOMPoint(b.x, b.y).matrixTransform(m);
    const q = new DOMPoint(b.x + b.width, b.y + b.height).matrixTransform(m);
    return {x: p.x, y: p.y, width: q.x - p.x, height: q.y - p.y};
})"""


def svg_boxes(page, selector: str) -> list[dict]:
    """Where SVG shapes are drawn, in page pixels: their geometry (a text's box is its whole font
    height), without the text halo that Chromium's getBoundingClientRect pads to a miter's reach."""
    return page.evaluate(SVG_BOXES, selector)


def assert_map_readable(page) -> dict:
    """Labels (song numbers, target, quadrant names) overlap nothing and stay in the plot."""
    svg = page.locator("[data-testid=mood-map] svg")
    plot = page.get_by_test_id("map-plot").bounding_box()
    dots = svg_boxes(page, "[data-testid=mood-map] .map-dot circle")
    labels = svg_boxes(page, "[data-testid=mood-map] .map-labels text")
    assert labels
    for i, a in enumerate(labels):
        assert inside(a, plot), (a, plot)
        for b in labels[i + 1 :]:
            assert not intersects(a, b), ("labels overlap", a, b)
        for d in dots:
            assert not intersects(a, d, slack=0.5), ("a label covers a dot", a, d)
    return {"svg": svg, "plot": plot, "dots": dots}


def extent(boxes: list[dict]) -> tuple[float, float]:
    xs = [b["x"] for b in boxes] + [b["x"] + b["width"] for b in boxes]
    ys = [b["y"] for b in boxes] + [b["y"] + b["height"] for b in boxes]
    return max(xs) - min(xs), max(ys) - min(ys)


def test_mood_map_zooms_to_the_songs_and_keeps_labels_apart(stack, desktop, real_job, photo):
    page, errors = desktop
    # ten songs piled into one corner: the map zooms there and every number stays readable
    show_job(page, stack["url"], piled_up(real_job), photo)
    m = assert_map_readable(page)
    assert page.locator("[data-testid=mood-map] .map-dot").count() == 10
    assert page.get_by_test_id("map-num").count() == 10  # room for every song's number
    assert float(m["svg"].get_attribute("data-x-max")) < 0.25  # zoomed, not 0..1
    assert float(m["svg"].get_attribute("data-y-max")) < 0.25
    w, h = extent(m["dots"])
    assert w > 0.6 * m["plot"]["width"] and h > 0.6 * m["plot"]["height"], (w, h, m["plot"])
    ticks = page.locator("[data-testid=mood-map] .map-tick").evaluate_all(
        "els => els.map(e => e.textContent)"
    )
    assert "0.10" in ticks  # the axes say where the zoom is
    save_screenshot(page, "polish-mood-map-pile.png", locator=page.locator(".why"))

    # three songs on the very same spot: no label on top of another; the hidden ones say so
    same = piled_up(real_job)
    for t in same["recommendation"]["tracks"][4:7]:
        t["features"]["valence"], t["features"]["energy"] = 0.08, 0.09
    show_job(page, stack["url"], same, photo)
    assert_map_readable(page)
    hidden = page.locator("[data-testid=mood-map] .map-dot.is-unlabelled")
    if hidden.count():
        assert "point at a dot" in page.get_by_test_id("map-caption").inner_text()
    assert page.locator("[data-testid=mood-map] .map-dot title").count() == 10  # every song on hover

    # the real job: its songs spread over most of the plot
    show_job(page, stack["url"], real_job, photo)
    m = assert_map_readable(page)
    w, h = extent(m["dots"])
    svg = m["svg"]
    for axis, size, plot_size in (("x", w, "width"), ("y", h, "height")):
        span = float(svg.get_attribute(f"data-{axis}-max")) - float(svg.get_attribute(f"data-{axis}-min"))
        if span > 0.081:  # wider than the minimum zoom: the data decided it
            assert size > 0.6 * m["plot"][plot_size], (axis, span, size, m["plot"])
    save_screenshot(page, "polish-mood-map-real.png", locator=page.locator(".why"))
    errors.check()


def test_face_labels_never_cover_another_face(stack, desktop, phone, real_job, photo):
    """Three faces close together: one right above the chosen one, one just beside it."""
    job = copy.deepcopy(real_job)
    face = job["faces"][job["chosen_face"]]
    job["faces"] = [
        {**face, "box": {"x": 180, "y": 200, "width": 110, "height": 110}},
        {**face, "box": {"x": 180, "y": 72, "width": 110, "height": 110}},  # 18 px above
        {**face, "box": {"x": 300, "y": 205, "width": 100, "height": 100}},  # 10 px to the right
        {**face, "box": {"x": 20, "y": 2, "width": 90, "height": 90}},  # at the photo's top edge
    ]
    job["chosen_face"] = 0
    for page, errors in (desktop, phone):
        show_job(page, stack["url"], job, photo)
        photo_box = page.get_by_test_id("result-photo").bounding_box()
        faces = boxes_of(page.get_by_test_id("face-box"))
        tags = boxes_of(page.get_by_test_id("face-tag"))
        assert len(faces) == len(tags) == 4
        for i, tag in enumerate(tags):
            assert inside(tag, photo_box, slack=1), ("tag off the photo", i, tag, photo_box)
            for j, other in enumerate(faces):
                if j != i:
                    assert not intersects(tag, other), ("tag covers a face", i, j, tag, other)
            for other in tags[i + 1 :]:
                assert not intersects(tag, other), ("tags overlap", tag, other)
        caption = page.get_by_test_id("faces-caption").bounding_box()
        assert all(t["y"] + t["height"] <= caption["y"] for t in tags)
        name = f"polish-face-labels-{page.viewport_size['width']}.png"
        save_screenshot(page, name, locator=page.locator(".seen"))
        errors.check()


def test_a_tiny_photo_is_shown_big_enough(stack, desktop, real_job, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(skimage.data.astronaut()).resize((20, 20), Image.LANCZOS).save(tiny)
    job = copy.deepcopy(real_job)
    job["image"] = {**job["image"], "width": 20, "height": 20}
    job["faces"] = [{**job["faces"][job["chosen_face"]], "box": {"x": 6, "y": 3, "width": 8, "height": 8}}]
    job["chosen_face"] = 0
    page, errors = desktop
    show_job(page, stack["url"], job, tiny)
    preview = page.get_by_test_id("preview-img").bounding_box()
    assert preview["height"] >= 150  # the chosen photo, scaled up in the form
    shown = page.get_by_test_id("result-photo").bounding_box()
    assert shown["width"] >= 200 and shown["height"] >= 200, shown  # not drawn at 20 px
    rendering = page.get_by_test_id("result-photo").evaluate("e => getComputedStyle(e).imageRendering")
    assert rendering == "pixelated"
    box = page.get_by_test_id("face-box").bounding_box()
    assert box["width"] == pytest.approx(8 * shown["width"] / 20, abs=3)  # still where the API says
    tag = page.get_by_test_id("face-tag").bounding_box()
    caption = page.get_by_test_id("faces-caption").bounding_box()
    assert inside(tag, shown, slack=1) and tag["y"] + tag["height"] <= caption["y"]
    save_screenshot(page, "polish-tiny-photo.png", locator=page.locator(".seen"))
    errors.check()


def test_playlist_buttons_line_up_with_and_without_spotify_links(stack, desktop, phone, real_job, photo):
    job = copy.deepcopy(real_job)
    for i, t in enumerate(job["recommendation"]["tracks"]):
        if i % 3 == 1:
            t["spotify_url"] = None
    for page, errors in (desktop, phone):
        show_job(page, stack["url"], job, photo)
        rows = page.get_by_test_id("track")
        missing = page.get_by_test_id("spotify-missing")
        assert missing.count() == 3 and page.get_by_test_id("spotify-link").count() == 5
        assert missing.first.inner_text() == "No Spotify link"
        for testid in ("like-button", "dislike-button"):
            xs = {round(b["x"], 1) for b in boxes_of(rows.get_by_test_id(testid))}
            assert max(xs) - min(xs) <= 0.5, (testid, xs)
        slots = boxes_of(page.locator(".track-actions > :first-child"))
        assert max(s["x"] for s in slots) - min(s["x"] for s in slots) <= 0.5
        assert no_horizontal_scroll(page)
        name = f"polish-playlist-{page.viewport_size['width']}.png"
        save_screenshot(page, name, locator=page.locator(".playlist-panel"))
        errors.check()


def test_files_are_checked_before_anything_is_sent(stack, desktop, tmp_path):
    """The page knows the server's limit (GET /v1/modes) and offers the shrink before uploading."""
    limit = httpx.get(f"{stack['url']}/v1/modes", timeout=10).json()["upload"]["max_bytes"]
    page, errors = desktop
    page.unroute_all(behavior="ignoreErrors")
    page.goto(stack["url"] + "/")
    page.wait_for_selector("body[data-modes-loaded]")
    assert f"up to {limit // 1048576} MB" in page.get_by_test_id("drop-limit").inner_text()
    posts = []

    def on_request(request):
        if request.method == "POST" and request.url.endswith("/v1/jobs"):
            posts.append(request)

    page.on("request", on_request)

    # not an image: refused, with no preview and no request
    readme = tmp_path / "README.txt"
    readme.write_text("hello")
    page.set_input_files("#photo-input", str(readme))
    page.locator('[data-testid=error][data-code="invalid_image"]').wait_for()
    assert page.get_by_test_id("preview").is_hidden() and page.get_by_test_id("error-shrink").is_hidden()
    save_screenshot(page, "polish-not-an-image.png")

    # a real face photo over the limit (a PNG with a big text chunk): the shrink, before any upload
    big = tmp_path / "big-face.png"
    info = PngInfo()
    info.add_text("padding", "x" * (limit + 50_000))
    Image.fromarray(skimage.data.astronaut()).save(big, pnginfo=info)
    assert big.stat().st_size > limit
    page.set_input_files("#photo-input", str(big))
    page.locator('[data-testid=error][data-code="file_too_large"]').wait_for()
    assert page.get_by_test_id("preview").is_visible()  # it is a photo: shown, just too big
    assert f"the limit is {limit // 1048576} MB" in page.get_by_test_id("error-help").inner_text()
    assert "Nothing has been sent" in page.get_by_test_id("error-help").inner_text()
    page.get_by_test_id("submit").click()  # pressing the button does not send it either
    page.locator('[data-testid=error][data-code="file_too_large"]').wait_for()
    assert posts == []
    save_screenshot(page, "polish-too-big.png")
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as resp:
        page.get_by_test_id("error-shrink").click()
    assert resp.value.status == 202, resp.value.text()
    assert len(posts) == 1 and int(posts[0].all_headers()["content-length"]) < limit
    page.wait_for_selector("[data-testid=track]", timeout=JOB_WAIT_MS)
    assert "big-face-small.jpg" in page.get_by_test_id("preview-name").inner_text()
    page.remove_listener("request", on_request)
    errors.check()


def test_music_for_everyone_in_a_two_face_photo(stack, browser, tmp_path):
    """The group option sends drive=group; the real stack blends both faces and the page says so."""
    import io

    import numpy as np
    import skimage.data
    from PIL import Image

    astronaut = skimage.data.astronaut()
    path = tmp_path / "two-faces.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.hstack([astronaut, astronaut[:, ::-1]])).save(buf, "JPEG", quality=92)
    path.write_bytes(buf.getvalue())
    context, page, errors = open_page(browser, stack["url"], **DESKTOP)
    page.set_input_files("#photo-input", str(path))
    page.get_by_test_id("preview").wait_for()
    page.get_by_text("Filters and playlist length").click()
    page.get_by_test_id("drive-group").check()
    with page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as resp:
        page.get_by_test_id("submit").click()
    assert resp.value.status == 202, resp.value.text()
    page.wait_for_selector("[data-testid=track]", timeout=JOB_WAIT_MS)
    assert "music for 2 faces" in page.locator("#playlist-sub").inner_text()
    assert "Every face counted for the music" in page.locator("#faces-caption").inner_text()
    session = {c["name"]: c["value"] for c in context.cookies() if c["name"] == "moodtunes_session"}
    job = httpx.get(f"{stack['url']}/v1/jobs/{resp.value.json()['id']}", cookies=session, timeout=10).json()
    assert job["drive"] == "group" and len(job["faces"]) == 2
    assert job["recommendation"]["group"]["faces"] == 2
    save_screenshot(page, "group-result.png", full_page=True)
    errors.check()
    context.close()
