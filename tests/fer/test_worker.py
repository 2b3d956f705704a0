"""FER worker on the real PostgreSQL, with the model server replaced by a fake backend: a failure
the photo causes ends the job with a code, an outage (model server, Redis) is waited out and never
fails the job, a success stores the typed result and publishes an event that carries the job's
work, a redelivery is harmless, and a job costs few database round trips."""

import base64
import io
import json
import logging
import threading
import time

import grpc
import numpy as np
import pytest
import redis
import skimage.data
from PIL import Image

from moodtunes import db, jobs, queue
from moodtunes.config import get_settings
from moodtunes.events import EmotionDetected, FerJob, filters_of, from_json, job_options, to_json
from moodtunes.results import Face, ModelRef
from moodtunes_cli.localstack import Redis, free_port
from moodtunes_tfserving.client import ModelServerError
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
    """The model server's part: features and CNN probabilities of CNN version 3; the first
    `unavailable` calls fail as a restarting server's do."""

    def __init__(self):
        self.calls = 0
        self.unavailable = 0

    def features_and_probabilities(self, x):
        self.calls += 1
        if self.calls <= self.unavailable:
            raise ModelServerError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        return np.ones((len(x), 8), np.float32), np.full((len(x), 5), 0.2, np.float32), 3


class FakeHead:
    meta = {"name": "pca50+svm_rbf"}

    def predict_proba(self, features):
        return np.tile(HEAD_PROBS, (len(features), 1))


@pytest.fixture
def fake_pipeline(worker, monkeypatch):
    """The worker with a fake model behind it; events go to the broker."""
    from moodtunes_fer.inference import FerPipeline

    backend = FakeBackend()
    monkeypatch.setattr(worker, "pipeline", lambda: FerPipeline(backend, head=FakeHead()))
    worker.backend_calls = backend
    return worker


@pytest.fixture
def fake_model(fake_pipeline, monkeypatch):
    """The worker with a fake model behind it; published events are collected, not queued."""
    published = []
    monkeypatch.setattr(fake_pipeline, "enqueue_recommend", published.append)
    fake_pipeline.published = published
    return fake_pipeline


def settings(monkeypatch, **env):
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()


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


def test_a_model_server_restart_is_waited_out_in_the_same_delivery(fake_model, face_jpeg):
    fake_model.backend_calls.unavailable = 2
    job_id = make_job(face_jpeg)
    fake_model.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    row = jobs.get(job_id)
    assert (row["status"], row["attempts"]) == ("recommending", 1)  # no second delivery needed
    assert fake_model.backend_calls.calls == 3 and len(fake_model.published) == 1
    assert row["last_error"].startswith("model_unavailable: UNAVAILABLE")  # seen while waiting


def test_a_model_server_down_past_the_retry_budget_leaves_the_job_for_the_reconciler(
    worker, face_jpeg, monkeypatch
):
    """Not the photo's fault: the job is not failed; it keeps its stage, and says what it waits on."""
    settings(monkeypatch, MODEL_RETRY_S=0.5)
    job_id = make_job(face_jpeg)
    worker.process_job.apply(args=[to_json(FerJob(job_id=job_id))], throw=True)
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("classifying", None)
    assert row["last_error"].startswith("model_unavailable: ")
    assert jobs.image(job_id) is not None  # kept for the next delivery


