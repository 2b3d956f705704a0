"""What every moodtunes process reports about itself: structured logs, Prometheus metrics, traces.

Logs (`setup_logging`): one handler on the root logger, JSON lines (python-json-logger) or text
(LOG_FORMAT=json|text), every record with its `service`, and while a job is being handled its
`job_id` (a context variable: set by the gateway's routes with `bind_job_id`, by `job_context`, and
around every Celery task by the task_prerun/task_postrun signals; `JobIdFilter` copies it onto each
record) and, when tracing is on, the `trace_id` and `span_id` of the current span. A Celery worker
hands its logging to this setup (the `setup_logging` signal), so nothing is logged twice.

Metrics (prometheus_client): the workers' task metrics come from Celery's signals
(`instrument_worker`): duration by task, outcomes by code, retries by reason, tasks in flight; the
worker code adds its stages (`stage`) and outcomes it decides itself (`task_outcome`). A worker with
METRICS_PORT set serves them at http://HOST:METRICS_PORT/metrics from its main process. Celery's
prefork children run the tasks, so the worker switches prometheus_client to multiprocess mode in
`worker_init`, before any child is forked: every child writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (given, or a fresh temporary folder; emptied at start, one per worker
instance) and the main process serves their sum (MultiProcessCollector). Every worker metric has
labels, so its values are only made in the process that records them, after the switch.

Traces (OpenTelemetry): off unless TRACING is `console` (spans to stderr) or `otlp` (OTLP over
HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318; the standard OTEL_* variables
apply). On, a process traces its Celery publishes and tasks (context travels in the message headers)
and its psycopg statements, plus what the service adds (FastAPI in the gateway, the gRPC client in
the FER worker). Prefork children set it up after the fork (worker_process_init), as the
instrumentation asks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from pathlib import Path

from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("moodtunes.observability")
tracer = trace.get_tracer("moodtunes")

# --- job id in every log record ----------------------------------------------------------------

_job_id: ContextVar[str | None] = ContextVar("moodtunes_job_id", default=None)
_process_service = ""  # this process's service, for the logs and the retries counted outside a task


def current_job_id() -> str | None:
    return _job_id.get()


def bind_job_id(job_id: str | None) -> Token:
    """From here on (in this context: a request's thread, a task) log records carry `job_id`, and
    the current span says which job it serves. Returns the token `unbind_job_id` takes."""
    token = _job_id.set(job_id)
    if job_id:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("moodtunes.job_id", job_id)
    return token


def unbind_job_id(token: Token) -> None:
    _job_id.reset(token)


@contextlib.contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    token = bind_job_id(job_id)
    try:
        yield
    finally:
        unbind_job_id(token)


class JobIdFilter(logging.Filter):
    """Adds `job_id` (while one is bound) and the current span's `trace_id`/`span_id` (while
    tracing) to every record that passes the handler, whichever logger made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = _job_id.get() or _celery_record_job_id(record)
        if job_id and not getattr(record, "job_id", None):
            record.job_id = job_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def _celery_record_job_id(record: logging.LogRecord) -> str | None:
    """The job of Celery's own lines about a job's task ("Task ...[id] received", "... succeeded
    in ..."), which it logs before the task starts or after it ends, outside any bound job: their
    arguments name the task, whose id is the job id (or job id:stage). Other tasks' ids (periodic
    ones) are not job ids and are left alone."""
    args = record.args
    if not record.name.startswith("celery") or not isinstance(args, Mapping):
        return None
    if args.get("name") not in _task_services or not isinstance(args.get("id"), str):
        return None
    return _job_id_of(args["id"], None)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test's capture, a redirected
    stream), never to a stream closed since the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class TextFormatter(logging.Formatter):
    """Human-readable lines: `time LEVEL logger [job X] message`, each record on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", None)
        record.job = f" [job {job_id}]" if job_id else ""
        return super().format(record).replace("\n", " | ")


def json_formatter(service: str) -> logging.Formatter:
    """One JSON object a line: time, level, logger, pid, message, service, and what a record carries
    besides (job_id, trace_id, span_id, exc_info, a call's `extra`)."""
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{asctime}{levelname}{name}{process}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        static_fields={"service": service},
        # `job` is TextFormatter's; `color_message` uvicorn's copy of the message with colour codes
        reserved_attrs=[*RESERVED_ATTRS, "job", "color_message"],
    )


