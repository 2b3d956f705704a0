"""FER worker: image -> faces -> CNN features (model server, gRPC) -> PCA + classifier -> event.

Every step is a guarded job transition in PostgreSQL, so a redelivered task resumes or skips
instead of duplicating work. A failure that would happen again (no face, a broken image) ends the
job with a stable error code; an outage does not: the task waits it out (PostgreSQL, the model
server, Redis: budgets in moodtunes/queue.py), and if it lasts longer leaves the job unfinished for
the reconciler to send again. Photos are never logged: messages name jobs by id.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import grpc
import tenacity
from celery import signals
from google.protobuf.timestamp_pb2 import Timestamp

from moodtunes import group, jobs, observability
from moodtunes.config import get_settings
from moodtunes.db import TRANSIENT_ERRORS as DB_ERRORS
from moodtunes.events import (
    EmotionDetected,
    FerJob,
    GroupMood,
    JobOptions,
    drive_of,
    from_json,
    options_from_row,
)
from moodtunes.events import ModelRef as ModelRefMessage
from moodtunes.queue import BROKER_ERRORS, FER_TASK, enqueue_recommend, make_celery
from moodtunes.results import Face, FaceBox, ModelRef
from moodtunes_fer.signature import CLASS_NAMES
from moodtunes_tfserving.client import ModelServerError

log = logging.getLogger("moodtunes.fer")
app = make_celery("moodtunes-fer")
SERVICE = "fer"  # the service label of this worker's metrics
# Worth retrying: the model server is restarting, overloaded or slow. Anything else (a bad input,
# an unknown model) would fail the same way again.
TRANSIENT_GRPC_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def model_outage(exc: BaseException) -> bool:
    return isinstance(exc, ModelServerError) and exc.code in TRANSIENT_GRPC_CODES


def transient(exc: BaseException) -> bool:
    """An outage, not the photo: the job is left for a later delivery, never failed for it."""
    return isinstance(exc, DB_ERRORS + BROKER_ERRORS) or model_outage(exc)


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@lru_cache
def pipeline():
    """The CNN behind the model server, and the head fitted on whichever version answers."""
    from moodtunes_fer.inference import FerPipeline, GrpcBackend

    s = get_settings()
    backend = GrpcBackend(
        s.model_server,
        s.model_name,
        signature_name=s.model_signature,
        version=s.model_version,
        timeout_s=s.model_timeout_s,
    )
    return FerPipeline(backend, models_dir=s.models_dir, model_name=s.model_name)


def classify_faces(grey, boxes) -> tuple[list[Face], ModelRef]:
    from moodtunes_fer.detection import crop
    from moodtunes_fer.preprocessing import to_model_input

    s = get_settings()
    x = to_model_input([crop(grey, b, s.face_margin, s.face_shift) for b in boxes])
    pred = pipeline().predict_input(x)
    faces = []
    for box, p, cp in zip(boxes, pred.probabilities, pred.cnn_probabilities, strict=True):
        top = int(p.argmax())
        faces.append(
            Face(
                box=FaceBox(x=box.x, y=box.y, width=box.width, height=box.height),
                probabilities={c: round(float(v), 6) for c, v in zip(CLASS_NAMES, p, strict=True)},
                emotion=CLASS_NAMES[top],
                confidence=round(float(p[top]), 6),
                cnn_probabilities={c: round(float(v), 6) for c, v in zip(CLASS_NAMES, cp, strict=True)},
                detector_score=box.score,
            )
        )
    meta = pred.head.meta
    model = ModelRef(
        name=s.model_name,
        version=int(pred.model_version),
        head=str(meta.get("name") or meta.get("kind", "head")),
    )
    return faces, model


def _still_waiting(job_id: str):
    """Before each wait for the model server: tells the reconciler this job is held (so it is not
    sent again meanwhile) and what it waits on."""

    def note(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("job %s: model server unavailable (%s); retry %d", job_id, exc, state.attempt_number)
        observability.note_retry("model_unavailable", SERVICE)
        try:
            jobs.heartbeat(job_id, f"model_unavailable: {exc}")
        except Exception as db_exc:  # best effort: the database may be away too
            log.warning("job %s: heartbeat not recorded: %s", job_id, db_exc)

    return note


def classify_waiting(job_id: str, grey, boxes) -> tuple[list[Face], ModelRef]:
    """classify_faces, retried with backoff (0.25 s doubling to 2 s) while the model server is
    restarting, overloaded or slow, for up to MODEL_RETRY_S."""
    budget_s = get_settings().model_retry_s
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(model_outage),
        wait=tenacity.wait_exponential(multiplier=0.25, max=2.0),
        stop=tenacity.stop_after_delay(budget_s),
        before_sleep=_still_waiting(job_id),
        reraise=True,
    )
    return retrying(classify_faces, grey, boxes)


def emotion_event(
    job_id: str, faces: list[Face], chosen: int, model: ModelRef, options: JobOptions
) -> EmotionDetected:
    """Everything the recommender needs, from what this worker holds: no job read to publish.

    With `drive=group` the probabilities are every face's, blended (moodtunes.group); otherwise
    the chosen face's."""
    ts = Timestamp()
    ts.GetCurrentTime()
    event = EmotionDetected(
        job_id=job_id,
        emotions=list(CLASS_NAMES),
        probabilities=[faces[chosen].probabilities[c] for c in CLASS_NAMES],
        face_index=chosen,
        faces_detected=len(faces),
        model=ModelRefMessage(**model.model_dump()),
        detected_at=ts,
        options=options,
    )
    if drive_of(options) == "group":
        mix = group.blend([[f.probabilities[c] for c in CLASS_NAMES] for f in faces])
        event.probabilities[:] = [float(v) for v in mix.probabilities]
        event.group.CopyFrom(GroupMood(faces=len(faces), weights=mix.weights.tolist(), spread=mix.spread))
    return event


