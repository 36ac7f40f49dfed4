"""The bounded buffer between the proxy and storage: batching, flushing with backoff, the final flush.

Everything the proxy captures goes into a buffer of at most ``max_buffer`` records and ``max_bytes``
bytes of text (the batch being written included). A background task writes it as one new JSON-lines object per batch (every
``flush_seconds`` or ``batch_size`` records), named so that names sort by time and never collide across
replicas or restarts. When storage is slow or down, writes (in a thread: boto3 blocks) are retried with
backoff, one at a time; records arriving while the buffer is full are dropped and counted
(``dropped_full``). A write that takes longer than ``write_timeout`` is counted as a storage error and
waited for (never started twice, so a hung connection neither duplicates objects nor piles up threads).
What the final flush cannot write is counted as ``dropped_storage`` and logged.

A batch that fails ``dead_letter_after`` times in a row is written instead under the dead-letter prefix
(``<capture uri>-dead-letter/``, i.e. ``<prompts.uri>/captured-dead-letter/`` by default), as
``<name>.jsonl.dead`` (not a prompt file: the loop never loads it), and counted as ``dead_lettered``; if
that write fails too, its records go to the back of the queue, so that one bad batch never blocks the
writes after it. A record whose text cannot be encoded as UTF-8 (a lone surrogate) is written with JSON
escapes instead.

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
    too_large: int = 0
    redact_timeouts: int = 0
    dead_lettered: int = 0
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


def record_size(record: Record) -> int:
    """Characters of text in a record (its strings and its messages' strings): what it costs in memory.

    >>> record_size({"prompt": [{"role": "user", "content": "hi"}], "endpoint": "chat"})
    35
    """
    total = 0
    for key, value in record.items():
        total += len(key)
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    total += sum(len(k) + len(v) for k, v in item.items() if isinstance(v, str))
    return total


def encode_batch(batch: list[Record]) -> bytes:
    """JSON lines; a record holding a lone surrogate (not encodable as UTF-8) is written with escapes."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    escaped = json.JSONEncoder(ensure_ascii=True)
    parts = []
    for record in batch:
        line = encoder.encode(record) + "\n"
        try:
            parts.append(line.encode("utf-8"))
        except UnicodeEncodeError:
            parts.append((escaped.encode(record) + "\n").encode("ascii"))
    return b"".join(parts)


@dataclasses.dataclass
class _Batch:
    records: list[Record]
    sizes: list[int]
    attempts: int = 0

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)


@dataclasses.dataclass
class _Write:
    future: asyncio.Future[None]
    batch: _Batch
    uri: str
    started: float
    dead_letter: bool = False
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
        max_bytes: int = 256 << 20,
        dead_letter_after: int = 5,
        write_timeout: float = 30.0,
        max_backoff: float = 60.0,
        writer: Writer | None = None,
        hostname: str | None = None,
        stats: Stats | None = None,
    ) -> None:
        if batch_size < 1 or max_buffer < 1 or max_bytes < 1 or flush_seconds <= 0 or dead_letter_after < 1:
            raise ValueError(
                "batch_size, max_buffer, max_bytes and dead_letter_after must be >= 1 and flush_seconds > 0"
            )
        self.prompts_uri = storage.normalize(prompts_uri)
        self.dead_letter_uri = self.prompts_uri.rstrip("/") + "-dead-letter/"
        self.max_bytes = max_bytes
        self.dead_letter_after = dead_letter_after
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
        self._queue: collections.deque[tuple[Record, int]] = collections.deque()
        self._queued_bytes = 0
        self._retry: _Batch | None = None
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
        """Records held in memory: queued plus the batch being written (or to be written again)."""
        held = len(self._queue) + (len(self._write.batch.records) if self._write else 0)
        return held + (len(self._retry.records) if self._retry else 0)

    @property
    def buffered_bytes(self) -> int:
        """Characters of text held in memory (``record_size`` of every record held)."""
        held = self._queued_bytes + (self._write.batch.nbytes if self._write else 0)
        return held + (self._retry.nbytes if self._retry else 0)

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
            "buffered_bytes": self.buffered_bytes,
            "max_bytes": self.max_bytes,
            "storage": self.storage_state,
            "last_flush_at": self._last_flush_at,
            "last_storage_error": self._last_error or None,
        }

    # ------------------------------------------------------------------ intake

    def offer(self, record: Record, size: int | None = None) -> bool:
        """Queue one record; False (and counted) when the buffer is full (by count or by bytes)."""
        size = record_size(record) if size is None else size
        if self.buffered >= self.max_buffer or self.buffered_bytes + size > self.max_bytes:
            self.stats.dropped_full += 1
            return False
        self._queue.append((record, size))
        self._queued_bytes += size
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
        while self._retry is not None or (
            self._queue and (everything or len(self._queue) >= self.batch_size)
        ):
            self._start_write()
            if not await self._settle(timeout, keep_waiting=True):
                return False
        return True

    def _start_write(self) -> None:
        batch, self._retry = self._retry, None
        if batch is None:
            items = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._queued_bytes -= sum(size for _, size in items)
            batch = _Batch([r for r, _ in items], [size for _, size in items])
        dead = batch.attempts >= self.dead_letter_after
        self._seq += 1
        name = object_name(datetime.now(UTC), self._hostname, self._token, self._seq)
        uri = (
            storage.join(self.dead_letter_uri, name + ".dead")
            if dead
            else storage.join(self.prompts_uri, name)
        )
        writer, records = self._writer, batch.records
        future = _in_daemon_thread(lambda: writer(uri, encode_batch(records)))
        self._write = _Write(future, batch, uri, time.monotonic(), dead_letter=dead)

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
        batch = current.batch
        if exc is not None:
            if current.dead_letter:  # to the back of the queue: the writes after it go first
                batch.attempts = 0
                self._queue.extend(zip(batch.records, batch.sizes, strict=True))
                self._queued_bytes += batch.nbytes
            else:
                batch.attempts += 1
                self._retry = batch  # retried first, in order
            self._storage_error(f"{type(exc).__name__}: {exc}")
            return False
        if current.dead_letter:
            self.stats.dead_lettered += len(batch.records)
            log.error("capture: a batch failed %d times; written to %s", self.dead_letter_after, current.uri)
        else:
            self.stats.flushed_records += len(batch.records)
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
                if not self._queue and self._retry is None:
                    break
                self._start_write()
            if not await self._settle(remaining, keep_waiting=False):
                break
        lost = self.buffered
        if lost:
            self.stats.dropped_storage += lost
            log.error("capture: %d records could not be written before shutdown and are lost", lost)
        self._queue.clear()
        self._queued_bytes = 0
        self._retry = None
