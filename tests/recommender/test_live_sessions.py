"""Live sessions on the real PostgreSQL: frames stored as jobs of a session, smoothed by the
recommender one at a time, the playlist rebuilt only when the smoothed emotion changes, waiting
frames superseded by newer ones (backpressure)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from moodtunes import jobs, live
from moodtunes.db import connection
from moodtunes.events import EmotionDetected, ModelRef, job_options
from moodtunes_recommender import mapping, worker

pytestmark = pytest.mark.integration
EMOTIONS = ["neutral", "happy", "sad", "fear", "angry"]


def confident(emotion: str, p: float = 0.8) -> list[float]:
    """`p` on one emotion, the rest shared evenly: a model output for a clear expression."""
    probs = np.full(5, (1.0 - p) / 4)
    probs[EMOTIONS.index(emotion)] = p
    return probs.tolist()


def open_session(mode="match", limit=5, window_s=60.0, client_key="c1") -> str:
    session_id = live.new_session_id()
    live.create(
        session_id,
        client_key=client_key,
        mode=mode,
        limit=limit,
        filters={},
        diversity=None,
        window_s=window_s,
    )
    return session_id


def send_frame(session_id: str, client_key="c1") -> tuple[str, list[str]]:
    frame_id = jobs.new_job_id()
    session = live.get(session_id)
    superseded = live.add_frame(
        session_id,
        frame_id,
        mode=session["mode"],
        limit=session["track_limit"],
        image=b"frame",
        image_type="image/jpeg",
        width=640,
        height=480,
        filters={},
        client_key=client_key,
    )
    return frame_id, superseded


def process_frame(session_id: str, frame_id: str, probs, client_key="c1"):
    """What the FER worker and recommender do to a frame: classify it, then the session's turn."""
    jobs.transition(frame_id, jobs.UNFINISHED, jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    session = live.get(session_id)
    options = job_options(
        mode=session["mode"], limit=session["track_limit"], client_key=client_key, session_id=session_id
    )
    event = EmotionDetected(
        job_id=frame_id,
        emotions=mapping.emotions(),
        probabilities=probs,
        faces_detected=1,
        model=ModelRef(name="fer_vgg16", version=5, head="svm"),
        options=options,
    )
    return worker.recommend(event)


def feed(session_id, probs):
    frame_id, _ = send_frame(session_id)
    process_frame(session_id, frame_id, probs)
    return live.get(session_id)


def test_ten_frames_of_one_face_then_ten_of_another_change_the_mood_and_playlist_once(clean_jobs):
    session_id = open_session()
    seen, playlists = [], []
    for probs in [confident("happy")] * 10 + [confident("sad")] * 10:
        session = feed(session_id, probs)
        seen.append(session["smoothed"]["emotion"])
        playlists.append([t["track_id"] for t in session["playlist"]["tracks"]])
    changes = [i for i in range(1, 20) if seen[i] != seen[i - 1]]
    assert seen[0] == "happy" and seen[-1] == "sad"
    assert len(changes) == 1 and 11 <= changes[0] <= 14  # a few frames after the switch, not at once
    assert session["playlist_changes"] == 2  # the first playlist, and one rebuild for the new mood
    assert playlists[changes[0]] != playlists[changes[0] - 1]
    assert all(playlists[i] == playlists[i - 1] for i in range(1, 20) if i != changes[0])
    assert session["playlist_emotion"] == "sad" and session["frames_processed"] == 20
    # the playlist is built from the smoothed mood, which is still partly happy at the switch
    assert session["playlist"]["emotion_probabilities"]["happy"] > confident("sad")[EMOTIONS.index("happy")]
    # every frame is listed with its own and the smoothed emotion; the trend has one point per frame
    assert [f["emotion"] for f in session["frames"]] == ["happy"] * 10 + ["sad"] * 10
    assert [f["smoothed_emotion"] for f in session["frames"]] == seen
    assert len(session["trend"]) == 20 and session["trend"][0]["valence"] > session["trend"][-1]["valence"]
    frame_job = jobs.get(session["frames"][0]["id"])
    assert frame_job["status"] == "done" and frame_job["recommendation"] is None  # the session holds it


def test_one_odd_frame_does_not_flip_the_mood(clean_jobs):
    session_id = open_session()
    for probs in [confident("happy")] * 4 + [confident("angry", 0.9)] + [confident("happy")] * 3:
        session = feed(session_id, probs)
        assert session["smoothed"]["emotion"] == "happy"
    assert session["playlist_changes"] == 1


def test_two_close_emotions_do_not_flip_back_and_forth():
    average = np.array([0.05, 0.42, 0.43, 0.05, 0.05])  # sad leads happy by one point
    assert live.smoothed_emotion(average, "happy") == "happy"
    assert live.smoothed_emotion(np.array([0.05, 0.35, 0.50, 0.05, 0.05]), "happy") == "sad"
    assert live.smoothed_emotion(average, None) == "sad"


def test_a_newer_frame_supersedes_the_waiting_one_and_the_queue_never_grows(clean_jobs):
    session_id = open_session()
    first, superseded = send_frame(session_id)
    assert superseded == []
    ids = [first]
    for _ in range(5):  # the client sends faster than frames are processed
        frame_id, superseded = send_frame(session_id)
        assert superseded == [ids[-1]]
        ids.append(frame_id)
    with connection() as conn:
        waiting = conn.execute(
            "SELECT count(*) AS n FROM jobs WHERE session_id = %s AND status = 'queued'", (session_id,)
        ).fetchone()["n"]
        photos = conn.execute(
            "SELECT count(*) AS n FROM job_images WHERE job_id = ANY(%s)", (ids[:-1],)
        ).fetchone()["n"]
    assert waiting == 1 and photos == 0  # the dropped frames' photos went with them
    dropped = jobs.get(ids[0])
    assert dropped["status"] == "failed" and dropped["error_code"] == live.SUPERSEDED
    session = live.get(session_id)
    assert (session["frames_received"], session["frames_dropped"]) == (6, 5)
    assert session["latest_frame"]["id"] == ids[-1] and session["latest_frame"]["status"] == "queued"
    # a frame already being processed is not superseded: only one waits behind it
    jobs.claim(ids[-1])
    frame_id, superseded = send_frame(session_id)
    assert superseded == []
    process_frame(session_id, ids[-1], confident("neutral"))
    assert live.get(session_id)["frames_processed"] == 1


def test_frames_past_the_window_leave_the_list_and_the_database(clean_jobs):
    session_id = open_session(window_s=10.0)
    old_id, _ = send_frame(session_id)
    with connection() as conn:  # as if that frame had been taken 30 s ago
        conn.execute("UPDATE jobs SET created_at = now() - interval '30 seconds' WHERE id = %s", (old_id,))
    process_frame(session_id, old_id, confident("happy"))
    with connection() as conn:
        conn.execute("UPDATE jobs SET finished_at = now() - interval '30 seconds' WHERE id = %s", (old_id,))
    new_id, _ = send_frame(session_id)
    assert jobs.get(old_id) is None  # deleted when the next frame came in
    process_frame(session_id, new_id, confident("happy"))
    session = live.get(session_id)
    assert [f["id"] for f in session["frames"]] == [new_id]
    assert len(session["trend"]) == 2  # the trend spans the whole session


def test_a_late_frame_is_listed_but_not_smoothed():
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    session = {
        "smoothed": None,
        "frames": [],
        "trend": [],
        "playlist": None,
        "playlist_emotion": None,
        "window_s": 60,
    }
    state = live.next_state(session, "b", now, now, confident("happy"), worker.mood_of)
    session.update(state, playlist={"x": 1}, playlist_emotion="happy")
    late = live.next_state(session, "a", now - timedelta(seconds=2), now, confident("sad"), worker.mood_of)
    assert late["smoothed"] == state["smoothed"] and len(late["trend"]) == 1
    assert [f["id"] for f in late["frames"]] == ["a", "b"] and late["playlist_due"] is False


def test_a_closed_session_takes_no_frames_and_its_frames_are_deleted(clean_jobs):
    session_id = open_session()
    frame_id, _ = send_frame(session_id)
    live.close(session_id)
    assert jobs.get(frame_id) is None
    with pytest.raises(live.SessionClosed):
        send_frame(session_id)
    assert live.purge(0.0) >= 1 and live.get(session_id) is None


def mixed(sad: float, neutral: float) -> list[float]:
    rest = (1.0 - sad - neutral) / 3
    return [neutral, rest, sad, rest, rest]


@pytest.mark.parametrize("mode, rebuilds", [("uplift", True), ("match", False)])
def test_uplift_follows_the_listeners_response_without_a_change_of_emotion(clean_jobs, mode, rebuilds):
    session_id = open_session(mode=mode)
    for _ in range(5):
        session = feed(session_id, mixed(sad=0.8, neutral=0.05))
    assert (session["smoothed"]["emotion"], session["playlist_changes"]) == ("sad", 1)
    start_valence = session["smoothed"]["valence"]
    for _ in range(5):  # the listener brightens: still sad, but less so (neutral never leads)
        session = feed(session_id, mixed(sad=0.5, neutral=0.4))
        assert session["smoothed"]["emotion"] == "sad"
    assert session["smoothed"]["valence"] - start_valence >= live.RESPONSE_STEP
    assert session["playlist_changes"] == (2 if rebuilds else 1)
    if rebuilds:  # the new path starts from the brighter mood it was rebuilt at
        assert session["playlist"]["emotion_probabilities"]["neutral"] > 0.2


def test_an_idle_session_is_closed_when_a_frame_comes_too_late(clean_jobs):
    session_id = open_session()
    with connection() as conn:
        conn.execute(
            "UPDATE live_sessions SET updated_at = now() - make_interval(secs => %s) WHERE id = %s",
            (live.IDLE_CLOSE_S + 60, session_id),
        )
    with pytest.raises(live.SessionClosed):
        send_frame(session_id)
    assert live.get(session_id)["closed_at"] is not None  # closed for good, not just refused
