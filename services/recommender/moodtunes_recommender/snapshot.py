"""The catalogue's searchable columns in the worker's memory: filtered playlists ranked exactly here.

A filtered playlist in PostgreSQL costs one index search per distinct target, each walking past the
tracks its filters reject (the `uplift` trajectory has ten targets: 17-39 ms at 1M tracks with
selective filters, benchmarks/recommender.py). Here a playlist's filters become one mask over
numpy columns (~2 ms at 1M), and each target's nearest passing tracks come from a k-d tree of its
mode partition (the four other features; the mode term is constant within a partition), asked for
more until enough pass, or, when few tracks pass, from all of them directly. Both are exact.

PostgreSQL stays the source of truth: a statement trigger bumps `catalogue_version` on every
change to `tracks` (migration 0008); the worker checks it per playlist and reloads in the
background, using the database's own plans (matching.py) until the copy is current. Catalogues
over PLAYLIST_MEMORY_MAX_TRACKS are never copied (about 120 bytes a track: ~120 MB at 1M).
"""

from __future__ import annotations

import ctypes
import logging
import math
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
from psycopg.rows import tuple_row
from scipy.spatial import cKDTree

from moodtunes.modes import config
from moodtunes.results import Filters

log = logging.getLogger("moodtunes.recommender")

VERSION_SQL = "SELECT version FROM catalogue_version"
# After matching.lean_columns() (id, artists, song key, the features), what the filters check
FILTER_COLUMNS = (
    "coalesce(year::real, 'NaN')",
    "coalesce(popularity::real, 'NaN')",
    "coalesce(explicit, false)",
    "genre",
)
LOAD_CHUNK = 20_000  # rows a fetch turns into Python objects at a time
# A target's nearest in a partition come from ranking all its passing tracks, or from asking its
# k-d tree for `ask` ~ k / share-passing nearest and keeping those that pass: whichever costs less.
# One tree neighbour costs about as much as this many rows ranked directly (measured on this
# machine: 0.30 us vs 15 ns a row).
TREE_COST_RATIO = 20
# The rough squared distances (norm expansion) may be off by rounding; any track within this of
# the k-th rough one is measured exactly
ROUGH_SLACK = 1e-9
SEARCH_SLACK = 1.25  # ask the tree for this much more than the passing share promises
MIN_SEARCH = 32
RETRY_AFTER_S = 60  # after a load failed


def like_regex(pattern: str) -> re.Pattern:
    """PostgreSQL's ILIKE as a regular expression: % any run, _ any one character, backslash
    escapes the next; case-insensitive, the whole value."""
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


class StringColumn:
    """Many short strings in one buffer (a Python str per track would cost ~60 bytes more)."""

    def __init__(self, values: list[str]):
        encoded = [v.encode() for v in values]
        self.blob = b"".join(encoded)
        self.ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def take(self, indices: np.ndarray) -> list[str]:
        """The strings at these indices (one conversion of the offsets, not one per string)."""
        indices = np.asarray(indices, dtype=np.int64)
        ends = self.ends[indices]
        starts = np.where(indices > 0, self.ends[np.maximum(indices - 1, 0)], 0)
        return [self.blob[a:b].decode() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]

    @staticmethod
    def concat(parts: list[StringColumn]) -> StringColumn:
        out = StringColumn([])
        out.blob = b"".join(p.blob for p in parts)
        offsets = np.cumsum([0] + [len(p.blob) for p in parts[:-1]], dtype=np.int64)
        out.ends = np.concatenate([p.ends + o for p, o in zip(parts, offsets, strict=True)] or [out.ends])
        return out


@dataclass
class Partition:
    """The tracks of one musical mode: their rows (ascending, so by track_id) and a k-d tree of
    their other four features."""

    rows: np.ndarray
    tree: cKDTree


def load_sql() -> str:
    """Every track's lean columns and filter columns (the rows `Columns` reads)."""
    from moodtunes_recommender.matching import lean_columns

    return f"SELECT {', '.join(lean_columns() + FILTER_COLUMNS)} FROM tracks"


