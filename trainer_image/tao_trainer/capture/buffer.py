"""The bounded buffer between the proxy and storage: batching, flushing with backoff, the final flush.

Everything the proxy captures goes into a buffer of at most ``max_buffer`` records (the batch being
written included). A background task writes it as one new JSON-lines object per batch (every
``flush_seconds`` or ``batch_size`` records), named so that names sort by time and never collide across
replicas or restarts. When storage is slow or down, writes (in a thread: boto3 blocks) are retried with
backoff, one at a time; records arriving while the buffer is full are dropped and counted
(``dropped_full``). A write that takes longer than ``write_timeout`` is counted as a storage error and
waited for (never started twice, so a hung connection neither duplicates objects nor piles up threads).
What the final flush cannot write is counted as ``dropped_storage`` and logged.

>>> object_name(datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC), "vllm-7d9f-x2", "a1b2c3", 7)
'20261121T100000.123456Z-vllm-7d9f-x2-a1b2c3-000007.jsonl'
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tao_trainer import storage

from .records import Record, now_iso

log = logging.getLogger("tao.capture")

Writer = Callable[[str, bytes], None]
_ERROR_LOG_INTERVAL = 60.0


def object_name(when: datetime, hostname: str, token: str, seq: int) -> str:
    """The name of one batch object: lexical order is time order; replicas and restarts never collide."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", hostname)[:63] or "host"
    return f"{when.strftime('%Y%m%dT%H%M%S.%f')}Z-{host}-{token}-{seq:06d}.jsonl"


@dataclasses.dataclass
class Stats:
    forwarded: int = 0
    upstream_errors: int = 0
    captured: int = 0
    skipped: int = 0
    parse_errors: int = 0
    redacted: int = 0
    redact_errors: int = 0
    dropped_full: int = 0
    dropped_storage: int = 0
    flushed_records: int = 0
    flushed_objects: int = 0
    storage_errors: int = 0


