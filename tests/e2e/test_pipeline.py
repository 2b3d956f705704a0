"""End to end over HTTP: a real face photo through gateway -> Celery -> FER worker -> model server
-> recommender -> PostgreSQL, polled until done."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from moodtunes_recommender import mapping

pytestmark = pytest.mark.e2e
EMOTIONS = ["neutral", "happy", "sad", "fear", "angry"]


def submit_and_wait(url: str, content: bytes, timeout_s: float = 120, **form) -> dict:
    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post(
            "/v1/jobs", files={"image": ("photo", content)}, data={k: str(v) for k, v in form.items()}
        )
        assert r.status_code == 202, r.text
        seen, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = client.get(r.headers["Location"]).json()
            if not seen or seen[-1] != job["status"]:
                seen.append(job["status"])
            if job["status"] in ("done", "failed"):
                job["_seen"] = seen
                return job
            time.sleep(0.2)
    pytest.fail(f"job still {job['status']} after {timeout_s}s (seen {seen})")


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_face_photo_to_playlist(stack, face_jpeg):
    job = submit_and_wait(stack["url"], face_jpeg, mode="match", limit=8, diversity=0)
    assert job["status"] == "done", job["error"]
    assert job["_seen"][-1] == "done" and set(job["_seen"]) <= {
        "queued",
        "detecting",
        "classifying",
        "recommending",
        "done",
    }
    assert len(job["faces"]) == 1 and job["chosen_face"] == 0
    face = job["faces"][0]
    assert list(face["probabilities"]) == EMOTIONS  # in the model's class order
    assert 150 < face["box"]["x"] < 220 and 60 < face["box"]["width"] < 140
    probs = np.array([face["probabilities"][e] for e in EMOTIONS])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4) and (probs >= 0).all()
    assert face["emotion"] == EMOTIONS[int(probs.argmax())]
    assert job["model"]["name"] == "fer_vgg16" and job["model"]["version"] >= 1
    rec = job["recommendation"]
    assert rec["mode"] == "match"
    np.testing.assert_allclose(rec["target_vector"], probs @ mapping.matrix("match"), atol=1e-4)
    assert rec["target"]["tempo"] == pytest.approx(rec["target_vector"][3] * 244, rel=1e-5)
    tracks = rec["tracks"]
    assert len(tracks) == 8
    assert [t["distance"] for t in tracks] == sorted(t["distance"] for t in tracks)
    for t in tracks:
        assert t["track_id"] and t["name"] and t["artists"]
        assert set(t["features"]) == {"danceability", "energy", "valence", "tempo", "mode"}
    assert job["finished_at"] and job["error"] is None


@pytest.mark.parametrize("mode", ["uplift", "calm"])
def test_other_modes_through_the_gateway(stack, face_jpeg, mode):
    job = submit_and_wait(stack["url"], face_jpeg, mode=mode, limit=6, year_min=1980)
    assert job["status"] == "done", job["error"]
    rec = job["recommendation"]
    assert rec["mode"] == mode and len(rec["tracks"]) == 6 and len(rec["targets"]) == 6
    assert all(t["year"] >= 1980 for t in rec["tracks"])


def test_tight_face_crop_like_the_dataset_works(stack, face_jpeg):
    grey = np.asarray(Image.open(io.BytesIO(face_jpeg)).convert("L"))
    crop = np.asarray(Image.fromarray(grey[60:170, 170:280]).resize((48, 48)))
    job = submit_and_wait(stack["url"], png_bytes(crop), limit=3)
    assert job["status"] == "done", job["error"]
    assert len(job["faces"]) == 1 and len(job["recommendation"]["tracks"]) == 3


def test_photo_without_a_face_fails_with_no_face(stack):
    job = submit_and_wait(stack["url"], png_bytes(skimage.data.coffee()))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "no_face" and "face" in job["error"]["message"]


def test_cli_submit_waits_and_prints_the_result(stack, tmp_path, face_jpeg):
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(face_jpeg)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "moodtunes_cli.cli",
            "submit",
            str(photo),
            "--wait",
            "--limit",
            "3",
            "--url",
            stack["url"],
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "done" and len(job["recommendation"]["tracks"]) == 3
    text = subprocess.run(
        [sys.executable, "-m", "moodtunes_cli.cli", "submit", str(photo), "--wait", "--url", stack["url"]],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert text.returncode == 0 and "mode match" in text.stdout and " 1. " in text.stdout


def test_concurrent_jobs_all_finish(stack, face_jpeg):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: submit_and_wait(stack["url"], face_jpeg, limit=2), range(4)))
    assert [j["status"] for j in results] == ["done"] * 4
    assert len({j["id"] for j in results}) == 4