class Columns:
    """One chunk of load_sql() rows as arrays; genres coded through `genre_codes` (shared by the
    chunks of one load)."""

    def __init__(self, rows: list[tuple], genre_codes: dict[str, int]):
        n = len(config()["features"])
        columns = list(zip(*rows, strict=True)) or [()] * (n + 7)
        self.ids = np.array([t.encode() for t in columns[0]], dtype=bytes)
        self.artists, self.song_keys = StringColumn(list(columns[1])), StringColumn(list(columns[2]))
        self.features = np.array(columns[3 : 3 + n], dtype=np.float64).reshape(n, -1).T
        self.year = np.array(columns[3 + n], dtype=np.float32)
        self.popularity = np.array(columns[4 + n], dtype=np.float32)
        self.explicit = np.array(columns[5 + n], dtype=bool)
        self.genre = np.array(
            [-1 if g is None else genre_codes.setdefault(g, len(genre_codes)) for g in columns[6 + n]],
            dtype=np.int32,
        )


class CatalogueSnapshot:
    """Every track's feature vector (as matching.feature_vector makes it), filter columns and what
    the playlist rules read, ordered by track_id (bytewise, as COLLATE "C"); `version` is the
    catalogue_version it was read at."""

    def __init__(self, version: int, chunks: list[Columns], genre_codes: dict[str, int]):
        from moodtunes_recommender.matching import scaled_features

        assert config()["features"][-1] == "mode", "partitions and trees assume mode is last"
        self.version = version
        chunks = chunks or [Columns([], genre_codes)]
        cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
        self.ids = cat("ids")
        assert (self.ids[1:] > self.ids[:-1]).all(), "rows must come ordered by track_id"
        self.artists = StringColumn.concat([c.artists for c in chunks])
        self.song_keys = StringColumn.concat([c.song_keys for c in chunks])
        self.vectors = scaled_features(cat("features"))
        self.year, self.popularity = cat("year"), cat("popularity")
        self.explicit, self.genre = cat("explicit"), cat("genre")
        self.genre_names = sorted(genre_codes, key=genre_codes.get)
        self.valence = self.vectors[:, config()["features"].index("valence")].copy()
        self.is_major = self.vectors[:, -1] == 1
        self.partitions = {}
        for m in (0, 1):
            part = np.flatnonzero(self.is_major if m else ~self.is_major)
            self.partitions[m] = Partition(part, cKDTree(self.vectors[part, :-1]))

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, version: int, rows: list[tuple]) -> CatalogueSnapshot:
        """From load_sql() rows in any order (tests)."""
        codes: dict[str, int] = {}
        rows = sorted(rows, key=lambda r: r[0].encode())
        return cls(version, [Columns(rows, codes)], codes)

    @classmethod
    def load(cls, conn) -> CatalogueSnapshot:
        """Reads the catalogue and its version in one repeatable-read transaction (a load that
        commits meanwhile is either wholly in the copy, or its version bump is not), in chunks."""
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        version = int(conn.cursor(row_factory=tuple_row).execute(VERSION_SQL).fetchone()[0])
        codes: dict[str, int] = {}
        chunks = []
        with conn.cursor(name="catalogue_snapshot", row_factory=tuple_row) as cur:
            cur.itersize = LOAD_CHUNK
            cur.execute(load_sql() + ' ORDER BY track_id COLLATE "C"')
            while rows := cur.fetchmany(LOAD_CHUNK):
                chunks.append(Columns(rows, codes))
        return cls(version, chunks, codes)

    def passing(self, filters: Filters) -> np.ndarray:
        """The tracks that pass the filters, as matching.filter_sql checks them."""
        ok = np.ones(len(self), dtype=bool)
        if filters.year_min is not None:
            ok &= self.year >= filters.year_min
        if filters.year_max is not None:
            ok &= self.year <= filters.year_max
        if filters.min_popularity is not None:
            ok &= self.popularity >= filters.min_popularity
        if filters.exclude_explicit:
            ok &= ~self.explicit
        if filters.genres:
            patterns = [like_regex(f"%{g}%") for g in filters.genres]
            allowed = np.zeros(len(self.genre_names) + 1, dtype=bool)  # [0]: no genre, never passes
            for i, name in enumerate(self.genre_names):
                allowed[i + 1] = any(p.fullmatch(name) for p in patterns)
            ok &= allowed[self.genre + 1]
        return ok

    def positions(self, track_ids) -> np.ndarray:
        """Rows of the given track ids that are in the catalogue."""
        if not len(track_ids) or not len(self):
            return np.array([], dtype=np.int64)
        wanted = np.array([t.encode() for t in track_ids], dtype=bytes)
        at = np.searchsorted(self.ids, wanted)
        found = at < len(self.ids)
        found[found] = self.ids[at[found]] == wanted[found]
        return at[found]

    def view(self, filters: Filters, exclude=()) -> FilteredView:
        ok = self.passing(filters)
        ok[self.positions(list(exclude))] = False
        return FilteredView(self, ok)


