"""How playlists find their candidates (what keeps them fast at a million tracks), on the real
PostgreSQL with the catalogue sample: narrow filters are served from the whole filtered set, never by
the exact-scan fallback; broader ones from the filtered GiST, exactly; the set plan ranks like an
exact scan; searching the target's nearer mode partition first gives the same tracks as searching
both; the exact scan is exact whatever plan a prepared statement cached. Timings:
benchmarks/recommender.py."""

import numpy as np
import psycopg
import pytest
from psycopg.rows import dict_row

from moodtunes.db import connection
from moodtunes_recommender import mapping, matching
from moodtunes_recommender.catalogue import FILTERED_INDEXES
from moodtunes_recommender.matching import Filters

pytestmark = pytest.mark.integration

NARROW = {
    "genre": Filters(genres=["rock"]),  # 71 of the sample's 3,000 tracks
    "years": Filters(year_min=1994, year_max=1995),  # 23
    "combined": Filters(year_min=2015, year_max=2019, min_popularity=60, genres=["rap", "rock"]),
}
PROBS = [[0.1, 0.1, 0.6, 0.1, 0.1], [0.2, 0.5, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.2, 0.5]]


@pytest.fixture
def no_filtered_gist(monkeypatch):
    """build_playlist sees a catalogue without the filtered GiST (as where the load could not make it)."""
    size = matching.catalogue_size
    monkeypatch.setattr(matching, "catalogue_size", lambda conn: (size(conn)[0], False))


@pytest.fixture
def exact_calls(monkeypatch):
    """Counts the exact scans `build_playlist` asks `candidates` for."""
    calls = []
    real = matching.candidates

    def spy(*args, **kwargs):
        if kwargs.get("exact"):
            calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(matching, "candidates", spy)
    return calls


def passes(track, f: Filters) -> bool:
    return (
        (f.year_min is None or track.year >= f.year_min)
        and (f.year_max is None or track.year <= f.year_max)
        and (f.min_popularity is None or track.popularity >= f.min_popularity)
        and (not f.genres or any(g in (track.genre or "").lower() for g in f.genres))
    )


@pytest.mark.parametrize("mode", ["match", "uplift", "calm"])
@pytest.mark.parametrize("case", sorted(NARROW))
def test_narrow_filter_playlists_never_fall_back_to_the_exact_scan(database, exact_calls, mode, case):
    filters = NARROW[case]
    for probs in PROBS:
        stats: dict = {}
        with connection() as conn:
            tracks = matching.build_playlist(
                conn,
                mapping.targets(probs, mode, 10),
                filters,
                min_valence=mapping.min_valence(mode, 10),
                stats=stats,
            )
        assert exact_calls == [] and stats["exact_scans"] == 0
        assert stats["plan"] == "set" and stats["queries"] == 1  # one fetch for the whole playlist
        assert tracks and all(passes(t, filters) for t in tracks)
        if mode == "uplift":
            assert all(t.features["valence"] >= 0.6 for t in tracks[-3:])


BROAD = {
    "clean": Filters(exclude_explicit=True),
    "popular": Filters(min_popularity=40),  # 1,222 of 3,000
    "decades": Filters(year_min=1990, year_max=2019, exclude_explicit=True),
}


@pytest.mark.parametrize("case", sorted(BROAD))
def test_a_broad_filter_is_served_exactly_by_the_filtered_gist(database, exact_calls, case):
    """One statement for the whole playlist, no exact scan, and the tracks an exact search would
    choose (diversity 0: each position's nearest passing track under the playlist rules)."""
    for probs in PROBS:
        target = mapping.target(probs, "match")
        stats: dict = {}
        with connection() as conn:
            tracks = matching.build_playlist(
                conn, np.repeat(target[None, :], 8, axis=0), BROAD[case], diversity=0.0, stats=stats
            )
        # one statement, and a second for targets whose other mode partition may hold some nearest
        assert stats["plan"] == "gist" and stats["queries"] <= 2 and stats["exact_scans"] == 0
        assert exact_calls == []
        assert [t.track_id for t in tracks] == brute_force_nearest_playlist(target, BROAD[case], 8)


