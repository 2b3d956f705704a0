"""Server-side batching with the semantics of TF Serving's SharedBatchScheduler + BatchingSession.

Concurrent requests for the same queue key (model, version, signature and the non-batch shapes of the
inputs) are concatenated along axis 0, run once, and the outputs are sliced back per request.
A batch is handed to one of `num_batch_threads` threads when it is full, when a newer batch has been
opened behind it, or when its first task has waited `batch_timeout_micros`.

As in TF Serving: a request with more rows than `max_batch_size` is rejected with INVALID_ARGUMENT
("Task size N is larger than maximum input batch size M"); a full queue (`max_enqueued_batches`
batches waiting) answers UNAVAILABLE.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np

from .config import BatchingOptions
from .errors import ServingError
from .monitoring import BATCH_SIZE

log = logging.getLogger("moodtunes_model_server.batching")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class _Task:
    """One Predict call: its inputs, and the future its rows of the batch's outputs go to."""

    inputs: dict[str, np.ndarray]
    size: int
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    start: float = 0.0  # monotonic time its first task arrived

    def add(self, task: _Task) -> None:
        if not self.tasks:
            self.start = time.monotonic()
        self.tasks.append(task)
        self.size += task.size


class _Queue:
    def __init__(self, key: Hashable, fn: RunFn, label: str):
        self.key = key
        self.fn = fn
        self.label = label
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])  # last one is open
        self.in_flight = 0

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and len(self.batches) == 1 and not self.batches[0].tasks


class BatchScheduler:
    """Shared scheduler: one queue per key, a fixed pool of batch threads over all queues."""

    def __init__(self, options: BatchingOptions, model: str = ""):
        self.options = options
        self._batch_sizes = BATCH_SIZE.labels(model)  # moodtunes_model_server_batch_size{model}
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._stopping = False
        # Observability for tests and logs: rows per executed batch (before padding) -> count.
        self.batch_size_counts: collections.Counter[int] = collections.Counter()
        self.batches_executed = 0
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch_threads-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for t in self._threads:
            t.start()

    # -- submission ---------------------------------------------------------------------------

    def submit(self, key: Hashable, fn: RunFn, inputs: dict[str, np.ndarray], label: str = "") -> Future:
        """Enqueues one request (all inputs share dim 0); the future yields its full outputs."""
        size = _batch_size(inputs)
        opts = self.options
        if size > opts.max_batch_size:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {size} is larger than maximum input batch size {opts.max_batch_size}",
            )
        with self._cond:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, fn, label)
            if queue.batches[-1].size + size > opts.max_batch_size:
                if len(queue.batches) >= opts.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full; currently "
                        f"{len(queue.batches)} batches enqueued and max_enqueued_batches is "
                        f"{opts.max_enqueued_batches}",
                    )
                queue.batches.append(_Batch())
            task = _Task(inputs, size)
            queue.batches[-1].add(task)
            self._cond.notify_all()
        return task.future

    # -- execution ----------------------------------------------------------------------------

    def _take_ready_batch(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """Pops the oldest schedulable batch; else returns how long until one may become ready."""
        now = time.monotonic()
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        best: _Queue | None = None
        wait: float | None = None
        for queue in self._queues.values():
            head = queue.batches[0]
            if not head.tasks:
                continue
            ready = (
                len(queue.batches) > 1 or head.size >= limit or self._stopping or now - head.start >= timeout
            )
            if ready:
                if best is None or head.start < best.batches[0].start:
                    best = queue
            else:
                remaining = head.start + timeout - now
                wait = remaining if wait is None else min(wait, remaining)
        if best is None:
            return None, None, wait
        batch = best.batches.popleft()
        if not best.batches:
            best.batches.append(_Batch())
        best.in_flight += 1
        return best, batch, None

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    queue, batch, wait = self._take_ready_batch()
                    if batch is not None:
                        break
                    if self._stopping and all(q.idle for q in self._queues.values()):
                        return
                    self._cond.wait(timeout=wait)
            try:
                self._execute(queue, batch)
            except Exception:  # never lose a batch thread
                log.exception("batch thread error in queue %s", queue.label)
            finally:
                with self._cond:
                    queue.in_flight -= 1
                    if queue.idle and self._queues.get(queue.key) is queue:
                        del self._queues[queue.key]  # unloaded versions must not keep their queue alive
                    self._cond.notify_all()

    def _execute(self, queue: _Queue, batch: _Batch) -> None:
        tasks = batch.tasks
        rows = batch.size
        started = time.perf_counter()
        try:
            if len(tasks) == 1:
                merged = tasks[0].inputs
            else:
                merged = {k: np.concatenate([t.inputs[k] for t in tasks]) for k in tasks[0].inputs}
            outputs = queue.fn(merged)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or value.shape[0] != rows:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Batched output tensor '{name}' has shape {list(np.shape(value))}; "
                        f"its 0th dimension must equal the batch size {rows}",
                    )
        except Exception as exc:  # one bad batch must fail its requests, never the thread
            for task in tasks:
                task.future.set_exception(exc)
            log.debug("batch failed queue=%s rows=%d: %s", queue.label, rows, exc)
            return
        offset = 0
        for task in tasks:
            task.future.set_result({k: v[offset : offset + task.size] for k, v in outputs.items()})
            offset += task.size
        with self._cond:
            self.batch_size_counts[rows] += 1
            self.batches_executed += 1
        self._batch_sizes.observe(rows)
        log.debug(
            "batch executed queue=%s rows=%d tasks=%d ms=%.1f",
            queue.label,
            rows,
            len(tasks),
            (time.perf_counter() - started) * 1e3,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stops taking requests, runs what is queued, and joins the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict:
        with self._cond:
            return {
                "batches_executed": self.batches_executed,
                "batch_size_counts": dict(self.batch_size_counts),
            }


def _batch_size(inputs: dict[str, np.ndarray]) -> int:
    sizes = set()
    for value in inputs.values():
        if np.ndim(value) == 0:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Batching Run() input tensors must have at least one dimension",
            )
        sizes.add(value.shape[0])
    if len(sizes) != 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Batching Run() input tensors must have equal 0th-dimension size",
        )
    return sizes.pop()
