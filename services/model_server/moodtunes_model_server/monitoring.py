"""Prometheus metrics, served the way TF Serving serves its own: with `--rest_api_port=N` (0, the
default, serves nothing) and `--monitoring_config_file` holding TF Serving's MonitoringConfig text
proto, e.g.

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

the metrics are at http://HOST:N/monitoring/prometheus/metrics (the path is the config's, that one
by default), so one scrape configuration fits this server and TF Serving. This stand-in has no REST
API: the port serves the metrics path only (anything else: 404). The metrics are this server's own:

- moodtunes_model_server_requests_total{model, code}: Predict calls by gRPC status code (OK,
  INVALID_ARGUMENT, ...); `model` is the served model's name, or "unknown" for any other asked for
- moodtunes_model_server_request_duration_seconds{model}: Predict latency, as the server sees it
- moodtunes_model_server_batch_size{model}: rows per model execution: per executed batch with
  --enable_batching, per request without
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app

from .config import ConfigError

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath

REQUESTS = Counter(
    "moodtunes_model_server_requests", "Predict calls by model and gRPC status code", ["model", "code"]
)
REQUEST_DURATION = Histogram(
    "moodtunes_model_server_request_duration_seconds",
    "Predict latency as the server sees it, failed calls included",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "moodtunes_model_server_batch_size",
    "Rows per model execution (per executed batch with batching on, per request without)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000),
)


def _monitoring_config_class():
    """tensorflow.serving.MonitoringConfig (monitoring_config.proto), declared by field name in a
    private pool like BatchingParameters in config.py: no generated code needed to read the file."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="moodtunes_model_server/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    prometheus = fdp.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=fd.LABEL_OPTIONAL, type=fd.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=fd.LABEL_OPTIONAL, type=fd.TYPE_STRING)
    monitoring = fdp.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        label=fd.LABEL_OPTIONAL,
        type=fd.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfigProto = _monitoring_config_class()


@dataclass(frozen=True)
class PrometheusOptions:
    enable: bool = False
    path: str = DEFAULT_PATH


def parse_monitoring_config(text: str, source: str = "<monitoring config>") -> PrometheusOptions:
    proto = MonitoringConfigProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    path = proto.prometheus_config.path or DEFAULT_PATH
    if not path.startswith("/"):
        raise ConfigError(f"{source}: prometheus_config.path must start with '/', got {path!r}")
    return PrometheusOptions(enable=proto.prometheus_config.enable, path=path)


def load_monitoring_config(path: str | os.PathLike) -> PrometheusOptions:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read monitoring config file: {exc}") from exc
    return parse_monitoring_config(text, str(path))


def metrics_app(path: str, registry=REGISTRY):
    """A WSGI app answering the Prometheus exposition at `path` (trailing slash or not), 404 elsewhere."""
    exposition = make_wsgi_app(registry)
    wanted = path.rstrip("/") or "/"

    def app(environ, start_response):
        asked = (environ.get("PATH_INFO") or "/").rstrip("/") or "/"
        if asked != wanted:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found\n"]
        return exposition(environ, start_response)

    return app


def serve(port: int, address: str, path: str):
    """Serves the metrics at http://ADDRESS:PORT/PATH from a daemon thread; returns the server
    (its `server_port` is the port, useful with 0) for `shutdown()`."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):  # one line per scrape on stderr is noise
            pass

    server = make_server(address, port, metrics_app(path), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