def test_a_photo_that_keeps_killing_its_worker_fails_after_max_deliveries(fake_model, face_jpeg):
    """A worker killed mid-job gets its message back at once (task_reject_on_worker_lost): the
    delivery after the last allowed one fails the job instead of trying again."""
    job_id = make_job(face_jpeg)
    cap = get_settings().max_deliveries
    for _ in range(cap):
        jobs.claim(job_id)  # deliveries that started and never finished
    fake_model.process_job.apply(args=[to_json(FerJob(job_id=job_id))])
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("failed", "too_many_attempts")
    assert f"tried {cap} times" in row["error_message"]
    assert fake_model.backend_calls.calls == 0 and jobs.image(job_id) is None


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
    each poll 2 in 2. Since then every one-statement step runs in autocommit (moodtunes.db.statement):
    no BEGIN and COMMIT round trips around it; only the recommender's locked read-then-write is a
    transaction."""
    from moodtunes_recommender import snapshot
    from moodtunes_recommender import worker as recommender

    job_id = jobs.new_job_id()
    db.pool().wait()  # its connections made and configured (pgvector's types read) before counting
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
    queued = from_json(to_json(fake_model.published[0]), EmotionDetected)  # as on the queue
    monkeypatch.setattr(recommender, "_snapshots", [])  # this process's catalogue copy, loaded
    with db.connection() as conn:  # (in the background) as after its first filtered playlist
        recommender.catalogue_copy(conn, filters_of(queued.options))
    assert recommender._snapshots[0].wait(30) is not None
    with counting(monkeypatch) as recommend:
        assert recommender.recommend(queued) is not None
    with counting(monkeypatch) as poll:
        assert jobs.poll(job_id)["status"] == "done"
    with capsys.disabled():
        for stage, trips in (("submit", submit), ("fer", fer), ("recommend", recommend), ("poll", poll)):
            print(f"\n{stage:>9}: {trips.summary()}", end="")
        print()

    assert (len(submit.statements), submit.transactions) == (1, 0)
    # claim with the photo; -> classifying; -> recommending with the result (photo dropped)
    assert (len(fer.statements), fer.transactions) == (3, 0)
    assert not [s for s in fer.statements if s.startswith("SELECT")]  # nothing re-read to publish
    on_jobs = [s for s in recommend.statements if "jobs" in s]
    assert len(on_jobs) == 2 and recommend.transactions == 1  # lock + dislikes, then done
    # the filtered playlist: the copy's version check, then the chosen tracks' rows; no search
    assert [s for s in recommend.statements if "catalogue_version" in s] == [snapshot.VERSION_SQL]
    assert (len(poll.statements), poll.transactions) == (1, 0)


def test_the_same_message_delivered_twice_gives_one_result_and_one_playlist(fake_model, face_jpeg):
    """Both deliveries publish (the second re-publishes the stored result); the recommender builds
    from the first event and finds the job done at the second."""
    from moodtunes_recommender import worker as recommender

    job_id = make_job(face_jpeg, **OPTIONS)
    payload = to_json(FerJob(job_id=job_id, options=job_options(**OPTIONS)))
    fake_model.process_job.apply(args=[payload])
    fake_model.process_job.apply(args=[payload])
    first, second = (from_json(to_json(e), EmotionDetected) for e in fake_model.published)
    assert recommender.recommend(first) is not None
    done = jobs.get(job_id)
    assert recommender.recommend(second) is None
    row = jobs.get(job_id)
    assert (row["status"], row["attempts"]) == ("done", 1) and fake_model.backend_calls.calls == 1
    assert row["recommendation"] == done["recommendation"] and row["finished_at"] == done["finished_at"]


@pytest.fixture
def own_redis(tmp_path, monkeypatch):
    """A Redis server of this test's own, so it can be stopped and started; the producer uses it."""
    server = Redis(tmp_path / "redis", free_port())
    settings(monkeypatch, REDIS_URL=server.url)
    monkeypatch.setattr(queue, "_producer", None)
    yield server
    server.stop()
    monkeypatch.undo()
    get_settings.cache_clear()
    queue._producer = None


def recommend_messages(server) -> list[str]:
    """The task ids of the events waiting in the recommend queue."""
    raw = redis.Redis.from_url(server.url).lrange(get_settings().recommend_queue, 0, -1)
    messages = [json.loads(m) for m in raw]
    for m in messages:
        args, _, _ = json.loads(base64.b64decode(m["body"]))
        job_id = from_json(args[0], EmotionDetected).job_id
        assert job_id == m["headers"]["id"].split(":")[0]
        assert m["headers"]["argsrepr"] == f"[job {job_id}]"  # what Flower shows for the task
    return [m["headers"]["id"] for m in messages]


def test_the_event_publish_waits_out_a_redis_restart(fake_pipeline, own_redis, face_jpeg):
    own_redis.start()
    job_id = make_job(face_jpeg, **OPTIONS)
    payload = to_json(FerJob(job_id=job_id, options=job_options(**OPTIONS)))
    own_redis.stop()  # the outage starts
    delivery = threading.Thread(target=fake_pipeline.process_job.apply, args=([payload],))
    delivery.start()
    deadline = time.monotonic() + 30
    while jobs.get(job_id)["status"] != "recommending" and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # publishing, and failing to, for a while
    assert delivery.is_alive()
    own_redis.start()  # the outage ends
    delivery.join(timeout=60)
    assert not delivery.is_alive()
    assert recommend_messages(own_redis) == [f"{job_id}:recommend"]
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"], row["attempts"]) == ("recommending", None, 1)


def test_a_redis_outage_past_the_publish_budget_is_left_for_the_reconciler(
    fake_pipeline, own_redis, face_jpeg, monkeypatch
):
    """The event never left: the job stays in recommending, and the FER task the reconciler sends
    again re-publishes it from the stored result, without classifying again."""
    settings(monkeypatch, PUBLISH_RETRY_S=1)
    job_id = make_job(face_jpeg, **OPTIONS)
    payload = to_json(FerJob(job_id=job_id, options=job_options(**OPTIONS)))
    fake_pipeline.process_job.apply(args=[payload], throw=True)  # Redis is not running
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("recommending", None)
    assert row["last_error"].startswith("queue_unavailable: ")

    own_redis.start()
    fake_pipeline.process_job.apply(args=[payload], throw=True)
    assert recommend_messages(own_redis) == [f"{job_id}:recommend"]
    assert fake_pipeline.backend_calls.calls == 1 and jobs.get(job_id)["attempts"] == 1


