"""Live mood sessions under load: how soon a webcam frame shows in its session, how many frames/s
one session sustains, and what several sessions at a webcam's pace add up to.

    .venv/bin/python benchmarks/live_session.py            # starts its own stack (temp dir)
    .venv/bin/python benchmarks/live_session.py --quick    # shorter phases, about 2 minutes
    .venv/bin/python benchmarks/live_session.py --url http://127.0.0.1:8000   # a running gateway

The frame is the public-domain astronaut portrait (scikit-image) scaled to 480x480 on a 640x480
grey canvas, JPEG q85: what a webcam page sends. Every phase uses fresh sessions (one
httpx.Client each, so the session cookie that owns them is kept) and deletes them at the end.

(1) frame-to-update latency: one session; send a frame, poll GET /v1/sessions/{id} every POLL_S
    until that frame's id is in `frames`; N times, one after another; p50/p90/max.
(2) sustained rate: one session per offered rate, frames sent on a fixed schedule for DURATION;
    processed frames/s (frames_processed delta over the sending time), frames dropped (superseded
    by a newer one while they waited), and the backlog (received - processed - dropped: frames
    still unfinished), sampled during the run and at its end. The backlog must stay bounded: a
    session holds at most one waiting frame, plus the ones being classified or recommended.
(3) concurrent sessions at a webcam's pace (CONCURRENT_RATE frames/s each): total processed/s.
Writes reports/bench_live_session.json; the last printed line is one JSON object with
`frame_to_update_ms_p50`, `frame_to_update_ms_p90`, `max_frames_per_s_without_drops` (highest
offered rate at which it and every lower rate dropped nothing) and
`processed_frames_per_s_at_max_offered`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

OUT = Path("reports/bench_live_session.json")
MODE, LIMIT, WINDOW_S = "match", 10, 60
POLL_S = 0.02  # latency phase: GET every 20 ms while a frame is on its way
SAMPLE_S = 0.5  # rate phases: backlog sampled this often between frames
FRAME_TIMEOUT_S = 30.0  # a frame not shown this long after it was sent counts as an error
DRAIN_LIMIT_S = 20.0  # after sending stops, how long a phase waits for its backlog to empty
# one frame waiting in the queue + one being classified + one being recommended
BACKLOG_BOUND = 3
WARMUP_FRAMES = 3
CONCURRENT_RATE = 0.5  # frames/s per session in phase 3 (the page sends one every ~2 s)
FULL = {"frames": 30, "rates": [0.5, 1, 2, 4, 8], "duration_s": 20.0, "sessions": [1, 2, 4]}
QUICK = {"frames": 10, "rates": [0.5, 1, 2, 4, 8], "duration_s": 6.0, "sessions": [1, 4]}
QUICK_CONCURRENT_DURATION_S = 10.0  # 0.5 frames/s needs a few frames per session to mean anything
# a load test is not abuse: lift the per-client limits and the queue bound for the benchmark's stack
LOAD_TEST_ENV = {
    "RATE_LIMIT_JOBS": "100000/minute",
    "RATE_LIMIT_FRAMES": "100000/minute",
    "MAX_UNFINISHED_JOBS_PER_CLIENT": "0",
    "FER_QUEUE_MAX_DEPTH": "0",
}


# --- helpers (pure; tests/benchmarks_live) --------------------------------------------------------


def webcam_jpeg(width: int = 640, height: int = 480, quality: int = 85) -> bytes:
    """The astronaut portrait (one face) scaled to the frame's height, centred on a grey canvas."""
    import skimage.data
    from PIL import Image

    face = Image.fromarray(skimage.data.astronaut()).resize((height, height), Image.BICUBIC)
    canvas = Image.new("RGB", (width, height), (96, 96, 96))
    canvas.paste(face, ((width - height) // 2, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def latency_summary(ms: list[float], errors: list[str]) -> dict:
    return {
        "frames": len(ms) + len(errors),
        "shown": len(ms),
        "errors": errors,
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "max_ms": round(max(ms), 1) if ms else None,
        "mean_ms": round(float(np.mean(ms)), 1) if ms else None,
    }


def backlog(session: dict) -> int:
    """Frames the session received that are neither processed nor dropped (still on their way,
    or failed some other way: `unaccounted` once drained)."""
    return session["frames_received"] - session["frames_processed"] - session["frames_dropped"]


def max_rate_without_drops(results: list[dict]) -> float | None:
    """The highest offered rate such that it and every lower rate dropped nothing (and had no
    errors); None when even the lowest rate dropped frames."""
    best = None
    for r in sorted(results, key=lambda r: r["offered_per_s"]):
        if r["dropped"] or r["errors"]:
            break
        best = r["offered_per_s"]
    return best


def headline(report: dict) -> dict:
    rates = report["rates"]
    top = max(rates, key=lambda r: r["offered_per_s"]) if rates else None
    return {
        "frame_to_update_ms_p50": report["latency"]["p50_ms"],
        "frame_to_update_ms_p90": report["latency"]["p90_ms"],
        "max_frames_per_s_without_drops": max_rate_without_drops(rates),
        "processed_frames_per_s_at_max_offered": top["processed_per_s"] if top else None,
        "max_offered_per_s": top["offered_per_s"] if top else None,
        "backlog_bounded": all(r["backlog_bounded"] for r in rates),
    }


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the client -----------------------------------------------------------------------------------


class ApiMismatch(RuntimeError):
    """The gateway answered something other than what the live-session API promises."""


class LiveSession:
    """One listener (its own httpx.Client: the cookie owns the session) and one session."""

    def __init__(self, url: str, window_s: float = WINDOW_S):
        import httpx

        self.url = url
        self.client = httpx.Client(timeout=30)
        r = self.client.post(f"{url}/v1/sessions", json={"mode": MODE, "limit": LIMIT, "window_s": window_s})
        if r.status_code != 201:
            raise ApiMismatch(f"POST /v1/sessions: {r.status_code} {r.text[:300]}")
        body = r.json()
        missing = {"id", "status_url", "frames_url"} - set(body)
        if missing:
            raise ApiMismatch(f"POST /v1/sessions: no {sorted(missing)} in {body}")
        self.id = body["id"]
        self.status_url = url + body["status_url"]
        self.frames_url = url + body["frames_url"]
        self.http_errors: dict[str, int] = {}

    def send(self, photo: bytes) -> dict | None:
        """POST one frame; its 202 body, or None (counted in http_errors) on any other status."""
        r = self.client.post(self.frames_url, files={"image": ("frame.jpg", photo, "image/jpeg")})
        if r.status_code != 202:
            code = f"{r.status_code} {_error_code(r)}"
            self.http_errors[code] = self.http_errors.get(code, 0) + 1
            return None
        body = r.json()
        missing = {"frame_id", "session_id", "status", "superseded", "frames_dropped"} - set(body)
        if missing:
            raise ApiMismatch(f"POST frames: no {sorted(missing)} in {body}")
        return body

    def get(self) -> dict:
        r = self.client.get(self.status_url)
        if r.status_code != 200:
            raise ApiMismatch(f"GET /v1/sessions/{{id}}: {r.status_code} {r.text[:300]}")
        body = r.json()
        missing = {"frames_received", "frames_processed", "frames_dropped", "latest_frame", "frames"} - set(
            body
        )
        if missing:
            raise ApiMismatch(f"GET /v1/sessions/{{id}}: no {sorted(missing)} in {sorted(body)}")
        return body

    def close(self) -> None:
        try:
            r = self.client.delete(self.status_url)
            if r.status_code != 204:
                print(f"  ! DELETE /v1/sessions/{{id}}: {r.status_code} {r.text[:200]}", flush=True)
        finally:
            self.client.close()

    def drain(self, limit_s: float = DRAIN_LIMIT_S) -> tuple[dict, float]:
        """Polls until nothing is on its way (or limit_s); the last state and the seconds taken.
        A frame that failed (e.g. no face) is never counted processed: once the newest frame is
        final and the backlog has not moved for a second, what is left is unaccounted, not late."""
        t0 = still_since = time.perf_counter()
        last = None
        while True:
            s = self.get()
            now = time.perf_counter()
            left = backlog(s)
            if left != last:
                last, still_since = left, now
            final = (s["latest_frame"] or {}).get("status") in ("done", "failed")
            if left <= 0 or now - t0 > limit_s or (final and now - still_since > 1.0):
                return s, now - t0
            time.sleep(0.05)


def _error_code(r) -> str:
    try:
        return (r.json().get("error") or {}).get("code", "") or r.text[:80]
    except ValueError:
        return r.text[:80]


def frame_ids(session: dict) -> set[str]:
    return {str(f.get("id")) for f in session["frames"]}


def wait_shown(live: LiveSession, frame_id: str, poll_s: float = POLL_S) -> tuple[bool, str]:
    """Polls until the frame is in the session's `frames` (True, "") or it failed / timed out.
    A frame whose job is done but which stays out of `frames` is an API mismatch."""
    deadline = time.perf_counter() + FRAME_TIMEOUT_S
    done_at = None
    while time.perf_counter() < deadline:
        s = live.get()
        if frame_id in frame_ids(s):
            return True, ""
        latest = s["latest_frame"] or {}
        if str(latest.get("id")) == frame_id:
            if latest.get("status") == "failed":
                return False, f"failed:{latest.get('error_code')}"
            if latest.get("status") == "done":
                done_at = done_at or time.perf_counter()
                if time.perf_counter() - done_at > 2.0:
                    keys = sorted(s["frames"][-1]) if s["frames"] else []
                    raise ApiMismatch(
                        f"frame {frame_id} is done (latest_frame) but not in `frames` after 2 s; "
                        f"{len(s['frames'])} frames there, keys {keys}"
                    )
        time.sleep(poll_s)
    return False, "timeout"


# --- (1) latency ----------------------------------------------------------------------------------


def measure_latency(url: str, photo: bytes, n: int) -> dict:
    live = LiveSession(url)
    try:
        for _ in range(WARMUP_FRAMES):  # model, connections and caches warm
            sent = live.send(photo)
            if sent:
                wait_shown(live, str(sent["frame_id"]))
        ms, errors, post_ms = [], [], []
        for _ in range(n):
            t0 = time.perf_counter()
            sent = live.send(photo)
            post_ms.append((time.perf_counter() - t0) * 1e3)
            if sent is None:
                errors.append("post")
                continue
            shown, why = wait_shown(live, str(sent["frame_id"]))
            if shown:
                ms.append((time.perf_counter() - t0) * 1e3)
            else:
                errors.append(why)
                if errors[-3:] == ["timeout"] * 3:
                    raise RuntimeError("three frames in a row never showed in their session: stopping")
        s = live.get()
    finally:
        live.close()
    out = latency_summary(ms, errors)
    out["post_p50_ms"] = pct(post_ms, 50)
    out["http_errors"] = live.http_errors
    out["poll_s"] = POLL_S
    out["smoothed_present"] = s.get("smoothed") is not None
    out["playlist_present"] = s.get("playlist") is not None
    return out


# --- (2) and (3) offered rates --------------------------------------------------------------------


def offered_run(
    live: LiveSession, photo: bytes, rate: float, duration_s: float, start: float | None = None
) -> dict:
    """Sends frames at `rate`/s for duration_s on a fixed schedule (a late send does not bunch the
    next ones), sampling the session between frames; then waits for the backlog to drain."""
    s0 = live.get()
    start = start or time.perf_counter()
    n = max(1, round(rate * duration_s))
    sent = superseded = 0
    max_backlog, samples, next_sample = backlog(s0), 0, start
    late_ms = []
    for i in range(n):
        due = start + i / rate
        while (now := time.perf_counter()) < due:  # sample the backlog while waiting for the frame's time
            if now >= next_sample and due - now > 0.03:
                max_backlog = max(max_backlog, backlog(live.get()))
                samples += 1
                next_sample = now + SAMPLE_S
            else:
                time.sleep((min(due, next_sample) if next_sample > now else due) - now)
        late_ms.append((time.perf_counter() - due) * 1e3)
        body = live.send(photo)
        if body is not None:
            sent += 1
            superseded += len(body["superseded"])
    end = start + n / rate  # the schedule's length: the last frame's interval ends here
    while time.perf_counter() < end:
        time.sleep(min(0.05, end - time.perf_counter()))
    elapsed = time.perf_counter() - start
    s1 = live.get()
    at_end = backlog(s1)
    max_backlog = max(max_backlog, at_end)
    drained, drain_s = live.drain()
    processed = s1["frames_processed"] - s0["frames_processed"]
    dropped = drained["frames_dropped"] - s0["frames_dropped"]
    return {
        "offered_per_s": rate,
        "duration_s": round(elapsed, 2),
        "sent": sent,
        "errors": sum(live.http_errors.values()),
        "http_errors": dict(live.http_errors),
        "processed_per_s": round(processed / elapsed, 2),
        "processed_in_window": processed,
        "processed_total": drained["frames_processed"] - s0["frames_processed"],
        "dropped": dropped,
        "superseded_in_responses": superseded,
        "backlog_at_end": at_end,
        "backlog_max": max_backlog,
        "backlog_samples": samples,
        "backlog_bounded": max_backlog <= BACKLOG_BOUND,
        "drain_s": round(drain_s, 2),
        "unaccounted_after_drain": backlog(drained),
        "send_late_p90_ms": pct(late_ms, 90),
        "playlist_changes": drained.get("playlist_changes"),
    }


def measure_rates(url: str, photo: bytes, rates, duration_s: float) -> list[dict]:
    results = []
    for rate in rates:
        live = LiveSession(url)
        try:
            r = offered_run(live, photo, rate, duration_s)
        finally:
            live.close()
        results.append(r)
        print(
            f"  offered {rate:>4} /s: processed {r['processed_per_s']:5.2f} /s  dropped {r['dropped']:3d}"
            f"  backlog max {r['backlog_max']} end {r['backlog_at_end']}  errors {r['errors']}",
            flush=True,
        )
    return results


def measure_sessions(url: str, photo: bytes, counts, duration_s: float, rate: float) -> list[dict]:
    results = []
    for c in counts:
        sessions = [LiveSession(url) for _ in range(c)]
        runs: list[dict | None] = [None] * c
        failures: list[BaseException] = []
        start = time.perf_counter() + 0.2
        offsets = [start + i / (rate * c) for i in range(c)]  # spread the sessions' frames apart

        def run(i, offsets=offsets, sessions=sessions, runs=runs, failures=failures):
            try:
                runs[i] = offered_run(sessions[i], photo, rate, duration_s, start=offsets[i])
            except BaseException as exc:  # reported below, after every thread ends
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in sessions:
            s.close()
        if failures:
            raise failures[0]
        done = [r for r in runs if r]
        elapsed = max(r["duration_s"] for r in done)
        total = {
            "sessions": c,
            "offered_per_s_each": rate,
            "offered_per_s_total": round(rate * c, 2),
            "processed_per_s_total": round(sum(r["processed_in_window"] for r in done) / elapsed, 2),
            "dropped_total": sum(r["dropped"] for r in done),
            "errors_total": sum(r["errors"] for r in done),
            "backlog_max": max(r["backlog_max"] for r in done),
            "per_session": done,
        }
        results.append(total)
        print(
            f"  {c} session(s) x {rate} /s: processed {total['processed_per_s_total']:5.2f} /s total"
            f"  dropped {total['dropped_total']}  errors {total['errors_total']}",
            flush=True,
        )
    return results


# --- report ---------------------------------------------------------------------------------------


def machine() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["memory_gib"] = round(int(mem[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = os.getloadavg()[0]
    return info


def print_tables(report: dict) -> None:
    lat = report["latency"]
    print("\nframe -> update (one session, sequential)")
    print(
        table(
            [
                [
                    lat["shown"],
                    len(lat["errors"]),
                    lat["p50_ms"],
                    lat["p90_ms"],
                    lat["max_ms"],
                    lat["post_p50_ms"],
                ]
            ],
            ["frames", "errors", "p50 ms", "p90 ms", "max ms", "POST p50 ms"],
        )
    )
    print("\none session, offered rate")
    print(
        table(
            [
                [
                    r["offered_per_s"],
                    r["sent"],
                    r["processed_per_s"],
                    r["dropped"],
                    r["backlog_max"],
                    r["backlog_at_end"],
                    r["drain_s"],
                    r["errors"],
                ]
                for r in report["rates"]
            ],
            ["offered/s", "sent", "processed/s", "dropped", "backlog max", "at end", "drain s", "errors"],
        )
    )
    if report["sessions"]:
        print(f"\nconcurrent sessions, {report['settings']['concurrent_rate']} frames/s each")
        print(
            table(
                [
                    [
                        s["sessions"],
                        s["offered_per_s_total"],
                        s["processed_per_s_total"],
                        s["dropped_total"],
                        s["backlog_max"],
                        s["errors_total"],
                    ]
                    for s in report["sessions"]
                ],
                ["sessions", "offered/s", "processed/s", "dropped", "backlog max", "errors"],
            )
        )
    print()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running gateway (default: start a stack in a temp dir)")
    p.add_argument("--quick", action="store_true", help="short phases (about 2 minutes in all)")
    p.add_argument("--frames", type=int, help="latency samples (default 30; quick 10)")
    p.add_argument("--rates", type=float, nargs="+", help="offered frames/s (default 0.5 1 2 4 8)")
    p.add_argument("--duration", type=float, help="seconds per offered rate (default 20; quick 6)")
    p.add_argument("--sessions", type=int, nargs="*", help="concurrent sessions (default 1 2 4; quick 1 4)")
    p.add_argument("--sessions-duration", type=float, help="seconds per session count (default: --duration)")
    p.add_argument("--concurrent-rate", type=float, default=CONCURRENT_RATE, help="frames/s per session")
    p.add_argument("--fer-workers", type=int, default=1, help="FER worker processes of the started stack")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.frames = args.frames if args.frames is not None else base["frames"]
    args.rates = sorted(args.rates or base["rates"])
    args.duration = args.duration or base["duration_s"]
    args.sessions = args.sessions if args.sessions is not None else base["sessions"]
    if args.sessions_duration is None:
        args.sessions_duration = (
            max(args.duration, QUICK_CONCURRENT_DURATION_S) if args.quick else args.duration
        )
    if min(args.rates) <= 0 or args.frames < 1 or args.duration <= 0:
        p.error("rates and durations must be positive, --frames at least 1")
    return args


def run_all(url: str, photo: bytes, args) -> dict:
    report: dict = {
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "photo": f"skimage astronaut 480x480 on a 640x480 canvas, JPEG q85, {len(photo)} bytes",
        "settings": {
            "mode": MODE,
            "limit": LIMIT,
            "window_s": WINDOW_S,
            "frames": args.frames,
            "rates": args.rates,
            "duration_s": args.duration,
            "sessions": args.sessions,
            "sessions_duration_s": args.sessions_duration,
            "concurrent_rate": args.concurrent_rate,
            "poll_s": POLL_S,
            "backlog_bound": BACKLOG_BOUND,
            "fer_workers": None if args.url else args.fer_workers,
            "stack": args.url or "temporary (benchmarks/_stack.py)",
            "quick": args.quick,
        },
    }
    print(f"frame -> update latency ({args.frames} frames) ...", flush=True)
    report["latency"] = measure_latency(url, photo, args.frames)
    lat = report["latency"]
    print(f"  p50 {lat['p50_ms']} ms  p90 {lat['p90_ms']} ms  max {lat['max_ms']} ms  errors {lat['errors']}")
    print(f"one session at offered rates {args.rates} frames/s, {args.duration:g} s each ...", flush=True)
    report["rates"] = measure_rates(url, photo, args.rates, args.duration)
    report["sessions"] = []
    if args.sessions:
        print(f"concurrent sessions {args.sessions} at {args.concurrent_rate} frames/s each ...", flush=True)
        report["sessions"] = measure_sessions(
            url, photo, args.sessions, args.sessions_duration, args.concurrent_rate
        )
    report["headline"] = headline(report)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    photo = webcam_jpeg()
    with contextlib.ExitStack() as cleanup:
        if args.url:
            url = args.url.rstrip("/")
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from _stack import temp_stack

            print("starting a stack in a temporary directory ...", flush=True)
            stack = cleanup.enter_context(temp_stack(fer_workers=args.fer_workers, env=LOAD_TEST_ENV))
            url = stack.url
        report = run_all(url, photo, args)
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out}")
    print(json.dumps(report["headline"] | {"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
