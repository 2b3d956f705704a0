"""Playlists: nearest tracks from pgvector's HNSW index, re-ranked for diversity.

Where a playlist's candidates come from depends on how many tracks its filters leave (the
planner's estimate, one EXPLAIN per filtered playlist):

- no filters: pgvector's HNSW graphs, one per musical mode (valence floors inside the index scan:
  pgvector's iterative scans keep returning rows until the LIMIT is met). The graph of the
  target's nearer mode is searched first; the other one only when its tracks could still be among
  the k nearest (each is at least |target mode - its mode| away).
- filters, in the worker's in-memory copy of the catalogue ("memory", snapshot.py: one mask over
  numpy columns, exact nearest from a k-d tree per mode partition) when it has a current one;
  otherwise in the database, by the cheapest of three plans (`plan_for`, on the planner's
  estimates):
  - "gist": the filtered GiST of each mode partition (catalogue.FILTERED_INDEXES) holds the other
    four features as a cube beside year and popularity, so a k-nearest search checks those
    filters and the valence floor in the index, and is exact: no walk past k / selectivity tracks
    at the heap, no search that gives up short, no fallback;
  - "set": filters that leave few tracks (a rare genre, which the GiST cannot check): those tracks
    are fetched once per playlist through the B-tree and trigram indexes, and every position's
    nearest are ranked exactly here;
  - "index": the HNSW graphs with the filters in the scan, where there is no filtered GiST (an
    HNSW scan walks past about k / selectivity tracks per position before its filtered LIMIT is
    met, and may give up at hnsw.max_scan_tuples, which sends it to the exact scan).

On the index plans every distinct target of a playlist (the uplift trajectory has one per
position) is searched in one statement (`nearest_batch`: a LATERAL join over the targets), for its
k nearest plus one per later position, so the tracks chosen before a target's first position can
be dropped here and still leave its k nearest unused ones: the same candidates as one query per
position excluding the tracks already chosen, in one round trip. Candidates carry only what
ranking and the playlist rules need; the chosen tracks' other columns come in one query at the end.

The exact scan in the database (no index order) is left for an index query that still comes back
short, which the plan choice above keeps off the hot path; `build_playlist(stats=...)` counts it.
"""

from __future__ import annotations

import numpy as np
from psycopg.rows import tuple_row

from moodtunes.modes import config
from moodtunes.results import Filters, Track
from moodtunes_recommender.catalogue import FEATURE_CUBE, FILTERED_INDEXES, NOT_EXPLICIT_KEY
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
# Plan choice for filtered playlists, by the planner's estimate of the tracks the filters leave
# (rows) of the catalogue's N and the playlist's Q distinct (target, valence floor) queries of k:
# the whole filtered set, fetched once (cost ~ rows), or Q HNSW walks, each past ~k * N / rows
# tracks before its filtered LIMIT is met. Costs measured at 1M tracks (benchmarks/recommender.py),
# in units of one set track fetched and ranked (~3 us): an HNSW step (visit, heap fetch, filter)
# ~2, an index query's fixed part ~500 (~1.5 ms). Sets above SET_ROWS are never fetched whole.
SET_ROWS = 50_000
HNSW_STEP_COST = 2.0
HNSW_QUERY_COST = 500.0
# The filtered GiST (catalogue.FILTERED_INDEXES), same units: a query's fixed part ~400 (~1.2 ms), a
# step ~1.3 per track it visits that passes the filters checked in the index (years, popularity,
# explicit, one genre) but must still be fetched to check the others (several genres, exclusions,
# a valence floor).
GIST_QUERY_COST = 400.0
GIST_STEP_COST = 1.3
# Tuples an iterative HNSW scan may visit before it gives up short of its LIMIT (pgvector's
# default is 20,000); filtered index queries only run where the plan choice expects far fewer.
MAX_SCAN_TUPLES = 50_000
GAP_SLACK = 1e-6  # float32 distances in the index vs. the float64 mode gap


