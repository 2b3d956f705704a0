"""Live mood sessions: a stream of webcam frames whose mood is smoothed, and a playlist that
changes only when that mood really changes.

A frame is a job with `session_id` set: it goes through the same queue, FER worker and model as a
photo, and its photo is dropped once classified, as a job's is. The session row holds what the
frames add up to; the recommender updates it, one frame at a time (the row is locked meanwhile).

Smoothing (documented in the README): an exponential moving average over frames,
    smoothed = ALPHA * frame + (1 - ALPHA) * smoothed,
so a frame counts for 35% and its influence halves every ~1.6 frames; the page sends a frame
every ~2 s, so a real change of expression shows within ~3 frames (6 s) while one odd frame moves
the mood only part of the way. Hysteresis: the session's emotion changes to the smoothed leader
only when that leader is ahead of the current emotion by HYSTERESIS (15 points of probability),
so two emotions running close do not flip it back and forth. The playlist is rebuilt only when
that emotion changes (or when there is none yet), from the smoothed probabilities. In `uplift` it
follows the listener's response too: when their smoothed valence has moved RESPONSE_STEP (0.10)
since the playlist was built, up or down, even without a change of emotion, the playlist is
rebuilt from where they are now, so the path continues from their current mood instead of from
the mood the playlist started at.

Backpressure: a session holds at most one frame waiting in the queue. A newer frame supersedes it
(the waiting one fails with code `superseded`, its photo deleted in the same statement), so a
client that sends faster than frames are processed gets its newest frame processed and never a
growing queue. Frames older than the session's window leave its `frames` list and their jobs
are deleted; `trend` keeps the smoothed mood over the whole session (the last TREND_MAX points).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb

from moodtunes import jobs
from moodtunes.db import connection
from moodtunes.emotions import EMOTIONS

ALPHA = 0.35  # weight of the newest frame in the moving average
HYSTERESIS = 0.15  # lead the smoothed leader needs over the current emotion to replace it
DEFAULT_WINDOW_S = 60.0
MIN_WINDOW_S, MAX_WINDOW_S = 10.0, 600.0
TREND_MAX = 500  # smoothed points kept for the trend chart
RESPONSE_STEP = 0.10  # uplift: the smoothed valence moved this far since the playlist was built
IDLE_CLOSE_S = 900.0  # a session without frames for this long takes no more
SUPERSEDED = "superseded"
SUPERSEDED_MESSAGE = "a newer frame of the same live session replaced this one before it was processed"

SESSION_COLUMNS = """id, client_key, mode, track_limit, filters, diversity, window_s, frames, trend,
    smoothed, playlist, playlist_emotion, playlist_changes, playlist_updated_at, frames_received,
    frames_processed, frames_dropped, created_at, updated_at, closed_at"""


class SessionClosed(Exception):
    """The session was closed (or sat idle past IDLE_CLOSE_S) and takes no more frames."""


def new_session_id() -> str:
    return str(uuid.uuid4())


def create(
    session_id: str,
    *,
    client_key: str | None,
    mode: str,
    limit: int,
    filters: dict,
    diversity: float | None,
    window_s: float,
) -> dict[str, Any]:
    with connection() as conn:
        return conn.execute(
            f"""INSERT INTO live_sessions (id, client_key, mode, track_limit, filters, diversity, window_s)
                VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {SESSION_COLUMNS}""",
            (session_id, client_key, mode, limit, Jsonb(filters), diversity, window_s),
        ).fetchone()


def get(session_id: str) -> dict[str, Any] | None:
    """The session and its newest frame's status (e.g. failed with no_face), in one statement."""
    with connection() as conn:
        return conn.execute(
            f"""SELECT {SESSION_COLUMNS},
                       (SELECT json_build_object('id', j.id, 'status', j.status,
                                                 'error_code', j.error_code, 'created_at', j.created_at)
                        FROM jobs j WHERE j.session_id = live_sessions.id
                        ORDER BY j.created_at DESC LIMIT 1) AS latest_frame
                FROM live_sessions WHERE id = %s""",
            (session_id,),
        ).fetchone()


