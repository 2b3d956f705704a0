"""FER worker failure paths on the real PostgreSQL: every failure ends the job with a code."""

import io

import pytest
import skimage.data
from PIL import Image

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes.events import FerJob, to_json
from moodtunes_cli.localstack import free_port

pytestmark = pytest.mark.integration


def make_job(content: bytes) -> str:
    job_id = jobs.new_job_id()
    jobs.create(job_id, mode="match", limit=3, image=content, image_type="image/png", width=1, height=1)
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
    fer_worker.backend.cache_clear()
    yield fer_worker
    monkeypatch.undo()
    get_settings.cache_clear()
    fer_worker.backend.cache_clear()


def test_no_face_fails_the_job(worker):
    job_id = make_job(png(skimage.data.coffee()))
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
    with pytest.raises(Exception):  # not the last attempt: Celery is asked to retry
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
