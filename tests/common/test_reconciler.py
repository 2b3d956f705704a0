"""The reconciler on the real PostgreSQL and Redis: stuck jobs are sent again (the message is read
back from the broker's list), capped deliveries and overdue jobs fail with clear codes, replicas
never send one job twice, and finished jobs go after their retention."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from moodtunes import jobs, queue, reconciler
from moodtunes.config import Settings, get_settings
from moodtunes.db import connection
from moodtunes.events import FerJob, from_json, options_from_row
from moodtunes_cli.localstack import free_port

pytestmark = pytest.mark.integration
OPTIONS = {"mode": "uplift", "limit": 4, "filters": {"year_min": 1990}, "diversity": 0.3, "client_key": "ann"}


@pytest.fixture
def broker(clean_jobs, redis_server, monkeypatch):
    """An empty broker, and a producer built for it (another test may have pointed it elsewhere)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    monkeypatch.setattr(queue, "_producer", None)
    yield client
    queue._producer = None


def make_job(status: str = jobs.QUEUED, *, idle_s: float = 60, **set_columns) -> str:
    """A job in `status` whose last sign of life was `idle_s` ago, with its photo stored."""
    job_id = jobs.new_job_id()
    jobs.create(job_id, image=b"photo", image_type="image/png", width=1, height=1, **OPTIONS)
    if status == jobs.RECOMMENDING:
        jobs.transition(job_id, (jobs.QUEUED,), jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    elif status != jobs.QUEUED:
        jobs.transition(job_id, (jobs.QUEUED,), status)
    set_columns = {"updated_at": f"now() - interval '{idle_s} seconds'", **set_columns}
    sets = ", ".join(f"{column} = {value}" for column, value in set_columns.items())
    with connection() as conn:
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = %s", (job_id,))
    return job_id


def fer_messages(client: redis.Redis) -> list[tuple[str, FerJob]]:
    """(task id, FerJob) of every FER task waiting in the broker, as a worker would receive it."""
    out = []
    for raw in client.lrange(get_settings().fer_queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == queue.FER_TASK
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["id"], from_json(args[0], FerJob)))
    return out


@pytest.mark.parametrize("status", jobs.UNFINISHED)
def test_a_job_stuck_in_any_stage_is_sent_again_with_its_options(broker, status):
    job_id = make_job(status)
    fresh = make_job(status, idle_s=5)  # within the stage deadline: left alone

    done = reconciler.reconcile_once()

    assert done.requeued == [job_id] and done.failed == {}
    [(task_id, message)] = fer_messages(broker)
    row = jobs.get(job_id)
    assert task_id == job_id and message.job_id == job_id
    assert message.options == options_from_row(row)
    assert message.options.mode == "uplift" and message.options.client_key == "ann"
    assert (row["status"], row["requeues"]) == (status, 1) and row["requeued_at"] is not None
    assert jobs.get(fresh)["requeues"] == 0
    assert reconciler.reconcile_once().requeued == []  # just sent: not again next round


def test_resends_back_off_while_a_job_stays_stuck(broker):
    deadline = get_settings().stage_deadline_s
    waiting = make_job(requeues="2", requeued_at=f"now() - interval '{3 * deadline} seconds'")
    due = make_job(requeues="2", requeued_at=f"now() - interval '{4 * deadline + 1} seconds'")
    assert reconciler.reconcile_once().requeued == [due]  # the third send waits 4 deadlines
    assert [task_id for task_id, _ in fer_messages(broker)] == [due]
    assert jobs.get(waiting)["requeues"] == 2


def test_finished_jobs_are_never_sent(broker):
    for status in jobs.FINAL:
        job_id = make_job()
        jobs.transition(job_id, jobs.UNFINISHED, status)
        with connection() as conn:
            conn.execute("UPDATE jobs SET updated_at = now() - interval '1 day' WHERE id = %s", (job_id,))
    assert reconciler.reconcile_once() == reconciler.Round()
    assert broker.llen(get_settings().fer_queue) == 0


def test_a_job_delivered_max_deliveries_times_fails_with_the_cap_code(broker):
    cap = get_settings().max_deliveries
    capped = make_job(jobs.DETECTING, attempts=str(cap), last_error="'model_unavailable: UNAVAILABLE'")
    below = make_job(jobs.CLASSIFYING, attempts=str(cap - 1))

    done = reconciler.reconcile_once()

    assert done.failed == {capped: jobs.TOO_MANY_ATTEMPTS} and done.requeued == [below]
    row = jobs.get(capped)
    assert (row["status"], row["error_code"]) == ("failed", "too_many_attempts")
    assert "photo could not be processed" in row["error_message"]
    assert f"{cap} times" in row["error_message"] and "UNAVAILABLE" in row["error_message"]
    assert jobs.image(capped) is None  # a failed job keeps no photo
    assert [task_id for task_id, _ in fer_messages(broker)] == [below]