def setup_logging(
    service: str, *, level: str | int | None = None, fmt: str | None = None, adopt: Iterable[str] = ()
) -> logging.Handler:
    """The process's one log handler, on the root logger, in LOG_FORMAT (json or text) at
    LOG_LEVEL (or `level`). Loggers named in `adopt` (a server's own, e.g. uvicorn's) lose their
    handlers and go through this one. Calling it again replaces the handler it installed, and
    leaves any other (a test's capture) in place."""
    from moodtunes.config import get_settings

    global _process_service
    _process_service = service
    s = get_settings()
    fmt = (fmt or s.log_format).lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT must be json or text, not {fmt!r}")
    handler = _StderrHandler()
    handler.setFormatter(json_formatter(service) if fmt == "json" else TextFormatter())
    handler.addFilter(JobIdFilter())
    handler._moodtunes = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_moodtunes", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or s.log_level.upper())
    for name in adopt:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


# --- metrics -----------------------------------------------------------------------------------

# Seconds: a recommender task takes ~0.05 s, a FER task ~0.3 s, an outage is waited out up to ~100 s
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TASK_DURATION = Histogram(
    "moodtunes_task_duration_seconds",
    "Time a worker spent on one task, from task_prerun to task_postrun",
    ["service", "task"],
    buckets=DURATION_BUCKETS,
)
STAGE_DURATION = Histogram(
    "moodtunes_stage_duration_seconds",
    "Time one stage of a task took (fer: claim, decode, detect, classify, store, publish; "
    "recommender: lock, match, store)",
    ["service", "stage"],
    buckets=DURATION_BUCKETS,
)
TASK_OUTCOMES = Counter(
    "moodtunes_task_outcomes",
    "Tasks ended, by outcome: done (stage finished, or nothing left to do), failed (the job failed "
    "with `code`), deferred (an outage outlasted its retries; the job is left for the reconciler)",
    ["service", "outcome", "code"],
)
TASK_RETRIES = Counter(
    "moodtunes_task_retries",
    "Retries inside tasks, by reason: model_unavailable, database, broker (waiting out an outage), "
    "task_error (Celery retried the whole task)",
    ["service", "reason"],
)
TASKS_IN_FLIGHT = Gauge(
    "moodtunes_tasks_in_flight",
    "Tasks running now",
    ["service"],
    multiprocess_mode="livesum",
)
MODEL_CALL_DURATION = Histogram(
    "moodtunes_model_call_duration_seconds",
    "Duration of one Predict call to the model server, failed calls included",
    ["model"],
    buckets=DURATION_BUCKETS,
)
MODEL_CALL_BATCH_SIZE = Histogram(
    "moodtunes_model_call_batch_size",
    "Faces sent in one Predict call",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
RECONCILER_ACTIONS = Counter(
    "moodtunes_reconciler_actions",
    "What the reconciler did to stuck jobs: resent (FER task sent again), too_many_attempts and "
    "timeout (job failed with that code)",
    ["action"],
)

OUTCOMES = ("done", "failed", "deferred")


@contextlib.contextmanager
def stage(service: str, name: str) -> Iterator[None]:
    """Times one stage of a task (moodtunes_stage_duration_seconds) and, when tracing, spans it."""
    started = time.perf_counter()
    try:
        with tracer.start_as_current_span(f"{service}.{name}") as span:
            if span.is_recording() and _job_id.get():
                span.set_attribute("moodtunes.job_id", _job_id.get())
            yield
    finally:
        STAGE_DURATION.labels(service, name).observe(time.perf_counter() - started)


@contextlib.contextmanager
def model_call(model: str, rows: int) -> Iterator[None]:
    """Times one Predict call of `rows` faces."""
    MODEL_CALL_BATCH_SIZE.labels(model).observe(rows)
    started = time.perf_counter()
    try:
        yield
    finally:
        MODEL_CALL_DURATION.labels(model).observe(time.perf_counter() - started)


# The running task's service and the outcome its code reported (see task_outcome).
_task: ContextVar[dict | None] = ContextVar("moodtunes_task", default=None)


def task_outcome(outcome: str, code: str = "") -> None:
    """Says how the running task ends, when its return alone does not tell (it catches what it
    handles): counted once at task_postrun. Outside a task (a direct call in a test) nothing."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}")
    state = _task.get()
    if state is not None:
        state["outcome"], state["code"] = outcome, code


def note_retry(reason: str, service: str | None = None) -> None:
    """One retry of the running task's service (or this process's), e.g. while an outage lasts."""
    state = _task.get()
    service = service or (state["service"] if state else _process_service)
    if service:
        TASK_RETRIES.labels(service, reason).inc()


def serve_metrics(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> int:
    """Serves Prometheus metrics over HTTP on `port` (0: any free one) from a daemon thread;
    returns the port. In multiprocess mode (PROMETHEUS_MULTIPROC_DIR) the registry is the sum of
    every process's files."""
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server.server_port