def test_no_log_line_carries_the_photo(fake_model, face_jpeg, caplog, monkeypatch):
    """Jobs are logged by id: nothing of the photo, raw, escaped, hex or base64, on any path."""
    settings(monkeypatch, MODEL_RETRY_S=0.5)
    chunk = face_jpeg[999:1014]  # 15 bytes from inside the image data, base64-aligned
    forms = [chunk.decode("latin-1"), repr(chunk)[2:-1], chunk.hex(), base64.b64encode(chunk).decode()]
    with caplog.at_level(logging.DEBUG):
        fake_model.process_job.apply(args=[to_json(FerJob(job_id=make_job(face_jpeg)))])  # done
        fake_model.backend_calls.unavailable = 10**6
        fake_model.process_job.apply(args=[to_json(FerJob(job_id=make_job(face_jpeg)))])  # waited
        fake_model.process_job.apply(args=[to_json(FerJob(job_id=make_job(face_jpeg[:2000])))])  # cut
        fake_model.process_job.apply(args=[{"job_id": jobs.new_job_id()}])  # unknown
    assert "left unfinished for the reconciler" in caplog.text and "invalid_image" in caplog.text
    for form in forms:
        assert form not in caplog.text


class PerFaceHead:
    """A head that reads the first face as happy and the second as sad."""

    meta = {"name": "pca50+svm_rbf"}
    ROWS = [[0.05, 0.8, 0.05, 0.05, 0.05], [0.1, 0.05, 0.7, 0.1, 0.05]]

    def predict_proba(self, features):
        return np.array([self.ROWS[i % 2] for i in range(len(features))])


@pytest.fixture
def two_face_jpeg() -> bytes:
    """The astronaut beside her mirror image: two faces the detector finds."""
    photo = skimage.data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(np.hstack([photo, photo[:, ::-1]])).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("drive", ["face", "group"])
def test_group_drive_blends_every_face_and_face_drive_takes_the_largest(
    fake_model, two_face_jpeg, monkeypatch, drive
):
    from moodtunes import group
    from moodtunes_fer.inference import FerPipeline

    monkeypatch.setattr(fake_model, "pipeline", lambda: FerPipeline(FakeBackend(), head=PerFaceHead()))
    job_id = make_job(two_face_jpeg, drive=drive)
    fake_model.process(job_id, job_options(mode="match", limit=3, drive=drive))
    faces = [Face.model_validate(f) for f in jobs.get(job_id)["faces"]]
    assert [f.emotion for f in faces] == ["happy", "sad"]
    [event] = fake_model.published
    assert event.faces_detected == 2
    if drive == "group":
        expected = group.blend(PerFaceHead.ROWS)
        assert list(event.probabilities) == pytest.approx(expected.probabilities.tolist())
        assert event.group.faces == 2 and list(event.group.weights) == pytest.approx([0.8 / 1.5, 0.7 / 1.5])
        assert event.group.spread == pytest.approx(expected.spread)
    else:
        assert list(event.probabilities) == pytest.approx(PerFaceHead.ROWS[0])
        assert not event.HasField("group")


def test_a_group_job_redelivered_after_classifying_republishes_the_same_blend(
    fake_model, two_face_jpeg, monkeypatch
):
    from moodtunes_fer.inference import FerPipeline

    monkeypatch.setattr(fake_model, "pipeline", lambda: FerPipeline(FakeBackend(), head=PerFaceHead()))
    job_id = make_job(two_face_jpeg, drive="group")
    fake_model.process_job.apply(args=[{"job_id": job_id}])  # options read from the row
    fake_model.process_job.apply(args=[{"job_id": job_id}])  # redelivery: republished from the row
    first, again = fake_model.published
    assert first.options.drive == again.options.drive == "group"
    assert list(again.probabilities) == pytest.approx(list(first.probabilities))
    assert again.group == first.group


def test_warm_up_sends_one_blank_face_through_the_model_and_the_head(fake_pipeline, monkeypatch):
    heads = []

    def predict_proba(self, features):
        heads.append(len(features))
        return np.tile(HEAD_PROBS, (len(features), 1))

    monkeypatch.setattr(FakeHead, "predict_proba", predict_proba)
    assert fake_pipeline.warm_up() is True
    assert fake_pipeline.backend_calls.calls == 1 and heads == [1]


def test_warm_up_without_a_model_server_leaves_it_to_the_first_job(worker):
    assert worker.warm_up() is False  # nothing listens at MODEL_SERVER: no exception either


def test_each_new_worker_process_warms_up_beside_its_task_loop(worker, monkeypatch):
    from celery import signals

    ran = threading.Event()
    monkeypatch.setattr(worker, "warm_up", ran.set)
    assert any(r is worker._warm_up_in_background for _, r in signals.worker_process_init.receivers)
    thread = worker._warm_up_in_background()
    assert thread.daemon and ran.wait(5)