def test_the_cap_is_on_fer_deliveries_a_job_waiting_for_its_playlist_is_sent_again(broker):
    job_id = make_job(jobs.RECOMMENDING, attempts=str(get_settings().max_deliveries))
    assert reconciler.reconcile_once().requeued == [job_id]


def test_a_job_past_its_deadline_fails_with_timeout_and_the_error_it_waited_on(broker):
    timeout_s = get_settings().job_timeout_s
    overdue = make_job(
        jobs.CLASSIFYING,
        idle_s=1,  # alive, but too late
        created_at=f"now() - interval '{timeout_s + 1} seconds'",
        last_error="'model_unavailable: UNAVAILABLE: connection refused'",
    )
    done = reconciler.reconcile_once()
    assert done.failed == {overdue: jobs.TIMEOUT}
    row = jobs.get(overdue)
    assert (row["status"], row["error_code"]) == ("failed", "timeout")
    assert (
        row["error_message"].startswith(jobs.TIMEOUT_MESSAGE) and "connection refused" in row["error_message"]
    )
    assert broker.llen(get_settings().fer_queue) == 0


def test_while_redis_is_down_nothing_is_marked_sent_and_the_next_round_sends(broker, monkeypatch):
    job_id = make_job()
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    get_settings.cache_clear()
    queue._producer = None
    assert reconciler.reconcile_once().requeued == []
    assert jobs.get(job_id)["requeues"] == 0

    monkeypatch.undo()
    get_settings.cache_clear()
    queue._producer = None
    assert reconciler.reconcile_once().requeued == [job_id]
    assert [task_id for task_id, _ in fer_messages(broker)] == [job_id]


def test_a_second_reconciler_skips_the_jobs_the_first_is_sending(broker):
    """Replica B runs its round while replica A holds the stuck jobs, between its first send and
    its commit: B finds nothing to take, and after A commits nothing is due."""
    stuck = {make_job(status) for status in jobs.UNFINISHED}
    rounds_of_b = []

    def send_and_let_b_run(job_id, options):
        reconciler._resend(job_id, options)
        if not rounds_of_b:
            rounds_of_b.append(reconciler.reconcile_once())

    a = reconciler.reconcile_once(enqueue=send_and_let_b_run)
    assert set(a.requeued) == stuck and rounds_of_b == [reconciler.Round()]
    assert reconciler.reconcile_once() == reconciler.Round()
    assert sorted(task_id for task_id, _ in fer_messages(broker)) == sorted(stuck)


def test_replicas_running_together_send_each_job_once(broker):
    stuck = [make_job() for _ in range(60)]
    start, sent, errors = threading.Barrier(3), [], []

    def replica():
        start.wait()
        try:
            for _ in range(4):
                sent.extend(reconciler.reconcile_once(limit=10).requeued)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(sent) == sorted(stuck)  # every job, none twice
    assert sorted(task_id for task_id, _ in fer_messages(broker)) == sorted(stuck)


def test_finished_jobs_past_retention_are_purged_newer_and_unfinished_kept(broker):
    retention_days = get_settings().job_retention_days
    old = f"now() - interval '{retention_days} days 1 hour'"
    expired_done = make_job(idle_s=1)
    jobs.transition(expired_done, jobs.UNFINISHED, jobs.DONE, recommendation={"tracks": []})
    expired_failed = make_job(idle_s=1)
    jobs.fail(expired_failed, "no_face", "no face")
    recent = make_job(idle_s=1)
    jobs.transition(recent, jobs.UNFINISHED, jobs.DONE, recommendation={"tracks": []})
    with connection() as conn:
        conn.execute(
            f"UPDATE jobs SET finished_at = {old}, created_at = {old} WHERE id = ANY(%s)",
            ([expired_done, expired_failed],),
        )
    jobs.record_feedback(jobs.get(expired_done), "track-1", liked=False)
    # Created long ago and never finished: the deadline fails it, the purge does not take it
    unfinished = make_job(idle_s=1, created_at=old)

    assert reconciler.purge() == 2

    assert jobs.get(expired_done) is None and jobs.get(expired_failed) is None
    assert jobs.get(recent)["status"] == "done" and jobs.get(unfinished) is not None
    assert jobs.image(unfinished) == b"photo"
    with connection() as conn:
        feedback = conn.execute("SELECT client_key, track_id, liked, job_id FROM feedback").fetchall()
        photos = conn.execute("SELECT count(*) AS n FROM job_images").fetchone()["n"]
    assert feedback == [{"client_key": "ann", "track_id": "track-1", "liked": False, "job_id": None}]
    assert photos == 1  # the unfinished job's only


def test_the_loop_sends_stuck_jobs_and_stops_when_asked(broker, monkeypatch):
    job_id = make_job()
    stop = threading.Event()
    loop = threading.Thread(target=reconciler.run, args=(stop,), kwargs={"interval_s": 0.05})
    loop.start()
    try:
        for _ in range(100):
            if broker.llen(get_settings().fer_queue):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    assert [task_id for task_id, _ in fer_messages(broker)] == [job_id]


