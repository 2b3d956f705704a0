"""Recommender worker: consumes EmotionDetected events, writes the recommendation, ends the job.

The event carries everything the playlist depends on (probabilities, mode, limit, filters,
diversity, client key), so the job row is only locked and finished, never read for its options.
A PostgreSQL outage is waited out (DB_RETRY_S), then the job is left in `recommending` for the
reconciler, never failed for it; only an error that would happen again fails the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from moodtunes import jobs, live, observability
from moodtunes.config import get_settings
from moodtunes.db import TRANSIENT_ERRORS, connection, retry_transient
from moodtunes.events import EmotionDetected, drive_of, filters_of, from_json, options_from_row
from moodtunes.queue import RECOMMEND_TASK, make_celery
from moodtunes.results import GroupMood, Recommendation
from moodtunes_recommender import mapping, matching, snapshot

log = logging.getLogger("moodtunes.recommender")
app = make_celery("moodtunes-recommender")
SERVICE = "recommender"  # the service label of this worker's metrics


# Likes pull a listener's later playlists in that mode toward what they liked: every target moves
# toward the mean matching-space point of their liked tracks by LIKE_PULL_MAX * n / (n + LIKE_HALF),
# n liked tracks (1 like: 0.125, 3: 0.25, many: up to 0.5), so the mood still leads.
LIKE_PULL_MAX = 0.5
LIKE_HALF = 3


@dataclass
class Listener:
    """What one client's feedback in one mode asks of the next playlist."""

    disliked: list[str] = field(default_factory=list)
    liked_count: int = 0
    liked_mean: np.ndarray | None = None  # matching-space mean of the liked tracks

    @property
    def like_pull(self) -> float:
        return LIKE_PULL_MAX * self.liked_count / (self.liked_count + LIKE_HALF) if self.liked_count else 0.0

    def pulled(self, targets: np.ndarray) -> np.ndarray:
        if self.liked_mean is None or not self.liked_count:
            return targets
        return targets + self.like_pull * (self.liked_mean[None, :] - targets)


def lock_job(conn, job_id: str, client_key: str, mode: str) -> tuple[str | None, Listener]:
    """The job's status, its row locked until this transaction ends, and what this client's
    feedback in this mode asks (dislikes, likes), in one round trip. The lock makes a concurrent
    redelivery of the same event wait, then find the job done: the playlist is built and written once."""
    row = conn.execute(
        """SELECT status,
                  ARRAY(SELECT track_id FROM feedback
                        WHERE client_key = %(client)s AND mode = %(mode)s AND NOT liked
                        ORDER BY track_id) AS disliked,
                  liked.n AS liked_count, liked.mean::real[] AS liked_mean
           FROM jobs,
                LATERAL (SELECT count(*) AS n, avg(t.features) AS mean
                         FROM feedback f JOIN tracks t ON t.track_id = f.track_id
                         WHERE f.client_key = %(client)s AND f.mode = %(mode)s AND f.liked) AS liked
           WHERE id = %(job)s FOR UPDATE OF jobs""",
        {"client": client_key or None, "mode": mode, "job": job_id},
    ).fetchone()
    if not row:
        return None, Listener()
    mean = np.asarray(row["liked_mean"], dtype=np.float64) if row["liked_mean"] is not None else None
    return row["status"], Listener(list(row["disliked"]), int(row["liked_count"]), mean)


def group_mood(event: EmotionDetected) -> GroupMood | None:
    """The event's account of a group blend, rounded for the stored result (None: one face drove)."""
    if not event.HasField("group"):
        return None
    g = event.group
    return GroupMood(faces=g.faces, weights=[round(w, 6) for w in g.weights], spread=round(g.spread, 6))


_snapshots: list[snapshot.SnapshotCache] = []  # this process's, made after the fork


def catalogue_copy(conn, filters) -> snapshot.CatalogueSnapshot | None:
    """This process's in-memory copy of the catalogue for a filtered playlist, when it is current
    (None: no filters, too large a catalogue, or a load under way: the database's plans serve)."""
    if not matching.filter_sql(filters)[0]:
        return None
    if not _snapshots:
        _snapshots.append(snapshot.SnapshotCache(get_settings().playlist_memory_max_tracks, connection))
    return _snapshots[0].current(conn)


def build_recommendation(conn, event: EmotionDetected, options, probs, listener: Listener) -> Recommendation:
    """The playlist for `probs` under the job's options, the listener's likes and dislikes."""
    mode, n = options.mode, options.limit
    filters = filters_of(options)
    diversity = options.diversity if options.HasField("diversity") else None
    targets = listener.pulled(mapping.targets(probs, mode, n))
    tracks = matching.build_playlist(
        conn,
        targets,
        filters,
        listener.disliked,
        diversity,
        mapping.min_valence(mode, n),
        memory=catalogue_copy(conn, filters),
    )
    goal = listener.pulled(mapping.target(probs, mode)[None, :])[0]
    features = mapping.features()
    return Recommendation(
        mode=mode,
        drive=drive_of(options),
        group=group_mood(event),
        emotion_probabilities=dict(zip(event.emotions, (round(float(p), 6) for p in probs), strict=True)),
        target=mapping.describe(goal),
        target_vector=[round(float(v), 6) for v in goal],
        targets=[mapping.describe(t) for t in targets[: len(tracks)]],
        playlist_mean=(
            {f: round(sum(t.features[f] for t in tracks) / len(tracks), 6) for f in features}
            if tracks
            else None
        ),
        filters=filters,
        diversity=diversity,
        excluded_disliked=len(listener.disliked),
        liked_pull=round(listener.like_pull, 6) if listener.liked_count else None,
        tracks=tracks,
    )


