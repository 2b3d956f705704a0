"""One trace per job, across the services, with the standard OpenTelemetry instrumentations: the
gateway's request (FastAPI), its Celery publish, the FER task taken from the real Redis by a real
(in-process, solo pool) Celery worker, the FER worker's Predict call over real gRPC to a model
server (an in-process stand-in answering the FER contract), every psycopg statement, the
recommender's task behind the FER worker's publish. Spans are kept in memory (the SDK's
InMemorySpanExporter); the Celery and gRPC hops are proven by a remote parent: the context came
in the message headers and the call metadata, not from the same thread."""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from moodtunes import db, jobs, observability, queue
from moodtunes.config import get_settings
from tests.fer.test_worker import FakeHead

pytestmark = pytest.mark.integration


@pytest.fixture
def tracing():
    """Tracing on in this process, as TRACING does in a service, spans kept in memory; off again after."""
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if observability.tracing_enabled():
        pytest.skip("tracing was set up in this process before")
    exporter = InMemorySpanExporter()
    grpc_client, grpc_server = GrpcInstrumentorClient(), GrpcInstrumentorServer()
    observability.setup_tracing(
        "test", exporter=exporter, batch=False, instrumentors=[grpc_client.instrument, grpc_server.instrument]
    )
    db.close_pools()  # connections opened from here on are traced
    yield exporter
    observability.shutdown_tracing([grpc_client, grpc_server])
    db.close_pools()


class FerModel:
    """The model server's Predict for the FER contract: 8 features and 5 CNN probabilities a face."""

    def Predict(self, request, context):
        from moodtunes_tfserving.proto.tensorflow_serving.apis import predict_pb2
        from moodtunes_tfserving.tensors import make_ndarray, write_tensor_proto

        n = len(make_ndarray(request.inputs["image"]))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 3
        write_tensor_proto(np.ones((n, 8), np.float32), response.outputs["features"])
        write_tensor_proto(np.full((n, 5), 0.2, np.float32), response.outputs["probabilities"])
        return response


@pytest.fixture
def model_server(tracing):
    """A gRPC server made after tracing is on, as the model server makes its own (server spans)."""
    from moodtunes_tfserving.proto.tensorflow_serving.apis import prediction_service_pb2_grpc

    servicer = type("Servicer", (FerModel, prediction_service_pb2_grpc.PredictionServiceServicer), {})()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def workers(model_server, clean_jobs, redis_server, monkeypatch):
    """The FER and recommender workers consuming from the suite's Redis in this process, the FER
    one calling the model server through its real gRPC backend."""
    from celery.contrib.testing.worker import start_worker

    from moodtunes_fer import worker as fer
    from moodtunes_fer.inference import FerPipeline, GrpcBackend
    from moodtunes_recommender import worker as recommender

    redis.Redis.from_url(redis_server.url).flushdb()
    monkeypatch.setattr(queue, "_producer", None)  # the FER worker publishes to this Redis
    pipeline = FerPipeline(GrpcBackend(model_server, "fer_vgg16"), head=FakeHead())
    monkeypatch.setattr(fer, "pipeline", lambda: pipeline)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    s = get_settings()
    options = {"pool": "solo", "perform_ping_check": False, "loglevel": "WARNING", "shutdown_timeout": 30}
    # Two workers in one process: without kombu's event loop, whose hub is process-global, neither
    # can use or close the other's poller (a worker once died here on "I/O operation on closed
    # epoll object" and the job stalled at `recommending`). They poll Redis directly instead.
    options["use_eventloop"] = False
    for app in (fer.app, recommender.app):  # made when first imported, maybe before the suite's Redis ran
        monkeypatch.setitem(app.conf, "broker_url", redis_server.url)
    with (
        start_worker(fer.app, queues=[s.fer_queue], **options),
        start_worker(recommender.app, queues=[s.recommend_queue], **options),
    ):
        yield
    for handler in [h for h in root.handlers if h not in handlers]:  # the workers' logging setup
        root.removeHandler(handler)
    root.setLevel(level)


def test_a_job_is_one_trace_from_the_gateway_through_both_workers_the_model_server_and_the_database(
    tracing, workers, face_jpeg
):
    from opentelemetry.trace import SpanKind

    from moodtunes_gateway.main import create_app

    with TestClient(create_app()) as client:  # made with tracing on: FastAPI instrumented
        r = client.post("/v1/jobs", files={"image": ("face.jpg", face_jpeg)})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while jobs.get(job_id)["status"] != "done":
            assert time.monotonic() < deadline, jobs.get(job_id)
            time.sleep(0.1)
    time.sleep(0.5)  # the recommender's task span ends at task_postrun, just after the commit

    spans = tracing.get_finished_spans()
    [request] = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v1/jobs"]
    assert request.attributes["moodtunes.job_id"] == job_id
    trace = [s for s in spans if s.context.trace_id == request.context.trace_id]
    by_name = {}
    for span in trace:
        by_name.setdefault(span.name, []).append(span)

    def one(name: str, kind: SpanKind):
        [span] = [s for s in by_name.get(name, []) if s.kind == kind]
        return span

    # gateway -> Celery -> FER worker: the task's parent is the publish, received in the message
    publish_fer = one(f"apply_async/{queue.FER_TASK}", SpanKind.PRODUCER)
    run_fer = one(f"run/{queue.FER_TASK}", SpanKind.CONSUMER)
    assert run_fer.parent.is_remote and run_fer.parent.span_id == publish_fer.context.span_id
    # FER worker -> gRPC -> model server: the server's span continues the call's, from its metadata
    predict = "/tensorflow.serving.PredictionService/Predict"
    call, served = one(predict, SpanKind.CLIENT), one(predict, SpanKind.SERVER)
    assert served.parent.is_remote and served.parent.span_id == call.context.span_id
    stages = {s.name: s for s in trace if s.name.startswith("fer.")}
    assert set(stages) == {
        "fer.claim",
        "fer.decode",
        "fer.detect",
        "fer.classify",
        "fer.store",
        "fer.publish",
    }
    assert call.parent.span_id == stages["fer.classify"].context.span_id
    assert all(s.attributes["moodtunes.job_id"] == job_id for s in stages.values())
    # FER worker -> Celery -> recommender
    publish_rec = one(f"apply_async/{queue.RECOMMEND_TASK}", SpanKind.PRODUCER)
    run_rec = one(f"run/{queue.RECOMMEND_TASK}", SpanKind.CONSUMER)
    assert publish_rec.parent.span_id == stages["fer.publish"].context.span_id
    assert run_rec.parent.is_remote and run_rec.parent.span_id == publish_rec.context.span_id
    # ... -> PostgreSQL, at each end: the gateway's insert, the FER claim, the recommender's lock
    database = [s for s in trace if s.kind == SpanKind.CLIENT and "db.system" in s.attributes]
    parents = {s.parent.span_id for s in database}
    lock = [s for s in trace if s.name == "recommender.lock"]
    assert len(lock) == 1 and lock[0].context.span_id in parents
    assert stages["fer.claim"].context.span_id in parents
    assert any(
        s.parent.span_id == request.context.span_id or s.start_time < publish_fer.start_time for s in database
    )
