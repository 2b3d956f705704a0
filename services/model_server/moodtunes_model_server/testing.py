"""Helpers for test suites (this package's and the end-to-end ones).

`run_server(...)` starts the server as a real subprocess on a free loopback port and yields once its
models are loaded; `save_toy_model(...)` writes a small deterministic SavedModel with the FER model's
contract (`image` float32 [None,48,48,1] in 0..255 -> `features`, `probabilities`), and
`toy_predict(...)` computes the same outputs with numpy. Importing this module does not import
TensorFlow; `save_toy_model` does.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .server import READY_MESSAGE

IMAGE_SHAPE = (48, 48, 1)


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log."""


@dataclass
class ServerProcess:
    address: str  # "127.0.0.1:PORT", ready for grpc.insecure_channel / moodtunes_tfserving's client
    port: int
    process: subprocess.Popen
    log_path: Path
    _final_log: str | None = field(default=None, repr=False)

    def log_text(self) -> str:
        """Everything the server logged so far (kept after the server and its log file are gone)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line matching {pattern!r} within {timeout_s}s")
            time.sleep(0.05)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


def server_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "moodtunes_model_server", *args]


@contextlib.contextmanager
def run_server(
    *,
    model_base_path: str | os.PathLike,
    model_name: str = "default",
    enable_batching: bool = False,
    batching_parameters_file: str | os.PathLike | None = None,
    file_system_poll_wait_seconds: float = 1.0,
    extra_args: Sequence[str] = (),
    log_level: str = "INFO",
    log_path: str | os.PathLike | None = None,
    startup_timeout_s: float = 120.0,
    shutdown_timeout_s: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Runs `python -m moodtunes_model_server` on 127.0.0.1 with a kernel-chosen port.

    Yields when the server logs that it is serving (initial model versions loaded); on exit sends
    SIGTERM and waits, killing it only if it does not stop in `shutdown_timeout_s`.
    """
    args = [
        "--port=0",
        "--bind_address=127.0.0.1",
        f"--file_system_poll_wait_seconds={file_system_poll_wait_seconds}",
        f"--log_level={log_level}",
        f"--model_name={model_name}",
        f"--model_base_path={model_base_path}",
    ]
    if enable_batching:
        args.append("--enable_batching=true")
    if batching_parameters_file is not None:
        args.append(f"--batching_parameters_file={batching_parameters_file}")
    args += list(extra_args)

    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix="moodtunes-model-server-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            server_command(args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess("", 0, process, log_path)
    try:
        ready = re.compile(re.escape(READY_MESSAGE) + r" [^:\s]+:(\d+)")
        deadline = time.monotonic() + startup_timeout_s
        while True:
            match = ready.search(server.log_text())
            if match:
                server.port = int(match.group(1))
                server.address = f"127.0.0.1:{server.port}"
                break
            if process.poll() is not None:
                raise ServerStartError(
                    f"model server exited with {process.returncode} before it was ready:\n{server.log_text()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"model server not ready after {startup_timeout_s}s:\n{server.log_text()}"
                )
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=shutdown_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        server._final_log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if own_log:
            log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_model_server(
    models_dir: str | os.PathLike, model_name: str = "fer_vgg16", **kwargs
) -> Iterator[str]:
    """Serves `<models_dir>/<model_name>` (newest version) and yields its "127.0.0.1:PORT" address.

    Keyword arguments go to `run_server` (e.g. enable_batching=True).
    """
    with run_server(model_base_path=Path(models_dir) / model_name, model_name=model_name, **kwargs) as server:
        yield server.address


# --- toy model ------------------------------------------------------------------------------------


def _toy_weights(seed: int, feature_dim: int, num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = int(np.prod(IMAGE_SHAPE))
    return {
        "w1": rng.normal(0.0, 0.05, (pixels, feature_dim)).astype(np.float32),
        "b1": rng.normal(0.0, 0.1, (feature_dim,)).astype(np.float32),
        "w2": rng.normal(0.0, 1.0, (feature_dim, num_classes)).astype(np.float32),
        "b2": rng.normal(0.0, 0.1, (num_classes,)).astype(np.float32),
    }


def toy_predict(
    images: np.ndarray, *, seed: int = 0, feature_dim: int = 8, num_classes: int = 5
) -> dict[str, np.ndarray]:
    """What a toy model saved with the same arguments answers, computed with numpy."""
    w = _toy_weights(seed, feature_dim, num_classes)
    x = np.asarray(images, np.float32).reshape(len(images), -1) / np.float32(255.0)
    features = np.maximum(x @ w["w1"] + w["b1"], 0.0)
    logits = features @ w["w2"] + w["b2"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"features": features, "probabilities": e / e.sum(axis=1, keepdims=True)}


def save_toy_model(
    export_dir: str | os.PathLike, *, seed: int = 0, feature_dim: int = 8, num_classes: int = 5
) -> Path:
    """Writes a SavedModel to `export_dir` (e.g. `<base>/<version>`), atomically by rename.

    The directory appears complete or not at all, so a polling server never sees half a version.
    """
    import tensorflow as tf

    export_dir = Path(export_dir)
    weights = {k: tf.constant(v) for k, v in _toy_weights(seed, feature_dim, num_classes).items()}

    class ToyFer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = {k: tf.Variable(v, trainable=False, name=k) for k, v in weights.items()}

        @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="image")])
        def serve(self, image):
            x = tf.reshape(image, [-1, int(np.prod(IMAGE_SHAPE))]) / 255.0
            features = tf.nn.relu(tf.matmul(x, self.w["w1"]) + self.w["b1"])
            probabilities = tf.nn.softmax(tf.matmul(features, self.w["w2"]) + self.w["b2"])
            return {"features": features, "probabilities": probabilities}

    module = ToyFer()
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = export_dir.parent / f".{export_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    os.replace(staging, export_dir)
    return export_dir
