"""The live-session benchmark's helpers: its webcam frame, the figures it derives from a session's
counters, and its offered-rate loop against a fake session (no stack)."""

import io
import time

import pytest
from PIL import Image

from tests.benchmarks_live import import_benchmark


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("live_session")


def test_the_webcam_frame_is_a_640x480_jpeg_with_one_face(bench):
    from moodtunes_fer.detection import decode_grey, detect_faces

    photo = bench.webcam_jpeg()
    img = Image.open(io.BytesIO(photo))
    assert (img.format, img.size) == ("JPEG", (640, 480))
    assert len(detect_faces(decode_grey(photo, 40_000_000), 24)) == 1


def rate(offered, dropped=0, errors=0, processed=1.0, bounded=True):
    return {
        "offered_per_s": offered,
        "dropped": dropped,
        "errors": errors,
        "processed_per_s": processed,
        "backlog_bounded": bounded,
    }


def test_max_rate_without_drops_stops_at_the_first_rate_that_drops(bench):
    assert bench.max_rate_without_drops([rate(4, dropped=3), rate(1), rate(2), rate(8)]) == 2
    assert bench.max_rate_without_drops([rate(1), rate(2, errors=1), rate(4)]) == 1
    assert bench.max_rate_without_drops([rate(0.5, dropped=1), rate(1)]) is None
    assert bench.max_rate_without_drops([]) is None


def test_headline_names_the_figures_and_takes_the_highest_offered_rate(bench):
    report = {
        "latency": bench.latency_summary([100.0, 200.0, 300.0], ["timeout"]),
        "rates": [rate(1, processed=1.0), rate(8, dropped=20, processed=5.5), rate(4, processed=3.9)],
    }
    h = bench.headline(report)
    assert h["frame_to_update_ms_p50"] == 200.0 and h["frame_to_update_ms_p90"] == 280.0
    assert h["max_frames_per_s_without_drops"] == 4
    assert h["processed_frames_per_s_at_max_offered"] == 5.5 and h["max_offered_per_s"] == 8
    assert h["backlog_bounded"] is True
    assert report["latency"]["frames"] == 4 and report["latency"]["max_ms"] == 300.0


def test_backlog_is_what_is_neither_processed_nor_dropped(bench):
    assert bench.backlog({"frames_received": 10, "frames_processed": 6, "frames_dropped": 3}) == 1


def test_quick_mode_is_short_and_options_override_it(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.frames < 30 and quick.duration * len(quick.rates) <= 60
    args = bench.parse_args(["--quick", "--rates", "2", "1", "--duration", "3", "--sessions"])
    assert args.rates == [1.0, 2.0] and args.duration == 3.0 and args.sessions == []
    with pytest.raises(SystemExit):
        bench.parse_args(["--rates", "0"])


class FakeSession:
    """One worker that takes `service_s` a frame; a frame waiting when a newer one arrives is
    superseded, as the gateway does: at most one in flight and one waiting."""

    def __init__(self, service_s):
        self.service_s = service_s
        self.received = self.processed = self.dropped = 0
        self.busy_until = None  # the frame in flight finishes then
        self.queued = False
        self.http_errors = {}

    def _advance(self):
        now = time.perf_counter()
        while self.busy_until is not None and self.busy_until <= now:
            self.processed += 1
            self.busy_until = self.busy_until + self.service_s if self.queued else None
            self.queued = False

    def send(self, photo):
        self._advance()
        superseded = []
        if self.busy_until is None:
            self.busy_until = time.perf_counter() + self.service_s
        elif self.queued:
            superseded, self.dropped = ["older"], self.dropped + 1
        else:
            self.queued = True
        self.received += 1
        return {"frame_id": str(self.received), "superseded": superseded}

    def get(self):
        self._advance()
        return {
            "frames_received": self.received,
            "frames_processed": self.processed,
            "frames_dropped": self.dropped,
        }

    def drain(self, limit_s=2.0):
        t0 = time.perf_counter()
        while self.busy_until is not None and time.perf_counter() - t0 < limit_s:
            time.sleep(0.005)
            self._advance()
        return self.get(), time.perf_counter() - t0


def test_offered_run_keeps_the_schedule_and_counts_a_fast_session_without_drops(bench):
    r = bench.offered_run(FakeSession(service_s=0.001), b"jpeg", rate=20, duration_s=0.5)
    assert r["sent"] == 10 and r["dropped"] == 0 and r["errors"] == 0
    assert 0.45 <= r["duration_s"] < 1.5
    assert r["processed_total"] == 10 and r["unaccounted_after_drain"] == 0
    assert r["backlog_bounded"] is True


def test_offered_run_sees_drops_and_a_bounded_backlog_when_frames_come_too_fast(bench):
    r = bench.offered_run(FakeSession(service_s=0.12), b"jpeg", rate=25, duration_s=0.6)
    assert r["sent"] == 15 and r["dropped"] > 0
    assert r["processed_per_s"] < 25
    assert r["backlog_max"] <= bench.BACKLOG_BOUND and r["backlog_bounded"] is True
    assert r["processed_total"] + r["dropped"] == r["sent"]
