"""Live mood mode of the web page, in real headless Chromium against the whole stack.

Chromium's fake camera plays a Y4M video of a public-domain face (fake_camera.py) and grants the
camera without a prompt (--use-fake-ui-for-media-stream). The page sends a frame about every 2 s to
a live session and polls it; these tests check what it shows, and that it stops cleanly (camera off,
no more requests, the session closed) when the tab is hidden, the camera is refused or the API says
the session is gone. Screenshot: test-artifacts/live-mode.png (docs/web-page-live.png with
UPDATE_README_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from tests.browser_wait import wait_until
from tests.e2e.fake_camera import face_video
from tests.e2e.test_web_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    README_SHOTS,
    PageErrors,
    no_horizontal_scroll,
    save_screenshot,
)

LIVE_WAIT_MS = 90_000  # first readings, two trend points and a playlist, on a 2-core machine

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

# Keeps every MediaStream the page gets, so a test can check that its tracks were stopped.
RECORD_STREAMS = """
(() => {
  window.__streams = [];
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const orig = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => { const s = await orig(c); window.__streams.push(s); return s; };
})();"""
TRACKS_STOPPED = (
    "() => window.__streams.length > 0"
    " && window.__streams.every(s => s.getTracks().every(t => t.readyState === 'ended'))"
)
HIDE_TAB = """() => {
  Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
  Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
  document.dispatchEvent(new Event('visibilitychange'));
}"""


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def live_browser(playwright, tmp_path_factory):
    """Chromium whose camera is a video of the astronaut's face, permission granted."""
    video = face_video(tmp_path_factory.mktemp("camera") / "face.y4m")
    b = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS
        + [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}",
        ],
    )
    yield b
    b.close()


class Traffic:
    """The page's live-session requests and answers, with the time they were seen."""

    def __init__(self, page):
        self.requests: list[tuple[float, str, str]] = []
        self.responses: list[tuple[float, str, str, int]] = []
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, r):
        if "/v1/sessions" in r.url:
            self.requests.append((time.monotonic(), r.method, r.url))

    def _response(self, r):
        if "/v1/sessions" in r.url:
            self.responses.append((time.monotonic(), r.request.method, r.url, r.status))

    def frames(self) -> list[float]:
        return [t for t, m, u in self.requests if m == "POST" and u.endswith("/frames")]

    def polls(self) -> list[float]:
        return [t for t, m, u in self.requests if m == "GET"]

    def creates(self) -> int:
        return sum(1 for _, m, u in self.requests if m == "POST" and u.endswith("/v1/sessions"))

    def accepted_frames(self) -> int:
        return sum(1 for _, m, u, s in self.responses if m == "POST" and u.endswith("/frames") and s == 202)


def open_live_page(browser, url: str, init_script: str = RECORD_STREAMS, viewport: dict = DESKTOP):
    context = browser.new_context(reduced_motion="reduce", color_scheme="light", **viewport)
    context.set_default_timeout(20_000)
    context.add_init_script(init_script)
    page = context.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # nothing the page draws may break its Content-Security-Policy (no inline styles, no eval)
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    traffic = Traffic(page)
    page.goto(url + "/")
    page.wait_for_selector("body[data-modes-loaded]")
    page.get_by_test_id("tab-live").click()
    return context, page, errors, traffic


