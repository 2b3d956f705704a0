"""Matching at scale: pgvector HNSW vs exact search, on a catalogue of N tracks.

Builds a catalogue of N tracks (the real one plus synthetic tracks drawn from its joint feature
distribution: a random real track's features plus small Gaussian jitter), indexes it, then times
the match query at the database for random emotion vectors and measures recall@10 against exact
search (PostgreSQL with the index disabled), and the same queries by an exact NumPy scan.

    .venv/bin/python benchmarks/recommender.py --tracks 1000000

Starts its own embedded PostgreSQL under .var/bench-postgres unless --database-url is given
(the table it fills is `tracks` of that database: never point it at production).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import numpy as np
import psycopg

from moodtunes.config import REPO_ROOT, get_settings
from moodtunes_recommender import catalogue
from moodtunes_recommender.matching import nearest_sql

QUERIES = 1000
K = 10
EF_SEARCH = (40, 100)
JITTER = 0.03  # std of the noise added to a sampled real track's features
SEED = 7
MATCH = np.array(
    [
        [0.55, 0.50, 0.50, 0.40, 0.50],
        [0.90, 0.80, 0.95, 0.50, 0.95],
        [0.20, 0.20, 0.05, 0.15, 0.05],
        [0.20, 0.30, 0.75, 0.20, 0.60],
        [0.30, 0.95, 0.20, 0.75, 0.40],
    ]
)


def real_features(path: Path) -> tuple[np.ndarray, list[dict]]:
    import csv

    rows = []
    with gzip.open(path, "rt", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(r)
    feats = np.array(
        [
            [
                float(r["danceability"]),
                float(r["energy"]),
                float(r["valence"]),
                min(float(r["tempo"]) / 244.0, 1.0),
                float(r["mode"]),
            ]
            for r in rows
        ]
    )
    return feats, rows


def synthesise(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(real), n)
    out = real[idx].copy()
    out[:, :4] = np.clip(out[:, :4] + rng.normal(0, JITTER, (n, 4)), 0, 1)
    return out


def build_catalogue(conn, n: int, rng) -> tuple[np.ndarray, float, float]:
    feats, rows = real_features(get_settings().catalogue_path)
    extra = max(0, n - len(feats))
    all_feats = np.vstack([feats[:n], synthesise(feats, extra, rng)]) if extra else feats[:n]
    conn.execute("TRUNCATE tracks CASCADE")
    catalogue.drop_vector_indexes(conn)
    t0 = time.perf_counter()
    with conn.cursor().copy(
        "COPY tracks (track_id, name, artists, year, popularity, danceability, energy, "
        "valence, tempo, mode, song_key, features) FROM STDIN"
    ) as copy:
        for i, f in enumerate(all_feats):
            real = rows[i] if i < len(rows) else None
            tid = real["track_id"] if real else f"synthetic:{i}"
            year = int(real["year"]) if real and real["year"] else 1960 + i % 60
            copy.write_row(
                [
                    tid,
                    real["name"] if real else f"synthetic {i}",
                    real["artists"] if real else f"artist {i % 50000}",
                    year,
                    i % 101,
                    f[0],
                    f[1],
                    f[2],
                    f[3] * 244.0,
                    int(f[4]),
                    tid,
                    "[" + ",".join(f"{v:.6g}" for v in f) + "]",
                ]
            )
    load_s = time.perf_counter() - t0
    conn.commit()
    conn.execute("SET max_parallel_maintenance_workers = 2")
    t0 = time.perf_counter()
    catalogue.create_vector_indexes(conn, "2GB")
    conn.commit()
    index_s = time.perf_counter() - t0
    conn.execute("ANALYZE tracks")
    conn.commit()
    return all_feats.astype(np.float32), load_s, index_s


def lit(v) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def timed_queries(conn, targets, sql, setup=()) -> tuple[list[list[str]], np.ndarray]:
    results, lat = [], []
    with conn.transaction():
        for s in setup:
            conn.execute(s)
        for t in targets:
            t0 = time.perf_counter()
            rows = conn.execute(sql, {"t": lit(t), "k": K}, prepare=True).fetchall()
            lat.append((time.perf_counter() - t0) * 1000)
            results.append(rows)
    return results, np.array(lat)


def recall(approx, exact) -> float:
    """Distance-based recall@K: a returned track counts if it is within the K-th exact distance."""
    hits = []
    for a, e in zip(approx, exact, strict=False):
        kth = e[-1][1]
        hits.append(sum(1 for _, d in a if d <= kth + 1e-6) / K)
    return float(np.mean(hits))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=QUERIES)
    p.add_argument("--database-url")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rng = np.random.default_rng(SEED)
    pg = None
    url = a.database_url
    if not url:
        from moodtunes_cli.localstack import Postgres, free_port

        pg = Postgres(REPO_ROOT / ".var" / "bench-postgres", free_port()).start()
        url = pg.url
    from moodtunes import migrations

    migrations.upgrade(url)
    try:
        with psycopg.connect(url) as conn:
            feats, load_s, index_s = build_catalogue(conn, a.tracks, rng)
            probs = rng.dirichlet(np.ones(5), a.queries)
            targets = probs @ MATCH
            sql = nearest_sql([])  # the recommender's own match query
            exact, exact_lat = timed_queries(conn, targets, sql, ["SET LOCAL enable_indexscan = off"])
            exact = [[(r[0], r[-1]) for r in rows] for rows in exact]
            report = {
                "tracks": int(len(feats)),
                "queries": a.queries,
                "k": K,
                "load_seconds": round(load_s, 1),
                "index_build_seconds": round(index_s, 1),
                "hnsw": {"m": 16, "ef_construction": 64},
                "results": {},
            }
            for ef in EF_SEARCH:
                timed_queries(conn, targets[:50], sql, [f"SET LOCAL hnsw.ef_search = {ef}"])  # warm-up
                approx, lat = timed_queries(conn, targets, sql, [f"SET LOCAL hnsw.ef_search = {ef}"])
                report["results"][f"hnsw_ef{ef}"] = {
                    "p50_ms": round(float(np.percentile(lat, 50)), 3),
                    "p99_ms": round(float(np.percentile(lat, 99)), 3),
                    "recall_at_10": round(
                        recall([[(r[0], r[-1]) for r in rows] for rows in approx], exact), 4
                    ),
                }
            fsql = nearest_sql(["year BETWEEN 1990 AND 1999", "popularity >= 50"])
            fres, flat = timed_queries(
                conn,
                targets,
                fsql,
                ["SET LOCAL hnsw.ef_search = 100", "SET LOCAL hnsw.iterative_scan = relaxed_order"],
            )
            report["results"]["hnsw_ef100_filtered"] = {
                "p50_ms": round(float(np.percentile(flat, 50)), 3),
                "p99_ms": round(float(np.percentile(flat, 99)), 3),
                "full_results": float(np.mean([len(r) == K for r in fres])),
            }
            report["results"]["postgres_exact"] = {
                "p50_ms": round(float(np.percentile(exact_lat, 50)), 3),
                "p99_ms": round(float(np.percentile(exact_lat, 99)), 3),
                "recall_at_10": 1.0,
            }
        np_lat = []
        for t in targets.astype(np.float32):
            t0 = time.perf_counter()
            d = np.sum((feats - t) ** 2, axis=1)
            top = np.argpartition(d, K)[:K]
            top[np.argsort(d[top])]
            np_lat.append((time.perf_counter() - t0) * 1000)
        report["results"]["numpy_exact_scan"] = {
            "p50_ms": round(float(np.percentile(np_lat, 50)), 3),
            "p99_ms": round(float(np.percentile(np_lat, 99)), 3),
            "recall_at_10": 1.0,
            "note": "in-process, catalogue already in RAM; no filters, no database",
        }
        report["machine"] = {"cpu_count": __import__("os").cpu_count(), "machine": platform.machine()}
        report["latency_measured"] = "client-side round trip over loopback TCP, prepared statements"
    finally:
        if pg:
            pg.stop()
    print(
        f"\n{report['tracks']:,} tracks; load {report['load_seconds']} s; "
        f"HNSW index build {report['index_build_seconds']} s; {a.queries} match queries, k={K}"
    )
    print(f"{'method':28} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for name, r in report["results"].items():
        print(f"{name:28} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r.get('recall_at_10', float('nan')):10.4f}")
    out = a.out or REPO_ROOT / "reports" / f"bench_recommender_{a.tracks}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