@dataclass
class DirectPartition:
    """A partition's passing tracks gathered once per playlist (few enough to rank them all):
    rows ascending, their four non-mode features, valence, and which are still unused."""

    rows: np.ndarray
    points: np.ndarray
    squared_norms: np.ndarray
    valence: np.ndarray
    free: np.ndarray

    @classmethod
    def gather(cls, snapshot: CatalogueSnapshot, rows: np.ndarray, free: np.ndarray) -> DirectPartition:
        points = snapshot.vectors[rows, :-1]
        norms = np.einsum("ij,ij->i", points, points)
        return cls(rows, points, norms, snapshot.valence[rows], free)

    def nearest(self, point: np.ndarray, k: int, min_valence) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, rows) of the k nearest eligible tracks and any tied with the k-th.
        Selected by |p|^2 - 2 p.t (one matrix-vector product), then measured exactly."""
        keep = self.free if min_valence is None else self.free & (self.valence >= min_valence)
        if np.count_nonzero(keep) > k:
            rough = np.where(keep, self.squared_norms - 2.0 * (self.points @ point), np.inf)
            keep = rough <= np.partition(rough, k - 1)[k - 1] + ROUGH_SLACK
        d2 = ((self.points[keep] - point) ** 2).sum(axis=1)
        rows = self.rows[keep]
        if len(rows) > k:
            near = d2 <= np.partition(d2, k - 1)[k - 1]
            rows, d2 = rows[near], d2[near]
        return d2, rows


class FilteredView:
    """One playlist's filtered catalogue, with matching.TrackSet's interface: `nearest` unused
    tracks, nearest first (ties by track_id), and `use` to mark a chosen one."""

    def __init__(self, snapshot: CatalogueSnapshot, ok: np.ndarray):
        self.snap, self.ok = snapshot, ok
        self.used = np.zeros(len(snapshot), dtype=bool)
        self.used_count = 0
        self.passing_count: dict[int, int] = {}
        self.direct: dict[int, DirectPartition] = {}  # gathered when first ranked directly
        for m in snapshot.partitions:
            self.passing_count[m] = int(np.count_nonzero(ok & self._in_partition(m)))

    def _in_partition(self, m: int) -> np.ndarray:
        return self.snap.is_major if m else ~self.snap.is_major

    def __len__(self) -> int:
        return sum(self.passing_count.values())

    def use(self, track_id: str) -> None:
        at = self.snap.positions([track_id])
        self.used_count += int((~self.used[at]).sum())
        self.used[at] = True
        for part in self.direct.values():
            i = np.searchsorted(part.rows, at)
            hit = i < len(part.rows)
            part.free[i[hit][part.rows[i[hit]] == at[hit]]] = False

    def nearest(self, target, k: int, min_valence=None):
        """The k nearest unused passing tracks with valence >= min_valence, as a matching.Pool."""
        from moodtunes_recommender.matching import Pool, nearer_partition, other_partition_may_help

        mode, near = nearer_partition(target)
        found = self._partition_nearest(near, target, k, min_valence)
        if other_partition_may_help(list(found[0]), k, mode, near):
            far = self._partition_nearest(1 - near, target, k, min_valence)
            found = (np.concatenate([found[0], far[0]]), np.concatenate([found[1], far[1]]))
        d, rows = found
        chosen = rows[np.lexsort((rows, d))[:k]]
        snap = self.snap
        pool_rows = [
            {"track_id": t.decode(), "artists": a, "song_key": s}
            for t, a, s in zip(
                snap.ids[chosen].tolist(), snap.artists.take(chosen), snap.song_keys.take(chosen), strict=True
            )
        ]
        return Pool(pool_rows, snap.vectors[chosen])

    def _partition_nearest(self, m: int, target, k: int, min_valence) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows) of at least the k nearest eligible tracks of mode partition m (all of
        them where fewer pass, and every tie at the k-th distance), in no particular order."""
        gap = (float(target[-1]) - m) ** 2
        point = np.asarray(target[:-1], dtype=np.float64)
        part = self.snap.partitions[m]
        size, passing = len(part.rows), self.passing_count[m]
        share = max(passing / max(size, 1), 1e-9)
        ask = min(size, max(MIN_SEARCH, math.ceil((k + self.used_count) / share * SEARCH_SLACK)))
        if m in self.direct or passing <= ask * TREE_COST_RATIO:
            if m not in self.direct:
                rows = np.flatnonzero(self.ok & self._in_partition(m))
                self.direct[m] = DirectPartition.gather(self.snap, rows, free=~self.used[rows])
            d2, rows = self.direct[m].nearest(point, k, min_valence)
            return np.sqrt(d2 + gap), rows
        while True:
            d, local = part.tree.query(point, k=ask)
            d, local = np.atleast_1d(d), np.atleast_1d(local)
            rows = part.rows[local[local < size]]
            d = d[local < size]
            keep = self.ok[rows] & ~self.used[rows]
            if min_valence is not None:
                keep &= self.snap.valence[rows] >= min_valence
            if keep.sum() >= k or ask >= size:  # all of them: `nearest` breaks ties at k by track_id
                return np.sqrt(d[keep] ** 2 + gap), rows[keep]
            ask = min(size, ask * 4)