def wait_for_frames(traffic: Traffic, page, n: int, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while traffic.accepted_frames() < n:
        assert time.monotonic() < deadline, f"fewer than {n} frames accepted: {traffic.responses}"
        page.wait_for_timeout(200)


def session_cookie(context) -> dict:
    return {c["name"]: c["value"] for c in context.cookies() if c["name"] == "moodtunes_session"}


def test_live_mode_follows_the_face(stack, live_browser):
    context, page, errors, traffic = open_live_page(live_browser, stack["url"])
    assert page.get_by_test_id("submit").is_hidden()  # the live tab has its own buttons
    page.get_by_test_id("mode-calm").check(force=True)
    page.get_by_text("Filters and playlist length").click()
    page.fill("#limit", "6")
    with page.expect_response(
        lambda r: r.url.endswith("/v1/sessions") and r.request.method == "POST"
    ) as resp:
        page.get_by_test_id("live-start").click()
    assert resp.value.status == 201, resp.value.text()
    created = resp.value.json()
    assert resp.value.request.post_data_json == {"mode": "calm", "limit": 6, "window_s": 60}
    assert created["mode"] == "calm" and created["limit"] == 6
    assert page.get_by_test_id("live-stop").is_visible() and page.get_by_test_id("live-start").is_hidden()
    assert page.get_by_test_id("live-video").is_visible()
    assert page.get_by_test_id("live-badge").get_attribute("data-state") == "running"

    # the smoothed mood, a chart of at least two readings and a playlist, updated in place
    page.locator("[data-testid=live-mood][data-emotion]").wait_for(timeout=LIVE_WAIT_MS)
    wait_until(
        page,
        "Number(document.querySelector('[data-testid=live-chart]').dataset.points) >= 2",
        LIVE_WAIT_MS,
        "two points on the live chart",
    )
    page.get_by_test_id("live-track").first.wait_for(timeout=LIVE_WAIT_MS)
    assert page.get_by_test_id("live-track").count() == 6
    assert page.get_by_test_id("live-playlist").get_by_test_id("like-button").count() == 0
    assert "Calm me down" in page.get_by_test_id("live-playlist-sub").inner_text()
    for line in ("live-valence-line", "live-arousal-line"):
        points = page.get_by_test_id(line).get_attribute("points").split()
        assert len(points) >= 2, (line, points)
    assert page.get_by_test_id("live-mood").get_attribute("aria-live") == "polite"
    assert page.get_by_test_id("live-emotion-bar").count() == 5
    assert "sure" in page.get_by_test_id("live-conf").inner_text()
    assert len(traffic.frames()) >= 2 and traffic.accepted_frames() >= 2
    assert "frames sent" in page.get_by_test_id("live-stats").inner_text()

    # what the page shows is the session's own account (read with the page's HttpOnly cookie)
    session_url = f"{stack['url']}/v1/sessions/{created['id']}"
    session = httpx.get(session_url, cookies=session_cookie(context), timeout=10).json()
    assert session["frames_received"] >= 2 and len(session["trend"]) >= 2
    assert page.get_by_test_id("live-mood").get_attribute("data-emotion") in {
        p["emotion"] for p in session["trend"]
    }
    if str(session["playlist_changes"]) == page.get_by_test_id("live-playlist").get_attribute("data-changes"):
        shown = page.get_by_test_id("live-track").evaluate_all("els => els.map(e => e.dataset.trackId)")
        assert shown == [t["track_id"] for t in session["playlist"]["tracks"]]

    shot = save_screenshot(page, "live-mode.png", full_page=True)
    if os.environ.get("UPDATE_README_SCREENSHOTS") == "1":
        shutil.copyfile(shot, README_SHOTS / "web-page-live.png")

    # Stop: the camera goes off, the session is closed, the page says so and offers a restart
    with page.expect_response(lambda r: r.request.method == "DELETE" and "/v1/sessions/" in r.url) as deleted:
        page.get_by_test_id("live-stop").click()
    assert deleted.value.status == 204
    status = page.get_by_test_id("live-status")
    assert status.inner_text() == "Live mode stopped: you pressed Stop."
    assert status.get_attribute("role") == "status"
    assert page.get_by_test_id("live-restart").is_visible()
    assert page.get_by_test_id("live-start").is_visible() and page.get_by_test_id("live-stop").is_hidden()
    assert page.evaluate(TRACKS_STOPPED)
    closed = httpx.get(session_url, cookies=session_cookie(context), timeout=10).json()
    assert closed["closed_at"] is not None
    # the mood, chart and playlist stay on screen after stopping
    assert page.get_by_test_id("live-track").count() == 6
    errors.check()
    context.close()


def test_hiding_the_tab_stops_live_mode(stack, live_browser):
    """On a phone-sized page: the live panel fits without sideways scrolling."""
    context, page, errors, traffic = open_live_page(live_browser, stack["url"], viewport=PHONE)
    # the first two frames meet a busy service: the page waits as asked (Retry-After) and goes on
    busy = [
        (503, {"error": {"code": "queue_full", "message": "busy"}}),
        (429, {"error": {"code": "rate_limited", "message": "slow down"}}),
    ]
    answered: list[float] = []

    def frames(route):
        if route.request.method == "POST" and busy:
            status, body = busy.pop(0)
            answered.append(time.monotonic())
            return route.fulfill(status=status, json=body, headers={"Retry-After": "1"})
        return route.fallback()

    page.route("**/v1/sessions/*/frames", frames)
    page.get_by_test_id("live-start").click()
    wait_for_frames(traffic, page, 3)  # two refused, then the real server's 202s
    sent = traffic.frames()
    assert len(answered) == 2
    assert sent[1] - sent[0] >= 0.9 and sent[2] - sent[1] >= 0.9, sent  # waited Retry-After
    assert page.get_by_test_id("live-badge").get_attribute("data-state") == "running"
    session_id = page.get_by_test_id("live").get_attribute("data-session-id")
    assert no_horizontal_scroll(page)
    save_screenshot(page, "live-mode-mobile.png", full_page=True)

    # the latest frame had no face (the real session's answer, with that error): a gentle hint
    def no_face(route):
        if route.request.method != "GET":
            return route.fallback()
        response = route.fetch()
        body = response.json()
        body["latest_frame"] = {**(body["latest_frame"] or {}), "status": "failed", "error_code": "no_face"}
        route.fulfill(response=response, json=body)

    page.route(f"**/v1/sessions/{session_id}", no_face)
    hint = page.get_by_test_id("live-hint")
    hint.filter(has_text="No face in view").wait_for()
    assert hint.get_attribute("data-code") == "no_face"
    assert page.get_by_test_id("live-badge").get_attribute("data-state") == "running"  # only a hint

    with page.expect_response(lambda r: r.request.method == "DELETE" and "/v1/sessions/" in r.url) as deleted:
        page.evaluate(HIDE_TAB)
    assert deleted.value.status == 204
    stopped_at = time.monotonic()
    status = page.get_by_test_id("live-status")
    assert status.inner_text().startswith("Live mode stopped: you left the tab")
    assert page.evaluate(TRACKS_STOPPED)
    assert page.evaluate("document.querySelector('#live-video').srcObject") is None
    frames_then, polls_then = len(traffic.frames()), len(traffic.polls())
    page.wait_for_timeout(5_000)  # more than two frame periods
    assert len(traffic.frames()) == frames_then, "a frame was sent after live mode stopped"
    assert len(traffic.polls()) == polls_then, "the session was polled after live mode stopped"
    assert [r for r in traffic.requests if r[0] > stopped_at] == []
    closed = httpx.get(
        f"{stack['url']}/v1/sessions/{session_id}", cookies=session_cookie(context), timeout=10
    ).json()
    assert closed["closed_at"] is not None
    errors.check()
    context.close()


def test_a_refused_camera_is_explained_and_opens_no_session(stack, live_browser):
    refuse = (
        "navigator.mediaDevices.getUserMedia = () =>"
        " Promise.reject(new DOMException('denied', 'NotAllowedError'));"
    )
    context, page, errors, traffic = open_live_page(live_browser, stack["url"], init_script=refuse)
    page.get_by_test_id("live-start").click()
    status = page.get_by_test_id("live-status")
    status.filter(has_text="Live mode stopped").wait_for()
    assert status.inner_text().startswith("Live mode stopped: camera access was blocked.")
    assert "Allow the camera for this site" in status.inner_text()
    assert status.get_attribute("data-kind") == "error"
    assert page.get_by_test_id("live-restart").is_visible()
    assert page.get_by_test_id("live-start").is_visible() and page.get_by_test_id("live-stop").is_hidden()
    assert page.get_by_test_id("live-video").is_hidden()
    page.wait_for_timeout(2_500)
    assert traffic.creates() == 0 and traffic.requests == []
    errors.check()
    context.close()


def test_a_session_closed_by_the_server_stops_live_mode(stack, live_browser):
    """An API error that is not transient (409 session_closed here) stops live mode, camera off."""
    context, page, errors, traffic = open_live_page(live_browser, stack["url"])
    seen = []

    def frames(route):
        seen.append(route.request.method)
        if len(seen) == 2:
            return route.fulfill(
                status=409,
                json={"error": {"code": "session_closed", "message": "Live session is closed."}},
            )
        return route.fallback()

    page.route("**/v1/sessions/*/frames", frames)
    page.get_by_test_id("live-start").click()
    status = page.get_by_test_id("live-status")
    status.filter(has_text="Live mode stopped").wait_for(timeout=30_000)
    assert "the server closed the live session" in status.inner_text()
    assert page.evaluate(TRACKS_STOPPED)
    n = len(traffic.frames())
    page.wait_for_timeout(3_000)
    assert len(traffic.frames()) == n == 2
    errors.check()
    context.close()
