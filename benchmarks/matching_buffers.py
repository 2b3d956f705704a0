"""10M matching with large shared_buffers and the HNSW graphs prewarmed (a one-off check; `make up`
gives its embedded server the same with MOODTUNES_POSTGRES_SHARED_BUFFERS=6GB). Needs the catalogue that
`benchmarks/recommender.py --tracks 10000000 --pgdata .var/bench-postgres-10m` built.

    python benchmarks/matching_buffers.py 6GB
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

from moodtunes_cli.localstack import Postgres, free_port
from moodtunes_recommender.matching import nearest_sql

SB = sys.argv[1] if len(sys.argv) > 1 else "6GB"
pg = Postgres(Path(__file__).resolve().parents[1] / ".var" / "bench-postgres-10m", free_port(), SB).start()
out = {}
try:
    with psycopg.connect(pg.url, autocommit=True) as c:
        print(c.execute("SHOW shared_buffers").fetchone())
        t0 = time.perf_counter()
        try:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for ix in ("tracks_features_hnsw_minor", "tracks_features_hnsw_major"):
                print(ix, c.execute("SELECT pg_prewarm(%s)", (ix,)).fetchone())
            out["prewarm"] = "pg_prewarm"
        except psycopg.Error as e:
            print("no pg_prewarm:", e)
            out["prewarm"] = "none"
        out["prewarm_s"] = round(time.perf_counter() - t0, 1)
    from recommender import MATCH  # benchmarks/recommender.py's emotion -> features mapping

    targets = np.random.default_rng(3).dirichlet(np.ones(5), 300) @ MATCH
    sql = nearest_sql([])
    with psycopg.connect(pg.url) as c:
        for ef in (40, 100):
            lat = []
            with c.transaction():
                c.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                for i, t in enumerate(targets):
                    lit = "[" + ",".join(f"{v:.6f}" for v in t) + "]"
                    t0 = time.perf_counter()
                    c.execute(sql, {"t": lit, "k": 10}, prepare=True).fetchall()
                    if i >= 100:
                        lat.append((time.perf_counter() - t0) * 1000)  # first 100: warm-up
            out[f"ef{ef}"] = {
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "queries": len(lat),
            }
            print(ef, out[f"ef{ef}"], flush=True)
finally:
    pg.stop()
out["shared_buffers"] = SB
print(json.dumps(out))
