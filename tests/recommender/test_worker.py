"""The recommender stage on the real PostgreSQL: modes, playlist rules, filters, feedback, all
driven by the EmotionDetected event alone; a database outage is waited out, never a failed job."""

import logging

import numpy as np
import psycopg
import pytest

from moodtunes import db, jobs
from moodtunes.config import get_settings
from moodtunes.db import connection
from moodtunes.events import EmotionDetected, ModelRef, job_options, to_json
from moodtunes.results import Recommendation
from moodtunes_recommender import mapping, matching, worker

pytestmark = pytest.mark.integration
ONE_HOT = {e: np.eye(5)[i].tolist() for i, e in enumerate(["neutral", "happy", "sad", "fear", "angry"])}


def recommending_job(**options) -> str:
    """A job past its FER stage, waiting for its playlist."""
    job_id = jobs.new_job_id()
    jobs.create(
        job_id,
        image=b"x",
        image_type="image/png",
        width=1,
        height=1,
        **{"mode": "match", "limit": 7, **options},
    )
    jobs.transition(job_id, jobs.UNFINISHED, jobs.RECOMMENDING, faces=[], chosen_face=0, model={})
    return job_id


def run_job(probs, mode="match", limit=7, filters=None, diversity=None, client_key="c1"):
    options = {
        "mode": mode,
        "limit": limit,
        "filters": filters,
        "diversity": diversity,
        "client_key": client_key,
    }
    job_id = recommending_job(**options)
    worker.recommend(event(job_id, probs, **options))
    row = jobs.get(job_id)
    assert row["status"] == "done"
    Recommendation.model_validate(row["recommendation"])  # what was stored is the API's schema
    return row


def event(job_id, probs, with_options=True, **options):
    return EmotionDetected(
        job_id=job_id,
        emotions=mapping.emotions(),
        probabilities=probs,
        faces_detected=1,
        model=ModelRef(name="fer_vgg16", version=1, head="svm"),
        options=job_options(**{"mode": "match", "limit": 7, **options}) if with_options else None,
    )


def all_tracks():
    with connection() as conn:
        rows = conn.execute("SELECT * FROM tracks ORDER BY track_id").fetchall()
    return rows, np.array([matching.feature_vector(r) for r in rows])


def reference_nearest_playlist(target, n):
    """Exact brute force with the same rules: nearest first, no song twice, no artist in a row."""
    rows, feats = all_tracks()
    d = np.linalg.norm(feats - target, axis=1)
    order = sorted(range(len(rows)), key=lambda i: (round(float(d[i]), 9), rows[i]["track_id"]))
    out, songs, prev = [], set(), frozenset()
    for i in order:
        r = rows[i]
        artists = matching.artist_set(r["artists"])
        if r["song_key"] in songs or artists & prev:
            continue
        out.append(r["track_id"])
        songs.add(r["song_key"])
        prev = artists
        if len(out) == n:
            break
    return out


def test_match_with_no_diversity_is_exact_nearest_search(clean_jobs):
    probs = [0.05, 0.7, 0.1, 0.05, 0.1]
    rec = run_job(probs, diversity=0.0)["recommendation"]
    target = np.array(probs) @ mapping.matrix("match")
    np.testing.assert_allclose(rec["target_vector"], target, atol=1e-6)
    assert [t["track_id"] for t in rec["tracks"]] == reference_nearest_playlist(target, 7)


@pytest.mark.parametrize("emotion", ["sad", "fear", "angry"])
def test_uplift_starts_at_the_mood_and_ends_positive(clean_jobs, emotion):
    rec = run_job(ONE_HOT[emotion], mode="uplift", limit=10)["recommendation"]
    tracks = rec["tracks"]
    assert len(tracks) == 10
    assert all(t["features"]["valence"] >= 0.6 for t in tracks[-3:])
    start = mapping.target(ONE_HOT[emotion], "match")
    assert rec["targets"][0]["valence"] == pytest.approx(start[2])
    valences = [t["valence"] for t in rec["targets"]]
    assert valences == sorted(valences) and valences[-1] >= 0.7
    assert tracks[0]["features"]["valence"] < tracks[-1]["features"]["valence"]


def test_uplift_sustains_happy(clean_jobs):
    rec = run_job(ONE_HOT["happy"], mode="uplift", limit=5)["recommendation"]
    assert {round(t["valence"], 6) for t in rec["targets"]} == {0.95}


def test_calm_lowers_energy_and_tempo_for_anger(clean_jobs):
    match = run_job(ONE_HOT["angry"], mode="match", limit=10)["recommendation"]["playlist_mean"]
    calm = run_job(ONE_HOT["angry"], mode="calm", limit=10)["recommendation"]["playlist_mean"]
    assert calm["energy"] < match["energy"] - 0.3
    assert calm["tempo"] < match["tempo"] - 40
    assert calm["valence"] >= 0.35


