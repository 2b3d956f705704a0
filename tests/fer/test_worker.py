"""FER worker on the real PostgreSQL, with the model server replaced by a fake backend: every
failure ends the job with a code, a success stores the typed result and publishes an event that
carries the job's work, and a job costs few database round trips."""

import io

import numpy as np
import pytest
import skimage.data
from celery.exceptions import Retry
from PIL import Image

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.events import EmotionDetected, FerJob, filters_of, from_json, job_options, to_json
from moodtunes.results import Face, ModelRef
from moodtunes_cli.localstack import free_port
from tests.db_trips import counting

pytestmark = pytest.mark.integration
HEAD_PROBS = [0.05, 0.7, 0.1, 0.05, 0.1]  # what the fake head answers for every face
OPTIONS = {
    "mode": "uplift",
    "limit": 4,
    "filters": {"year_min": 1990, "genres": ["pop"]},
    "diversity": 0.2,
    "client_key": "dana",
}


def make_job(content: bytes, **options) -> str:
    options = {"mode": "match", "limit": 3, **options}
    job_id = jobs.new_job_id()
    jobs.create(job_id, image=content, image_type="image/png", width=1, height=1, **options)
    return job_id


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def worker(clean_jobs, monkeypatch):
    from moodtunes_fer import worker as fer_worker

    monkeypatch.setenv("MODEL_SERVER", f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MODEL_TIMEOUT_S", "1")
    get_settings.cache_clear()
    fer_worker.pipeline.cache_clear()
    yield fer_worker
    monkeypatch.undo()
    get_settings.cache_clear()
    fer_worker.pipeline.cache_clear()


class FakeBackend:
    """The model server's part: features and CNN probabilities of CNN version 3."""

    def __init__(self):
        self.calls = 0

    def features_and_probabilities(self, x):
        self.calls += 1
        return np.ones((len(x), 8), np.float32), np.full((len(x), 5), 0.2, np.float32), 3


class FakeHead:
    meta = {"name": "pca50+svm_rbf"}

    def predict_proba(self, features):
        return np.tile(HEAD_PROBS, (len(features), 1))


@pytest.fixture
def fake_model(worker, monkeypatch):
    """The worker with a fake model behind it; published events are collected, not queued."""
    from moodtunes_fer.inference import FerPipeline

    backend, published = FakeBackend(), []
    monkeypatch.setattr(worker, "pipeline", lambda: FerPipeline(backend, head=FakeHead()))
    monkeypatch.setattr(worker, "enqueue_recommend", published.append)
    worker.backend_calls, worker.published = backend, published
    return worker


@pytest.mark.parametrize(
    "image",
    [
        skimage.data.coffee(),  # a busy photo without a face
        np.full((48, 48), 255, np.uint8),  # a blank white square the size of a dataset face
        np.full((600, 800), 128, np.uint8),  # a flat grey photo
        np.asarray(Image.fromarray(skimage.data.astronaut()).resize((20, 20))),  # a thumbnail
    ],
    ids=["coffee", "white-48px", "flat-grey", "thumbnail-20px"],
)
def test_no_face_fails_the_job(worker, image):
    """Only faces get emotions: these used to get one with 63-81% confidence."""
    job_id = make_job(png(image))
    worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("failed", "no_face")
    assert jobs.image(job_id) is None  # the photo is not kept after the job ends


def test_undecodable_image_fails_the_job(worker):
    job_id = make_job(b"\x89PNG\r\n\x1a\n broken")
    worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    assert jobs.get(job_id)["error_code"] == "invalid_image"


def test_model_server_down_fails_the_job_once_retries_are_spent(worker, face_jpeg):
    job_id = make_job(face_jpeg)
    payload = to_json(FerJob(job_id=job_id))
    with pytest.raises(Retry):  # not the last attempt: Celery is asked to retry
        worker.process_job.apply(args=[payload], throw=True)
    assert jobs.get(job_id)["status"] == "classifying"
    worker.process_job.apply(args=[payload], retries=worker.MODEL_RETRIES)  # the last attempt
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("failed", "model_unavailable")


def test_finished_job_is_not_processed_again(worker, face_jpeg):
    job_id = make_job(face_jpeg)
    jobs.fail(job_id, "timeout", "too slow")
    worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    assert jobs.get(job_id)["error_code"] == "timeout"


def test_a_face_is_stored_typed_and_the_event_carries_the_jobs_options(fake_model, face_jpeg):
    job_id = make_job(face_jpeg, **OPTIONS)
    options = job_options(**OPTIONS)
    fake_model.process_job.apply(args=[to_json(FerJob(job_id=job_id, options=options))])
    row = jobs.get(job_id)
    assert row["status"] == "recommending" and jobs.image(job_id) is None
    faces = [Face.model_validate(f) for f in row["faces"]]
    assert len(faces) == 1 and row["chosen_face"] == 0
    assert list(faces[0].probabilities.values()) == HEAD_PROBS and faces[0].emotion == "happy"
    assert ModelRef.model_validate(row["model"]) == ModelRef(
        name="fer_vgg16", version=3, head="pca50+svm_rbf"
    )
    [event] = fake_model.published
    assert event.options == options and event.job_id == job_id
    assert list(event.probabilities) == pytest.approx(HEAD_PROBS)
    assert (event.face_index, event.faces_detected, event.model.version) == (0, 1, 3)
    assert filters_of(event.options).genres == ["pop"] and event.options.diversity == 0.2


def test_the_event_takes_the_options_from_the_message(fake_model, face_jpeg):
    """The worker forwards what the FerJob says; it does not read the options back from the row."""
    job_id = make_job(face_jpeg, mode="match", limit=3)
    sent = job_options(mode="calm", limit=9)
    fake_model.process(job_id, sent)
    assert fake_model.published[0].options == sent


def test_a_message_queued_before_options_travelled_reads_them_from_the_row(fake_model, face_jpeg):
    job_id = make_job(face_jpeg, **OPTIONS)
    fake_model.process_job.apply(args=[{"job_id": job_id}])
    assert fake_model.published[0].options == job_options(**OPTIONS)


def test_redelivery_after_classifying_republishes_without_classifying_again(fake_model, face_jpeg):
    """A worker that died between storing the result and publishing: the redelivered message
    publishes the stored result again; the model is not asked twice, the job does not go back."""
    job_id = make_job(face_jpeg, **OPTIONS)
    payload = to_json(FerJob(job_id=job_id, options=job_options(**OPTIONS)))
    fake_model.process_job.apply(args=[payload])
    first = jobs.get(job_id)
    fake_model.process_job.apply(args=[payload])
    again = jobs.get(job_id)
    assert fake_model.backend_calls.calls == 1
    assert (again["status"], again["attempts"], again["faces"]) == ("recommending", 1, first["faces"])
    a, b = fake_model.published
    b.detected_at.CopyFrom(a.detected_at)
    assert a == b


def test_database_round_trips_per_job(fake_model, face_jpeg, monkeypatch, capsys):
    """A whole job, counted per stage (see tests/db_trips.py for how). Before the events carried
    the work: submit 3 statements in 2 transactions, FER 7 in 6, recommender bookkeeping 4 in 3,
    each poll 2 in 2."""
    from moodtunes_recommender import worker as recommender

    job_id = jobs.new_job_id()
    with counting(monkeypatch) as submit:
        jobs.create(
            job_id,
            image=face_jpeg,
            image_type="image/jpeg",
            width=512,
            height=512,
            **{**OPTIONS, "mode": "match", "limit": 10},
        )
    with counting(monkeypatch) as fer:
        fake_model.process(job_id, job_options(**{**OPTIONS, "mode": "match", "limit": 10}))
    with counting(monkeypatch) as recommend:
        queued = from_json(to_json(fake_model.published[0]), EmotionDetected)  # as on the queue
        assert recommender.recommend(queued) is not None
    with counting(monkeypatch) as poll:
        assert jobs.poll(job_id, 180)["status"] == "done"
    with capsys.disabled():
        for stage, trips in (("submit", submit), ("fer", fer), ("recommend", recommend), ("poll", poll)):
            print(f"\n{stage:>9}: {trips.summary()}", end="")
        print()

    assert (len(submit.statements), submit.transactions) == (1, 1)
    # claim with the photo; -> classifying; -> recommending with the result (photo dropped)
    assert (len(fer.statements), fer.transactions) == (3, 3)
    assert not [s for s in fer.statements if s.startswith("SELECT")]  # nothing re-read to publish
    on_jobs = [s for s in recommend.statements if "jobs" in s]
    assert len(on_jobs) == 2 and recommend.transactions == 1  # lock + dislikes, then done
    assert (len(poll.statements), poll.transactions) == (1, 1)