def filter_sql(filters: Filters) -> tuple[list[str], dict]:
    """WHERE conditions (and their parameters) of the playlist filters. Numbers are cast to the
    columns' type: psycopg sends a small Python int as smallint, and the filtered GiST (btree_gist)
    can check only same-type comparisons in the index."""
    where, params = [], {}
    if filters.year_min is not None:
        where.append("year >= %(year_min)s::integer")
        params["year_min"] = filters.year_min
    if filters.year_max is not None:
        where.append("year <= %(year_max)s::integer")
        params["year_max"] = filters.year_max
    if len(filters.genres or ()) == 1:  # the form an index can check (the GiST's trigrams)
        where.append("genre ILIKE %(genre)s")
        params["genre"] = f"%{filters.genres[0]}%"
    elif filters.genres:
        where.append("genre ILIKE ANY(%(genres)s)")
        params["genres"] = [f"%{g}%" for g in filters.genres]
    if filters.min_popularity is not None:
        where.append("popularity >= %(min_popularity)s::integer")
        params["min_popularity"] = filters.min_popularity
    if filters.exclude_explicit:
        # unknown (no flag in the data) is kept; written as the filtered GiST's key
        where.append(f"{NOT_EXPLICIT_KEY} = false")
    return where, params


def vector_literal(vec) -> str:
    return "[" + ",".join(f"{float(v):.6f}" for v in vec) + "]"


def artist_set(artists: str) -> frozenset[str]:
    return frozenset(a.strip().casefold() for a in artists.split(";") if a.strip())


def partition_sql(mode: int, where: list[str]) -> str:
    """k nearest of one mode partition, from its HNSW graph."""
    extra = "".join(f" AND {w}" for w in where)
    return (
        f"SELECT {', '.join(TRACK_FIELDS)}, features <-> %(t)s::vector AS distance FROM tracks "
        f"WHERE mode = {mode}{extra} ORDER BY features <-> %(t)s::vector LIMIT %(k)s"
    )


def nearest_sql(where: list[str]) -> str:
    """k nearest over both mode partitions (one HNSW graph each), merged by distance: exact merge,
    since within a partition every track has the same mode term in its distance."""
    both = " UNION ALL ".join(f"({partition_sql(m, where)})" for m in (0, 1))
    return f"{both} ORDER BY distance, track_id LIMIT %(k)s"


def exact_sql(where: list[str]) -> str:
    """k nearest by an exact scan: ordered by an expression no vector index serves, so the planner
    scans (through the B-tree or trigram indexes of the filters where they pay) whatever the
    session's settings or a prepared statement's cached plan."""
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    return (
        f"SELECT {', '.join(TRACK_FIELDS)}, features <-> %(t)s::vector AS distance FROM tracks{cond} "
        "ORDER BY (features <-> %(t)s::vector) + 0, track_id LIMIT %(k)s"
    )


def _set_local(conn, settings: dict | None, **values) -> None:
    """SET LOCAL (in one round trip) what `settings` (what this transaction already set) does not
    say is in force; `hnsw__ef_search` stands for hnsw.ef_search."""
    changes = {n.replace("__", "."): str(v) for n, v in values.items()}
    if settings is not None:
        changes = {n: v for n, v in changes.items() if settings.get(n) != v}
        settings.update(changes)
    if changes:
        calls = ", ".join("set_config(%s, %s, true)" for _ in changes)
        conn.execute(f"SELECT {calls}", [x for item in changes.items() for x in item])


def iterative_scans() -> dict:
    """Settings under which a filtered index scan keeps walking the graph (in roughly nearest-first
    order) until its LIMIT is met or MAX_SCAN_TUPLES are visited."""
    return {"hnsw__iterative_scan": "relaxed_order", "hnsw__max_scan_tuples": MAX_SCAN_TUPLES}


def nearer_partition(target) -> tuple[float, int]:
    """The target's mode value and the mode partition on its side of 0.5 (searched first)."""
    mode = float(target[config()["features"].index("mode")])
    return mode, 1 if mode >= 0.5 else 0


def other_partition_may_help(distances: list[float], k: int, mode: float, near: int) -> bool:
    """Whether the other partition could hold some of the k nearest: the near one came back short
    of k, or reached as far as the least distance any track of the other has, |mode - its mode|."""
    return len(distances) < k or max(distances) >= abs(mode - (1 - near)) - GAP_SLACK