def test_playlist_rules_and_determinism(clean_jobs):
    recs = [run_job([0.3, 0.3, 0.2, 0.1, 0.1], limit=30)["recommendation"]["tracks"] for _ in range(2)]
    assert [t["track_id"] for t in recs[0]] == [t["track_id"] for t in recs[1]]
    tracks = recs[0]
    with connection() as conn:
        keys = {
            r["track_id"]: r["song_key"]
            for r in conn.execute(
                "SELECT track_id, song_key FROM tracks WHERE track_id = ANY(%s)",
                ([t["track_id"] for t in tracks],),
            ).fetchall()
        }
    assert len(set(keys.values())) == 30
    for a, b in zip(tracks, tracks[1:], strict=False):
        assert not {x.casefold() for x in a["artists"]} & {x.casefold() for x in b["artists"]}


def test_diversity_spreads_the_playlist(clean_jobs):
    def spread(tracks):
        v = np.array([matching.feature_vector(t["features"])[:4] for t in tracks])  # mode is binary
        return np.mean([np.linalg.norm(a - b) for i, a in enumerate(v) for b in v[i + 1 :]])

    probs = ONE_HOT["neutral"]
    tight = run_job(probs, limit=10, diversity=0.0)["recommendation"]["tracks"]
    varied = run_job(probs, limit=10, diversity=0.7)["recommendation"]["tracks"]
    assert spread(varied) > 1.5 * spread(tight)


def test_filters_still_return_limit_tracks(clean_jobs):
    filters = {"year_min": 2015, "year_max": 2018, "min_popularity": 60, "genres": ["rock", "latin"]}
    tracks = run_job(ONE_HOT["happy"], limit=12, filters=filters)["recommendation"]["tracks"]
    assert len(tracks) == 12
    with connection() as conn:
        rows = conn.execute(
            "SELECT year, popularity, genre FROM tracks WHERE track_id = ANY(%s)",
            ([t["track_id"] for t in tracks],),
        ).fetchall()
    for r in rows:
        assert 2015 <= r["year"] <= 2018 and r["popularity"] >= 60
        assert "rock" in r["genre"] or "latin" in r["genre"]


def test_disliked_tracks_never_return_for_that_client_and_mode(clean_jobs):
    first = run_job(ONE_HOT["sad"], limit=5, client_key="alice")
    disliked = first["recommendation"]["tracks"][0]["track_id"]
    jobs.record_feedback(first, disliked, liked=False)
    again = run_job(ONE_HOT["sad"], limit=5, client_key="alice")["recommendation"]
    assert disliked not in [t["track_id"] for t in again["tracks"]] and again["excluded_disliked"] == 1
    other_client = run_job(ONE_HOT["sad"], limit=5, client_key="bob")["recommendation"]["tracks"]
    assert disliked in [t["track_id"] for t in other_client]
    other_mode = run_job(ONE_HOT["sad"], mode="calm", limit=50, client_key="alice")
    assert other_mode["recommendation"]["excluded_disliked"] == 0


def test_redelivered_event_does_nothing(clean_jobs):
    row = run_job(ONE_HOT["neutral"])
    assert worker.recommend(event(str(row["id"]), ONE_HOT["angry"])) is None
    assert jobs.get(str(row["id"]))["recommendation"] == row["recommendation"]


def test_the_event_not_the_job_row_says_what_to_build(clean_jobs):
    job_id = recommending_job(mode="match", limit=3, client_key="erin")
    rec = worker.recommend(
        event(
            job_id,
            ONE_HOT["angry"],
            mode="calm",
            limit=5,
            diversity=0.0,
            filters={"year_min": 2000},
            client_key="erin",
        )
    )
    stored = jobs.get(job_id)["recommendation"]
    assert stored == rec.model_dump(mode="json", exclude_computed_fields=True)
    assert stored["mode"] == "calm" and len(stored["tracks"]) == 5 and stored["diversity"] == 0.0
    assert stored["filters"]["year_min"] == 2000 and all(t["year"] >= 2000 for t in stored["tracks"])


def test_an_event_queued_before_options_travelled_uses_the_job_row(clean_jobs):
    job_id = recommending_job(mode="uplift", limit=4, filters={"genres": ["rock"]})
    worker.recommend(event(job_id, ONE_HOT["sad"], with_options=False))
    stored = jobs.get(job_id)["recommendation"]
    assert stored["mode"] == "uplift" and len(stored["tracks"]) == 4
    assert stored["filters"]["genres"] == ["rock"]


def test_a_redelivery_waits_for_the_running_one_then_does_nothing(clean_jobs):
    """The job row stays locked while its playlist is built: a second delivery of the event
    blocks, then finds the job done instead of building and writing a second playlist."""
    import threading

    job_id = recommending_job()
    results: list = []
    second = threading.Thread(
        target=lambda: results.append(worker.recommend(event(job_id, ONE_HOT["happy"])))
    )
    with connection() as conn:
        assert worker.lock_job(conn, job_id, "c1", "match") == ("recommending", worker.Listener())
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive()  # waiting on the lock
        jobs.transition(
            job_id, (jobs.RECOMMENDING,), jobs.DONE, conn=conn, recommendation={"mode": "match", "tracks": []}
        )
    second.join(timeout=10)
    assert results == [None] and jobs.get(job_id)["recommendation"]["tracks"] == []