def test_one_genre_is_checked_in_the_filtered_gist_and_still_ranks_exactly(
    database, exact_calls, monkeypatch
):
    """A single genre is the form the GiST's trigrams can check; with the whole-set plan ruled out
    (a catalogue where the genre is common), the GiST serves it, exactly."""
    monkeypatch.setattr(matching, "SET_ROWS", 0)
    filters = Filters(genres=["rock"], year_min=1960)
    assert matching.filter_sql(filters)[0][-1] == "genre ILIKE %(genre)s"
    for probs in PROBS:
        target = mapping.target(probs, "match")
        stats: dict = {}
        with connection() as conn:
            tracks = matching.build_playlist(
                conn, np.repeat(target[None, :], 8, axis=0), filters, diversity=0.0, stats=stats
            )
        assert stats["plan"] == "gist" and stats["exact_scans"] == 0 and exact_calls == []
        assert [t.track_id for t in tracks] == brute_force_nearest_playlist(target, filters, 8)


def test_the_filtered_gist_finds_what_an_exact_scan_finds_for_every_target_and_floor(database):
    """An uplift trajectory's targets (valence floors on the last positions, both sides of mode
    0.5), with filters the index checks (years, popularity) and ones it leaves to the heap
    (explicit, exclusions): the same tracks, in the same order, as the exact scan."""
    targets = mapping.targets(PROBS[0], "uplift", 10)
    keys = list(zip(targets, mapping.min_valence("uplift", 10), strict=True))
    keys.append((np.array([0.6, 0.6, 0.5, 0.5, 0.5]), None))  # on the partition boundary
    for filters, k in (
        (Filters(year_min=1980, min_popularity=30, exclude_explicit=True), 60),
        (Filters(), 40),
    ):
        with connection() as conn:
            exclude = [
                r["track_id"] for r in matching.candidates(conn, targets[0], 3, filters, [], exact=True)
            ]
            batch, sent = matching.nearest_batch(conn, keys, k, filters, exclude, filtered_index=True)
            assert sent == 2  # the boundary target needs its other partition too
            for (t, mv), rows in zip(keys, batch, strict=True):
                exact = matching.candidates(conn, t, k, filters, exclude, mv, exact=True)
                assert [r[0] for r in rows] == [r["track_id"] for r in exact]
                assert [r[-1] for r in rows] == pytest.approx([r["distance"] for r in exact], abs=1e-6)
                assert len(rows) == k


def test_without_the_filtered_gist_a_broad_filter_walks_the_hnsw_graphs(
    database, exact_calls, no_filtered_gist
):
    """A database whose load could not make the GiST (no cube extension) still serves filters."""
    stats: dict = {}
    with connection() as conn:
        tracks = matching.build_playlist(
            conn, mapping.targets(PROBS[0], "match", 10), Filters(exclude_explicit=True), stats=stats
        )
    assert stats["plan"] == "index" and stats["queries"] == 1 and stats["exact_scans"] == 0
    assert exact_calls == [] and len(tracks) == 10


def test_an_index_query_that_comes_back_short_falls_back_to_the_exact_scan(
    database, exact_calls, no_filtered_gist, monkeypatch
):
    """The fallback still guards correctness where the plan choice is overruled (here: never the
    whole set, no filtered GiST): the HNSW query for 100 candidates finds only the 71 rock tracks
    there are, and only an exact scan can tell that those are all."""
    monkeypatch.setattr(matching, "SET_ROWS", 0)
    stats: dict = {}
    with connection() as conn:
        tracks = matching.build_playlist(
            conn, mapping.targets(PROBS[0], "match", 10), Filters(genres=["rock"]), stats=stats
        )
    assert stats["plan"] == "index" and stats["exact_scans"] == 1 and len(exact_calls) == 1
    assert len(tracks) == 10 and all("rock" in t.genre for t in tracks)


def brute_force_nearest_playlist(target, filters: Filters, n: int) -> list[str]:
    """Exact nearest over the filtered catalogue with the playlist rules (diversity 0): each
    position takes the nearest unused song whose artists differ from the previous track's."""
    where, params = matching.filter_sql(filters)
    with connection() as conn:
        rows = conn.execute(f"SELECT * FROM tracks WHERE {' AND '.join(where)}", params).fetchall()
    d = [float(np.linalg.norm(matching.feature_vector(r) - target)) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (round(d[i], 9), rows[i]["track_id"]))
    out, songs, prev = [], set(), frozenset()
    while len(out) < n:
        free = [i for i in order if rows[i]["song_key"] not in songs]
        if not free:
            break
        pick = next((i for i in free if not matching.artist_set(rows[i]["artists"]) & prev), free[0])
        out.append(rows[pick]["track_id"])
        songs.add(rows[pick]["song_key"])
        prev = matching.artist_set(rows[pick]["artists"])
    return out