def _conditions(filters: Filters, exclude, min_valence) -> tuple[list[str], dict]:
    where, params = filter_sql(filters)
    if exclude:
        where.append("track_id <> ALL(%(exclude)s)")
        params["exclude"] = list(exclude)
    if min_valence is not None:
        where.append("valence >= %(min_valence)s")
        params["min_valence"] = min_valence
    return where, params


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
    """The k nearest tracks to `target` that pass the filters, nearest first: from the HNSW
    graphs, or (`exact`) by an exact scan. `settings` remembers the settings made in this
    transaction, so a playlist sends each only once."""
    where, params = _conditions(filters, exclude, min_valence)
    params.update(t=vector_literal(target), k=k)
    if exact:
        return conn.execute(exact_sql(where), params).fetchall()
    scans = iterative_scans() if where else {}
    _set_local(conn, settings, hnsw__ef_search=min(1000, max(EF_SEARCH, k)), **scans)
    # As nearest_sql, but the partition on the target's side of mode 0.5 first, and the other one
    # only when it could still contribute. The same tracks (rarely does a target need both: one
    # near mode 0.5), half the index work.
    mode, near = nearer_partition(target)
    rows = conn.execute(partition_sql(near, where), params).fetchall()
    if other_partition_may_help([r["distance"] for r in rows], k, mode, near):
        rows += conn.execute(partition_sql(1 - near, where), params).fetchall()
    return sorted(rows, key=lambda r: (r["distance"], r["track_id"]))[:k]


def lean_columns() -> tuple[str, ...]:
    """What ranking and the playlist rules need of a candidate: id, artists, song key, features."""
    return ("track_id", "artists", "song_key", *config()["features"])


def batch_sql(where: list[str]) -> str:
    """For each row of the unnested targets (vector, valence floor or NULL, partition to search),
    the k nearest tracks of that mode partition that pass `where`: one branch per partition, each
    on its own partial HNSW index, run only for the rows that name it (a one-time filter per row)."""
    columns = ", ".join(lean_columns())
    extra = "".join(f" AND {w}" for w in where)
    branches = " UNION ALL ".join(
        f"(SELECT {columns}, features <-> q.t AS distance FROM tracks WHERE q.part = {m} AND mode = {m}"
        f" AND (q.floor IS NULL OR valence >= q.floor){extra} ORDER BY features <-> q.t LIMIT %(k)s)"
        for m in (0, 1)
    )
    return (
        "SELECT q.i, c.* FROM unnest(%(targets)s::vector[], %(floors)s::float8[], %(parts)s::int[]) "
        f"WITH ORDINALITY AS q(t, floor, part, i) CROSS JOIN LATERAL ({branches}) c"
    )


def cube_literal(target) -> str:
    """The target's FEATURE_CUBE point (every feature but mode, the last)."""
    assert config()["features"][-1] == "mode"
    return "(" + ",".join(f"{float(v):.6f}" for v in target[:-1]) + ")"


def gist_batch_sql(where: list[str]) -> str:
    """As `batch_sql`, on the filtered GiST of each mode partition: the exact k nearest, found in
    distance order with the filters checked in the index where it can, and the distance over all five
    features (the mode term is the same for the whole partition)."""
    columns = ", ".join(lean_columns())
    extra = "".join(f" AND {w}" for w in where)
    branches = " UNION ALL ".join(
        f"(SELECT {columns}, sqrt(power({FEATURE_CUBE} <-> q.t, 2) + power(q.mode - {m}, 2)) AS distance "
        f"FROM tracks WHERE q.part = {m} AND mode = {m} AND (q.floor IS NULL OR valence >= q.floor){extra} "
        f"ORDER BY {FEATURE_CUBE} <-> q.t LIMIT %(k)s)"
        for m in (0, 1)
    )
    return (
        "SELECT q.i, c.* FROM unnest(%(targets)s::cube[], %(modes)s::float8[], %(floors)s::float8[], "
        f"%(parts)s::int[]) WITH ORDINALITY AS q(t, mode, floor, part, i) CROSS JOIN LATERAL ({branches}) c"
    )


