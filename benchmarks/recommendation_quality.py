"""Recommendation quality per mode and emotion, over the FER model's real validation outputs.

For every validation face the deployed FER pipeline's probability vector drives one playlist per
mode (match, uplift, calm) through the recommender's own code on the default catalogue; the
report gives, per mode and dominant emotion: mean valence/energy of the tracks, distance to the
targets, intra-list diversity, distinct artists, catalogue coverage and popularity bias, plus a
chart of where each mode's playlists land in valence-energy space.

    .venv/bin/python benchmarks/recommendation_quality.py [--faces 3118] [--limit 10]

Starts its own embedded PostgreSQL under .var/quality-postgres unless --database-url is given.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from moodtunes.config import REPO_ROOT, get_settings
from moodtunes_fer_training.in_process import InProcessBackend

EMOTIONS = ["neutral", "happy", "sad", "fear", "angry"]
MODES = ["match", "uplift", "calm"]
SEED = 11


def emotion_vectors(n: int, data: str | None) -> tuple[np.ndarray, str]:
    """The deployed pipeline's probabilities on validation faces; Dirichlet draws if no data/model."""
    try:
        from moodtunes_fer import inference
        from moodtunes_fer_training import data as fer_data

        models = get_settings().models_dir
        split = fer_data.load_split(fer_data.resolve_data_path(data), "val")
        pipe = inference.FerPipeline(
            InProcessBackend(inference.version_dir(models, "fer_vgg16")),
            inference.load_head_for_version(models, "fer_vgg16"),
        )
        idx = np.random.default_rng(SEED).permutation(len(split.x))[:n]
        return np.asarray(pipe.predict_proba(split.x[idx])), "fer_validation_outputs"
    except (FileNotFoundError, ImportError) as exc:
        print(f"no FER outputs ({exc}); using Dirichlet(1) emotion vectors")
        return np.random.default_rng(SEED).dirichlet(np.ones(5), n), "dirichlet"


def intra_list_diversity(vectors: np.ndarray) -> float:
    v = vectors[:, :4]  # mode is binary: it would dominate every pairwise distance
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    return float(d[np.triu_indices(len(v), 1)].mean()) if len(v) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=3118)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--data")
    p.add_argument("--database-url")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "recommendation_quality.json")
    a = p.parse_args()

    probs, source = emotion_vectors(a.faces, a.data)
    pg = None
    url = a.database_url
    if not url:
        from moodtunes_cli.localstack import Postgres, free_port

        pg = Postgres(REPO_ROOT / ".var" / "quality-postgres", free_port()).start()
        url = pg.url
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    from moodtunes import migrations
    from moodtunes.db import connection
    from moodtunes_recommender import catalogue, mapping, matching

    migrations.upgrade(url)
    if catalogue.count_tracks() < 100_000:
        catalogue.load_csv(catalogue.default_catalogue())
    try:
        with connection() as conn:
            cat = conn.execute("SELECT count(*) AS n, avg(popularity) AS pop FROM tracks").fetchone()
        stats = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        used = {m: set() for m in MODES}
        means = {m: [] for m in MODES}
        t0 = time.perf_counter()
        for pv in probs:
            emotion = EMOTIONS[int(np.argmax(pv))]
            for mode in MODES:
                targets = mapping.targets(pv, mode, a.limit)
                with connection() as conn:
                    tracks = [
                        t.model_dump()
                        for t in matching.build_playlist(
                            conn, targets, min_valence=mapping.min_valence(mode, a.limit)
                        )
                    ]
                vecs = np.array([matching.feature_vector(t["features"]) for t in tracks])
                s = stats[mode][emotion]
                s["valence"].append(vecs[:, 2].mean())
                s["energy"].append(vecs[:, 1].mean())
                s["tempo_bpm"].append(vecs[:, 3].mean() * 244)
                s["distance_to_target"].append(np.mean([t["distance"] for t in tracks]))
                s["intra_list_diversity"].append(intra_list_diversity(vecs))
                s["distinct_artists"].append(len({a for t in tracks for a in t["artists"]}))
                s["popularity"].extend(t["popularity"] for t in tracks if t["popularity"] is not None)
                s["last3_valence"].append(vecs[-3:, 2].mean())
                s["ends_valence_ge_0_6"].append(float((vecs[-3:, 2] >= 0.6).all()))
                used[mode].update(t["track_id"] for t in tracks)
                means[mode].append((emotion, vecs[:, 2].mean(), vecs[:, 1].mean()))
        seconds = time.perf_counter() - t0
    finally:
        if pg:
            pg.stop()

    report = {
        "faces": int(len(probs)),
        "emotion_source": source,
        "playlist_length": a.limit,
        "catalogue_tracks": int(cat["n"]),
        "catalogue_mean_popularity": round(float(cat["pop"]), 2),
        "seconds": round(seconds, 1),
        "modes": {},
    }
    for mode in MODES:
        per = {}
        for emotion, s in sorted(stats[mode].items(), key=lambda kv: EMOTIONS.index(kv[0])):
            per[emotion] = {"playlists": len(s["valence"])} | {
                k: round(float(np.mean(v)), 4) for k, v in s.items()
            }
            per[emotion]["popularity_bias"] = round(per[emotion].pop("popularity") - float(cat["pop"]), 2)
        report["modes"][mode] = {
            "per_emotion": per,
            "catalogue_coverage": round(len(used[mode]) / cat["n"], 4),
            "distinct_tracks": len(used[mode]),
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    plot(means, a.out.with_suffix(".png"))
    print_table(report)
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")


def print_table(report: dict) -> None:
    print(
        f"\n{report['faces']} faces ({report['emotion_source']}), {report['playlist_length']} tracks "
        f"each, catalogue {report['catalogue_tracks']:,} tracks, {report['seconds']} s"
    )
    cols = (
        "playlists",
        "valence",
        "energy",
        "tempo_bpm",
        "distance_to_target",
        "intra_list_diversity",
        "distinct_artists",
        "last3_valence",
        "ends_valence_ge_0_6",
        "popularity_bias",
    )
    print(f"{'mode':7} {'emotion':8} " + " ".join(f"{c[:10]:>10}" for c in cols))
    for mode, r in report["modes"].items():
        for emotion, m in r["per_emotion"].items():
            print(
                f"{mode:7} {emotion:8} "
                + " ".join(f"{m[c]:10.3f}" if isinstance(m[c], float) else f"{m[c]:10d}" for c in cols)
            )
        print(f"{mode:7} coverage {r['catalogue_coverage']:.4f} ({r['distinct_tracks']} distinct tracks)")


def plot(means: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(EMOTIONS, ["#6b7280", "#d97706", "#2563eb", "#7c3aed", "#dc2626"], strict=False))
    fig, axes = plt.subplots(1, len(means), figsize=(5 * len(means), 4.6), sharex=True, sharey=True)
    for ax, (mode, pts) in zip(axes, means.items(), strict=False):
        for emotion in EMOTIONS:
            xs = [v for e, v, _ in pts if e == emotion]
            ys = [en for e, _, en in pts if e == emotion]
            if xs:
                ax.scatter(xs, ys, s=6, alpha=0.35, color=colours[emotion], label=emotion)
        ax.set_title(f"{mode}: playlist means")
        ax.set_xlabel("valence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("energy")
    axes[0].legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
