"""Typed settings, read only from environment variables (and an optional .env), shared by all services."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
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
    # The schema owner, for migrations and the catalogue load only; services connect as DATABASE_URL's
    # role, which has row rights (SELECT/INSERT/UPDATE/DELETE) and no DDL. Unset: DATABASE_URL.
    database_owner_url: str | None = None

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
    # A recommender worker copies catalogues up to this size into memory (~120 bytes a track) and
    # ranks filtered playlists there (moodtunes_recommender.snapshot); 0 keeps them in PostgreSQL
    playlist_memory_max_tracks: int = Field(2_000_000, ge=0)

    # Gateway limits
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Photos, not strips: a longer side or a thinner shape leaves no room for a face to detect
    max_image_side: int = 20_000  # px, either side
    max_image_aspect: float = 50.0  # longer side / shorter side
    job_timeout_s: float = Field(
        180.0, description="a job not finished this long after it was created is failed (reconciler)"
    )

    # Reliability: the reconciler (moodtunes.reconciler) and the retries of the workers; how these
    # numbers fit the broker's visibility timeout is explained and checked in moodtunes/queue.py.
    stage_deadline_s: float = 15.0  # no sign of life in a stage this long: the reconciler re-sends
    max_deliveries: int = 5  # FER deliveries (jobs.attempts) before a job fails too_many_attempts
    reconcile_interval_s: float = 2.0  # how often the reconciler looks for stuck jobs
    job_retention_days: float = 7.0  # finished jobs (results) are deleted this long after finishing
    db_retry_s: float = 30.0  # a worker retries a PostgreSQL outage this long, then leaves the job
    model_retry_s: float = 30.0  # ... a model-server outage (UNAVAILABLE, DEADLINE_EXCEEDED)
    publish_retry_s: float = 30.0  # ... a Redis outage when it publishes an event

    # Gateway: who a client is, how much it may ask, what answers carry
    environment: str = "development"  # "production": the gateway refuses to start without session_secret
    session_secret: SecretStr | None = None  # signs the anonymous session cookie; one per deployment
    session_cookie_secure: bool = False  # Secure cookie (https only); always on in production
    session_max_age_s: int = 365 * 86400
    rate_limit_jobs: str = "120/minute"  # per client (its owner identity, else its IP); "" turns it off
    rate_limit_feedback: str = "300/minute"
    rate_limit_frames: str = "120/minute"  # live-session frames per client: a frame every 0.5 s
    max_unfinished_jobs_per_client: int = 20  # 429 too_many_jobs beyond this; 0 turns it off
    fer_queue_max_depth: int = 500  # 503 queue_full while more FER tasks wait; 0 turns it off
    queue_depth_cache_s: float = 1.0  # how long the gateway reuses a queue depth it read
    gateway_db_timeout_s: float = 0.5  # a request's wait for a database connection, then 503
    gateway_decode_concurrency: int = 0  # photos decoded at once per gateway process; 0: cores - 1
    gateway_redis_timeout_s: float = 0.5  # a request's Redis connect/read timeout, then 503
    cors_allow_origins: str = ""  # comma-separated origins allowed to call the API from a browser

    # Observability (moodtunes.observability)
    log_format: str = "json"  # json: one JSON object a line (services); text: for people reading along
    log_level: str = "INFO"
    # A worker's or the reconciler's Prometheus /metrics port (a worker serves its prefork children's
    # metrics from its main process); 0: not served. The gateway serves /metrics on its own port.
    metrics_port: int = 0
    tracing: str = ""  # OpenTelemetry spans: "" off, "console" (stderr), "otlp" (OTEL_EXPORTER_OTLP_*)

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
