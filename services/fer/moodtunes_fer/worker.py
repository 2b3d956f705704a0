"""FER worker: image -> faces -> CNN features (model server, gRPC) -> PCA + classifier -> event.

Every step is a guarded job transition in PostgreSQL, so a redelivered task resumes or skips
instead of duplicating work, and every failure ends the job with a stable error code.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.events import EmotionDetected, FerJob, ModelRef, from_json
from moodtunes.queue import FER_TASK, enqueue_recommend, make_celery
from moodtunes_fer.signature import CLASS_NAMES

log = logging.getLogger("moodtunes.fer")
app = make_celery("moodtunes-fer")
MODEL_RETRIES = 5
# Worth retrying: the model server is restarting, overloaded or slow. Anything else (a bad input,
# an unknown model) would fail the same way again.
TRANSIENT_GRPC_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.RESOURCE_EXHAUSTED}


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@lru_cache
def backend():
    from moodtunes_fer.inference import GrpcBackend

    s = get_settings()
    return GrpcBackend(s.model_server, s.model_name, signature_name=s.model_signature,
                       version=s.model_version, timeout_s=s.model_timeout_s)


@lru_cache
def head(version: int):
    from moodtunes_fer.inference import load_head_for_version

    s = get_settings()
    return load_head_for_version(s.models_dir, s.model_name, version)


def classify_faces(grey, boxes) -> tuple[list[dict], dict]:
    from moodtunes_fer.detection import crop
    from moodtunes_fer.preprocessing import to_model_input

    s = get_settings()
    x = to_model_input([crop(grey, b, s.face_margin) for b in boxes])
    features, cnn_probs, version = backend().features_and_probabilities(x)
    h = head(version)
    probs = h.predict_proba(features)
    faces = []
    for box, p, cp in zip(boxes, probs, cnn_probs):
        top = int(p.argmax())
        faces.append({
            "box": box.as_dict(),
            "probabilities": {c: round(float(v), 6) for c, v in zip(CLASS_NAMES, p)},
            "emotion": CLASS_NAMES[top], "confidence": round(float(p[top]), 6),
            "cnn_probabilities": {c: round(float(v), 6) for c, v in zip(CLASS_NAMES, cp)},
        })
    model = {"name": get_settings().model_name, "version": int(version),
             "head": h.meta.get("name") or h.meta.get("kind", "head")}
    return faces, model


def publish(job: dict) -> None:
    face = job["faces"][job["chosen_face"]]
    ts = Timestamp()
    ts.GetCurrentTime()
    event = EmotionDetected(
        job_id=str(job["id"]), emotions=list(CLASS_NAMES),
        probabilities=[face["probabilities"][c] for c in CLASS_NAMES],
        face_index=job["chosen_face"], faces_detected=len(job["faces"]),
        model=ModelRef(name=job["model"]["name"], version=job["model"]["version"],
                       head=str(job["model"]["head"])), detected_at=ts)
    enqueue_recommend(event)


def process(job_id: str) -> None:
    from moodtunes_fer.detection import ImageDecodeError, decode_grey, detect_faces

    s = get_settings()
    job = jobs.get(job_id)
    if job is None:
        log.warning("unknown job %s: dropped", job_id)
        return
    if job["status"] == jobs.RECOMMENDING:  # crashed after classifying: publish again
        publish(job)
        return
    if not jobs.transition(job_id, (jobs.QUEUED, jobs.DETECTING, jobs.CLASSIFYING), jobs.DETECTING):
        log.info("job %s is %s: nothing to do", job_id, job["status"])
        return
    data = jobs.image(job_id)
    if data is None:
        raise JobFailed("image_missing", "the uploaded image is no longer available; submit it again")
    try:
        grey = decode_grey(data, s.max_image_pixels)
    except ImageDecodeError as exc:
        raise JobFailed("invalid_image", str(exc)) from exc
    boxes = detect_faces(grey, s.min_face_px)
    if not boxes:
        raise JobFailed("no_face", "No face was found in the photo. Use a well-lit photo with the "
                                   "face looking at the camera, not too small in the frame.")
    jobs.transition(job_id, (jobs.DETECTING,), jobs.CLASSIFYING)
    faces, model = classify_faces(grey, boxes)
    if jobs.transition(job_id, (jobs.CLASSIFYING,), jobs.RECOMMENDING,
                       faces=faces, chosen_face=0, model=model):
        publish(jobs.get(job_id))


@app.task(name=FER_TASK, bind=True, acks_late=True, max_retries=MODEL_RETRIES)
def process_job(self, payload: dict) -> None:
    job_id = from_json(payload, FerJob).job_id
    try:
        process(job_id)
    except JobFailed as exc:
        jobs.fail(job_id, exc.code, exc.message)
        log.info("job %s failed: %s", job_id, exc.code)
    except Exception as exc:
        from moodtunes_fer.serving_client import ModelServerError

        transient = isinstance(exc, psycopg.OperationalError) or (
            isinstance(exc, ModelServerError) and exc.code in TRANSIENT_GRPC_CODES)
        if transient and self.request.retries < self.max_retries:
            log.warning("job %s: transient error, retrying: %s", job_id, exc)
            raise self.retry(exc=exc, countdown=min(30, 2 ** self.request.retries))
        code = "model_unavailable" if isinstance(exc, ModelServerError) else "internal_error"
        jobs.fail(job_id, code, f"emotion recognition failed: {exc}")
        log.exception("job %s failed", job_id)