def nearest_batch(
    conn,
    keys: list[tuple],
    k: int,
    filters: Filters,
    exclude,
    settings: dict | None = None,
    filtered_index: bool = False,
) -> tuple[list[list[tuple]], int]:
    """`candidates` for many (target, valence floor) keys in one statement (two where a target's
    other mode partition may hold some of its k nearest: the same rule as `candidates`): for each
    key, up to k rows of `lean_columns()` + distance, nearest first. Also the statements sent.
    From the HNSW graphs, or (`filtered_index`) exactly, from the filtered GiST."""
    where, params = _conditions(filters, exclude, None)
    floors = [None if mv is None else float(mv) for _, mv in keys]
    modes, near = zip(*(nearer_partition(t) for t, _ in keys), strict=True) if keys else ((), ())
    if filtered_index:
        # plan_for chose this plan; the planner, costing each LATERAL branch before it knows the
        # target, would sometimes rather intersect bitmaps and sort the lot
        _set_local(conn, settings, enable_bitmapscan="off")
        sql = gist_batch_sql(where)
        params.update(targets=[cube_literal(t) for t, _ in keys], modes=list(modes))
    else:
        iterative = bool(where) or any(f is not None for f in floors)
        scans = iterative_scans() if iterative else {}
        _set_local(conn, settings, hnsw__ef_search=min(1000, max(EF_SEARCH, k)), **scans)
        sql = batch_sql(where)
        params["targets"] = [vector_literal(t) for t, _ in keys]
    cur = conn.cursor(row_factory=tuple_row)

    def search(which: list[int], parts: list[int]) -> dict[int, list[tuple]]:
        found: dict[int, list[tuple]] = {i: [] for i in which}
        chosen = {name: [params[name][i] for i in which] for name in ("targets", "modes") if name in params}
        rows = cur.execute(
            sql, {**params, **chosen, "k": k, "floors": [floors[i] for i in which], "parts": parts}
        ).fetchall()
        for row in rows:
            found[which[row[0] - 1]].append(row[1:])
        return found

    everyone = list(range(len(keys)))
    found = search(everyone, list(near))
    further = [
        i for i in everyone if other_partition_may_help([r[-1] for r in found[i]], k, modes[i], near[i])
    ]
    if further:
        for i, rows in search(further, [1 - near[i] for i in further]).items():
            found[i] += rows
    return [sorted(found[i], key=lambda r: (r[-1], r[0]))[:k] for i in everyone], 1 + bool(further)


def estimated_rows(conn, where: list[str], params: dict) -> float:
    """The planner's estimate of how many tracks pass `where` (no query runs: the table's
    statistics)."""
    cur = conn.cursor(row_factory=tuple_row)
    plan = cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tracks WHERE {' AND '.join(where)}", params)
    return float(plan.fetchone()[0][0]["Plan"]["Plan Rows"])


def catalogue_size(conn) -> tuple[float, bool]:
    """The planner's count of tracks, and whether the filtered GiST indexes are there and valid
    (a catalogue loaded where the cube extension is missing has none)."""
    cur = conn.cursor(row_factory=tuple_row)
    total, ready = cur.execute(
        "SELECT reltuples, (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = ANY(%s) AND i.indisvalid) FROM pg_class WHERE oid = 'tracks'::regclass",
        (list(FILTERED_INDEXES),),
    ).fetchone()
    return float(total), ready == len(FILTERED_INDEXES)


def in_index_share(conn, filters: Filters, rows: float, total: float) -> float:
    """The share of the tracks that pass the filters the GiST checks (all but several genres: years,
    popularity, explicit, one genre) that also pass several genres, which it leaves to the heap: 1
    when there are not several."""
    if len(filters.genres or ()) <= 1:
        return 1.0
    where, params = filter_sql(filters.model_copy(update={"genres": []}))
    passing = estimated_rows(conn, where, params) if where else total
    return min(1.0, rows / max(passing, 1.0))


