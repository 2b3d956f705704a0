"""Event schemas: JSON round trip, strict parsing, and generated code kept current with proto/."""

import filecmp
import subprocess
import sys

import pytest
from google.protobuf import json_format

from moodtunes.config import REPO_ROOT
from moodtunes.events import EmotionDetected, JobOptions, ModelRef, from_json, job_options, to_json


def test_round_trip():
    ev = EmotionDetected(
        job_id="j",
        emotions=["a", "b"],
        probabilities=[0.25, 0.75],
        face_index=0,
        faces_detected=1,
        model=ModelRef(name="m", version=3, head="svm"),
    )
    payload = to_json(ev)
    assert payload["job_id"] == "j" and payload["model"]["version"] == "3"
    assert from_json(payload, EmotionDetected) == ev


def test_unknown_fields_are_rejected():
    with pytest.raises(json_format.ParseError, match="surprise"):
        from_json({"job_id": "j", "surprise": 1}, EmotionDetected)


def test_generated_code_matches_proto(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO_ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(REPO_ROOT / "proto/moodtunes/v1/events.proto"),
        ],
        check=True,
    )
    committed = REPO_ROOT / "packages/moodtunes-common/moodtunes/proto/moodtunes/v1"
    for name in ("events_pb2.py", "events_pb2.pyi"):
        assert filecmp.cmp(tmp_path / "moodtunes/v1" / name, committed / name, shallow=False), (
            f"{name} is stale: run `make proto`"
        )


def test_options_travel_with_the_messages():
    from moodtunes.events import FerJob, filters_of, job_options

    options = job_options(
        mode="uplift",
        limit=12,
        filters={"year_min": 1990, "genres": ["rock"]},
        diversity=0.0,
        client_key="alice",
    )
    job = from_json(to_json(FerJob(job_id="j", options=options)), FerJob)
    assert job.options == options
    assert job.options.HasField("diversity") and job.options.diversity == 0.0  # 0 is not "unset"
    f = filters_of(job.options)
    assert (f.year_min, f.year_max, f.genres, f.exclude_explicit) == (1990, None, ["rock"], False)
    assert not job_options(mode="match", limit=3).HasField("diversity")  # the mode's default


def test_messages_from_before_options_still_parse():
    """A FerJob or EmotionDetected queued by the previous release (no options) is still valid."""
    from moodtunes.events import FerJob

    assert not from_json({"job_id": "j"}, FerJob).HasField("options")
    old = {
        "job_id": "j",
        "emotions": ["a"],
        "probabilities": [1.0],
        "face_index": 0,
        "faces_detected": 1,
        "model": {"name": "m", "version": "1", "head": "svm"},
    }
    assert not from_json(old, EmotionDetected).HasField("options")


def test_field_numbers_are_never_reused():
    """The wire numbers of fields that existed before options were added stay as they were."""
    from moodtunes.events import FerJob

    numbers = {f.name: f.number for f in EmotionDetected.DESCRIPTOR.fields}
    assert numbers == {
        "job_id": 1,
        "emotions": 2,
        "probabilities": 3,
        "face_index": 4,
        "faces_detected": 5,
        "model": 6,
        "detected_at": 7,
        "options": 8,
        "group": 9,
    }
    assert {f.name: f.number for f in FerJob.DESCRIPTOR.fields} == {"job_id": 1, "options": 2}
    assert {f.name: f.number for f in JobOptions.DESCRIPTOR.fields} == {
        "mode": 1,
        "limit": 2,
        "filters": 3,
        "diversity": 4,
        "client_key": 5,
        "drive": 6,
        "session_id": 7,
    }


def test_drive_travels_with_the_options_and_defaults_to_the_largest_face():
    from moodtunes.events import drive_of

    assert (
        drive_of(from_json(to_json(job_options(mode="match", limit=3, drive="group")), JobOptions)) == "group"
    )
    assert drive_of(job_options(mode="match", limit=3)) == "face"
    assert drive_of(from_json({"mode": "match", "limit": 3}, JobOptions)) == "face"  # sent before drives