def mood_of(probabilities) -> tuple[float, float]:
    """A mood as (valence, arousal) in music terms: the `match` target's valence and energy."""
    point = mapping.target(probabilities, "match")
    features = mapping.features()
    return float(point[features.index("valence")]), float(point[features.index("energy")])


def live_frame(conn, event: EmotionDetected, options, probs, listener: Listener) -> Recommendation | None:
    """A live session's frame: smooths the session's mood (moodtunes.live) and rebuilds its
    playlist, from the smoothed probabilities, only when the smoothed emotion changed."""
    session = live.lock_for_frame(conn, options.session_id, event.job_id)
    if session is None or session["closed_at"] is not None:
        log.info("frame %s: session %s is gone or closed", event.job_id, options.session_id)
        return None
    state = live.next_state(session, event.job_id, session["frame_at"], session["now"], probs, mood_of)
    playlist = None
    if state["playlist_due"]:
        smoothed = [state["smoothed"]["probabilities"][e] for e in event.emotions]
        playlist = build_recommendation(conn, event, options, smoothed, listener)
    live.store(conn, options.session_id, state, playlist)
    return playlist


def recommend(event: EmotionDetected) -> Recommendation | None:
    """The playlist of the event's job, in one transaction. Its stages, timed and (when tracing)
    spanned: lock (the job row, and the client's dislikes), match (targets and playlist) or, for a
    live session's frame, session (smoothing, and the playlist when the mood changed), store
    (the result; -> done). A frame's job ends done without a result of its own: it is the session's."""
    if list(event.emotions) != mapping.emotions():
        raise ValueError(f"event emotions {list(event.emotions)} != {mapping.emotions()}")
    options = event.options
    if not event.HasField("options"):  # queued before events carried options
        job = jobs.get(event.job_id)
        if job is None:
            log.info("job %s is unknown: nothing to do", event.job_id)
            return None
        options = options_from_row(job)
    probs = list(event.probabilities)
    with connection() as conn:
        with observability.stage(SERVICE, "lock"):
            status, listener = lock_job(conn, event.job_id, options.client_key, options.mode)
        if status != jobs.RECOMMENDING:
            log.info("job %s is %s: nothing to do", event.job_id, status)
            return None  # redelivered event of a finished job, or an unknown job
        if options.session_id:
            with observability.stage(SERVICE, "session"):
                recommendation = live_frame(conn, event, options, probs, listener)
            with observability.stage(SERVICE, "store"):
                jobs.transition(event.job_id, (jobs.RECOMMENDING,), jobs.DONE, conn=conn)
            log.info("frame %s done: playlist %s", event.job_id, "rebuilt" if recommendation else "kept")
            return recommendation
        with observability.stage(SERVICE, "match"):
            recommendation = build_recommendation(conn, event, options, probs, listener)
        with observability.stage(SERVICE, "store"):
            jobs.transition(
                event.job_id, (jobs.RECOMMENDING,), jobs.DONE, conn=conn, recommendation=recommendation
            )
    log.info("job %s done: %d tracks", event.job_id, len(recommendation.tracks))
    return recommendation


# The whole job again (one transaction: lock, build, write) while PostgreSQL is away; a repeat after
# a commit whose answer was lost finds the job done and does nothing.
recommend_waiting = retry_transient(recommend)


@app.task(name=RECOMMEND_TASK, bind=True, max_retries=3, acks_late=True)
def recommend_task(self, payload: dict) -> None:
    try:
        event = from_json(payload, EmotionDetected)
    except Exception as exc:  # a malformed event can never succeed: fail its job, don't retry
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        if job_id:
            jobs.fail(job_id, "bad_event", f"invalid emotion event: {exc}")
        observability.task_outcome("failed", "bad_event")
        log.error("dropping malformed event %r: %s", payload, exc)
        return
    try:
        recommend_waiting(event)
    except TRANSIENT_ERRORS as exc:  # still away after DB_RETRY_S: the reconciler re-sends the job
        observability.task_outcome("deferred", "database_unavailable")
        log.warning("job %s left in recommending for the reconciler: %s", event.job_id, exc)
    except Exception as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=1 + 2 * self.request.retries) from exc
        jobs.fail(event.job_id, "recommendation_failed", f"could not build the playlist: {exc}")
        observability.task_outcome("failed", "recommendation_failed")
        raise


observability.instrument_worker(SERVICE, [RECOMMEND_TASK])