def options(session_id: str) -> dict[str, Any] | None:
    """What a frame needs of its session (owner, options, state): none of its frames or trend."""
    with connection() as conn:
        return conn.execute(
            """SELECT id, client_key, mode, track_limit, filters, diversity, closed_at, frames_dropped
               FROM live_sessions WHERE id = %s""",
            (session_id,),
        ).fetchone()


def close(session_id: str) -> None:
    """Closes the session and deletes its frames (their jobs, and any photo still stored)."""
    with connection() as conn:
        conn.execute(
            "UPDATE live_sessions SET closed_at = coalesce(closed_at, now()), updated_at = now()"
            " WHERE id = %s",
            (session_id,),
        )
        conn.execute("DELETE FROM jobs WHERE session_id = %s", (session_id,))


def add_frame(session_id: str, job_id: str, **job_fields) -> list[str]:
    """Stores a frame as a queued job of the session, in one transaction that holds the session's
    row: waiting frames are superseded (returned), frames past the window are deleted, and the
    counters move. Raises SessionClosed for a closed or idle session (an idle one is closed)."""
    with connection() as conn:
        row = conn.execute(
            """SELECT closed_at, window_s, updated_at < now() - make_interval(secs => %s) AS idle
               FROM live_sessions WHERE id = %s FOR UPDATE""",
            (IDLE_CLOSE_S, session_id),
        ).fetchone()
        if row is None or row["closed_at"] is not None or row["idle"]:
            if row is not None and row["closed_at"] is None:  # committed as the block ends
                conn.execute("UPDATE live_sessions SET closed_at = now() WHERE id = %s", (session_id,))
            superseded = None
        else:
            superseded = _store_frame(conn, session_id, job_id, row["window_s"], job_fields)
    if superseded is None:
        raise SessionClosed(session_id)
    return superseded


def _store_frame(conn, session_id: str, job_id: str, window_s: float, job_fields: dict) -> list[str]:
    superseded = [
        str(r["id"])
        for r in conn.execute(
            """WITH gone AS (
                   UPDATE jobs SET status = %s, error_code = %s, error_message = %s,
                          finished_at = now(), updated_at = now()
                   WHERE session_id = %s AND status = %s RETURNING id),
               photos AS (DELETE FROM job_images WHERE job_id IN (SELECT id FROM gone))
               SELECT id FROM gone""",
            (jobs.FAILED, SUPERSEDED, SUPERSEDED_MESSAGE, session_id, jobs.QUEUED),
        ).fetchall()
    ]
    conn.execute(
        f"""DELETE FROM jobs WHERE session_id = %s AND status IN {jobs.FINAL_SQL}
            AND finished_at < now() - make_interval(secs => %s)""",
        (session_id, window_s),
    )
    jobs.create(job_id, conn=conn, session_id=session_id, **job_fields)
    conn.execute(
        """UPDATE live_sessions SET frames_received = frames_received + 1,
                  frames_dropped = frames_dropped + %s, updated_at = now() WHERE id = %s""",
        (len(superseded), session_id),
    )
    return superseded


def lock_for_frame(conn, session_id: str, job_id: str) -> dict[str, Any] | None:
    """The session row, locked until the caller's transaction ends, with the frame's time (its
    job's created_at) as `frame_at` and the database's `now`."""
    return conn.execute(
        f"""SELECT {SESSION_COLUMNS}, (SELECT created_at FROM jobs WHERE id = %s) AS frame_at, now() AS now
            FROM live_sessions WHERE id = %s FOR UPDATE""",
        (job_id, session_id),
    ).fetchone()


def smoothed_emotion(average: np.ndarray, current: str | None) -> str:
    """The smoothed leader, unless the current emotion is within HYSTERESIS of it."""
    leader = int(np.argmax(average))
    if current is None or current not in EMOTIONS:
        return EMOTIONS[leader]
    if average[leader] - average[EMOTIONS.index(current)] >= HYSTERESIS:
        return EMOTIONS[leader]
    return current