def republish(job_id: str, options: JobOptions | None) -> None:
    """A job the FER stage cannot claim: if it crashed after classifying (recommending), the
    event may never have left, so publish it again from the stored result (the recommender
    ignores a duplicate); anything else has nothing left to do here."""
    job = jobs.get(job_id, retry=True)
    if job is None:
        log.warning("unknown job %s: dropped", job_id)
    elif job["status"] == jobs.RECOMMENDING:
        faces = [Face.model_validate(f) for f in job["faces"]]
        publish(
            emotion_event(
                job_id,
                faces,
                job["chosen_face"],
                ModelRef.model_validate(job["model"]),
                options or options_from_row(job),
            )
        )
    else:
        log.info("job %s is %s: nothing to do", job_id, job["status"])


def publish(event: EmotionDetected) -> None:
    with observability.stage(SERVICE, "publish"):
        enqueue_recommend(event)


def process(job_id: str, options: JobOptions | None = None) -> None:
    """The FER stage of a job; `options` from its FerJob (None: a message from before they
    travelled with it, read from the job row instead). Its stages, timed and (when tracing)
    spanned: claim (the job and its photo), decode, detect (faces; the job moves to classifying),
    classify (model server and head, outages waited out), store (the faces; -> recommending),
    publish (the event for the recommender)."""
    from moodtunes_fer.detection import ImageDecodeError, decode_grey, detect_faces

    s = get_settings()
    with observability.stage(SERVICE, "claim"):
        claimed = jobs.claim(job_id)  # -> detecting, with the photo, in one statement
    if claimed is None:
        republish(job_id, options)
        return
    if claimed["attempts"] > s.max_deliveries:  # started that often and never finished: a photo
        # that kills its worker is redelivered at once (task_reject_on_worker_lost); stop here
        raise JobFailed(jobs.TOO_MANY_ATTEMPTS, jobs.too_many_attempts_message(claimed["attempts"] - 1))
    if claimed["image"] is None:
        raise JobFailed("image_missing", "the uploaded image is no longer available; submit it again")
    try:
        with observability.stage(SERVICE, "decode"):
            grey = decode_grey(claimed["image"], s.max_image_pixels)
    except ImageDecodeError as exc:
        raise JobFailed(exc.code, str(exc)) from exc
    with observability.stage(SERVICE, "detect"):
        boxes = detect_faces(grey, s.min_face_px)
        if not boxes:
            raise JobFailed(
                "no_face",
                "No face was found in the photo. Use a well-lit photo with the "
                "face looking at the camera, not too small in the frame.",
            )
        moved_on = not jobs.transition(job_id, (jobs.DETECTING,), jobs.CLASSIFYING)
    if moved_on:
        log.info("job %s moved on while detecting (another delivery, or failed): stopped", job_id)
        return
    with observability.stage(SERVICE, "classify"):
        faces, model = classify_waiting(job_id, grey, boxes)
    with observability.stage(SERVICE, "store"):
        if options is None:
            options = options_from_row(jobs.get(job_id, retry=True))
        chosen = 0  # the largest face
        stored = jobs.transition(
            job_id, (jobs.CLASSIFYING,), jobs.RECOMMENDING, faces=faces, chosen_face=chosen, model=model
        )
    if stored:
        publish(emotion_event(job_id, faces, chosen, model, options))


