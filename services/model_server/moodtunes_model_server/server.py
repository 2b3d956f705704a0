"""`moodtunes-model-server`: a local stand-in for `tensorflow_model_server`, as the local stack runs it.

One model, its newest version, Predict over gRPC, optional batching. Flags keep
tensorflow_model_server's names and meanings:

    moodtunes-model-server --port=8500 --model_name=fer_vgg16 --model_base_path=models/fer_vgg16 \\
        --enable_batching=true --batching_parameters_file=deploy/tfserving/batching.config \\
        --rest_api_port=8501 --monitoring_config_file=deploy/tfserving/monitoring.config

Prometheus metrics as TF Serving exposes its own (monitoring.py): on --rest_api_port, at the path
the --monitoring_config_file names. TRACING=console|otlp (as the moodtunes services read it) traces
the Predict calls, continuing the trace a client's gRPC metadata carries.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

from .config import BatchingOptions, ConfigError, load_batching_parameters
from .monitoring import PrometheusOptions, load_monitoring_config

log = logging.getLogger("moodtunes_model_server")

READY_MESSAGE = "Running gRPC ModelServer at"  # same words as TF Serving's; testing.run_server waits for it
_INT32_MAX = 2**31 - 1  # TF Serving lifts gRPC's 4 MB message limit the same way


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moodtunes-model-server",
        description="Serves a TF SavedModel over TensorFlow Serving's gRPC Predict, with TF Serving's "
        "flags, model layout, version polling and batching.",
    )
    p.add_argument(
        "--port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one, logged at start)"
    )
    p.add_argument(
        "--bind_address",
        default="0.0.0.0",
        help="address to listen on (not a TF Serving flag, which always binds 0.0.0.0; default 0.0.0.0)",
    )
    p.add_argument(
        "--model_name",
        default="default",
        help="model name when --model_base_path is used (default 'default')",
    )
    p.add_argument(
        "--model_base_path", default="", help="directory holding integer-named version directories"
    )
    p.add_argument(
        "--enable_batching",
        type=_parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="merge concurrent Predict requests into batches",
    )
    p.add_argument(
        "--batching_parameters_file",
        default="",
        help="BatchingParameters text proto (max_batch_size, batch_timeout_micros, ...); "
        "without it TF Serving's defaults apply",
    )
    p.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="seconds between scans of the base paths for new versions; 0 scans only at startup",
    )
    p.add_argument(
        "--grpc_max_threads",
        type=int,
        default=max(16, 4 * (os.cpu_count() or 1)),
        help="threads handling gRPC calls; with batching, bounds how many requests can wait in a batch",
    )
    p.add_argument(
        "--rest_api_port",
        type=int,
        default=0,
        help="HTTP port of the Prometheus metrics (this stand-in has no REST API); 0 (default) serves "
        "nothing. As in TF Serving, --monitoring_config_file must enable prometheus_config",
    )
    p.add_argument(
        "--monitoring_config_file",
        default="",
        help="MonitoringConfig text proto: prometheus_config { enable: true path: '...' } "
        "(default path /monitoring/prometheus/metrics)",
    )
    p.add_argument(
        "--log_level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="not a TF Serving flag; DEBUG also logs every executed batch",
    )
    return p


class _OneLineFormatter(logging.Formatter):
    """Keeps every record (tracebacks included) on one line so log collectors see one event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _OneLineFormatter(
            "%(asctime)s.%(msecs)03d %(levelname).1s %(process)d %(name)s] %(message)s", "%Y-%m-%d %H:%M:%S"
        )
    )
    root = logging.getLogger("moodtunes_model_server")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def resolve_monitoring(args: argparse.Namespace) -> PrometheusOptions:
    """The metrics endpoint the flags ask for (enable False: none)."""
    if args.rest_api_port < 0:
        raise ConfigError("--rest_api_port must be >= 0")
    monitoring = (
        load_monitoring_config(args.monitoring_config_file)
        if args.monitoring_config_file
        else PrometheusOptions()
    )
    if monitoring.enable and not args.rest_api_port:
        log.warning("prometheus_config is enabled but --rest_api_port is 0: metrics are not served")
    return monitoring


