"""Catalogue loading into the real PostgreSQL: validation, rejects with reasons, idempotent upserts."""

import csv
import gzip
import json

import numpy as np
import pytest
from psycopg.rows import tuple_row

from moodtunes.db import connection
from moodtunes_recommender import catalogue, mapping, matching

pytestmark = pytest.mark.integration

HEADER = [
    "track_id",
    "name",
    "artists",
    "danceability",
    "energy",
    "valence",
    "tempo",
    "mode",
    "year",
    "popularity",
    "extra_column",
]
GOOD = ["t-good-1", "Song A", "Artist X ; Artist Y", "0.5", "0.6", "0.7", "120", "1", "1999", "50", "x"]


def write(path, rows, header=HEADER, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def fetch(track_id):
    with connection() as conn:
        return conn.execute(
            "SELECT *, features::text AS fv FROM tracks WHERE track_id = %s", (track_id,)
        ).fetchone()


def test_loads_valid_rows_and_reports_bad_ones(database, tmp_path):
    bad = [
        ["t-bad-1", "", "A", "0.5", "0.5", "0.5", "100", "1", "", "", ""],  # no name
        ["t-bad-2", "S", "A", "1.5", "0.5", "0.5", "100", "1", "", "", ""],  # danceability > 1
        ["t-bad-3", "S", "A", "0.5", "abc", "0.5", "100", "1", "", "", ""],  # energy not a number
        ["t-bad-4", "S", "A", "0.5", "0.5", "0.5", "100", "2", "", "", ""],  # mode not 0/1
        ["t-bad-5", "S", "A", "0.5", "0.5", "0.5", "100", "1", "1999.5", "", ""],  # year not int
        ["t-bad-6", "S", "A", "0.5", "0.5", "nan", "100", "1", "", "", ""],  # valence NaN
    ]
    report = catalogue.load_csv(write(tmp_path / "c.csv.gz", [GOOD, *bad], gz=True), progress=False)
    assert (report.rows, report.loaded, report.rejected) == (7, 1, 6)
    reasons = dict(report.rejects)
    assert reasons[3].startswith("name") and reasons[4].startswith("danceability")
    assert reasons[5].startswith("energy") and reasons[6].startswith("mode")
    assert reasons[7].startswith("year") and reasons[8].startswith("valence")
    row = fetch("t-good-1")
    assert row["name"] == "Song A" and row["year"] == 1999 and row["genre"] is None
    assert row["fv"] == f"[0.5,0.6,0.7,{120 / 244:.6g},1]"
    assert row["song_key"] == "song a artist x"


def test_upsert_is_idempotent_and_updates(database, tmp_path):
    path = write(tmp_path / "c.csv", [GOOD])
    catalogue.load_csv(path, progress=False)
    n = catalogue.count_tracks()
    catalogue.load_csv(path, progress=False)
    assert catalogue.count_tracks() == n
    changed = GOOD.copy()
    changed[1] = "Song A (Remastered)"
    catalogue.load_csv(write(tmp_path / "d.csv", [changed]), progress=False)
    assert fetch("t-good-1")["name"] == "Song A (Remastered)"
    assert catalogue.count_tracks() == n


def maintenance_times() -> tuple:
    with connection() as conn:
        row = conn.execute(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'tracks'"
        ).fetchone()
    return row["last_vacuum"], row["last_analyze"]


def test_a_load_vacuums_and_analyzes_the_table_itself(database, postgres, tmp_path):
    """Not left to autovacuum's first round, which would land on the first traffic; a load that
    changes nothing (every row rejected) costs no VACUUM. As the owner, who loads catalogues
    (VACUUM skips a table its caller does not own)."""
    from moodtunes import db

    no_name = ["t-x", "", "A", "0.5", "0.5", "0.5", "1", "1", "", "", ""]
    vacuumed, analyzed = maintenance_times()
    try:
        catalogue.load_csv(write(tmp_path / "bad.csv", [no_name]), postgres.owner_url, progress=False)
        assert maintenance_times() == (vacuumed, analyzed)
        catalogue.load_csv(write(tmp_path / "c.csv", [GOOD]), postgres.owner_url, progress=False)
    finally:
        db.close_pools()  # no owner connection stays open
    vacuumed_now, analyzed_now = maintenance_times()
    assert vacuumed_now is not None and (vacuumed is None or vacuumed_now > vacuumed)
    assert analyzed_now is not None and (analyzed is None or analyzed_now > analyzed)


def test_missing_required_column_is_an_error(database, tmp_path):
    path = write(tmp_path / "e.csv", [["x", "y"]], header=["track_id", "name"])
    with pytest.raises(ValueError, match="missing required columns"):
        catalogue.load_csv(path, progress=False)


def test_reads_names_like_NA_as_text(database, tmp_path):
    row = GOOD.copy()
    row[0], row[1] = "t-na", "NA"
    catalogue.load_csv(write(tmp_path / "f.csv", [row]), progress=False)
    assert fetch("t-na")["name"] == "NA"


def test_loading_and_ranking_use_the_same_feature_vector(database, tmp_path):
    """The vector the catalogue stores (which pgvector's index searches) is the one the playlist
    builder ranks with: one function, so the two distances agree, tempo capping included."""
    fast = ["t-fast", "Fast", "Z", "0.1", "0.9", "0.2", "290", "0", "2001", "10", ""]  # over 244 BPM
    catalogue.load_csv(write(tmp_path / "v.csv", [GOOD, fast]), progress=False)
    for track_id in ("t-good-1", "t-fast"):
        row = fetch(track_id)
        np.testing.assert_allclose(json.loads(row["fv"]), mapping.feature_vector(row), atol=1e-6)
    assert mapping.feature_vector(fetch("t-fast"))[3] == 1.0
    target = mapping.target([0.1, 0.2, 0.3, 0.2, 0.2], "calm")
    with connection() as conn:
        found = matching.candidates(conn, target, 200, matching.Filters(), [])
    assert len(found) == 200
    for r in found:
        assert r["distance"] == pytest.approx(np.linalg.norm(matching.feature_vector(r) - target), abs=1e-5)


def test_a_first_load_stores_tracks_in_feature_order_and_makes_the_filter_indexes(database):
    """A first load writes the table in catalogue.FEATURE_ORDER (near tracks on near pages, which
    is what makes the filtered GiST fast) and creates every filter index; rows updated since sit
    elsewhere, so only the first load's rows (one loaded_at) are checked. A row that does not fit
    on a page's remaining space goes to a later one, so the order holds to within a few pages (~30
    rows each here; the sample in file order is thousands of rows out)."""
    with connection() as conn:
        rows = (
            conn.cursor(row_factory=tuple_row)
            .execute(
                f"SELECT {catalogue.FEATURE_ORDER} FROM tracks "
                "WHERE loaded_at = (SELECT min(loaded_at) FROM tracks) ORDER BY ctid"
            )
            .fetchall()
        )
        indexes = {
            r["indexname"]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'tracks'")
        }
    in_order = sorted(range(len(rows)), key=lambda i: rows[i])
    assert len(rows) > 2000 and max(abs(i - at) for at, i in enumerate(in_order)) <= 150
    assert set(catalogue.FILTER_INDEXES) <= indexes
