"""Loading a track catalogue CSV (gzip or plain) into PostgreSQL: validated, upserted by track_id.

Any CSV with the feature columns works; extra columns are ignored and optional ones may be
missing. Rejected rows are reported with their line number and reason, never silently dropped.

`python -m moodtunes_recommender.catalogue load --default` is the catalogue step of the production
migrate job (the recommender image has no `moodtunes` CLI); `moodtunes catalogue load` runs the
same `load_and_report`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from moodtunes.config import get_settings
from moodtunes.db import connection
from moodtunes_recommender.mapping import feature_vector


def default_catalogue() -> Path:
    """The shipped catalogue, or $CATALOGUE_PATH (container images keep it outside the package)."""
    return get_settings().catalogue_path


REQUIRED = ("track_id", "name", "artists", "danceability", "energy", "valence", "tempo", "mode")
UNIT = ("danceability", "energy", "valence", "acousticness", "instrumentalness", "speechiness", "liveness")
# column -> (type, min, max); None bounds are open
OPTIONAL = {
    "year": (int, 1800, 2100),
    "popularity": (int, 0, 100),
    "genre": (str, None, None),
    "acousticness": (float, 0, 1),
    "instrumentalness": (float, 0, 1),
    "speechiness": (float, 0, 1),
    "liveness": (float, 0, 1),
    "loudness": (float, -80, 10),
    "key": (int, -1, 11),
    "duration_ms": (int, 0, None),
    "decade": (int, 1800, 2100),
    "explicit": (bool, None, None),
    "primary_source": (str, None, None),
    "sources": (str, None, None),
}
COLUMNS = (
    "track_id",
    "name",
    "artists",
    "year",
    "popularity",
    "genre",
    "danceability",
    "energy",
    "valence",
    "tempo",
    "mode",
    "acousticness",
    "instrumentalness",
    "speechiness",
    "liveness",
    "loudness",
    "key",
    "duration_ms",
    "decade",
    "explicit",
    "primary_source",
    "sources",
    "song_key",
    "features",
)
MAX_TEMPO = 300.0
BATCH = 5000


class RowError(ValueError):
    pass


@dataclass
class LoadReport:
    rows: int = 0
    loaded: int = 0
    rejected: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), first 1000
    duplicates_in_file: int = 0

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "loaded": self.loaded,
            "rejected": self.rejected,
            "duplicates_in_file": self.duplicates_in_file,
            "rejects": self.rejects[:50],
        }


def song_key(name: str, artists: str) -> str:
    """Name + first artist, case- and punctuation-folded: the same song under another id collides."""
    first = artists.split(";")[0].split(",")[0]
    return re.sub(r"[\W_]+", " ", f"{name}|{first}".casefold()).strip()


def _number(row: dict, col: str, kind, lo, hi):
    raw = (row.get(col) or "").strip()
    if raw == "":
        return None
    try:
        if kind is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError
        if kind is int:
            if value != int(value):
                raise ValueError
            value = int(value)
    except ValueError:
        raise RowError(f"{col}: not a valid {kind.__name__}: {raw!r}") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RowError(f"{col}: {value} outside [{lo}, {hi}]")
    return value


def parse_row(row: dict) -> dict:
    """One CSV row -> a validated track record; raises RowError with the reason."""
    rec: dict = {}
    for col in ("track_id", "name", "artists"):
        value = (row.get(col) or "").strip()
        if not value:
            raise RowError(f"{col}: missing")
        rec[col] = value
    for col in ("danceability", "energy", "valence"):
        value = _number(row, col, float, 0, 1)
        if value is None:
            raise RowError(f"{col}: missing")
        rec[col] = value
    rec["tempo"] = _number(row, "tempo", float, 0, MAX_TEMPO)
    if rec["tempo"] is None:
        raise RowError("tempo: missing")
    rec["mode"] = _number(row, "mode", int, 0, 1)
    if rec["mode"] is None:
        raise RowError("mode: missing")
    for col, (kind, lo, hi) in OPTIONAL.items():
        rec[col] = (row.get(col) or "").strip() or None if kind is str else _number(row, col, kind, lo, hi)
    rec["song_key"] = song_key(rec["name"], rec["artists"])
    rec["features"] = "[" + ",".join(f"{v:.6g}" for v in feature_vector(rec)) + "]"
    return rec


def _open_text(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return (
        gzip.open(path, "rt", newline="", encoding="utf-8")
        if gz
        else open(path, newline="", encoding="utf-8")
    )


def read_csv(path: Path, report: LoadReport) -> Iterator[dict]:
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing required columns {missing}; have {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            try:
                yield parse_row(row)
            except RowError as exc:
                report.rejected += 1
                if len(report.rejects) < 1000:
                    report.rejects.append((line, str(exc)))


# One HNSW graph per musical mode (see migration 0001): partial indexes the queries target.
VECTOR_INDEXES = {"tracks_features_hnsw_minor": 0, "tracks_features_hnsw_major": 1}


def drop_vector_indexes(conn) -> None:
    for name in VECTOR_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {name}")


def create_vector_indexes(conn, maintenance_work_mem: str = "512MB") -> None:
    """Building once after a bulk load is several times faster than inserting into the graphs."""
    conn.execute(f"SET LOCAL maintenance_work_mem = '{maintenance_work_mem}'")
    for name, mode in VECTOR_INDEXES.items():
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON tracks "
            f"USING hnsw (features vector_l2_ops) WHERE mode = {mode}"
        )


# Indexes for the playlist filters beyond migration 0002's B-trees on year and popularity, made (if
# missing) by every catalogue load, as the owner role:
# - a trigram index, so `genre ILIKE '%reggae%'` finds a rare genre's tracks by a bitmap scan (the
#   playlist builder then ranks that small set itself) instead of walking the graphs or the table;
# - per mode partition, a GiST over the other four features as a cube with year, popularity, the
#   explicit flag (btree_gist) and genre trigrams beside them: filtered nearest-neighbour search
#   that checks those filters inside the index and is exact (moodtunes_recommender.matching).
FEATURE_CUBE = "cube((features::real[])[1:4]::float8[])"  # (danceability, energy, valence, tempo)
NOT_EXPLICIT_KEY = "coalesce(explicit, false)"  # false for clean tracks and tracks with no flag
TRIGRAM_INDEXES = {
    "tracks_genre_trgm": (
        "CREATE INDEX IF NOT EXISTS tracks_genre_trgm ON tracks USING gin (genre gin_trgm_ops)"
    )
}
FILTERED_INDEXES = {
    f"tracks_filtered_{name}": (
        f"CREATE INDEX IF NOT EXISTS tracks_filtered_{name} ON tracks "
        f"USING gist ({FEATURE_CUBE}, year, popularity, genre gist_trgm_ops, ({NOT_EXPLICIT_KEY})) "
        f"WHERE mode = {mode}"
    )
    for name, mode in (("minor", 0), ("major", 1))
}
FILTER_INDEXES = {**TRIGRAM_INDEXES, **FILTERED_INDEXES}
# Row order for a first load: near tracks on near pages, so the GiST above is built from clustered
# inserts (at 1M tracks a filtered search reads ~240 buffers instead of ~620) and a search's rows
# share heap pages.
FEATURE_ORDER = (
    "mode, width_bucket(danceability, 0, 1, 10), width_bucket(energy, 0, 1, 10), "
    "width_bucket(valence, 0, 1, 10), tempo"
)


def drop_filter_indexes(conn) -> None:
    for name in FILTER_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {name}")


def create_filter_indexes(conn) -> bool:
    """False (and a warning) where an extension is not available: the filters then still work, by
    the HNSW graphs or by scanning."""
    import psycopg

    made = True
    for extensions, indexes in (
        (("pg_trgm",), TRIGRAM_INDEXES),
        (("pg_trgm", "cube", "btree_gist"), FILTERED_INDEXES),
    ):
        try:
            with conn.transaction():  # a savepoint: a failure leaves the load's transaction usable
                for extension in extensions:
                    conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
                for sql in indexes.values():
                    conn.execute(sql)
        except psycopg.Error as exc:
            print(f"warning: no {', '.join(indexes)} for playlist filters ({exc})".strip(), file=sys.stderr)
            made = False
    return made


def order_by_features(conn) -> None:
    """Rewrites the (freshly loaded, not yet indexed) table in FEATURE_ORDER, in this transaction."""
    conn.execute(
        f"CREATE TEMP TABLE tracks_ordered ON COMMIT DROP AS SELECT * FROM tracks ORDER BY {FEATURE_ORDER}"
    )
    conn.execute("TRUNCATE tracks")
    conn.execute("INSERT INTO tracks SELECT * FROM tracks_ordered")
    conn.execute("DROP TABLE tracks_ordered")


def count_tracks(database_url: str | None = None) -> int:
    with connection(database_url) as conn:
        return conn.execute("SELECT count(*) AS n FROM tracks").fetchone()["n"]


def load_csv(path: str | Path, database_url: str | None = None, progress: bool = True) -> LoadReport:
    """Validates and upserts every row; an empty table gets its HNSW index built once at the end."""
    path = Path(path)
    report = LoadReport()
    cols = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "track_id")
    with connection(database_url) as conn:
        empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM tracks) AS e").fetchone()["e"]
        if empty:
            drop_vector_indexes(conn)
            drop_filter_indexes(conn)
        conn.execute("CREATE TEMP TABLE tracks_in (LIKE tracks INCLUDING DEFAULTS) ON COMMIT DROP")
        conn.execute("ALTER TABLE tracks_in ALTER COLUMN features TYPE text")
        batch: dict[str, dict] = {}

        def flush():
            if not batch:
                return
            with conn.cursor().copy(f"COPY tracks_in ({cols}) FROM STDIN") as copy:
                for rec in batch.values():
                    copy.write_row([rec[c] for c in COLUMNS])
            conn.execute(f"""INSERT INTO tracks ({cols})
                             SELECT {cols.replace("features", "features::vector")} FROM tracks_in
                             ON CONFLICT (track_id) DO UPDATE SET {updates}, loaded_at = now()""")
            conn.execute("TRUNCATE tracks_in")
            report.loaded += len(batch)
            batch.clear()

        rows = read_csv(path, report)
        for rec in tqdm(
            rows, desc=f"loading {path.name}", unit=" rows", disable=not progress, mininterval=1.0
        ):
            if rec["track_id"] in batch:
                report.duplicates_in_file += 1
            batch[rec["track_id"]] = rec
            if len(batch) >= BATCH:
                flush()
        flush()
        if empty:
            order_by_features(conn)
            create_vector_indexes(conn)
        create_filter_indexes(conn)
    if report.loaded:
        vacuum_analyze(database_url)
    return report


def vacuum_analyze(database_url: str | None = None) -> None:
    """VACUUM (ANALYZE) of the freshly loaded table: its statistics and visibility map now, at load
    time, not in autovacuum's first round under the first traffic (after the default catalogue's
    first load that round cost ~0.4 s of PostgreSQL CPU, ~7 ms per job of a 64-job benchmark
    level). VACUUM cannot run in a transaction, hence its own autocommit connection."""
    import psycopg

    with psycopg.connect(database_url or get_settings().database_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tracks")


def load_and_report(
    source: str | Path, rejects_csv: str | Path | None = None, echo: Callable[[str], None] = print
) -> LoadReport:
    """Loads SOURCE and prints the summary; the one body behind both entry points. Connects as the
    owner role (DATABASE_OWNER_URL, else DATABASE_URL): a first load rebuilds the vector indexes,
    which the services' least-privilege role may not do."""
    from moodtunes.migrations import owner_url

    url = owner_url()
    report = load_csv(source, database_url=url)
    echo(
        f"{source}: {report.rows} rows, {report.loaded} loaded, {report.rejected} rejected, "
        f"{report.duplicates_in_file} duplicate ids in the file; catalogue now {count_tracks(url)} tracks"
    )
    for line, reason in report.rejects[:20]:
        echo(f"  rejected line {line}: {reason}")
    if rejects_csv:
        with open(rejects_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["line", "reason"])
            w.writerows(report.rejects)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moodtunes_recommender.catalogue",
        description="The track catalogue in PostgreSQL ($DATABASE_OWNER_URL, else $DATABASE_URL).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="validate and upsert a catalogue (idempotent, by track_id)")
    load.add_argument("path", nargs="?", type=Path, help="CSV or CSV.gz with the catalogue's columns")
    load.add_argument(
        "--default", action="store_true", help="load the shipped catalogue ($CATALOGUE_PATH in the images)"
    )
    load.add_argument("--rejects", type=Path, help="write rejected rows (line, reason) to this CSV")
    args = parser.parse_args(argv)
    if args.default == (args.path is not None):
        parser.error("give a PATH or --default (not both)")
    try:
        load_and_report(default_catalogue() if args.default else args.path, args.rejects)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
