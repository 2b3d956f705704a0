"""BatchScheduler in-process, with a plain numpy function standing in for the model."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from moodtunes_model_server.batching import BatchScheduler
from moodtunes_model_server.config import BatchingOptions
from moodtunes_model_server.errors import ServingError

KEY = ("toy", 1, "serving_default")


class Model:
    """Doubles `x` and records the row count of every call."""

    def __init__(self, fail_first: bool = False, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.seen: list[np.ndarray] = []
        self.started = threading.Event()
        self.fail_first = fail_first
        self.gate = gate

    def __call__(self, inputs):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append(len(inputs["x"]))
        self.seen.append(inputs["x"])
        if self.fail_first and len(self.calls) == 1:
            raise ValueError("model exploded")
        return {"y": inputs["x"] * 2, "rows": np.full(len(inputs["x"]), len(inputs["x"]))}


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


@pytest.fixture()
def make():
    created = []

    def _make(**kwargs) -> BatchScheduler:
        kwargs.setdefault("num_batch_threads", 1)
        scheduler = BatchScheduler(BatchingOptions(**kwargs))
        created.append(scheduler)
        return scheduler

    yield _make
    for scheduler in created:
        scheduler.shutdown()


def test_concurrent_tasks_share_one_batch_and_get_their_own_rows(make):
    scheduler, model = make(max_batch_size=4, batch_timeout_micros=10_000_000), Model()
    futures = [scheduler.submit(KEY, model, rows(10 * i, 1)) for i in range(4)]
    results = [f.result(timeout=5) for f in futures]
    assert model.calls == [4]  # full batch runs at once, long before the 10 s timeout
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], [[20.0 * i]])
        assert result["rows"].tolist() == [4]
    assert scheduler.batch_size_counts == {4: 1}


def test_timeout_flushes_a_partial_batch(make):
    scheduler, model = make(max_batch_size=32, batch_timeout_micros=50_000), Model()
    result = scheduler.submit(KEY, model, rows(0, 2)).result(timeout=5)
    np.testing.assert_array_equal(result["y"], [[0.0], [2.0]])
    assert model.calls == [2]


def test_a_task_that_does_not_fit_opens_the_next_batch(make):
    scheduler, model = make(max_batch_size=4, batch_timeout_micros=10_000_000), Model()
    first = scheduler.submit(KEY, model, rows(0, 3))
    second = scheduler.submit(KEY, model, rows(3, 2))
    np.testing.assert_array_equal(first.result(timeout=5)["y"].ravel(), [0, 2, 4])
    assert model.calls[0] == 3  # closed by the newer batch behind it, not by the timeout
    scheduler.submit(KEY, model, rows(5, 2))  # fills the second batch to 4
    np.testing.assert_array_equal(second.result(timeout=5)["y"].ravel(), [6, 8])
    assert model.calls == [3, 4]


def test_queues_are_per_key(make):
    scheduler, model = make(max_batch_size=2, batch_timeout_micros=10_000_000), Model()
    a = scheduler.submit(("a",), model, rows(0, 1))
    b = scheduler.submit(("b",), model, rows(1, 1))
    scheduler.submit(("a",), model, rows(2, 1))
    assert a.result(timeout=5)["rows"].tolist() == [2]
    assert not b.done()  # a different key never joins a's batch
    scheduler.submit(("b",), model, rows(3, 1))
    assert b.result(timeout=5)["rows"].tolist() == [2]


def test_oversized_task_is_invalid_argument(make):
    scheduler = make(max_batch_size=4)
    with pytest.raises(ServingError) as err:
        scheduler.submit(KEY, Model(), rows(0, 5))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message == "Task size 5 is larger than maximum input batch size 4"


def test_inputs_must_share_dim0(make):
    scheduler = make()
    with pytest.raises(ServingError, match="equal 0th-dimension size"):
        scheduler.submit(KEY, Model(), {"x": np.zeros((2, 1)), "z": np.zeros((3, 1))})
    with pytest.raises(ServingError, match="at least one dimension"):
        scheduler.submit(KEY, Model(), {"x": np.float32(1.0)})


def test_full_queue_is_unavailable(make):
    gate = threading.Event()
    scheduler = make(max_batch_size=1, max_enqueued_batches=2, batch_timeout_micros=10_000_000)
    model = Model(gate=gate)
    running = scheduler.submit(KEY, model, rows(0, 1))
    assert model.started.wait(5)  # the only batch thread is now busy
    queued = [scheduler.submit(KEY, model, rows(i, 1)) for i in (1, 2)]  # two batches wait
    with pytest.raises(ServingError) as err:
        scheduler.submit(KEY, model, rows(3, 1))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "currently 2 batches enqueued and max_enqueued_batches is 2" in err.value.message
    gate.set()
    assert [f.result(timeout=5)["y"].item() for f in [running, *queued]] == [0.0, 2.0, 4.0]


def test_a_failing_batch_fails_its_requests_and_the_thread_survives(make):
    scheduler, model = make(max_batch_size=2, batch_timeout_micros=10_000_000), Model(fail_first=True)
    futures = [scheduler.submit(KEY, model, rows(i, 1)) for i in range(2)]
    for f in futures:
        with pytest.raises(ValueError, match="model exploded"):
            f.result(timeout=5)
    later = [scheduler.submit(KEY, model, rows(i, 1)) for i in range(2)]
    assert [f.result(timeout=5)["y"].item() for f in later] == [0.0, 2.0]


def test_shutdown_runs_queued_work_then_refuses(make):
    scheduler, model = make(max_batch_size=8, batch_timeout_micros=60_000_000), Model()
    pending = scheduler.submit(KEY, model, rows(0, 1))
    scheduler.shutdown(timeout=5)
    assert pending.result(timeout=0)["y"].item() == 0.0
    with pytest.raises(ServingError) as err:
        scheduler.submit(KEY, model, rows(0, 1))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
