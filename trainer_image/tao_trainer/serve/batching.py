"""`tao serve`'s batching: requests wait in a bounded queue; one worker thread takes every request waiting (up
to `max_batch` rows, a row being one choice of one prompt) and decodes them together, one forward pass per
token for the whole batch (a batch per LoRA adapter when requests name several).

This is static batching: a request arriving while a batch runs waits for the next one (vLLM's continuous
batching adds it at the next step). A full queue is answered at once with a 429 and a Retry-After header
rather than left to time out.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from tao_trainer.serve.decode import Failed, Job, decode
from tao_trainer.serve.request import RequestError

if TYPE_CHECKING:
    from tao_trainer.serve.backend import TransformersBackend

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_QUEUE", "Batcher"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
"""Rows (choices) decoded together at most."""
DEFAULT_MAX_QUEUE = 256
"""Requests waiting at most; one more is a 429."""
GATHER_SECONDS = 0.005
"""How long the worker waits, once a request arrives on an idle server, for others arriving with it."""


class Batcher:
    def __init__(
        self,
        backend: TransformersBackend,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.max_queue = max(1, max_queue)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.max_queue)
        self._held: Job | None = (
            None  # taken from the queue but over the batch's size: first in the next batch
        )
        self.stats = {"batches": 0, "forwardPasses": 0, "requests": 0, "rows": 0, "largestBatchRows": 0}
        self._thread = threading.Thread(target=self._run, name="tao-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request, or a 429 when the queue is full (the client may retry after a second)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise RequestError(
                f"tao serve is at capacity: {self.max_queue} requests are waiting; retry later",
                status=429,
                type="rate_limit_error",
                code="queue_full",
            ) from None

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1)
        self._thread.join(timeout=10)

    def _next_batch(self) -> list[Job] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, rows = [first], first.rows
        deadline = time.monotonic() + GATHER_SECONDS
        while rows < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            if rows + job.rows > self.max_batch:
                self._held = job
                break
            batch.append(job)
            rows += job.rows
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            groups: dict[str | None, list[Job]] = defaultdict(list)
            for job in batch:
                if not job.cancelled:
                    groups[job.adapter].append(job)
            for jobs in groups.values():
                self._decode(jobs)

    def _decode(self, jobs: list[Job]) -> None:
        try:
            steps = decode(self.backend, jobs)
        except Exception as exc:  # a bug or out of memory: fail these requests, keep serving
            log.exception("tao serve: generation failed")
            error = RequestError(f"internal error: {type(exc).__name__}", status=500, type="server_error")
            for job in jobs:
                job.events.put(Failed(error))
            return
        rows = sum(job.rows for job in jobs)
        self.stats["batches"] += 1
        self.stats["forwardPasses"] += steps
        self.stats["requests"] += len(jobs)
        self.stats["rows"] += rows
        self.stats["largestBatchRows"] = max(self.stats["largestBatchRows"], rows)