def test_malformed_event_fails_the_job(clean_jobs):
    job_id = recommending_job()
    worker.recommend_task.run({"job_id": job_id, "nonsense": True})
    row = jobs.get(job_id)
    assert row["status"] == "failed" and row["error_code"] == "bad_event"


def drop_database_connections() -> None:
    """What a PostgreSQL restart does to a client: every open connection is cut."""
    with psycopg.connect(get_settings().database_url, autocommit=True) as conn:
        conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND backend_type = 'client backend'"""
        )


def test_a_database_restart_during_the_task_is_retried_and_the_job_ends_done(clean_jobs, caplog):
    job_id = recommending_job()
    drop_database_connections()  # the pooled connection the task will take is dead
    with caplog.at_level(logging.WARNING):
        worker.recommend_task.apply(args=[to_json(event(job_id, ONE_HOT["happy"]))], throw=True)
    assert "database unavailable" in caplog.text
    row = jobs.get(job_id)
    assert row["status"] == "done" and len(row["recommendation"]["tracks"]) == 7


def test_a_database_outage_past_the_retry_budget_leaves_the_job_for_the_reconciler(clean_jobs, monkeypatch):
    """Not failed `recommendation_failed`, not sent back to the broker: the job stays in
    recommending, and the reconciler re-sends it once the database is back."""
    from moodtunes_cli.localstack import free_port

    job_id = recommending_job()
    payload = to_json(event(job_id, ONE_HOT["happy"]))
    unreachable = f"postgresql://moodtunes@127.0.0.1:{free_port()}/moodtunes"
    monkeypatch.setenv("DATABASE_URL", unreachable)
    monkeypatch.setenv("DB_RETRY_S", "0.5")
    get_settings.cache_clear()
    try:
        db.pool(unreachable).timeout = 0.2
        worker.recommend_task.apply(args=[payload], throw=True)  # a Celery retry would raise here
    finally:
        db._pools.pop(unreachable).close()
        monkeypatch.undo()
        get_settings.cache_clear()
    row = jobs.get(job_id)
    assert (row["status"], row["error_code"]) == ("recommending", None)


def test_a_group_event_builds_from_the_blend_and_says_how_the_room_spread(clean_jobs):
    from moodtunes import group
    from moodtunes.events import GroupMood

    room = group.blend([ONE_HOT["happy"], ONE_HOT["sad"]])
    job_id = recommending_job(drive="group")
    message = event(job_id, room.probabilities.tolist(), drive="group", diversity=0.0)
    message.group.CopyFrom(GroupMood(faces=2, weights=room.weights.tolist(), spread=room.spread))
    rec = worker.recommend(message)
    assert rec.drive == "group" and rec.group.faces == 2
    assert rec.group.weights == pytest.approx([0.5, 0.5]) and rec.group.spread == pytest.approx(0.5)
    expected = 0.5 * (mapping.target(ONE_HOT["happy"]) + mapping.target(ONE_HOT["sad"]))
    np.testing.assert_allclose(rec.target_vector, expected, atol=1e-6)
    stored = jobs.get(job_id)["recommendation"]
    assert stored["drive"] == "group" and stored["group"]["faces"] == 2
    one_face = run_job(ONE_HOT["happy"])["recommendation"]
    assert one_face["drive"] == "face" and one_face["group"] is None


def test_likes_pull_later_playlists_toward_the_liked_tracks_and_undo_removes_the_pull(clean_jobs):
    first = run_job(ONE_HOT["sad"], limit=5, diversity=0.0, client_key="lee")
    plain = np.array(first["recommendation"]["target_vector"])
    assert first["recommendation"]["liked_pull"] is None
    rows, feats = all_tracks()
    by_id = {r["track_id"]: f for r, f in zip(rows, feats, strict=True)}
    far = max(by_id, key=lambda t: np.linalg.norm(by_id[t] - plain))  # a liked track far from the mood
    jobs.record_feedback(first, far, liked=True)
    liked = run_job(ONE_HOT["sad"], limit=5, diversity=0.0, client_key="lee")["recommendation"]
    pull = worker.LIKE_PULL_MAX * 1 / (1 + worker.LIKE_HALF)
    assert liked["liked_pull"] == pytest.approx(pull)
    np.testing.assert_allclose(liked["target_vector"], plain + pull * (by_id[far] - plain), atol=1e-5)
    assert np.linalg.norm(np.array(liked["target_vector"]) - by_id[far]) < np.linalg.norm(plain - by_id[far])
    other_mode = run_job(ONE_HOT["sad"], mode="calm", limit=5, client_key="lee")["recommendation"]
    assert other_mode["liked_pull"] is None  # likes count in the mode they were given in
    jobs.delete_feedback(first, far)
    undone = run_job(ONE_HOT["sad"], limit=5, diversity=0.0, client_key="lee")["recommendation"]
    assert undone["liked_pull"] is None
    np.testing.assert_allclose(undone["target_vector"], plain, atol=1e-6)