def enable_multiprocess(path: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Switches prometheus_client to multiprocess mode in this process and those it forks from now
    on. The folder (`path`, else PROMETHEUS_MULTIPROC_DIR, else a new temporary one) is emptied of
    earlier runs' files. Returns it, and whether it was made here (to remove at shutdown)."""
    from prometheus_client import values

    given = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="moodtunes-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    # prometheus_client picks its value class when imported; values made from now on use the files
    values.ValueClass = values.get_value_class()
    return folder, not given


# --- Celery workers ----------------------------------------------------------------------------

_task_services: dict[str, str] = {}  # task name -> service label
_worker_state: dict[str, object] = {}
_running: dict[tuple[str | None, int], dict] = {}  # (task id, thread) -> its state, prerun to postrun
_signals_lock = threading.Lock()
_signals_connected = False


def _job_id_of(task_id: str | None, args) -> str | None:
    """The job a task serves: its payload's job_id, else its task id (job id, or job id:stage)."""
    if args and isinstance(args[0], dict) and isinstance(args[0].get("job_id"), str):
        return args[0]["job_id"]
    return task_id.split(":")[0] if task_id else None


def _on_task_prerun(sender=None, task_id=None, task=None, args=None, **_kwargs) -> None:
    service = _task_services.get(getattr(task, "name", ""))
    if service is None:
        return
    state = {
        "service": service,
        "started": time.perf_counter(),
        "outcome": None,
        "code": "",
    }
    state["tokens"] = (_task.set(state), bind_job_id(_job_id_of(task_id, args)))
    _running[(task_id, threading.get_ident())] = state
    TASKS_IN_FLIGHT.labels(service).inc()


def _on_task_postrun(sender=None, task_id=None, task=None, state=None, **_kwargs) -> None:
    running = _running.pop((task_id, threading.get_ident()), None)
    if running is None:
        return
    service = running["service"]
    TASKS_IN_FLIGHT.labels(service).dec()
    TASK_DURATION.labels(service, task.name).observe(time.perf_counter() - running["started"])
    outcome, code = running["outcome"], running["code"]
    if outcome is None and state != "RETRY":
        outcome, code = ("done", "") if state == "SUCCESS" else ("failed", "internal_error")
    if outcome is not None:
        TASK_OUTCOMES.labels(service, outcome, code).inc()
    task_token, job_token = running["tokens"]
    unbind_job_id(job_token)
    _task.reset(task_token)


def _on_task_retry(sender=None, **_kwargs) -> None:
    service = _task_services.get(getattr(sender, "name", ""))
    if service:
        TASK_RETRIES.labels(service, "task_error").inc()


def _is_prefork(worker) -> bool:
    pool = getattr(worker, "pool_cls", None)
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}.{pool!r}"
    return "prefork" in name or "processes" in name


def _on_setup_logging(loglevel=None, **_kwargs) -> None:
    """Celery's worker logging, replaced by ours: one handler, nothing logged twice."""
    setup_logging(_process_service or "worker", level=loglevel)


def _on_worker_init(sender=None, **_kwargs) -> None:
    """Main process, before the pool forks: multiprocess metrics (when served), and tracing for a
    pool without children."""
    from moodtunes.config import get_settings

    if get_settings().metrics_port:
        folder, made_here = enable_multiprocess()
        _worker_state["multiproc_dir"] = folder if made_here else None
    if not _is_prefork(sender):
        _setup_worker_tracing()