def plan_for(rows: float, total: float, queries: int, k: int, gist_share: float | None) -> str:
    """The cheapest way (costs above) to find a filtered playlist's candidates: "set" (fetch the
    filtered tracks once), "gist" (`queries` exact searches of the filtered GiST, each fetching
    about k / gist_share tracks; None where there is no such index) or "index" (as many filtered
    HNSW walks, each past about k * total / rows tracks)."""
    costs = {"index": queries * (HNSW_QUERY_COST + HNSW_STEP_COST * k * total / max(rows, 1.0))}
    if gist_share is not None:
        costs["gist"] = queries * (GIST_QUERY_COST + GIST_STEP_COST * k / max(gist_share, 1e-9))
    if rows <= SET_ROWS:
        costs["set"] = rows
    return min(costs, key=costs.get)


def filtered_tracks(conn, where: list[str], params: dict, exclude, limit: int) -> list[tuple] | None:
    """(track_id, artists, song_key, *features) of every track that passes `where` (and is not
    excluded), or None when there are more than `limit`: what ranking and the playlist rules need,
    as plain tuples (a few thousand rows: parsing dicts of every column would cost more than the
    scan)."""
    where, params = list(where), {**params, "limit": limit + 1}
    if exclude:
        where.append("track_id <> ALL(%(exclude)s)")
        params["exclude"] = list(exclude)
    columns = ", ".join(lean_columns())
    cur = conn.cursor(row_factory=tuple_row)  # text: the same floats as the dict rows elsewhere
    rows = cur.execute(f"SELECT {columns} FROM tracks WHERE {' AND '.join(where)} LIMIT %(limit)s", params)
    rows = rows.fetchall()
    return None if len(rows) > limit else rows


def full_rows(conn, rows: list[dict]) -> dict[str, dict]:
    """All of TRACK_FIELDS of `rows`, by track_id."""
    found = conn.execute(
        f"SELECT {', '.join(TRACK_FIELDS)} FROM tracks WHERE track_id = ANY(%s)",
        ([r["track_id"] for r in rows],),
    ).fetchall()
    return {r["track_id"]: r for r in found}


