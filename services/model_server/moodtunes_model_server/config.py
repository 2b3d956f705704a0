"""Reading `--batching_parameters_file`, TF Serving's `BatchingParameters` text proto, so
deploy/tfserving/batching.config serves both servers.

The message's generated code is in no pip package (session_bundle_config.proto): it is declared here
by field name (text format only looks at names), so protobuf's own text parser does the parsing and
rejects unknown fields with line and column. Only the fields this server implements are declared;
TF Serving's others (allowed_batch_sizes, enable_large_batch_splitting, ...) are rejected by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2


class ConfigError(ValueError):
    """A configuration file or flag combination the server cannot start with."""


# Int64Value fields of tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
_BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")


def _batching_parameters_class():
    """Builds the message class in a private pool so it can never clash with generated code."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="moodtunes_model_server/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = fdp.message_type.add(name="BatchingParameters")
    fd = descriptor_pb2.FieldDescriptorProto
    for number, name in enumerate(_BATCHING_FIELDS, start=1):
        message.field.add(
            name=name,
            number=number,
            label=fd.LABEL_OPTIONAL,
            type=fd.TYPE_MESSAGE,
            type_name=".google.protobuf.Int64Value",
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


BatchingParametersProto = _batching_parameters_class()


@dataclass(frozen=True)
class BatchingOptions:
    """Batching settings, defaults as TF Serving's SharedBatchScheduler::QueueOptions."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigError(
                f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )


def parse_batching_parameters(text: str, source: str = "<batching parameters>") -> BatchingOptions:
    """Parses BatchingParameters text format; unknown fields and bad values raise ConfigError."""
    proto = BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    kwargs = {name: getattr(proto, name).value for name in _BATCHING_FIELDS if proto.HasField(name)}
    try:
        return BatchingOptions(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_batching_parameters(path: str | os.PathLike) -> BatchingOptions:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read batching parameters file: {exc}") from exc
    return parse_batching_parameters(text, str(path))
