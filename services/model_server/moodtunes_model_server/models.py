"""Model versions on disk -> loaded SavedModels, with TF Serving's file-system source semantics.

Layout: `<base_path>/<integer version>/saved_model.pb` (+ `variables/`). Anything else in the base
path or in a version directory (a `head/` folder, `model_card.json`, ...) is ignored. The newest
version is served (TF Serving's default policy, latest 1); a new one is loaded before the one it
replaces is unloaded, so there is always a version to answer with. Differences from TF Serving,
chosen for a development stand-in: a version directory without `saved_model.pb(txt)` is treated as
not yet written (skipped, not a failed load); if the newest version fails to load, the previous one
keeps serving; a version that failed for good is retried once its `saved_model.pb` changes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from .errors import ServingError

log = logging.getLogger("moodtunes_model_server.models")

DEFAULT_SIGNATURE = "serving_default"
_VERSION_DIR = re.compile(r"[0-9]+")
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # TF Serving's name and format
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap


@dataclass
class Signature:
    """One callable signature: its SignatureDef (to validate requests) and concrete function."""

    name: str
    definition: meta_graph_pb2.SignatureDef
    function: object

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.function(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}


@dataclass
class Servable:
    model: str
    version: int
    path: str
    signatures: dict[str, Signature]
    loaded: object = field(repr=False)  # keeps variables alive while any request holds the servable


@dataclass
class _LoadFailure:
    attempts: int
    next_try: float
    mtime: float


def saved_model_file(version_dir: str) -> Path | None:
    for name in _SAVED_MODEL_FILES:
        p = Path(version_dir, name)
        if p.is_file():
            return p
    return None


def list_versions(base_path: str) -> dict[int, str]:
    """Integer-named version directories that hold a SavedModel; everything else is ignored."""
    versions: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if _VERSION_DIR.fullmatch(entry.name) and entry.is_dir() and saved_model_file(entry.path):
                versions.setdefault(int(entry.name), entry.path)
    return versions


def _read_meta_graph(path: Path) -> meta_graph_pb2.MetaGraphDef:
    saved_model = saved_model_pb2.SavedModel()
    if path.suffix == ".pbtxt":
        text_format.Parse(path.read_text(), saved_model)
    else:
        saved_model.ParseFromString(path.read_bytes())
    graphs = list(saved_model.meta_graphs)
    for graph in graphs:
        if "serve" in graph.meta_info_def.tags:
            return graph
    if len(graphs) == 1:
        return graphs[0]
    raise ValueError(f"{path}: no MetaGraph tagged 'serve' among {len(graphs)}")


def load_servable(model: str, version: int, path: str) -> Servable:
    meta_graph = _read_meta_graph(saved_model_file(path))
    loaded = tf.saved_model.load(path, tags=list(meta_graph.meta_info_def.tags) or None)
    signatures = {
        key: Signature(key, meta_graph.signature_def[key], fn)
        for key, fn in loaded.signatures.items()
        if key in meta_graph.signature_def
    }
    servable = Servable(model, version, path, signatures, loaded)
    replay_warmup(servable)
    return servable


def replay_warmup(servable: Servable) -> int:
    """Runs the version's exported warm-up requests (PredictionLog records) before it serves, as
    TF Serving does, so the first real request does not pay for tracing; a failing record fails
    the load. Returns how many requests ran."""
    from moodtunes_tfserving.proto.tensorflow_serving.apis import prediction_log_pb2
    from moodtunes_tfserving.tensors import make_ndarray

    path = Path(servable.path) / WARMUP_FILE
    if not path.is_file():
        return 0
    started, count = time.perf_counter(), 0
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: only predict_log warm-up records are supported")
        request = entry.predict_log.request
        signature = servable.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
        signature.run({name: make_ndarray(tensor) for name, tensor in request.inputs.items()})
        count += 1
    log.info(
        "Replayed %d warm-up request(s) for {name: %s version: %d} in %.2fs",
        count,
        servable.model,
        servable.version,
        time.perf_counter() - started,
    )
    return count


class ModelManager:
    """Owns one model's loaded versions; one thread polls its base path for new ones."""

    def __init__(
        self,
        name: str,
        base_path: str,
        poll_wait_seconds: float = 1.0,
        max_num_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
    ):
        self.name = name
        self.base_path = base_path
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval_s = load_retry_interval_s
        self._lock = threading.Lock()
        self._servables: dict[int, Servable] = {}
        self._failures: dict[int, _LoadFailure] = {}
        self._last_scan_note = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups (called from request threads) -----------------------------------------------

    def get_servable(self, name: str, version: int | None = None) -> Servable:
        with self._lock:
            versions = self._servables if name == self.name else {}
            if version is None:
                if not versions:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})"
                    )
                return versions[max(versions)]
            if version not in versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({name}, {version})"
                )
            return versions[version]

    def available(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    # -- loading -------------------------------------------------------------------------------

    def _scan(self) -> dict[int, str]:
        try:
            found = list_versions(self.base_path)
            note = (
                "" if found else f"No versions of servable {self.name} found under base path {self.base_path}"
            )
        except OSError as exc:
            found, note = {}, f"Cannot read base path of servable {self.name}: {exc}"
        if note and self._last_scan_note != note:
            log.warning("%s", note)
        self._last_scan_note = note
        return found

    def poll_once(self) -> list[str]:
        """Syncs the loaded versions with the base path; returns load errors of this round."""
        found = self._scan()
        newest = max(found, default=None)
        errors = []
        if newest is not None and newest not in self._servables and self._should_try(newest, found[newest]):
            error = self._load(newest, found[newest])
            if error:
                errors.append(error)
        with self._lock:
            loaded = sorted(self._servables)
        for version in loaded:
            # An older version keeps serving until the newest one is up (or its files are gone).
            if version != newest and (newest in loaded or version not in found):
                self._unload(version)
        return errors

    def _should_try(self, version: int, path: str) -> bool:
        failure = self._failures.get(version)
        if failure is None:
            return True
        model_file = saved_model_file(path)
        if model_file is not None and model_file.stat().st_mtime != failure.mtime:
            del self._failures[version]  # rewritten since it failed: start afresh
            return True
        return failure.attempts <= self.max_num_load_retries and time.monotonic() >= failure.next_try

    def _load(self, version: int, path: str) -> str | None:
        name = self.name
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        started = time.perf_counter()
        try:
            servable = load_servable(name, version, path)
        except Exception as exc:  # a broken version must not take the server down
            prev = self._failures.get(version)
            attempts = (prev.attempts if prev else 0) + 1
            model_file = saved_model_file(path)
            mtime = model_file.stat().st_mtime if model_file else 0.0
            self._failures[version] = _LoadFailure(
                attempts, time.monotonic() + self.load_retry_interval_s, mtime
            )
            message = (
                f"Loading servable: {{name: {name} version: {version}}} failed: {type(exc).__name__}: {exc}"
            )
            gave_up = attempts > self.max_num_load_retries
            log.error(
                "%s%s",
                message,
                " (giving up)" if gave_up else f" (retry {attempts}/{self.max_num_load_retries} later)",
            )
            return message
        with self._lock:
            self._servables[version] = servable
        self._failures.pop(version, None)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} signatures=%s in %.1fs",
            name,
            version,
            sorted(servable.signatures),
            time.perf_counter() - started,
        )
        return None

    def _unload(self, version: int) -> None:
        with self._lock:
            self._servables.pop(version, None)
        log.info("Unloaded servable version {name: %s version: %d}", self.name, version)

    # -- polling thread ------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Polls every poll_wait_seconds; 0 or less means the startup scan was the only one."""
        if self.poll_wait_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # keep polling whatever one round hit
                log.exception("file system poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