def _in_daemon_thread(fn: Callable[[], None]) -> asyncio.Future[None]:
    """Run ``fn`` in a new daemon thread; a hung write must never keep the process from exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

    def target() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop may be closed by then
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name="tao-capture-write", daemon=True).start()
    return future


@dataclasses.dataclass
class _Write:
    future: asyncio.Future[None]
    batch: list[Record]
    uri: str
    started: float
    timed_out: bool = False


class CaptureBuffer:
    """A bounded in-memory queue of records and the task that writes it to storage in batches.

    ``offer`` is synchronous and never blocks: call it from the event loop. ``run`` is the flusher;
    ``close`` stops it and makes a final flush attempt within a deadline.
    """

    def __init__(
        self,
        prompts_uri: str,
        *,
        batch_size: int = 500,
        flush_seconds: float = 30.0,
        max_buffer: int = 10_000,
        write_timeout: float = 30.0,
        max_backoff: float = 60.0,
        writer: Writer | None = None,
        hostname: str | None = None,
        stats: Stats | None = None,
    ) -> None:
        if batch_size < 1 or max_buffer < 1 or flush_seconds <= 0:
            raise ValueError("batch_size and max_buffer must be >= 1 and flush_seconds > 0")
        self.prompts_uri = storage.normalize(prompts_uri)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        self.write_timeout = write_timeout
        self.max_backoff = max(max_backoff, min(1.0, flush_seconds))
        self.stats = stats or Stats()
        self._writer = writer or storage.write_bytes
        self._hostname = hostname or socket.gethostname()
        self._token = secrets.token_hex(3)
        self._seq = 0
        self._queue: collections.deque[Record] = collections.deque()
        self._write: _Write | None = None
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._last_error = ""
        self._last_error_at: float | None = None
        self._last_error_logged = 0.0
        self._last_flush_at: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def buffered(self) -> int:
        """Records held in memory: queued plus the batch being written."""
        return len(self._queue) + (len(self._write.batch) if self._write else 0)

    @property
    def storage_state(self) -> str:
        if self._write is not None and self._write.timed_out:
            return "hanging"
        return "failing" if self._backoff else "ok"

    def snapshot(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.stats),
            "buffered": self.buffered,
            "max_buffer": self.max_buffer,
            "storage": self.storage_state,
            "last_flush_at": self._last_flush_at,
            "last_storage_error": self._last_error or None,
        }

    # ------------------------------------------------------------------ intake

    def offer(self, record: Record) -> bool:
        """Queue one record; False (and counted) when the buffer is full."""
        if self.buffered >= self.max_buffer:
            self.stats.dropped_full += 1
            return False
        self._queue.append(record)
        self.stats.captured += 1
        if len(self._queue) >= self.batch_size:
            self._full.set()
        return True

    # ------------------------------------------------------------------ flushing

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tao-capture-flusher")

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            if self._backoff:
                await asyncio.sleep(self._backoff)
                due = True
            else:
                remaining = self.flush_seconds - (time.monotonic() - last)
                if remaining > 0 and len(self._queue) < self.batch_size:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
                due = time.monotonic() - last >= self.flush_seconds
            if due:
                last = time.monotonic()
            try:
                ok = await self._flush(everything=due, timeout=self.write_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the flusher must outlive any bug in a batch
                log.exception("capture flusher: unexpected error")
                ok = False
            base = min(1.0, self.flush_seconds)
            self._backoff = 0.0 if ok else min(self.max_backoff, max(base, self._backoff * 2))

    async def _flush(self, *, everything: bool, timeout: float | None) -> bool:
        """Write full batches (and the partial last one when ``everything``); False on a failed write."""
        while self._queue and (everything or len(self._queue) >= self.batch_size):
            self._start_write()
            if not await self._settle(timeout, keep_waiting=True):
                return False
        return True

    def _start_write(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        self._seq += 1
        uri = storage.join(
            self.prompts_uri, object_name(datetime.now(UTC), self._hostname, self._token, self._seq)
        )
        writer = self._writer

        def write() -> None:
            encoder = json.JSONEncoder(ensure_ascii=False)
            writer(uri, "".join(encoder.encode(r) + "\n" for r in batch).encode("utf-8"))

        self._write = _Write(_in_daemon_thread(write), batch, uri, time.monotonic())

    async def _settle(self, timeout: float | None, *, keep_waiting: bool) -> bool | None:
        """Wait for the write in flight: True written, False failed (batch queued again), None running.

        Past ``timeout`` the write is counted as a storage error once; with ``keep_waiting`` it is then
        waited for still (cancelling the caller leaves the write, and its batch, in place).
        """
        current = self._write
        assert current is not None
        done, _ = await asyncio.wait({current.future}, timeout=timeout)
        if not done:
            if not current.timed_out:
                current.timed_out = True
                self._storage_error(f"write of {current.uri} still running after {timeout:g}s")
            if not keep_waiting:
                return None
            await asyncio.wait({current.future})
        self._write = None
        exc = current.future.exception()
        if exc is not None:
            self._queue.extendleft(reversed(current.batch))  # retried first, in order
            self._storage_error(f"{type(exc).__name__}: {exc}")
            return False
        self.stats.flushed_records += len(current.batch)
        self.stats.flushed_objects += 1
        self._last_flush_at = now_iso()
        if self._last_error_at is not None:
            log.info("capture: storage writes succeed again (%d records buffered)", self.buffered)
            self._last_error_at = None
        return True

    def _storage_error(self, message: str) -> None:
        self.stats.storage_errors += 1
        self._last_error = message
        now = time.monotonic()
        self._last_error_at = now
        if now - self._last_error_logged >= _ERROR_LOG_INTERVAL:
            self._last_error_logged = now
            log.warning(
                "capture: storage write failed (%s); %d records buffered, %d dropped so far (logged once a minute)",
                message,
                self.buffered,
                self.stats.dropped_full,
            )

    async def close(self, deadline: float = 10.0) -> None:
        """Stop the flusher and write what is buffered, giving up after ``deadline`` seconds."""
        end = time.monotonic() + deadline
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while (remaining := end - time.monotonic()) > 0:
            if self._write is None:
                if not self._queue:
                    break
                self._start_write()
            if not await self._settle(remaining, keep_waiting=False):
                break
        lost = self.buffered
        if lost:
            self.stats.dropped_storage += lost
            log.error("capture: %d records could not be written before shutdown and are lost", lost)
        self._queue.clear()
