"""Playlists: nearest tracks from pgvector's HNSW index, re-ranked for diversity.

Filters stay inside the index scan (pgvector's iterative scans keep returning rows until the
LIMIT is met), so a filtered query still returns `limit` tracks when the catalogue has them.
"""

from __future__ import annotations

import numpy as np

from moodtunes.modes import config
from moodtunes.results import Filters, Track
from moodtunes_recommender.mapping import feature_vector

__all__ = ["Filters", "feature_vector", "build_playlist", "candidates", "filter_sql"]

TRACK_FIELDS = (
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
    "song_key",
)
EF_SEARCH = 100  # HNSW candidate list: recall vs. latency (pgvector's default is 40)
MAX_CANDIDATES = 2000


def filter_sql(filters: Filters) -> tuple[list[str], dict]:
    """WHERE conditions (and their parameters) of the playlist filters."""
    where, params = [], {}
    if filters.year_min is not None:
        where.append("year >= %(year_min)s")
        params["year_min"] = filters.year_min
    if filters.year_max is not None:
        where.append("year <= %(year_max)s")
        params["year_max"] = filters.year_max
    if filters.genres:
        where.append("genre ILIKE ANY(%(genres)s)")
        params["genres"] = [f"%{g}%" for g in filters.genres]
    if filters.min_popularity is not None:
        where.append("popularity >= %(min_popularity)s")
        params["min_popularity"] = filters.min_popularity
    if filters.exclude_explicit:
        where.append("explicit IS NOT TRUE")  # unknown (no flag in the data) is kept
    return where, params


def vector_literal(vec) -> str:
    return "[" + ",".join(f"{float(v):.6f}" for v in vec) + "]"


def artist_set(artists: str) -> frozenset[str]:
    return frozenset(a.strip().casefold() for a in artists.split(";") if a.strip())


def nearest_sql(where: list[str]) -> str:
    """k nearest over both mode partitions (one HNSW graph each), merged by distance: exact merge,
    since within a partition every track has the same mode term in its distance."""
    extra = "".join(f" AND {w}" for w in where)
    part = (
        "(SELECT {fields}, features <-> %(t)s::vector AS distance FROM tracks "
        "WHERE mode = {mode}{extra} ORDER BY features <-> %(t)s::vector LIMIT %(k)s)"
    )
    fields = ", ".join(TRACK_FIELDS)
    return (
        " UNION ALL ".join(part.format(fields=fields, mode=m, extra=extra) for m in (0, 1))
        + " ORDER BY distance, track_id LIMIT %(k)s"
    )


def _set_local(conn, settings: dict | None, name: str, value) -> None:
    """SET LOCAL, skipped when `settings` (what this transaction already set) says it is in force."""
    if settings is None or settings.get(name) != str(value):
        conn.execute(f"SET LOCAL {name} = {value}")
        if settings is not None:
            settings[name] = str(value)


def candidates(
    conn,
    target,
    k: int,
    filters: Filters,
    exclude: list[str],
    min_valence=None,
    exact: bool = False,
    settings: dict | None = None,
) -> list[dict]:
    """The k nearest tracks to `target` that pass the filters, nearest first. `settings` remembers
    the planner settings made in this transaction, so a playlist sends each only once."""
    where, params = filter_sql(filters)
    if exclude:
        where.append("track_id <> ALL(%(exclude)s)")
        params["exclude"] = list(exclude)
    if min_valence is not None:
        where.append("valence >= %(min_valence)s")
        params["min_valence"] = min_valence
    params.update(t=vector_literal(target), k=k)
    if exact:
        _set_local(conn, settings, "enable_indexscan", "off")
    else:
        _set_local(conn, settings, "enable_indexscan", "on")
        _set_local(conn, settings, "hnsw.ef_search", min(1000, max(EF_SEARCH, k)))
        if where:
            _set_local(conn, settings, "hnsw.iterative_scan", "relaxed_order")
    rows = conn.execute(nearest_sql(where), params).fetchall()
    if exact and settings is None:
        conn.execute("SET LOCAL enable_indexscan = on")
    return rows


def build_playlist(
    conn,
    targets: np.ndarray,
    filters: Filters | None = None,
    exclude=(),
    diversity: float | None = None,
    min_valence=None,
) -> list[Track]:
    """One track per target row, chosen by maximal marginal relevance under the playlist rules:
    no track or song (same name + first artist) twice, no artist twice in a row."""
    filters = filters or Filters()
    settings = {"enable_indexscan": "on"}  # planner settings in force in this transaction
    cfg = config()["playlist"]
    diversity = cfg["diversity"] if diversity is None else diversity
    cap = cfg["diversity_cap"]
    n = len(targets)
    min_valence = list(min_valence) if min_valence is not None else [None] * n
    distinct = {(tuple(np.round(t, 6)), mv) for t, mv in zip(targets, min_valence, strict=True)}
    k = max(cfg["min_candidates"], cfg["candidates_per_track"] * (n if len(distinct) == 1 else 3))
    pools: dict = {}
    tracks: list[Track] = []
    vectors: list[np.ndarray] = []  # feature vectors of the chosen tracks, for the diversity term
    used_ids, used_songs = set(exclude), set()
    prev_artists: frozenset[str] = frozenset()
    for i, (t, mv) in enumerate(zip(targets, min_valence, strict=True)):
        key = (tuple(np.round(t, 6)), mv)
        pick = None
        for attempt in range(4):
            if key not in pools or attempt:
                size = min(MAX_CANDIDATES, k * 2**attempt)
                rows = candidates(conn, t, size, filters, sorted(used_ids), mv, settings=settings)
                if len(rows) < size and (filter_sql(filters)[0] or mv is not None):
                    rows = candidates(
                        conn, t, size, filters, sorted(used_ids), mv, exact=True, settings=settings
                    )
                pools[key] = rows
            pool = [
                r for r in pools[key] if r["track_id"] not in used_ids and r["song_key"] not in used_songs
            ]
            pick = _best(pool, t, vectors, diversity, cap, prev_artists)
            if pick is not None or len(pools[key]) < min(MAX_CANDIDATES, k * 2**attempt):
                break
        if pick is None:
            break  # the catalogue (after filters) has no more tracks
        row, vec = pick
        used_ids.add(row["track_id"])
        used_songs.add(row["song_key"])
        prev_artists = artist_set(row["artists"])
        tracks.append(track(row, float(np.linalg.norm(vec - t)), i))
        vectors.append(vec)
    if settings["enable_indexscan"] != "on":  # leave the transaction as it was for the caller
        _set_local(conn, settings, "enable_indexscan", "on")
    return tracks


def _best(pool, target, chosen_vecs, diversity, cap, prev_artists):
    best, best_score = None, None
    fallback = None
    for row in pool:
        vec = feature_vector(row)
        d = float(np.linalg.norm(vec - target))
        spread = min(cap, min((float(np.linalg.norm(vec - c)) for c in chosen_vecs), default=cap))
        score = -(1 - diversity) * d + diversity * spread
        if artist_set(row["artists"]) & prev_artists:
            if fallback is None:
                fallback = (row, vec)
            continue
        if best_score is None or score > best_score + 1e-12:
            best, best_score = (row, vec), score
    return best or fallback


def track(row: dict, distance: float, position: int) -> Track:
    return Track(
        track_id=row["track_id"],
        name=row["name"],
        artists=[a.strip() for a in row["artists"].split(";") if a.strip()],
        year=row["year"],
        popularity=row["popularity"],
        genre=row["genre"],
        features={f: float(row[f]) for f in config()["features"]},
        distance=round(distance, 6),
        position=position,
    )