def _probabilities(values) -> dict[str, float]:
    return {e: round(float(p), 6) for e, p in zip(EMOTIONS, values, strict=True)}


def next_state(session: dict, frame_id: str, frame_at: datetime, now: datetime, probabilities, mood) -> dict:
    """What one processed frame does to a session (pure: the caller stores it).

    `mood(probabilities) -> (valence, arousal)` places a mood in music terms (the recommender's
    match target). Returns the new `frames`, `trend` and `smoothed`, and `playlist_due`: whether the
    playlist must be rebuilt (_playlist_due). A frame older than the
    newest one already smoothed (workers finished out of order) is listed but not smoothed."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum()
    previous = session["smoothed"]
    at = frame_at.isoformat()
    late = previous is not None and previous.get("at") and at < previous["at"]
    if late:
        smoothed = previous
    else:
        before = None if previous is None else np.array([previous["probabilities"][e] for e in EMOTIONS])
        average = p if before is None else ALPHA * p + (1.0 - ALPHA) * before
        emotion = smoothed_emotion(average, None if previous is None else previous["emotion"])
        valence, arousal = mood(average)
        smoothed = {
            "emotion": emotion,
            "probabilities": _probabilities(average),
            "valence": round(float(valence), 6),
            "arousal": round(float(arousal), 6),
            "at": at,
        }
    valence, arousal = mood(p)
    frame = {
        "id": frame_id,
        "at": at,
        "emotion": EMOTIONS[int(np.argmax(p))],
        "probabilities": _probabilities(p),
        "smoothed_emotion": smoothed["emotion"],
        "valence": round(float(valence), 6),
        "arousal": round(float(arousal), 6),
    }
    horizon = now.timestamp() - float(session["window_s"])
    frames = sorted([*session["frames"], frame], key=lambda f: f["at"])
    frames = [f for f in frames if datetime.fromisoformat(f["at"]).timestamp() >= horizon]
    trend = list(session["trend"])
    if not late:
        trend.append({k: smoothed[k] for k in ("at", "valence", "arousal", "emotion")})
    return {
        "frames": frames,
        "trend": trend[-TREND_MAX:],
        "smoothed": smoothed,
        "playlist_due": _playlist_due(session, smoothed, mood),
    }


def _playlist_due(session: dict, smoothed: dict, mood) -> bool:
    """No playlist yet, a new smoothed emotion, or (uplift) a response in valence since it was built."""
    playlist = session["playlist"]
    if playlist is None or smoothed["emotion"] != session["playlist_emotion"]:
        return True
    if session.get("mode") != "uplift":
        return False
    built_from = [playlist["emotion_probabilities"][e] for e in EMOTIONS]
    return abs(smoothed["valence"] - mood(np.asarray(built_from))[0]) >= RESPONSE_STEP


def store(conn, session_id: str, state: dict, playlist=None) -> None:
    """Writes a frame's outcome; with `playlist` (a Recommendation), the session's new playlist."""
    sets = ["frames = %s", "trend = %s", "smoothed = %s", "frames_processed = frames_processed + 1"]
    params: list[Any] = [Jsonb(state["frames"]), Jsonb(state["trend"]), Jsonb(state["smoothed"])]
    if playlist is not None:
        sets += [
            "playlist = %s",
            "playlist_emotion = %s",
            "playlist_changes = playlist_changes + 1",
            "playlist_updated_at = now()",
        ]
        params += [jobs.db_value(playlist), state["smoothed"]["emotion"]]
    conn.execute(
        f"UPDATE live_sessions SET {', '.join(sets)}, updated_at = now() WHERE id = %s", [*params, session_id]
    )


def purge(older_than_s: float) -> int:
    """Deletes sessions (with any frames left) closed, or idle, for longer than `older_than_s`."""
    with connection() as conn:
        return conn.execute(
            """DELETE FROM live_sessions
               WHERE coalesce(closed_at, updated_at) < now() - make_interval(secs => %s)""",
            (older_than_s,),
        ).rowcount
