"""What happens to a served request after its response went out: parsing, size cap, redaction, queueing.

None of it runs on the proxy's event loop. ``CapturePipeline.submit`` (on the loop) only checks the body's
size and appends it to a small queue bounded by count and bytes; a capture thread parses the body, builds
the records (``records.py``) and sends each through the redaction hook, then hands the survivors back to
the loop, which offers them to the buffer. Full queue (or ``max_large_pending`` requests over 64 KiB
already waiting): dropped and counted as ``dropped_full``; a body
or record above ``max_record_bytes``: dropped and counted as ``too_large``.

The hook runs in a worker process (``RedactionWorker``), one record at a time, with a time budget per
record: a record not redacted in time is dropped and counted (``redact_timeouts``) and the worker is
killed and started again (fail closed: an unredacted record is never kept). The worker runs at a lower
CPU priority, so a hostile 1 MB prompt costs the serving path neither the GIL nor much CPU. A hook that
cannot be sent to a process (a closure; ``--redact`` always names an importable one) runs in the capture
thread instead: a record that took longer than the budget is still dropped, but the budget cannot
interrupt it there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from typing import Any

from .buffer import CaptureBuffer, Stats, record_size
from .records import Record, records_from_request, response_texts
from .redaction import Hook

log = logging.getLogger("tao.capture")

_HEADER = 8
# Requests over this size are "large": at most ``max_large_pending`` of them wait at once, so that a flood of
# big (e.g. hostile) prompts cannot crowd ordinary ones out of the queue.
_LARGE = 64 << 10
_START_TIMEOUT = 30.0


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``, or None at EOF or past ``deadline`` (monotonic)."""
    chunks: list[bytes] = []
    while n > 0:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> bytes | None:
    header = _read_exact(fd, _HEADER, deadline)
    return None if header is None else _read_exact(fd, int.from_bytes(header, "big"), deadline)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(_HEADER, "big") + data)
    while view:
        view = view[os.write(fd, view) :]


def worker_main() -> None:
    """The redaction worker: a pickled hook, then JSON records in and ``[status, record]`` out."""
    out = os.dup(1)
    os.dup2(2, 1)  # what the hook prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    with contextlib.suppress(OSError):
        os.nice(10)  # the serving path comes first
    frame = _read_frame(0)
    if frame is None:
        return
    hook = pickle.loads(frame)
    _write_frame(out, b'["ready", null]')
    while (frame := _read_frame(0)) is not None:
        try:
            kept = hook(json.loads(frame))
            reply = ["ok", kept] if kept is None or isinstance(kept, dict) else ["error", "not a dict"]
            data = json.dumps(reply).encode("ascii")
        except Exception as exc:  # noqa: BLE001 - reported, the record is dropped
            data = json.dumps(["error", type(exc).__name__]).encode("ascii")
        _write_frame(out, data)


class RedactionWorker:
    """A child process that runs the hook on one record at a time, killed and restarted on a timeout."""

    def __init__(self, hook: Hook, budget: float) -> None:
        self._hook = pickle.dumps(hook)  # raises for hooks that are not importable by name
        self.budget = budget
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        code = "from tao_trainer.capture.pipeline import worker_main; worker_main()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        try:
            _write_frame(proc.stdin.fileno(), self._hook)
            ready = _read_frame(proc.stdout.fileno(), time.monotonic() + _START_TIMEOUT)
        except OSError:
            ready = None
        if ready != b'["ready", null]':
            self.close()
            raise RuntimeError("the redaction worker did not start (is the hook importable by name?)")

    def redact(self, record: Record) -> tuple[str, Any]:
        """("ok", record or None) | ("error", name) | ("timeout", None)."""
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            _write_frame(proc.stdin.fileno(), json.dumps(record).encode("ascii"))
            frame = _read_frame(proc.stdout.fileno(), time.monotonic() + self.budget)
        except OSError:
            frame = None
        if frame is None:
            self.close()  # killed mid-record: the next record gets a fresh worker
            return "timeout", None
        status, value = json.loads(frame)
        return status, value

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


class _InThread:
    """The fallback for hooks a process cannot import: the budget is checked after the call."""

    def __init__(self, hook: Hook, budget: float) -> None:
        self.hook, self.budget = hook, budget

    def redact(self, record: Record) -> tuple[str, Any]:
        started = time.monotonic()
        try:
            kept = self.hook(record)
        except Exception as exc:  # noqa: BLE001 - fail closed
            return "error", type(exc).__name__
        if time.monotonic() - started > self.budget:
            return "timeout", None
        return "ok", kept

    def close(self) -> None:
        pass


