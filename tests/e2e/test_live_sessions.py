"""Live sessions end to end over HTTP: webcam-like frames of a real face through gateway -> Celery
-> FER worker -> model server -> recommender -> the session's smoothed mood and playlist."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


def wait_for(client, url, done, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = client.get(url).json()
        if done(session):
            return session
        time.sleep(0.2)
    pytest.fail(f"session never got there: {session}")


def test_frames_of_a_face_build_a_smoothed_mood_a_trend_and_one_playlist(stack, face_jpeg):
    with httpx.Client(base_url=stack["url"], timeout=30) as client:
        r = client.post("/v1/sessions", json={"mode": "match", "limit": 6})
        assert r.status_code == 201, r.text
        session = r.json()
        for n in range(1, 4):  # one at a time, as a page sending every 2 s to an idle stack does
            frame = client.post(session["frames_url"], files={"image": ("frame.jpg", face_jpeg)})
            assert frame.status_code == 202, frame.text
            state = wait_for(client, session["status_url"], lambda s, n=n: s["frames_processed"] == n)
        assert [f["emotion"] for f in state["frames"]] == [state["frames"][0]["emotion"]] * 3  # same face
        assert state["smoothed"]["emotion"] == state["frames"][0]["emotion"]
        assert len(state["trend"]) == 3 and state["playlist_changes"] == 1
        assert len(state["playlist"]["tracks"]) == 6
        assert state["latest_frame"]["status"] == "done" and state["frames_dropped"] == 0
        assert client.delete(session["status_url"]).status_code == 204


def test_a_burst_of_frames_processes_the_newest_and_drops_the_waiting_ones(stack, face_jpeg):
    with httpx.Client(base_url=stack["url"], timeout=30) as client:
        session = client.post("/v1/sessions", json={}).json()
        sent = [
            client.post(session["frames_url"], files={"image": ("f.jpg", face_jpeg)}).json() for _ in range(8)
        ]
        state = wait_for(
            client, session["status_url"], lambda s: s["frames_processed"] + s["frames_dropped"] == 8
        )
        assert state["frames_received"] == 8
        assert state["frames_dropped"] >= 1  # eight frames in well under a second: most waited, and went
        assert sent[-1]["frame_id"] in [f["id"] for f in state["frames"]]  # the newest is always processed
        assert state["latest_frame"]["status"] == "done"