@app.task(name=FER_TASK, acks_late=True)
def process_job(payload: dict) -> None:
    message = from_json(payload, FerJob)
    job_id = message.job_id
    try:
        process(job_id, message.options if message.HasField("options") else None)
    except JobFailed as exc:
        jobs.fail(job_id, exc.code, exc.message)
        observability.task_outcome("failed", exc.code)
        log.info("job %s failed: %s", job_id, exc.code)
    except Exception as exc:
        if transient(exc):  # waited out as long as allowed: the reconciler sends the job again
            observability.task_outcome("deferred", _outage_code(exc))
            log.warning("job %s left unfinished for the reconciler: %s: %s", job_id, type(exc).__name__, exc)
            try:
                jobs.heartbeat(job_id, f"{_outage_code(exc)}: {exc}")
            except Exception:  # the database is the outage: the job keeps its last state
                pass
            return
        code = "model_unavailable" if isinstance(exc, ModelServerError) else "internal_error"
        jobs.fail(job_id, code, f"emotion recognition failed: {exc}")
        observability.task_outcome("failed", code)
        log.exception("job %s failed", job_id)


def _outage_code(exc: BaseException) -> str:
    if isinstance(exc, DB_ERRORS):
        return "database_unavailable"
    return "queue_unavailable" if isinstance(exc, BROKER_ERRORS) else "model_unavailable"


def warm_up() -> bool:
    """One blank face through detection's cascades, the model server and the head, so that a new
    worker's first job does not pay for loading them and opening the channel (~1 s). Best effort:
    with the model server not up yet, the first job does it (and waits it out as any job does)."""
    import numpy as np

    from moodtunes_fer.detection import VERIFY_CASCADE, cascade
    from moodtunes_fer.preprocessing import to_model_input
    from moodtunes_fer.signature import INPUT_SIZE

    try:
        cascade(), cascade(VERIFY_CASCADE)  # this thread's; the task thread loads its own (~15 ms)
        pipeline().predict_input(to_model_input([np.zeros((INPUT_SIZE, INPUT_SIZE), np.uint8)]))
    except Exception as exc:
        log.info("warm-up left to the first job: %s: %s", type(exc).__name__, exc)
        return False
    log.info("warmed up: model server and head answer")
    return True


def _warm_up_in_background(**_kwargs) -> threading.Thread:
    """In each new worker process, beside its task loop (a slow model server must not hold up the
    process start, which Celery times out)."""
    thread = threading.Thread(target=warm_up, name="fer-warm-up", daemon=True)
    thread.start()
    return thread


def _trace_model_calls() -> None:
    """Where tracing is on: the Predict calls' spans, and their context sent to the model server."""
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    GrpcInstrumentorClient().instrument()


observability.instrument_worker(SERVICE, [FER_TASK], tracing_instrumentors=[_trace_model_calls])
signals.worker_process_init.connect(_warm_up_in_background, weak=False)
