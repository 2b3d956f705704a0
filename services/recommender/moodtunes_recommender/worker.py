"""Recommender worker: consumes EmotionDetected events, writes the recommendation, ends the job.

The event carries everything the playlist depends on (probabilities, mode, limit, filters,
diversity, client key), so the job row is only locked and finished, never read for its options.
A PostgreSQL outage is waited out (DB_RETRY_S), then the job is left in `recommending` for the
reconciler, never failed for it; only an error that would happen again fails the job.
"""

from __future__ import annotations

import logging

from moodtunes import jobs, observability
from moodtunes.db import TRANSIENT_ERRORS, connection, retry_transient
from moodtunes.events import EmotionDetected, drive_of, filters_of, from_json, options_from_row
from moodtunes.queue import RECOMMEND_TASK, make_celery
from moodtunes.results import GroupMood, Recommendation
from moodtunes_recommender import mapping, matching

log = logging.getLogger("moodtunes.recommender")
app = make_celery("moodtunes-recommender")
SERVICE = "recommender"  # the service label of this worker's metrics


def lock_job(conn, job_id: str, client_key: str, mode: str) -> tuple[str | None, list[str]]:
    """The job's status, its row locked until this transaction ends, and the tracks this client
    disliked in this mode, in one round trip. The lock makes a concurrent redelivery of the same
    event wait, then find the job done: the playlist is built and written once."""
    row = conn.execute(
        """SELECT status, ARRAY(SELECT track_id FROM feedback
                                WHERE client_key = %s AND mode = %s AND NOT liked
                                ORDER BY track_id) AS disliked
           FROM jobs WHERE id = %s FOR UPDATE""",
        (client_key or None, mode, job_id),
    ).fetchone()
    return (row["status"], list(row["disliked"])) if row else (None, [])


def group_mood(event: EmotionDetected) -> GroupMood | None:
    """The event's account of a group blend, rounded for the stored result (None: one face drove)."""
    if not event.HasField("group"):
        return None
    g = event.group
    return GroupMood(faces=g.faces, weights=[round(w, 6) for w in g.weights], spread=round(g.spread, 6))


def recommend(event: EmotionDetected) -> Recommendation | None:
    """The playlist of the event's job, in one transaction. Its stages, timed and (when tracing)
    spanned: lock (the job row, and the client's dislikes), match (targets and playlist), store
    (the result; -> done)."""
    if list(event.emotions) != mapping.emotions():
        raise ValueError(f"event emotions {list(event.emotions)} != {mapping.emotions()}")
    options = event.options
    if not event.HasField("options"):  # queued before events carried options
        job = jobs.get(event.job_id)
        if job is None:
            log.info("job %s is unknown: nothing to do", event.job_id)
            return None
        options = options_from_row(job)
    mode, n = options.mode, options.limit
    filters = filters_of(options)
    diversity = options.diversity if options.HasField("diversity") else None
    probs = list(event.probabilities)
    targets = mapping.targets(probs, mode, n)
    with connection() as conn:
        with observability.stage(SERVICE, "lock"):
            status, excluded = lock_job(conn, event.job_id, options.client_key, mode)
        if status != jobs.RECOMMENDING:
            log.info("job %s is %s: nothing to do", event.job_id, status)
            return None  # redelivered event of a finished job, or an unknown job
        with observability.stage(SERVICE, "match"):
            tracks = matching.build_playlist(
                conn, targets, filters, excluded, diversity, mapping.min_valence(mode, n)
            )
            goal = mapping.target(probs, mode)
            features = mapping.features()
            recommendation = Recommendation(
                mode=mode,
                drive=drive_of(options),
                group=group_mood(event),
                emotion_probabilities=dict(zip(event.emotions, (round(p, 6) for p in probs), strict=True)),
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
                excluded_disliked=len(excluded),
                tracks=tracks,
            )
        with observability.stage(SERVICE, "store"):
            jobs.transition(
                event.job_id, (jobs.RECOMMENDING,), jobs.DONE, conn=conn, recommendation=recommendation
            )
    log.info("job %s done: %d tracks", event.job_id, len(tracks))
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