@pytest.mark.parametrize("case", sorted(NARROW))
def test_the_set_plan_ranks_like_an_exact_scan(database, case):
    for probs in PROBS:
        target = mapping.target(probs, "match")
        with connection() as conn:
            tracks = matching.build_playlist(
                conn, np.repeat(target[None, :], 8, axis=0), NARROW[case], diversity=0.0
            )
        assert [t.track_id for t in tracks] == brute_force_nearest_playlist(target, NARROW[case], 8)


@pytest.mark.parametrize("mode_value", [0.0, 0.3, 0.499, 0.5, 0.501, 0.8, 1.0])
def test_searching_the_nearer_mode_first_finds_what_both_partitions_find(database, mode_value):
    target = np.array([0.6, 0.6, 0.5, 0.5, mode_value])
    for filters, k in ((Filters(), 100), (Filters(min_popularity=50), 60), (Filters(genres=["latin"]), 300)):
        where, params = matching.filter_sql(filters)
        with connection() as conn:
            pruned = [r["track_id"] for r in matching.candidates(conn, target, k, filters, [])]
            # both partitions, under the settings `candidates` made in this transaction
            both = conn.execute(
                matching.nearest_sql(where), {**params, "t": matching.vector_literal(target), "k": k}
            )
            assert pruned == [r["track_id"] for r in both.fetchall()]


def test_one_statement_finds_every_targets_candidates_as_one_query_each_would(database):
    """The index plan searches all of a playlist's targets (an uplift trajectory, with its valence
    floors, both sides of mode 0.5) in one statement: the same tracks, in the same order, as one
    `candidates` query per target, with and without filters and exclusions."""
    targets = mapping.targets(PROBS[0], "uplift", 10)
    floors = mapping.min_valence("uplift", 10)
    keys = [(t, mv) for t, mv in zip(targets, floors, strict=True)]
    keys.append((np.array([0.6, 0.6, 0.5, 0.5, 0.5]), None))  # on the partition boundary
    assert {mv is None for _, mv in keys} == {True, False}
    assert {t[4] >= 0.5 for t, _ in keys} == {True, False}
    for filters, k in ((Filters(), 100), (Filters(min_popularity=50, exclude_explicit=True), 40)):
        with connection() as conn:
            exclude = [r["track_id"] for r in matching.candidates(conn, targets[0], 3, filters, [])]
            batch, sent = matching.nearest_batch(conn, keys, k, filters, exclude)
            assert sent == 2  # the boundary target needs its other partition too
            for (t, mv), rows in zip(keys, batch, strict=True):
                one = matching.candidates(conn, t, k, filters, exclude, mv)
                assert [r[0] for r in rows] == [r["track_id"] for r in one]
                assert len(rows) == k and not set(exclude) & {r[0] for r in rows}


def test_the_exact_scan_stays_exact_once_its_statement_is_prepared(database, postgres, monkeypatch):
    """psycopg prepares a statement on its fifth run and PostgreSQL may then reuse a generic plan,
    planned under whatever settings were in force: the exact scan must not rely on settings (it
    did: with `enable_indexscan = off`, the cached plan of the index query returned the index's
    short answer)."""
    monkeypatch.setattr(matching, "MAX_SCAN_TUPLES", 20)  # index queries come back short
    filters = Filters(genres=["rock"])
    target = mapping.target(PROBS[0], "match")
    with psycopg.connect(postgres.owner_url, row_factory=dict_row) as conn:
        conn.execute("SET LOCAL enable_bitmapscan = off")  # no trigram-index plan: the HNSW one
        conn.execute("SET LOCAL enable_seqscan = off")
        for name in FILTERED_INDEXES:  # nor a whole-partition scan of the filtered GiST (rolled back)
            conn.execute(f"DROP INDEX {name}")
        for _ in range(8):  # the index query, prepared and cached
            assert len(matching.candidates(conn, target, 100, filters, [])) < 71
        for _ in range(8):
            exact = matching.candidates(conn, target, 100, filters, [], exact=True)
            assert len(exact) == 71
        ids = [r["track_id"] for r in exact]
        conn.rollback()
    where, params = matching.filter_sql(filters)
    with connection() as conn:
        rows = conn.execute(f"SELECT * FROM tracks WHERE {' AND '.join(where)}", params).fetchall()
    d = {r["track_id"]: float(np.linalg.norm(matching.feature_vector(r) - target)) for r in rows}
    assert [d[i] for i in ids] == pytest.approx(sorted(d.values()), abs=1e-5)
