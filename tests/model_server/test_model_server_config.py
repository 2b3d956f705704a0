"""The batching parameters file (the deploy one included) and the command line, without TensorFlow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from moodtunes_model_server.config import (
    BatchingOptions,
    ConfigError,
    load_batching_parameters,
    parse_batching_parameters,
)
from moodtunes_model_server.testing import server_command

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "tfserving"


def test_deploy_batching_config():
    """The file real TF Serving reads (compose, k8s) is the one the local stack's server reads."""
    options = load_batching_parameters(DEPLOY / "batching.config")
    assert options == BatchingOptions(
        max_batch_size=32, batch_timeout_micros=2000, num_batch_threads=2, max_enqueued_batches=100
    )


def test_batching_defaults_are_tf_servings():
    options = parse_batching_parameters("")
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (
        1000,
        0,
        10,
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "max_batch_size { value: 32 }\nmax_batchsize { value: 3 }",
            '2:1 : Message type "tensorflow.serving.BatchingParameters" has no field named "max_batchsize"',
        ),
        ("max_batch_size: 32", "max_batch_size"),  # the wrapper message is required, as in TF Serving
        ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be >= 1"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be >= 0"),
        # TF Serving fields this server does not implement are refused, never silently ignored
        ("allowed_batch_sizes: 16", 'has no field named "allowed_batch_sizes"'),
        ("enable_large_batch_splitting { value: true }", 'has no field named "enable_large_batch_splitting"'),
    ],
)
def test_bad_batching_parameters(text, message):
    with pytest.raises(ConfigError) as err:
        parse_batching_parameters(text, "batching.config")
    assert message in str(err.value) and str(err.value).startswith("batching.config: ")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(args), capture_output=True, text=True, timeout=60)


def test_cli_rejects_a_bad_batching_file_before_loading_anything(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 32 }\nbatch_timeout { value: 1 }\n")
    result = run_cli(
        f"--model_base_path={tmp_path}", "--enable_batching=true", f"--batching_parameters_file={bad}"
    )
    assert result.returncode == 2
    assert 'has no field named "batch_timeout"' in result.stderr
    assert "Invalid configuration" in result.stderr


def test_cli_needs_a_model_base_path():
    result = run_cli("--port=0")
    assert result.returncode == 2 and "--model_base_path must be given" in result.stderr
    help_text = run_cli("--help").stdout
    assert "--model_base_path" in help_text and "--batching_parameters_file" in help_text


def test_warmup_records_run_on_load_and_a_bad_one_fails_the_load(tmp_path, caplog):
    import logging

    import tensorflow as tf

    from moodtunes_fer_training.warmup import warmup_requests, write_warmup_requests
    from moodtunes_model_server.models import WARMUP_FILE, load_servable, replay_warmup
    from moodtunes_model_server.testing import save_toy_model

    version = save_toy_model(tmp_path / "toy" / "1")
    assert replay_warmup(load_servable("toy", 1, str(version))) == 0  # no file: nothing to replay
    write_warmup_requests(version, "toy")
    with caplog.at_level(logging.INFO, logger="moodtunes_model_server.models"):
        load_servable("toy", 1, str(version))
    assert "Replayed 3 warm-up request(s)" in caplog.text

    bad = warmup_requests("toy", batch_sizes=(2,))[0]
    bad.predict_log.request.inputs["pixels"].CopyFrom(bad.predict_log.request.inputs.pop("image"))
    with tf.io.TFRecordWriter(str(version / WARMUP_FILE)) as writer:
        writer.write(bad.SerializeToString())
    with pytest.raises(TypeError, match="pixels"):  # the signature has no input named `pixels`
        load_servable("toy", 1, str(version))