def setup_tracing() -> bool:
    """With TRACING=console or otlp: a span for every Predict call, child of the caller's span when
    its metadata carries one (the FER worker's gRPC client sends it). Before the gRPC server is made."""
    setting = os.environ.get("TRACING", "").strip().lower()
    if setting in ("", "none", "off"):
        return False
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorServer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if setting == "console":
        exporter = ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    elif setting == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        raise ConfigError(f"TRACING must be console or otlp (or empty), not {setting!r}")
    provider = TracerProvider(resource=Resource.create({"service.name": "moodtunes-model-server"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcInstrumentorServer().instrument(tracer_provider=provider)
    return True


def resolve_config(args: argparse.Namespace) -> BatchingOptions | None:
    """Checks the flags and reads the batching options: everything that can be checked without TF."""
    if not args.model_base_path:
        raise ConfigError("--model_base_path must be given")
    batching = None
    if args.enable_batching:
        batching = (
            load_batching_parameters(args.batching_parameters_file)
            if args.batching_parameters_file
            else BatchingOptions()
        )
    elif args.batching_parameters_file:
        log.warning("--batching_parameters_file is ignored without --enable_batching")
    if args.grpc_max_threads < 1:
        raise ConfigError("--grpc_max_threads must be >= 1")
    return batching


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        batching = resolve_config(args)
        monitoring = resolve_monitoring(args)
        tracing = setup_tracing()
    except ConfigError as exc:
        log.error("Invalid configuration: %s", exc)
        return 2

    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("Received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TF's C++ INFO chatter is not ours to print
    import grpc

    from moodtunes_tfserving.proto.tensorflow_serving.apis import prediction_service_pb2_grpc

    from .batching import BatchScheduler
    from .models import ModelManager
    from .servicer import PredictionServicer

    manager = ModelManager(
        args.model_name, args.model_base_path, poll_wait_seconds=args.file_system_poll_wait_seconds
    )
    errors = manager.poll_once()
    if errors:
        log.error("Failed to start server: %s", "; ".join(errors))
        return 1
    if stop.is_set():
        return 0

    scheduler = BatchScheduler(batching, model=manager.name) if batching else None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", _INT32_MAX),
            ("grpc.max_send_message_length", _INT32_MAX),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, scheduler), server
    )
    try:
        port = server.add_insecure_port(f"{args.bind_address}:{args.port}")
    except RuntimeError as exc:
        port, cause = 0, exc
    else:
        cause = None
    if not port:
        log.error(
            "Failed to start server: cannot listen on %s:%d%s",
            args.bind_address,
            args.port,
            f" ({cause})" if cause else "",
        )
        return 1
    metrics_server = None
    if monitoring.enable and args.rest_api_port:
        from .monitoring import serve

        try:
            metrics_server = serve(args.rest_api_port, args.bind_address, monitoring.path)
        except OSError as exc:
            log.error("Failed to start server: cannot serve metrics on port %d (%s)", args.rest_api_port, exc)
            return 1
        # TF Serving's words for its HTTP port; testing.run_server reads the port from this line
        log.info(
            "Exporting HTTP/REST API at:%s:%d ... metrics at %s",
            args.bind_address,
            metrics_server.server_port,
            monitoring.path,
        )
    server.start()
    manager.start_polling()

    served = f"{manager.name} {manager.available() or '(no versions yet)'}"
    batching_text = (
        f"batching max_batch_size={batching.max_batch_size} "
        f"batch_timeout_micros={batching.batch_timeout_micros} "
        f"num_batch_threads={batching.num_batch_threads} max_enqueued_batches={batching.max_enqueued_batches}"
        if batching
        else "batching off"
    )
    log.info(
        "%s %s:%d ... models: %s; %s%s",
        READY_MESSAGE,
        args.bind_address,
        port,
        served,
        batching_text,
        "; tracing on" if tracing else "",
    )

    while not stop.wait(0.5):
        pass
    server.stop(grace=5).wait()
    if metrics_server is not None:
        metrics_server.shutdown()
    if scheduler is not None:
        scheduler.shutdown()
    manager.stop()
    log.info("Shutdown complete")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