def test_the_command_line_runs_a_round(broker, database, redis_server):
    """`python -m moodtunes.reconciler --once`: what the supervised stack and the manifests run,
    minus --once."""
    job_id = make_job()
    env = {**os.environ, "DATABASE_URL": database, "REDIS_URL": redis_server.url}
    done = subprocess.run(
        [sys.executable, "-m", "moodtunes.reconciler", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "re-sent 1, failed 0" in done.stdout
    assert [task_id for task_id, _ in fer_messages(broker)] == [job_id]


def test_the_default_timing_agrees_with_the_visibility_timeout():
    """A running task is never redelivered by the broker, a redelivery comes before the job's
    deadline, and the reconciler acts before the broker would."""
    assert queue.check_timing(Settings()) == []
    assert queue.longest_task_s(Settings()) < queue.VISIBILITY_TIMEOUT_S
    slow = Settings(model_retry_s=200.0, job_timeout_s=60.0)
    assert len(queue.check_timing(slow)) == 2


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _unacked(client: redis.Redis) -> list[str]:
    """Task ids of the messages a worker took and has not acknowledged."""
    return [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")]


def _start_worker(module: str, queue_name: str, log_path: Path, env: dict) -> subprocess.Popen:
    """A Celery worker as `make up` runs it (prefork, one child), in its own process group; returns
    once it consumes."""
    command = [sys.executable, "-m", "celery", "-A", module, "worker", "-Q", queue_name, "-c", "1"]
    command += ["-n", f"{queue_name}-{time.monotonic_ns()}@%h", "--prefetch-multiplier", "1"]
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the file
        worker = subprocess.Popen(
            [*command, "--loglevel", "INFO"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while b"ready." not in log_path.read_bytes():
        assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.2)
    return worker


def test_a_recommender_killed_holding_the_message_recovers_through_the_reconciler(
    broker, database, redis_server, tmp_path, monkeypatch
):
    """Chaos in small: the recommender's main process is SIGKILLed after taking the job's event
    (the message sits in the broker's `unacked`, redelivered only after the visibility timeout);
    once a new recommender runs, the reconciler re-sends the FER task, the FER worker re-publishes
    the stored result, and the job ends done well within 30 s."""
    import signal

    from moodtunes.emotions import EMOTIONS
    from moodtunes.results import Face, FaceBox, ModelRef

    monkeypatch.setenv("STAGE_DEADLINE_S", "2")
    get_settings.cache_clear()
    env = {**os.environ, "DATABASE_URL": database, "REDIS_URL": redis_server.url, "STAGE_DEADLINE_S": "2"}
    probs = dict(zip(EMOTIONS, [0.1, 0.6, 0.1, 0.1, 0.1], strict=True))
    face = Face(
        box=FaceBox(x=0, y=0, width=48, height=48),
        probabilities=probs,
        emotion="happy",
        confidence=0.6,
        cnn_probabilities=probs,
        detector_score=1.0,
    )
    job_id = make_job()
    jobs.transition(
        job_id,
        (jobs.QUEUED,),
        jobs.RECOMMENDING,
        faces=[face],
        chosen_face=0,
        model=ModelRef(name="fer_vgg16", version=3, head="svm"),
    )
    with connection() as conn:
        conn.execute("UPDATE jobs SET updated_at = now() - interval '1 minute' WHERE id = %s", (job_id,))
    workers = [
        _start_worker("moodtunes_fer.worker", "fer", tmp_path / "fer.log", env),
        _start_worker("moodtunes_recommender.worker", "recommend", tmp_path / "rec1.log", env),
    ]
    try:
        [child] = _children(workers[1].pid)
        os.kill(child, signal.SIGSTOP)  # the recommender will take the event and never finish it
        assert reconciler.reconcile_once().requeued == [job_id]
        deadline = time.monotonic() + 60
        while f"{job_id}:recommend" not in _unacked(broker):
            assert time.monotonic() < deadline, "the recommender never took the event"
            time.sleep(0.1)
        os.killpg(workers[1].pid, signal.SIGKILL)
        workers[1].wait(timeout=10)
        assert jobs.get(job_id)["status"] == "recommending"
        assert _unacked(broker) == [f"{job_id}:recommend"] and broker.llen("recommend") == 0

        workers.append(_start_worker("moodtunes_recommender.worker", "recommend", tmp_path / "rec2.log", env))
        back = time.monotonic()
        while jobs.get(job_id)["status"] != "done":
            assert time.monotonic() - back < 30, (tmp_path / "rec2.log").read_text()[-2000:]
            reconciler.reconcile_once()
            time.sleep(0.5)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        get_settings.cache_clear()
    row = jobs.get(job_id)
    assert row["recommendation"]["tracks"] and row["requeues"] == 2 and row["error_code"] is None