class CapturePipeline:
    """The queue of served requests waiting to become records, and the thread that works through it."""

    def __init__(
        self,
        buffer: CaptureBuffer,
        stats: Stats,
        hook: Hook | None,
        *,
        budget: float = 2.0,
        max_record_bytes: int = 1 << 20,
        max_pending: int = 1000,
        max_pending_bytes: int = 64 << 20,
        max_large_pending: int = 4,
    ) -> None:
        self.buffer, self.stats, self.hook = buffer, stats, hook
        self.budget, self.max_record_bytes = budget, max_record_bytes
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self._jobs: collections.deque[tuple[str, bytes, bytes | None, str, str]] = collections.deque()
        # Large requests wait in their own queue, taken only when no small one waits: a stream of big
        # hostile prompts delays and drops big prompts, never the ordinary ones.
        self._large: collections.deque[tuple[str, bytes, bytes | None, str, str]] = collections.deque()
        self._pending_bytes = 0
        self._large_pending = 0
        self.max_large_pending = max_large_pending
        self._busy = False
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redactor: RedactionWorker | _InThread | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.hook is not None:
            try:
                worker = RedactionWorker(self.hook, self.budget)
                await self._loop.run_in_executor(None, worker.start)
                self._redactor = worker
            except Exception as exc:  # noqa: BLE001 - pickling or starting failed: the fallback
                log.warning("capture: redaction hook runs in-thread, without preemption (%s)", exc)
                self._redactor = _InThread(self.hook, self.budget)
        self._thread = threading.Thread(target=self._work, name="tao-capture-pipeline", daemon=True)
        self._thread.start()

    def submit(
        self, endpoint: str, body: bytes, response_body: bytes | bytearray | None, headers: Any
    ) -> None:
        """Queue one served request (on the loop; never blocks)."""
        if len(body) > self.max_record_bytes:
            self.stats.too_large += 1
            return
        response = bytes(response_body) if response_body is not None else None
        size = len(body) + (len(response) if response is not None else 0)
        with self._cond:
            large = size > _LARGE
            if (
                len(self._jobs) >= self.max_pending
                or self._pending_bytes + size > self.max_pending_bytes
                or (large and self._large_pending >= self.max_large_pending)
            ):
                self.stats.dropped_full += 1
                return
            self._large_pending += int(large)
            encoding = headers.get("Content-Encoding", "")
            job = (endpoint, body, response, encoding, headers.get("Content-Type", ""))
            (self._large if large else self._jobs).append(job)
            self._pending_bytes += size
            self._cond.notify()

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every queued request has been processed."""
        end = time.monotonic() + timeout
        while (self._jobs or self._large or self._busy) and time.monotonic() < end:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)
        if self._redactor is not None:
            self._redactor.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._large and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._jobs.popleft() if self._jobs else self._large.popleft()
                self._busy = True
            counts: collections.Counter[str] = collections.Counter()
            kept: list[tuple[Record, int]] = []
            try:
                kept = self._process(*job, counts=counts)
            except Exception as exc:  # noqa: BLE001 - capture must never break serving
                log.warning("capture: record not captured (%s)", type(exc).__name__)
            with self._cond:
                size = len(job[1]) + (len(job[2]) if job[2] is not None else 0)
                self._pending_bytes -= size
                self._large_pending -= int(size > _LARGE)
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to deliver to
                self._loop.call_soon_threadsafe(self._deliver, kept, counts)
            self._busy = False

    def _deliver(self, kept: list[tuple[Record, int]], counts: collections.Counter[str]) -> None:
        for name, n in counts.items():
            setattr(self.stats, name, getattr(self.stats, name) + n)
        for record, size in kept:
            self.buffer.offer(record, size)

    def _process(
        self,
        endpoint: str,
        body: bytes,
        response_body: bytes | None,
        content_encoding: str,
        content_type: str,
        *,
        counts: collections.Counter[str],
    ) -> list[tuple[Record, int]]:
        try:
            payload = json.loads(body)
            records, skipped = records_from_request(endpoint, payload)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, nesting, not an object
            counts["parse_errors"] += 1
            return []
        counts["skipped"] += skipped
        if response_body is not None and records and not content_encoding:
            event_stream = content_type.startswith("text/event-stream")
            with contextlib.suppress(ValueError, RecursionError):
                texts = response_texts(endpoint, response_body, event_stream)
                n = payload.get("n", 1) if len(records) > 1 else 1
                n = n if isinstance(n, int) and n > 0 else 1
                for i, record in enumerate(records):
                    if (i * n) in texts:
                        record["response"] = texts[i * n]
        kept: list[tuple[Record, int]] = []
        for record in records:
            size = record_size(record)
            if size > self.max_record_bytes:
                counts["too_large"] += 1
                continue
            if self._redactor is not None:
                status, value = self._redactor.redact(record)
                if status == "timeout":
                    counts["redact_timeouts"] += 1
                    log.warning("capture: redaction took over %gs; record dropped", self.budget)
                    continue
                if status != "ok":
                    counts["redact_errors"] += 1
                    log.warning("capture: redaction hook failed (%s); record dropped", value)
                    continue
                if value is None:
                    counts["redacted"] += 1
                    continue
                record, size = value, record_size(value)
            kept.append((record, size))
        return kept
