"""Hostile capture input: stalls, memory, failing batches and the default PII set (with its test corpus)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tao_trainer import storage
from tao_trainer.capture import CaptureBuffer, CaptureConfig, CaptureProxy, redact_basic
from tao_trainer.capture.redaction import redact_text

# ------------------------------------------------------------------------------------- the PII corpus

# (text, what must not survive redaction)
PII_CORPUS = [
    ("mail jane.doe+x@example.co.uk today", "jane.doe"),
    ("IDN: 用户@例子.中国 and jürgen@bücher.de", "例子"),
    ("IDN 2: jürgen@bücher.de", "jürgen"),
    ("spelled: john dot doe at example dot com", "example"),
    ("bracketed: jane [at] example [dot] com", "example"),
    ("parenthesised: bob(at)corp(dot)io", "corp"),
    ("plain at: write to alice at example.org please", "alice"),
    ("card dotted 4111.1111.1111.1111", "4111"),
    ("card spaced 4111 1111 1111 1111", "4111"),
    ("IBAN compact DE89370400440532013000", "DE8937"),
    ("IBAN spaced GB29 NWBK 6016 1331 9268 19", "NWBK"),
    ("phone dotted 555.123.4567", "555.123"),
    ("phone +44 20 7946 0958", "7946"),
    ("server 192.168.10.23 is down", "192.168"),
    ("password: hunter2", "hunter2"),
    ("db passwd=S3cr3t!", "S3cr3t"),
    ("my password is tr0ub4dor", "tr0ub4dor"),
    ("aws AKIAIOSFODNN7EXAMPLE key", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSy"),
    ("github ghp_" + "a1B2" * 9, "ghp_"),
    ("openai sk-proj-abcdefghijklmnopqrstuvwxyz012345", "sk-proj"),
    ("header Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnop"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow+IBAAK/CAQEA\n-----END RSA PRIVATE KEY-----", "MIIEow"),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbG",
    ),
]
# Texts that must come out unchanged.
KEEP_CORPUS = [
    "What is 1234 * 5678 - 91?",
    "Due 2024-01-15, pi is 3.14159265358979.",
    "Look at main.py and utils.js, then run it at 10.30.",
    "The password field is required.",
    "Python 3.11.4 and version 2.0",
    "The meeting is at noon. Bring 3 apples.",
    "SELECT id FROM users WHERE age > 30;",
]


@pytest.mark.parametrize(("text", "secret"), PII_CORPUS, ids=[t[:30] for t, _ in PII_CORPUS])
def test_default_redaction_masks_the_corpus(text: str, secret: str) -> None:
    assert secret not in redact_text(text), redact_text(text)


@pytest.mark.parametrize("text", KEEP_CORPUS)
def test_default_redaction_keeps_ordinary_text(text: str) -> None:
    assert redact_text(text) == text


# Repeated units that made the old patterns backtrack (each start position re-scanned the rest).
HOSTILE_UNITS = [
    "a",
    "1 ",
    "1.",
    "1-",
    "a.",
    "a-",
    "a@",
    "x at a.",
    "a dot ",
    "+1 ",
    "(1)",
    "password ",
    "AKIA",
    "eyJa.",
    "-----BEGIN PRIVATE KEY-----",
    "DE89",
    "1.1.1.1.",
    "é",
    "a [at] ",
]


def _redact_cpu_seconds(text: str) -> float:
    # CPU time of this process, best of three: time spent descheduled on a busy machine does not count.
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        redact_text(text)
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_redaction_is_linear_on_hostile_input(unit: str) -> None:
    """By ratio: 4x the text well under the 16x time of a quadratic scan; the old e-mail regex failed this.

    The sizes start at 80k characters because below that one long match still fits the CPU caches and the
    time per character is lower (20k -> 80k measured 13x on a single "1 1 1 ..." number match).
    """
    small, large = ((unit * (n // len(unit) + 1))[:n] + "!" for n in (80_000, 320_000))
    ratio = _redact_cpu_seconds(large) / max(_redact_cpu_seconds(small), 1e-4)
    assert ratio < 10, ratio


# ------------------------------------------------------------------------------------------ the proxy


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"choices": [{"index": 0, "message": {"content": "ok"}}]})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@contextlib.asynccontextmanager
async def proxy_for(upstream: str, uri: str, **options: Any) -> AsyncIterator[CaptureProxy]:
    config = CaptureConfig(
        upstream=upstream, prompts_uri=uri, host="127.0.0.1", port=0, flush_seconds=0.2, **options
    )
    proxy = CaptureProxy(config, writer=options.pop("writer", None))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def until(condition: Any, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def slow_hook(record: dict[str, Any]) -> dict[str, Any]:
    """A hook that never finishes on a prompt asking for it (importable: it runs in the worker process)."""
    if "stall" in record["prompt"]:
        time.sleep(60)
    return redact_basic(record)


async def test_a_stalling_hook_drops_the_record_and_never_slows_serving(
    upstream: str, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/captured/"
    async with proxy_for(upstream, uri, redact=slow_hook, redact_budget=0.5) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=chat("please stall")) as r:
                assert r.status == 200
            started = time.monotonic()
            for i in range(20):  # served at once while the worker is stuck
                async with s.post(url, json=chat(f"hello {i}")) as r:
                    assert r.status == 200
            assert time.monotonic() - started < 5
            await until(lambda: proxy.stats.flushed_records == 20)
        assert proxy.stats.redact_timeouts == 1
    assert "stall" not in "".join(storage.read_text(u) for u in storage.list_uris(uri))


async def test_a_catastrophic_regex_prompt_does_not_stall_the_event_loop(
    upstream: str, tmp_path: Path
) -> None:
    """The 160k-character prompt that stalled the old proxy for 16.8 s, and a 1 MB one: redacted off the loop."""
    uri = f"file://{tmp_path}/captured/"
    async with proxy_for(upstream, uri, redact=redact_basic) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        async with aiohttp.ClientSession() as s:
            for size in (160_000, 1_000_000):
                async with s.post(url, json=chat("a." * (size // 2))) as r:
                    assert r.status == 200
                started = time.monotonic()
                async with s.get(f"http://127.0.0.1:{proxy.port}/capture/health") as r:
                    assert r.status == 200
                assert time.monotonic() - started < 1.0
            await until(lambda: proxy.stats.flushed_records == 2)


async def test_oversized_records_are_not_captured_and_are_counted(upstream: str, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/captured/"
    async with proxy_for(upstream, uri, max_record_bytes=10_000) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/v1/chat/completions"
        async with aiohttp.ClientSession() as s:
            for text in ("x" * 20_000, "small"):
                async with s.post(url, json=chat(text)) as r:
                    assert r.status == 200
            await until(lambda: proxy.stats.flushed_records == 1)
        assert proxy.stats.too_large == 1


async def test_the_buffer_is_bounded_in_bytes_as_well_as_records() -> None:
    buffer = CaptureBuffer("file:///tmp/never", max_buffer=1000, max_bytes=10_000, writer=lambda u, d: None)
    assert buffer.offer({"prompt": "x" * 6_000})
    assert not buffer.offer({"prompt": "y" * 6_000})  # 12 kB of text over a 10 kB bound
    assert buffer.offer({"prompt": "z" * 100})
    assert (buffer.stats.captured, buffer.stats.dropped_full, buffer.buffered) == (2, 1, 2)
    assert 6_100 < buffer.buffered_bytes < 10_000


async def test_a_batch_that_keeps_failing_goes_to_the_dead_letter_prefix(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/prompts/captured/"

    def writer(target: str, data: bytes) -> None:
        if b"poison" in data and "dead-letter" not in target:
            raise OSError("rejected by the store")
        storage.write_bytes(target, data)

    buffer = CaptureBuffer(
        uri, batch_size=1, flush_seconds=0.05, max_backoff=0.05, dead_letter_after=3, writer=writer
    )
    buffer.start()
    for text in ("poison", "after 1", "after 2", "lone \ud800 surrogate"):
        buffer.offer({"prompt": text})
    await until(lambda: buffer.stats.flushed_records == 3 and buffer.stats.dead_lettered == 1)
    await buffer.close(2)
    dead = storage.list_uris(f"file://{tmp_path}/prompts/captured-dead-letter/")
    assert len(dead) == 1 and dead[0].endswith(".jsonl.dead") and "poison" in storage.read_text(dead[0])
    from tao_trainer.prompts import load_prompts

    loaded = load_prompts(f"file://{tmp_path}/prompts/")  # the dead letter is never loaded as prompts
    assert sorted(r.prompt for r in loaded.records) == ["after 1", "after 2"]
    assert len(loaded.rejects) == 1 and "lone surrogate" in loaded.rejects[0].reason