def release_freed_memory() -> None:
    """Hands the heap that a load's row objects freed back to the OS: glibc keeps it otherwise
    (~130 MB at 1M tracks, measured). Nothing to do where the C library is not glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SnapshotCache:
    """This process's copy of the catalogue, checked against catalogue_version on every use and
    reloaded in a background thread when behind (the caller uses the database's plans meanwhile)."""

    def __init__(self, max_tracks: int, connect):
        self.max_tracks, self.connect = max_tracks, connect
        self.snapshot: CatalogueSnapshot | None = None
        self.loading: threading.Thread | None = None
        self.lock = threading.Lock()
        self.skipped_version: int | None = None  # too large to copy at this version
        self.retry_at = 0.0  # after a failed load, none is tried before this (monotonic seconds)

    def current(self, conn) -> CatalogueSnapshot | None:
        """The copy, if it is of the catalogue as it is now; else None (and a reload starts)."""
        if self.max_tracks <= 0:
            return None
        row = conn.cursor(row_factory=tuple_row).execute(VERSION_SQL).fetchone()
        version = int(row[0]) if row else 0
        snap = self.snapshot
        if snap is not None and snap.version == version:
            return snap
        self.snapshot = None  # stale: never used again, so not held beside its successor
        if version != self.skipped_version and time.monotonic() >= self.retry_at:
            self._reload()
        return None

    def _reload(self) -> None:
        with self.lock:
            if self.loading is not None and self.loading.is_alive():
                return
            self.loading = threading.Thread(target=self._load, name="catalogue-snapshot", daemon=True)
            self.loading.start()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            with self.connect() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                estimate = cur.execute("SELECT reltuples FROM pg_class WHERE oid = 'tracks'::regclass")
                if float(estimate.fetchone()[0]) > self.max_tracks:
                    self.skipped_version = int(cur.execute(VERSION_SQL).fetchone()[0])
                    log.info(
                        "catalogue over PLAYLIST_MEMORY_MAX_TRACKS: filtered playlists stay in PostgreSQL"
                    )
                    return
                conn.rollback()
                snap = CatalogueSnapshot.load(conn)
                conn.rollback()
            release_freed_memory()
        except Exception as exc:  # the database plans serve meanwhile; a playlist tries again later
            self.retry_at = time.monotonic() + RETRY_AFTER_S
            log.warning(
                "catalogue snapshot not loaded (next try in %d s): %s: %s",
                RETRY_AFTER_S,
                type(exc).__name__,
                exc,
            )
            return
        self.snapshot = snap
        log.info(
            "catalogue snapshot v%d: %d tracks in %.1f s", snap.version, len(snap), time.monotonic() - t0
        )

    def wait(self, timeout: float | None = None) -> CatalogueSnapshot | None:
        """Waits for a load in progress (tests, benchmarks)."""
        loading = self.loading
        if loading is not None:
            loading.join(timeout)
        return self.snapshot