class ArtistSets:
    """`artist_set` of each row, made when first asked for: ranking looks at the artists of the
    few candidates that could be chosen, not of every candidate."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.made: dict[int, frozenset[str]] = {}

    def __getitem__(self, j: int) -> frozenset[str]:
        if j not in self.made:
            self.made[j] = artist_set(self.rows[j]["artists"])
        return self.made[j]


class Pool:
    """Candidate rows, with what ranking and MMR need of each: its feature vector (as
    `feature_vector` makes it, computed once) and its artist set (when needed)."""

    def __init__(self, rows: list[dict], vectors: np.ndarray | None = None):
        self.rows = rows
        self.vectors = feature_matrix(rows) if vectors is None else vectors
        self.artists = ArtistSets(rows)

    def __len__(self) -> int:
        return len(self.rows)


def lean_pool(rows: list[tuple]) -> Pool:
    """A Pool of `lean_columns()` tuples (any trailing columns are ignored)."""
    names = config()["features"]
    dicts = [{"track_id": r[0], "artists": r[1], "song_key": r[2]} for r in rows]
    return Pool(dicts, scaled_features([r[3 : 3 + len(names)] for r in rows]))


def scaled_features(values) -> np.ndarray:
    """Rows of raw feature values (config order) -> `feature_vector`s, as float64."""
    cfg = config()
    names = cfg["features"]
    out = np.array(values, dtype=np.float64).reshape(-1, len(names))
    tempo = names.index("tempo")
    out[:, tempo] = np.minimum(out[:, tempo] / cfg["tempo_scale"], 1.0)
    return out


class TrackSet:
    """The whole filtered catalogue, small enough to rank here: each position's candidates are its
    nearest eligible tracks, as the exact scan in the database would return them."""

    def __init__(self, rows: list[tuple]):
        names = config()["features"]
        rows = sorted(rows, key=lambda r: r[0])  # ties in distance: by track_id
        columns = list(zip(*rows, strict=True)) or [()] * (3 + len(names))
        self.ids, self.artists, self.song_keys = columns[0], columns[1], columns[2]
        self.vectors = scaled_features(np.array(columns[3:], dtype=np.float64).reshape(len(names), -1).T)
        self.valence = self.vectors[:, names.index("valence")].copy()
        self.names = names
        self.index = {t: i for i, t in enumerate(self.ids)}
        self.used = np.zeros(len(rows), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def use(self, track_id: str) -> None:
        if track_id in self.index:
            self.used[self.index[track_id]] = True

    def nearest(self, target, k: int, min_valence=None) -> Pool:
        """The k nearest unused tracks (with valence >= min_valence), nearest first; their rows
        hold what ranking needs (`full_rows` adds the rest)."""
        ok = ~self.used if min_valence is None else ~self.used & (self.valence >= min_valence)
        index = np.flatnonzero(ok)
        d = np.linalg.norm(self.vectors[index] - target, axis=1)
        chosen = index[np.lexsort((index, d))[:k]]  # by distance, then track_id (rows are sorted by it)
        rows = [
            {"track_id": self.ids[i], "artists": self.artists[i], "song_key": self.song_keys[i]}
            for i in chosen
        ]
        return Pool(rows, self.vectors[chosen])


def feature_matrix(rows: list[dict]) -> np.ndarray:
    """`feature_vector` of every row, one row each (the same float64 values)."""
    names = config()["features"]
    return scaled_features([[float(r[f]) for f in names] for r in rows])


def pool_key(target, min_valence) -> tuple:
    """Positions with the same target and valence floor share one candidate pool."""
    return tuple(np.round(target, 6)), min_valence


def build_playlist(
    conn,
    targets: np.ndarray,
    filters: Filters | None = None,
    exclude=(),
    diversity: float | None = None,
    min_valence=None,
    stats: dict | None = None,
    memory=None,
) -> list[Track]:
    """One track per target row, chosen by maximal marginal relevance under the playlist rules:
    no track or song (same name + first artist) twice, no artist twice in a row.

    `memory` (a snapshot.CatalogueSnapshot of the catalogue as it is) ranks a filtered playlist's
    candidates in this process, exactly, instead of in the database.

    `stats`, when given, is filled with how the candidates were found: `plan` ("index", "set",
    "gist" or "memory"), `estimated_rows` (filtered playlists in the database), `queries`
    (candidate queries sent) and `exact_scans` (those among them that scanned without the vector
    index)."""
    filters = filters or Filters()
    stats = {} if stats is None else stats
    stats.update(plan="index", queries=0, exact_scans=0)
    settings: dict = {}  # the settings made in this transaction
    cfg = config()["playlist"]
    diversity = cfg["diversity"] if diversity is None else diversity
    cap = cfg["diversity_cap"]
    n = len(targets)
    min_valence = list(min_valence) if min_valence is not None else [None] * n
    distinct = {pool_key(t, mv) for t, mv in zip(targets, min_valence, strict=True)}
    k = max(cfg["min_candidates"], cfg["candidates_per_track"] * (n if len(distinct) == 1 else 3))
    where, params = filter_sql(filters)
    whole = None  # the whole filtered catalogue, ranked here: a TrackSet or a snapshot.FilteredView
    gist = False  # candidates from the filtered GiST (exact) rather than the HNSW graphs
    if where and memory is not None:
        whole, stats["plan"] = memory.view(filters, exclude), "memory"
    elif where:
        rows = estimated_rows(conn, where, params)
        total, ready = catalogue_size(conn)
        total = max(total, rows)
        stats["estimated_rows"] = rows
        share = in_index_share(conn, filters, rows, total) if ready else None
        plan = plan_for(rows, total, len(distinct), k, share)
        if plan == "set":
            stats["queries"] += 1
            found = filtered_tracks(conn, where, params, sorted(set(exclude)), 2 * SET_ROWS)
            if found is not None:  # else the estimate was far off: an index plan after all
                whole, stats["plan"] = TrackSet(found), "set"
            else:
                plan = "gist" if ready else "index"
        gist = plan == "gist"
        if gist:
            stats["plan"] = "gist"

    # Index plan: every distinct key's k nearest, plus one for each track chosen before its first
    # position (they are dropped there), in one statement for the whole playlist.
    prefetched: dict = {}
    if whole is None and n:
        firsts: dict = {}  # key -> (target, floor), in playlist order
        for t, mv in zip(targets, min_valence, strict=True):
            firsts.setdefault(pool_key(t, mv), (t, mv))
        ahead = min(MAX_CANDIDATES, k) + n - 1
        batch, sent = nearest_batch(
            conn, list(firsts.values()), ahead, filters, sorted(set(exclude)), settings, filtered_index=gist
        )
        prefetched = dict(zip(firsts, batch, strict=True))
        stats["queries"] += sent

    def fetch(t, size, mv, used_ids, key=None) -> Pool:
        if whole is not None:
            return whole.nearest(t, size, mv)
        if key in prefetched:
            pool = lean_pool([r for r in prefetched.pop(key) if r[0] not in used_ids][:size])
        elif gist:  # exact: a short answer means the filters leave no more tracks
            stats["queries"] += 1
            rows = nearest_batch(
                conn, [(t, mv)], size, filters, sorted(used_ids), settings, filtered_index=True
            )[0]
            return lean_pool(rows[0])
        else:
            pool = Pool(candidates(conn, t, size, filters, sorted(used_ids), mv, settings=settings))
            stats["queries"] += 1
        # short: the HNSW scan gave up, or too few pass (the GiST is exact: short means too few pass)
        if not gist and len(pool) < size and (where or mv is not None):
            pool = Pool(candidates(conn, t, size, filters, sorted(used_ids), mv, exact=True))
            stats["queries"] += 1
            stats["exact_scans"] += 1
        return pool

    pools: dict = {}
    picks: list[tuple[dict, float, int]] = []  # (row, distance to its target, position)
    vectors: list[np.ndarray] = []  # feature vectors of the chosen tracks, for the diversity term
    used_ids, used_songs = set(exclude), set()
    prev_artists: frozenset[str] = frozenset()
    for i, (t, mv) in enumerate(zip(targets, min_valence, strict=True)):
        key = pool_key(t, mv)
        pick = None
        for attempt in range(4):
            size = min(MAX_CANDIDATES, k * 2**attempt)
            if key not in pools or attempt:
                pools[key] = fetch(t, size, mv, used_ids, key if not attempt else None)
            pool = pools[key]
            available = [
                j
                for j, r in enumerate(pool.rows)
                if r["track_id"] not in used_ids and r["song_key"] not in used_songs
            ]
            pick = _best(pool, available, t, vectors, diversity, cap, prev_artists)
            if pick is not None or len(pool) < size:
                break
        if pick is None:
            break  # the catalogue (after filters) has no more tracks
        row, vec = pool.rows[pick], pool.vectors[pick]
        used_ids.add(row["track_id"])
        used_songs.add(row["song_key"])
        if whole is not None:
            whole.use(row["track_id"])
        prev_artists = pool.artists[pick]
        picks.append((row, float(np.linalg.norm(vec - t)), i))
        vectors.append(vec)
    if picks:  # candidates hold only what ranking needs
        rows = full_rows(conn, [row for row, _, _ in picks])
        picks = [(rows[row["track_id"]], d, i) for row, d, i in picks if row["track_id"] in rows]
    return [track(row, distance, i) for row, distance, i in picks]


def _best(pool: Pool, available: list[int], target, chosen_vecs, diversity, cap, prev_artists):
    """The pool index of the available row with the best MMR score whose artists do not repeat the
    previous track's (ties within 1e-12 go to the nearer row), else the nearest available row;
    None when nothing is available."""
    if not available:
        return None
    vecs = pool.vectors[available]
    d = np.linalg.norm(vecs - target, axis=1)
    if chosen_vecs:
        gaps = np.linalg.norm(vecs[:, None, :] - np.asarray(chosen_vecs)[None, :, :], axis=2)
        spread = np.minimum(cap, gaps.min(axis=1))
    else:
        spread = np.full(len(available), cap)
    scores = (-(1 - diversity) * d + diversity * spread).tolist()
    best, best_score = None, None
    for j, score in zip(available, scores, strict=True):
        if best_score is not None and not score > best_score + 1e-12:
            continue  # cannot win, whatever its artists
        if pool.artists[j] & prev_artists:
            continue
        best, best_score = j, score
    return available[0] if best is None else best  # every row repeats an artist: the nearest


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
