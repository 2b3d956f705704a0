"""The in-memory catalogue copy that ranks filtered playlists in the recommender worker: it filters
as the SQL does, ranks as the database plans do (both its direct and its k-d tree searches), and is
never used once the catalogue has changed. On the real PostgreSQL with the catalogue sample."""

import psycopg
import pytest

from moodtunes.db import connection
from moodtunes_recommender import mapping, matching, snapshot
from moodtunes_recommender.matching import Filters

from .test_matching_scale import BROAD, NARROW, PROBS

pytestmark = pytest.mark.integration

FILTERS = {
    **{f"narrow-{k}": f for k, f in NARROW.items()},
    **{f"broad-{k}": f for k, f in BROAD.items()},
    "explicit-popular": Filters(exclude_explicit=True, min_popularity=40),
    "two-genres": Filters(genres=["pop", "latin"], year_max=2005),
}


@pytest.fixture(scope="module")
def copy(database) -> snapshot.CatalogueSnapshot:
    with connection() as conn:
        return snapshot.CatalogueSnapshot.load(conn)


def db_playlist(targets, filters, mode, **kw):
    with connection() as conn:
        return matching.build_playlist(
            conn, targets, filters, min_valence=mapping.min_valence(mode, len(targets)), **kw
        )


def memory_playlist(copy, targets, filters, mode, **kw):
    stats: dict = {}
    with connection() as conn:
        tracks = matching.build_playlist(
            conn,
            targets,
            filters,
            min_valence=mapping.min_valence(mode, len(targets)),
            stats=stats,
            memory=copy,
            **kw,
        )
    assert stats["plan"] == "memory" and stats["queries"] == 0 and stats["exact_scans"] == 0
    return tracks


@pytest.mark.parametrize(
    "pattern, value, matches",
    [
        ("%rock%", "Hard ROCK music", True),
        ("%ro_k%", "rok", False),
        ("%ro_k%", "Indie Roñk", True),  # one character, two bytes
        ("100\\%", "100%", True),
        ("100\\%", "1000", False),
        ("a_c", "a\nc", True),
        ("%.*%", "pop", False),  # regex characters are literal
        ("%.*%", "a.*b", True),
        ("k-pop", "K-Pop", True),
        ("k-pop", "k-pop rock", False),
    ],
)
def test_like_patterns_match_as_postgresql_ilike_does(database, pattern, value, matches):
    with connection() as conn:
        assert conn.execute("SELECT %s ILIKE %s AS m", [value, pattern]).fetchone()["m"] is matches
    assert (snapshot.like_regex(pattern).fullmatch(value) is not None) is matches


def test_the_copy_holds_every_track_ordered_by_id_with_the_version_it_was_read_at(copy):
    with connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM tracks) AS count, version FROM catalogue_version"
        ).fetchone()
        count, version = row["count"], row["version"]
        first = conn.execute(
            f"SELECT {', '.join(matching.lean_columns())} FROM tracks ORDER BY track_id LIMIT 1"
        ).fetchone()
    assert len(copy) == count >= 3000 and copy.version == version
    assert list(copy.ids) == sorted(copy.ids)
    assert copy.ids[0].decode() == first["track_id"] and copy.artists.take([0]) == [first["artists"]]
    assert copy.vectors[0] == pytest.approx(matching.feature_vector(first))


@pytest.mark.parametrize("case", sorted(FILTERS))
def test_filters_pass_the_tracks_the_sql_passes(copy, case):
    where, params = matching.filter_sql(FILTERS[case])
    with connection() as conn:
        rows = conn.execute(f"SELECT track_id FROM tracks WHERE {' AND '.join(where)}", params).fetchall()
    passing = {t.decode() for t in copy.ids[copy.passing(FILTERS[case])]}
    assert passing == {r["track_id"] for r in rows} and passing


def test_missing_years_popularities_and_genres_never_pass_a_filter_on_them():
    rows = [
        ("a", "x", "s1", 0.5, 0.5, 0.5, 120.0, 1.0, float("nan"), 50.0, False, "rock"),
        ("b", "y", "s2", 0.5, 0.5, 0.5, 120.0, 0.0, 1999.0, float("nan"), True, None),
        ("c", "z", "s3", 0.5, 0.5, 0.5, 120.0, 0.0, 2001.0, 70.0, False, "pop rock"),
    ]
    copy = snapshot.CatalogueSnapshot.from_rows(7, rows)
    ids = lambda f: [t.decode() for t in copy.ids[copy.passing(f)]]  # noqa: E731
    assert ids(Filters(year_min=1990)) == ["b", "c"]
    assert ids(Filters(min_popularity=10)) == ["a", "c"]
    assert ids(Filters(genres=["ROCK"])) == ["a", "c"]
    assert ids(Filters(exclude_explicit=True)) == ["a", "c"]
    assert ids(Filters()) == ["a", "b", "c"]


