"""Face detection: how fast, and which faces it finds, by face size, for pyramid settings.

Detection is most of the work per photo (benchmarks/pipeline.py: the floor). A coarser Haar
pyramid is cheaper, but finds each face at fewer scales; this measures the trade on the worker's
own `detect_faces` (both cascades, score threshold, verification):

- faces found: FER2013 validation faces rendered into 640x480 scenes (fer_photo_scenes.render) at
  sides from 32 px (smaller than the model's 48 px input) to 240 px, one face each; found when a
  box overlaps the face by IoU > 0.3;
- false faces: boxes in scenes with no face (the scene textures and scikit-image's public-domain
  photos of objects and animals), and boxes away from the face in the face scenes;
- time: per 640x480 scene, and on the 512x512 astronaut photo the pipeline benchmark uses.

    python benchmarks/face_detection.py                       # the default sweep
    python benchmarks/face_detection.py --pyramid 1.1:5 --pyramid 1.2:3

Prints a table, writes reports/bench_face_detection.json; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from fer_photo_scenes import SCENE_SHAPE, overlap, render, textures

from moodtunes_fer import detection

REPO = Path(__file__).resolve().parents[1]
FACE_SIDES = (32, 48, 64, 96, 160, 240)
FACES_PER_SIDE = 150
SWEEP = ((1.1, 5), (1.1, 3), (1.15, 4), (1.15, 3), (1.2, 3), (1.2, 2), (1.25, 2), (1.3, 2))
NO_FACE_PHOTOS = (
    *("coffee", "chelsea", "rocket", "coins", "moon", "horse", "hubble_deep_field", "text", "page"),
)
MIN_IOU = 0.3


def no_face_scenes(seed: int) -> list[np.ndarray]:
    import skimage.data

    out = list(textures(seed))
    for name in NO_FACE_PHOTOS:
        img = getattr(skimage.data, name)()
        if img.dtype != np.uint8:
            img = (img * 255).astype(np.uint8) if img.max() <= 1 else img.astype(np.uint8)
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out.append(cv2.resize(img, SCENE_SHAPE[::-1], interpolation=cv2.INTER_AREA))
    return out


def face_scenes(faces: np.ndarray, seed: int) -> list[tuple[np.ndarray, tuple, int]]:
    rng = np.random.default_rng(seed)
    backgrounds = textures(seed)
    scenes = []
    for i, face in enumerate(faces):
        side = FACE_SIDES[i % len(FACE_SIDES)]
        scene, truth = render(face, backgrounds[i % len(backgrounds)], side, rng)
        scenes.append((scene, truth, side))
    return scenes


def measure(pyramid: detection.Pyramid, scenes, empty, astronaut) -> dict:
    found = dict.fromkeys(FACE_SIDES, 0)
    total = dict.fromkeys(FACE_SIDES, 0)
    stray, seconds = 0, 0.0
    for scene, truth, side in scenes:
        t0 = time.perf_counter()
        boxes = detection.detect_faces(scene, pyramid=pyramid)
        seconds += time.perf_counter() - t0
        hits = [overlap(truth, (b.x, b.y, b.width, b.height)) > MIN_IOU for b in boxes]
        total[side] += 1
        found[side] += any(hits)
        stray += sum(not h for h in hits)
    false_faces = sum(len(detection.detect_faces(img, pyramid=pyramid)) for img in empty)
    detection.detect_faces(astronaut, pyramid=pyramid)
    t0 = time.perf_counter()
    runs = 20
    for _ in range(runs):
        astronaut_boxes = detection.detect_faces(astronaut, pyramid=pyramid)
    astronaut_ms = (time.perf_counter() - t0) / runs * 1000
    return {
        "scale_factor": pyramid.scale_factor,
        "min_neighbors": pyramid.min_neighbors,
        "found_by_side": {str(s): round(found[s] / total[s], 4) for s in FACE_SIDES},
        "found": round(sum(found.values()) / sum(total.values()), 4),
        "stray_boxes_in_face_scenes": stray,
        "false_faces_in_empty_scenes": false_faces,
        "astronaut_faces": len(astronaut_boxes),
        "scene_ms": round(seconds / len(scenes) * 1000, 2),
        "astronaut_ms": round(astronaut_ms, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="FER npz (default: $MOODTUNES_FER_DATA, else ../shared/data/...)")
    p.add_argument("--faces-per-side", type=int, default=FACES_PER_SIDE)
    p.add_argument("--pyramid", action="append", help="SCALE_FACTOR:MIN_NEIGHBORS (repeatable)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "bench_face_detection.json")
    a = p.parse_args()

    import skimage.data

    from moodtunes_fer_training.data import resolve_data_path

    with np.load(resolve_data_path(a.data)) as z:
        x_val = z["x_val"]
    rng = np.random.default_rng(a.seed)
    faces = x_val[rng.permutation(len(x_val))[: a.faces_per_side * len(FACE_SIDES)]]
    scenes = face_scenes(faces, a.seed)
    empty = no_face_scenes(a.seed)
    astronaut = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    sweep = [tuple(map(float, s.split(":"))) for s in a.pyramid] if a.pyramid else SWEEP
    deployed = detection.Pyramid()

    print(
        f"{len(scenes)} face scenes ({a.faces_per_side} per side), {len(empty)} scenes without a face; "
        f"cv2 threads {cv2.getNumThreads()}"
    )
    header = " ".join(f"{s:>5}" for s in FACE_SIDES)
    print(f"{'pyramid':>9} {header}  {'found':>6} {'stray':>5} {'false':>5} {'scene ms':>8} {'astro ms':>8}")
    rows = []
    for scale_factor, min_neighbors in sweep:
        r = measure(detection.Pyramid(scale_factor, int(min_neighbors)), scenes, empty, astronaut)
        r["deployed"] = detection.Pyramid(r["scale_factor"], r["min_neighbors"]) == deployed
        rows.append(r)
        by_side = " ".join(f"{r['found_by_side'][str(s)]:5.1%}" for s in FACE_SIDES)
        print(
            f"{scale_factor:5.2f}:{int(min_neighbors):<3} {by_side}  {r['found']:6.1%} "
            f"{r['stray_boxes_in_face_scenes']:5d} {r['false_faces_in_empty_scenes']:5d} "
            f"{r['scene_ms']:8.1f} {r['astronaut_ms']:8.1f}{'  (deployed)' if r['deployed'] else ''}",
            flush=True,
        )
    report = {
        "face_sides_px": list(FACE_SIDES),
        "faces_per_side": a.faces_per_side,
        "empty_scenes": len(empty),
        "scene_shape": list(SCENE_SHAPE),
        "cv2_threads": cv2.getNumThreads(),
        "sweep": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {a.out}")
    base = next((r for r in rows if r["deployed"]), rows[0])
    keys = ("scale_factor", "min_neighbors", "found", "scene_ms", "astronaut_ms")
    print(json.dumps({k: base[k] for k in keys}))


if __name__ == "__main__":
    main()