def _on_worker_ready(**_kwargs) -> None:
    from moodtunes.config import get_settings

    port = get_settings().metrics_port
    if port and "metrics_port" not in _worker_state:
        _worker_state["metrics_port"] = serve_metrics(port)
        log.info("serving Prometheus metrics at :%d/metrics", _worker_state["metrics_port"])


def _on_worker_process_init(**_kwargs) -> None:
    _setup_worker_tracing()


def _on_worker_process_shutdown(pid=None, **_kwargs) -> None:
    """A child that ends takes its live gauges (tasks in flight) with it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def _on_worker_shutdown(**_kwargs) -> None:
    folder = _worker_state.pop("multiproc_dir", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def _setup_worker_tracing() -> None:
    setup_tracing(_process_service or "worker", instrumentors=_worker_state.get("instrumentors", ()))


def instrument_worker(
    service: str, tasks: Iterable[str], *, tracing_instrumentors: Iterable[Callable[[], None]] = ()
) -> None:
    """Reports the tasks named `tasks` as `service`'s (metrics, job ids in logs) and makes a Celery
    worker in this process log, serve metrics and trace as the module docstring says; extra
    instrumentations (e.g. the gRPC client) run where tracing is set up. Signals are connected once
    per process, whichever worker modules it imports."""
    global _process_service, _signals_connected
    from celery import signals

    _process_service = service
    for name in tasks:
        _task_services[name] = service
    instrumentors = list(_worker_state.get("instrumentors", ()))
    instrumentors += [i for i in tracing_instrumentors if i not in instrumentors]
    _worker_state["instrumentors"] = instrumentors
    with _signals_lock:
        if _signals_connected:
            return
        signals.task_prerun.connect(_on_task_prerun, weak=False)
        signals.task_postrun.connect(_on_task_postrun, weak=False)
        signals.task_retry.connect(_on_task_retry, weak=False)
        signals.setup_logging.connect(_on_setup_logging, weak=False)
        signals.worker_init.connect(_on_worker_init, weak=False)
        signals.worker_ready.connect(_on_worker_ready, weak=False)
        signals.worker_process_init.connect(_on_worker_process_init, weak=False)
        signals.worker_process_shutdown.connect(_on_worker_process_shutdown, weak=False)
        signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
        _signals_connected = True


# --- tracing -----------------------------------------------------------------------------------

TRACING_EXPORTERS = ("console", "otlp")
_tracing: dict[str, object] = {}


def span_exporter(setting: str):
    """The span exporter TRACING names; None when tracing is off ("", "none", "off")."""
    setting = (setting or "").strip().lower()
    if setting in ("", "none", "off"):
        return None
    if setting == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
    if setting == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"TRACING must be one of '', {', '.join(TRACING_EXPORTERS)}; not {setting!r}")


def tracing_enabled() -> bool:
    return "provider" in _tracing


def setup_tracing(
    service: str, *, exporter=None, instrumentors: Iterable[Callable[[], None]] = (), batch: bool = True
) -> bool:
    """Turns tracing on in this process when TRACING names an exporter (or `exporter` is given):
    a tracer provider for `moodtunes-<service>`, Celery and psycopg instrumented, then each of
    `instrumentors` called. Once per process; returns whether tracing is on."""
    from moodtunes.config import get_settings

    if tracing_enabled():
        return True
    exporter = exporter or span_exporter(get_settings().tracing)
    if exporter is None:
        return False
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"moodtunes-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracing["provider"] = provider
    CeleryInstrumentor().instrument(tracer_provider=provider)
    # Connections opened from now on are traced (pools open lazily, after this in every service)
    PsycopgInstrumentor().instrument(tracer_provider=provider)
    for instrument in instrumentors:
        instrument()
    log.info("tracing on: %s spans of moodtunes-%s", type(exporter).__name__, service)
    return True


def shutdown_tracing(uninstrument: Iterable[object] = ()) -> None:
    """Ends what setup_tracing started (for tests: the process's other tests run untraced again):
    the Celery and psycopg instrumentations and those in `uninstrument` (instrumentor instances)
    undone, and the provider's spans flushed. The global provider stays (OpenTelemetry allows one
    per process), recording nothing once shut down."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    provider = _tracing.pop("provider", None)
    if provider is None:
        return
    for instrumentor in (CeleryInstrumentor(), PsycopgInstrumentor(), *uninstrument):
        instrumentor.uninstrument()
    provider.shutdown()