@pytest.mark.parametrize("mode", ["match", "uplift", "calm"])
@pytest.mark.parametrize("case", sorted(FILTERS))
def test_a_memory_playlist_is_the_playlist_the_database_plans_make(copy, mode, case):
    """Same tracks, same order, with the default diversity (MMR over each position's candidates):
    the candidates are the same nearest tracks, so every choice is."""
    for probs in PROBS:
        targets = mapping.targets(probs, mode, 10)
        expected = [t.track_id for t in db_playlist(targets, FILTERS[case], mode)]
        assert [t.track_id for t in memory_playlist(copy, targets, FILTERS[case], mode)] == expected


@pytest.mark.parametrize("mode", ["match", "uplift"])
@pytest.mark.parametrize("case", ["broad-popular", "explicit-popular", "narrow-genre"])
def test_the_k_d_tree_and_the_direct_ranking_find_the_same_tracks(copy, monkeypatch, mode, case):
    """Each way alone (the tree asked for more until enough pass; every passing track ranked):
    the same playlist, valence floors and used tracks included."""

    def no_gather(*args, **kwargs):
        raise AssertionError("ranked directly")

    playlists = {}
    for way, ratio in (("tree", 0), ("direct", float("inf"))):
        with monkeypatch.context() as m:
            m.setattr(snapshot, "TREE_COST_RATIO", ratio)
            if way == "tree":
                m.setattr(snapshot.DirectPartition, "gather", no_gather)
            else:
                for part in copy.partitions.values():
                    m.setattr(part, "tree", None)  # any tree search fails
            playlists[way] = [
                [t.track_id for t in memory_playlist(copy, mapping.targets(p, mode, 10), FILTERS[case], mode)]
                for p in PROBS
            ]
    assert playlists["tree"] == playlists["direct"]
    assert all(len(p) == 10 for p in playlists["tree"])


def test_excluded_tracks_never_appear_and_the_rest_is_as_the_database_ranks(copy):
    targets = mapping.targets(PROBS[0], "match", 10)
    filters = FILTERS["broad-popular"]
    disliked = [t.track_id for t in db_playlist(targets, filters, "match")][:5]
    expected = [t.track_id for t in db_playlist(targets, filters, "match", exclude=disliked)]
    got = [t.track_id for t in memory_playlist(copy, targets, filters, "match", exclude=disliked)]
    assert got == expected and not set(got) & set(disliked)


@pytest.fixture
def cache(database):
    made = snapshot.SnapshotCache(1_000_000, connection)
    yield made
    made.wait(30)


def test_a_cache_serves_only_a_copy_of_the_catalogue_as_it_is(cache, postgres):
    with connection() as conn:
        assert cache.current(conn) is None  # nothing loaded yet: the load starts in the background
    loaded = cache.wait(30)
    with connection() as conn:
        assert cache.current(conn) is loaded
        assert len(loaded) == conn.execute("SELECT count(*) AS n FROM tracks").fetchone()["n"]
    with psycopg.connect(postgres.owner_url, autocommit=True) as owner:
        owner.execute("UPDATE tracks SET popularity = popularity WHERE false")  # a change, of no row
    with connection() as conn:
        assert cache.current(conn) is None  # stale: never searched
    reloaded = cache.wait(30)
    assert reloaded is not loaded and reloaded.version == loaded.version + 1
    with connection() as conn:
        assert cache.current(conn) is reloaded


def test_a_catalogue_over_the_limit_is_never_copied(database):
    cache = snapshot.SnapshotCache(2_999, connection)
    with connection() as conn:
        assert cache.current(conn) is None
        first_load = cache.loading
        assert cache.wait(30) is None and cache.skipped_version is not None
        assert cache.current(conn) is None and cache.loading is first_load  # not tried again
    with connection() as conn:
        assert snapshot.SnapshotCache(0, connection).current(conn) is None


def test_a_failed_load_is_not_retried_by_every_playlist(database):
    def unreachable():
        raise psycopg.OperationalError("connection refused")

    cache = snapshot.SnapshotCache(1_000_000, unreachable)
    with connection() as conn:
        assert cache.current(conn) is None
        failed = cache.loading
        assert cache.wait(30) is None
        assert cache.current(conn) is None and cache.loading is failed  # within RETRY_AFTER_S
        cache.retry_at = 0.0
        assert cache.current(conn) is None and cache.loading is not failed


def test_playlists_asking_while_a_load_runs_start_no_second_load(cache):
    loads = set()
    with connection() as conn:
        for _ in range(20):
            cache.current(conn)
            loads.add(cache.loading)
    assert len(loads) == 1 and cache.wait(30) is not None


def test_the_recommender_worker_ranks_filtered_playlists_in_its_copy(database, monkeypatch):
    from moodtunes_recommender import worker

    monkeypatch.setattr(worker, "_snapshots", [])
    with connection() as conn:
        assert worker.catalogue_copy(conn, Filters()) is None and worker._snapshots == []
        assert worker.catalogue_copy(conn, NARROW["genre"]) is None  # loading
        worker._snapshots[0].wait(30)
        copy = worker.catalogue_copy(conn, NARROW["genre"])
    assert copy is not None and copy is worker._snapshots[0].snapshot
