"""Typed settings, read only from environment variables (and an optional .env), shared by all services."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]


def _local_port(setting: str, default: int) -> str:
    """A port of the local stack (`make up`, moodtunes_cli.localstack), so the defaults below reach a
    stack started on other ports."""
    return os.environ.get(setting) or str(default)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Defaults: the local stack's embedded servers (MOODTUNES_POSTGRES_PORT, MOODTUNES_REDIS_PORT)
    database_url: str = Field(
        default_factory=lambda: (
            f"postgresql://moodtunes@127.0.0.1:{_local_port('MOODTUNES_POSTGRES_PORT', 55432)}/moodtunes"
        )
    )
    redis_url: str = Field(
        default_factory=lambda: f"redis://127.0.0.1:{_local_port('MOODTUNES_REDIS_PORT', 56379)}/0"
    )

    # Model server (TensorFlow Serving, or the local stand-in with the same gRPC API)
    model_server: str = Field(
        default_factory=lambda: f"127.0.0.1:{_local_port('MOODTUNES_MODEL_SERVER_PORT', 8500)}"
    )
    model_name: str = "fer_vgg16"
    model_signature: str = "serving_default"
    model_version: int | None = None  # None: whatever the server serves (its newest)
    model_timeout_s: float = 10.0
    models_dir: Path = REPO_ROOT / "models"  # where the PCA+classifier heads live, per version
    catalogue_path: Path = REPO_ROOT / "data" / "catalogue" / "tracks_catalogue.csv.gz"

    # Gateway limits
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    job_timeout_s: float = Field(180.0, description="a job not finished after this is marked failed")
    stale_sweep_interval_s: float = 30.0  # how often the gateway fails jobs past job_timeout_s

    # Queues
    fer_queue: str = "fer"
    recommend_queue: str = "recommend"

    # Face detection
    # How the worker frames a detected face, tuned so a face in a photo is cropped the way FER2013
    # crops its faces (benchmarks/fer_photo_scenes.py; README "Whole photos score like crops").
    face_margin: float = 0.0  # extra border around the detected box, as a fraction of its size
    face_shift: float = 0.0  # crop centre moved down by this fraction of the box height
    min_face_px: int = 24


@lru_cache
def get_settings() -> Settings:
    return Settings()
