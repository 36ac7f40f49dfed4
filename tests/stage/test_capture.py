"""The prompt-capture proxy over real HTTP: a fake OpenAI server upstream, storage on file:// and moto S3."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tao_trainer import storage
from tao_trainer.capture import CaptureBuffer, CaptureConfig, CaptureProxy, redact_basic
from tao_trainer.prompts import load_prompts

TOKEN = "Bearer sk-secret-token-never-stored"
SSE_EVENTS = [
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant"}}],
    },
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "The answer"}}],
    },
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": " is 4."}}],
    },
]
SSE_GAP = 0.25  # seconds between two upstream events


# --------------------------------------------------------------------------------------------- upstream


class FakeOpenAI:
    """Canned OpenAI-compatible answers; records what reached it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.aborted = asyncio.Event()
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({"path": request.raw_path, "headers": dict(request.headers), "body": body})
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        if payload.get("fail"):
            return web.json_response({"error": {"message": "bad request"}}, status=400)
        if payload.get("stream"):
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            events = SSE_EVENTS * (20 if payload.get("long") else 1)
            try:
                for i, event in enumerate(events):
                    if i:
                        await asyncio.sleep(0.05 if payload.get("long") else SSE_GAP)
                    await response.write(f"data: {json.dumps(event)}\n\n".encode())
                await response.write(b"data: [DONE]\n\n")
            except (ConnectionError, asyncio.CancelledError):
                self.aborted.set()
                raise
            await response.write_eof()
            return response
        answer = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        return web.json_response(answer, headers={"X-Upstream": "yes"})

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.raw_path, "headers": dict(request.headers), "body": body})
        prompts = json.loads(body)["prompt"]
        prompts = prompts if isinstance(prompts, list) else [prompts]
        choices = [{"index": i, "text": f" answer {i}", "finish_reason": "stop"} for i in range(len(prompts))]
        return web.json_response({"id": "cmpl-2", "object": "text_completion", "choices": choices})

    async def models(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.raw_path, "headers": dict(request.headers), "body": b""})
        return web.json_response(
            {"object": "list", "data": [{"id": "champion"}], "raw_path": request.raw_path}
        )


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/completions", fake.completions)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


@contextlib.asynccontextmanager
async def running_proxy(upstream_url: str, prompts_uri: str, **overrides: Any) -> AsyncIterator[CaptureProxy]:
    writer = overrides.pop("writer", None)
    config = CaptureConfig(
        upstream=upstream_url,
        prompts_uri=prompts_uri,
        host="127.0.0.1",
        port=0,
        flush_seconds=overrides.pop("flush_seconds", 0.2),
        max_backoff=overrides.pop("max_backoff", 0.3),
        drain_seconds=2.0,
        shutdown_deadline=overrides.pop("shutdown_deadline", 3.0),
        **overrides,
    )
    proxy = CaptureProxy(config, writer=writer)
    await proxy.start()
    proxy.url = f"http://127.0.0.1:{proxy.port}"  # type: ignore[attr-defined]
    try:
        yield proxy
    finally:
        await proxy.stop()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "champion", "messages": [{"role": "user", "content": text}], **extra}


async def post(session: aiohttp.ClientSession, url: str, payload: Any, **kw: Any) -> tuple[int, bytes, Any]:
    async with session.post(url, json=payload, headers={"Authorization": TOKEN}, **kw) as r:
        return r.status, await r.read(), r.headers


def stored_text(prompts_uri: str) -> str:
    return "".join(storage.read_text(u) for u in storage.list_uris(prompts_uri))


# ------------------------------------------------------------------------------------------ forwarding


async def test_json_and_sse_forwarding_is_byte_identical_and_streams_chunk_by_chunk(
    upstream: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        running_proxy(upstream.url, f"file://{tmp_path}/captured") as proxy,
        aiohttp.ClientSession() as s,
    ):
        for path, payload in [
            ("/v1/chat/completions", chat("2+2?")),
            ("/v1/completions", {"model": "champion", "prompt": ["a", "b"]}),
        ]:
            direct = await post(s, upstream.url + path, payload)
            via = await post(s, proxy.url + path, payload)
            assert via[0] == direct[0] == 200 and via[1] == direct[1]
            assert via[2]["Content-Type"] == direct[2]["Content-Type"]
        assert via[2]["Content-Length"] == direct[2]["Content-Length"]

        # GET with a query string; headers: Authorization reaches vLLM, hop-by-hop ones do not.
        async with s.get(
            URL(proxy.url + "/v1/models?limit=2&q=a%2Fb", encoded=True),
            headers={"Authorization": TOKEN, "Connection": "keep-alive, X-Hop", "X-Hop": "1", "X-Keep": "2"},
        ) as r:
            assert r.status == 200 and (await r.json())["raw_path"] == "/v1/models?limit=2&q=a%2Fb"
        seen = upstream.requests[-1]
        assert seen["path"] == "/v1/models?limit=2&q=a%2Fb"
        assert seen["headers"]["Authorization"] == TOKEN and seen["headers"]["X-Keep"] == "2"
        assert "X-Hop" not in seen["headers"] and seen["headers"]["X-Forwarded-For"] == "127.0.0.1"

        # SSE: the same bytes, and each event arrives when the upstream sends it (not at the end).
        async def stream(base: str) -> tuple[bytes, list[float]]:
            started, data, arrivals = time.monotonic(), b"", []
            async with s.post(base + "/v1/chat/completions", json=chat("stream?", stream=True)) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                async for chunk in r.content.iter_any():
                    data += chunk
                    arrivals.append(time.monotonic() - started)
            return data, arrivals

        direct_sse, _ = await stream(upstream.url)
        via_sse, arrivals = await stream(proxy.url)
        assert via_sse == direct_sse and via_sse.endswith(b"data: [DONE]\n\n")
        # Buffered, every chunk would arrive at the end; streamed, they are spread over the gaps.
        assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] >= 1.5 * SSE_GAP

        # The proxy's own endpoints are answered locally.
        await until(lambda: proxy.stats.captured == 4)  # records are built off the event loop
        before = len(upstream.requests)
        async with s.get(proxy.url + "/capture/stats") as r:
            stats = await r.json()
        async with s.get(proxy.url + "/capture/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        assert len(upstream.requests) == before
        assert stats["forwarded"] == 4 and stats["captured"] == 4  # chat, 2 completions, stream
    assert TOKEN not in caplog.text and "sk-secret" not in caplog.text


async def test_upstream_errors_and_bad_bodies_are_forwarded_and_never_captured(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/captured"
    async with running_proxy(upstream.url, uri) as proxy, aiohttp.ClientSession() as s:
        assert (await post(s, proxy.url + "/v1/chat/completions", chat("x", fail=True)))[0] == 400
        async with s.post(proxy.url + "/v1/chat/completions", data=b"{not json", headers={"X": "1"}) as r:
            assert r.status == 200
        tools = {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [{}]},
            ]
        }
        for payload in (
            tools,
            {"prompt": [1, 2, 3]},
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        ):
            path = "/v1/completions" if "prompt" in payload else "/v1/chat/completions"
            async with s.post(proxy.url + path, json=payload) as r:
                assert r.status == 200
        await until(lambda: proxy.stats.skipped == 3)  # records are built off the event loop
        stats = proxy.buffer.snapshot()
        assert stats["captured"] == 0 and stats["forwarded"] == 5
        assert stats["parse_errors"] == 1 and stats["skipped"] == 3  # tool calls, token ids, an image

    # The upstream is gone: a clean 502, counted.
    async with running_proxy("http://127.0.0.1:9", uri) as proxy, aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=chat("x")) as r:
            assert r.status == 502 and (await r.json())["error"]["type"] == "proxy_error"
        assert proxy.stats.upstream_errors == 1


async def test_metrics_port_serves_prometheus_counters(upstream: FakeOpenAI, tmp_path: Path) -> None:
    async with (
        running_proxy(upstream.url, f"file://{tmp_path}/c", metrics_port=0) as proxy,
        aiohttp.ClientSession() as s,
    ):
        await post(s, proxy.url + "/v1/chat/completions", chat("m"))
        await until(lambda: proxy.stats.captured == 1)  # records are built off the event loop
        async with s.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as r:
            text = await r.text()
    assert (
        r.status == 200 and "tao_capture_forwarded_total 1" in text and "tao_capture_captured_total 1" in text
    )
    assert "tao_capture_storage_ok 1" in text and "tao_capture_buffered" in text


async def test_client_leaving_mid_stream_aborts_the_upstream_request(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    async with running_proxy(upstream.url, f"file://{tmp_path}/c") as proxy, aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/v1/chat/completions", json=chat("long", stream=True, long=True)) as r:
            await r.content.readany()
        await asyncio.wait_for(upstream.aborted.wait(), 3)
        assert proxy.stats.captured == 0


# ------------------------------------------------------------------------------------------- storage


async def test_records_land_in_batched_objects_that_the_loop_loads(
    upstream: FakeOpenAI, storage_root: str
) -> None:
    uri = storage.join(storage_root, "prompts", "captured")
    async with (
        running_proxy(upstream.url, uri, batch_size=5, flush_seconds=0.3) as proxy,
        aiohttp.ClientSession() as s,
    ):
        for i in range(12):
            assert (await post(s, proxy.url + "/v1/chat/completions", chat(f"What is {i}+{i}?")))[0] == 200
        system_chat = {
            "model": "champion",
            "messages": [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": "2*3?"},
            ],
        }
        await post(s, proxy.url + "/v1/chat/completions", system_chat)
        await post(
            s, proxy.url + "/v1/completions", {"model": "base", "prompt": ["Once upon", "In a galaxy"]}
        )
        await post(
            s, proxy.url + "/v1/chat/completions", chat("What is 0+0?")
        )  # a repeat: kept once by the loader
        await until(lambda: proxy.stats.flushed_records == 16)
        assert proxy.stats.flushed_objects >= 3  # 5 + 5 by size, the rest on the timer

    names = storage.list_uris(uri)
    assert names == sorted(names) and all(n.endswith(".jsonl") for n in names)
    # The TAOJob's prompts.uri may point at the parent: the loader reads every object under a prefix.
    loaded = load_prompts(storage.join(storage_root, "prompts"), "prompt")
    assert loaded.rejects == [] and len(loaded.records) == 15 and loaded.duplicates == 1
    by_prompt = {json.dumps(r.prompt): r for r in loaded.records}
    plain = by_prompt[json.dumps("What is 3+3?")]
    assert plain.fields["endpoint"] == "chat" and plain.fields["model"] == "champion"
    assert plain.fields["capturedAt"].endswith("Z") and len(plain.fields["captureId"]) == 32
    assert json.dumps(system_chat["messages"]) in by_prompt  # system + user: the messages list
    assert by_prompt[json.dumps("In a galaxy")].fields["endpoint"] == "completions"
    assert "response" not in plain.fields
    text = stored_text(uri)
    assert "sk-secret" not in text and "Authorization" not in text


async def test_responses_are_captured_only_when_asked(upstream: FakeOpenAI, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/captured"
    async with (
        running_proxy(upstream.url, uri, capture_responses=True) as proxy,
        aiohttp.ClientSession() as s,
    ):
        await post(s, proxy.url + "/v1/chat/completions", chat("json?"))
        await post(s, proxy.url + "/v1/chat/completions", chat("stream?", stream=True))
        await post(s, proxy.url + "/v1/completions", {"prompt": ["p0", "p1"]})
        await until(lambda: proxy.stats.flushed_records == 4)
    responses = {r.prompt: r.fields["response"] for r in load_prompts(uri).records}
    assert responses == {"json?": "4", "stream?": "The answer is 4.", "p0": " answer 0", "p1": " answer 1"}


async def test_redaction_hooks(upstream: FakeOpenAI, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/basic"
    async with running_proxy(upstream.url, uri, redact=redact_basic) as proxy, aiohttp.ClientSession() as s:
        await post(
            s, proxy.url + "/v1/chat/completions", chat("I am jane@example.com, card 4111-1111-1111-1111")
        )
        await until(lambda: proxy.stats.flushed_records == 1)
    assert [r.prompt for r in load_prompts(uri).records] == ["I am [EMAIL], card [NUMBER]"]
    assert "jane@" not in stored_text(uri)

    def picky(record: dict[str, Any]) -> dict[str, Any] | None:
        if "secret" in record["prompt"]:
            return None
        if "boom" in record["prompt"]:
            raise RuntimeError("hook bug")
        return {**record, "prompt": record["prompt"].upper()}

    uri = f"file://{tmp_path}/custom"
    async with running_proxy(upstream.url, uri, redact=picky) as proxy, aiohttp.ClientSession() as s:
        for text in ("keep me", "a secret", "boom"):
            assert (await post(s, proxy.url + "/v1/chat/completions", chat(text)))[0] == 200
        await until(lambda: proxy.stats.flushed_records == 1)
        assert (proxy.stats.redacted, proxy.stats.redact_errors, proxy.stats.captured) == (1, 1, 1)
    assert [r.prompt for r in load_prompts(uri).records] == ["KEEP ME"]


async def test_storage_down_never_fails_requests_and_buffered_records_flush_on_recovery(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    # Storage is down for real: a regular file sits where the capture directory must be created.
    blocker = tmp_path / "store"
    blocker.write_text("not a directory")
    uri = f"file://{blocker}/captured"
    async with (
        running_proxy(upstream.url, uri, batch_size=4, max_buffer=10) as proxy,
        aiohttp.ClientSession() as s,
    ):
        latencies = []
        for i in range(25):
            started = time.monotonic()
            assert (await post(s, proxy.url + "/v1/chat/completions", chat(f"q{i}")))[0] == 200
            latencies.append(time.monotonic() - started)
        # Records are built off the event loop: wait until all 25 are either held or dropped.
        await until(
            lambda: proxy.stats.storage_errors >= 2 and proxy.stats.captured + proxy.stats.dropped_full == 25
        )
        stats = proxy.buffer.snapshot()
        assert stats["buffered"] == 10 and stats["dropped_full"] == 15 and stats["captured"] == 10
        assert stats["flushed_records"] == 0 and stats["storage"] == "failing"
        assert "NotADirectoryError" in stats["last_storage_error"]
        # Never held behind storage retries (a loose bound: CI machines are busy).
        assert max(latencies) < 2.0, latencies

        blocker.unlink()  # storage is back
        await until(lambda: proxy.stats.flushed_records == 10)
        assert proxy.buffer.snapshot()["storage"] == "ok" and proxy.buffer.buffered == 0
    assert [r.prompt for r in load_prompts(uri).records] == [f"q{i}" for i in range(10)]  # in arrival order


async def test_hanging_storage_is_waited_for_once_and_requests_stay_fast(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    release = threading.Event()
    calls: list[str] = []

    def hanging_writer(uri: str, data: bytes) -> None:
        calls.append(uri)
        release.wait(10)
        storage.write_bytes(uri, data)

    uri = f"file://{tmp_path}/captured"
    options = {"batch_size": 2, "max_buffer": 5, "write_timeout": 0.2, "writer": hanging_writer}
    async with running_proxy(upstream.url, uri, **options) as proxy, aiohttp.ClientSession() as s:
        started = time.monotonic()
        for i in range(8):
            assert (await post(s, proxy.url + "/v1/chat/completions", chat(f"h{i}")))[0] == 200
        assert time.monotonic() - started < 2.0
        await until(lambda: proxy.buffer.storage_state == "hanging")
        stats = proxy.buffer.snapshot()
        assert stats["buffered"] == 5 and stats["dropped_full"] == 3 and stats["storage_errors"] == 1
        assert len(calls) == 1  # one write in flight, never a second one beside a hung one
        release.set()
        await until(lambda: proxy.stats.flushed_records == 5)
    assert sorted(r.prompt for r in load_prompts(uri).records) == [f"h{i}" for i in range(5)]


async def test_s3_endpoint_refusing_connections(upstream: FakeOpenAI, s3_bucket: str) -> None:
    """boto3 against a closed port: requests are unaffected; the records reach S3 once it is back."""
    import boto3
    from botocore.config import Config

    # The stage's own client retries 5 times with backoff (seconds per failed write); one attempt here.
    down = boto3.session.Session().client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    storage_is_down = True

    def writer(uri: str, data: bytes) -> None:
        if storage_is_down:
            bucket, _, key = uri[len("s3://") :].partition("/")
            down.put_object(Bucket=bucket, Key=key, Body=data)
        storage.write_bytes(uri, data)

    uri = f"s3://{s3_bucket}/captured"
    async with running_proxy(upstream.url, uri, writer=writer) as proxy, aiohttp.ClientSession() as s:
        for i in range(5):
            assert (await post(s, proxy.url + "/v1/chat/completions", chat(f"s{i}")))[0] == 200
        await until(lambda: proxy.stats.storage_errors >= 1)
        assert proxy.stats.flushed_records == 0 and proxy.buffer.buffered == 5
        assert "EndpointConnectionError" in proxy.buffer.snapshot()["last_storage_error"]
        storage_is_down = False
        await until(lambda: proxy.stats.flushed_records == 5)
    assert sorted(r.prompt for r in load_prompts(uri).records) == [f"s{i}" for i in range(5)]


async def test_buffer_bound_counts_the_batch_in_flight() -> None:
    gate = threading.Event()
    buffer = CaptureBuffer(
        "file:///nonexistent/x",
        batch_size=3,
        flush_seconds=0.05,
        max_buffer=4,
        writer=lambda uri, data: gate.wait(5),
    )
    buffer.start()
    for i in range(3):
        assert buffer.offer({"prompt": f"p{i}"})
    await until(lambda: buffer._write is not None)
    assert buffer.offer({"prompt": "p3"}) and not buffer.offer({"prompt": "p4"})
    assert buffer.buffered == 4 and buffer.stats.dropped_full == 1
    gate.set()
    await until(lambda: buffer.stats.flushed_records == 4)
    await buffer.close(1.0)


# ------------------------------------------------------------------------------------------- shutdown


async def test_stop_flushes_what_is_buffered_and_counts_what_it_cannot(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/captured"
    async with running_proxy(upstream.url, uri, flush_seconds=60) as proxy, aiohttp.ClientSession() as s:
        for i in range(3):
            await post(s, proxy.url + "/v1/chat/completions", chat(f"last{i}"))
        assert proxy.stats.flushed_records == 0
    assert proxy.stats.flushed_records == 3 and len(load_prompts(uri).records) == 3

    def never(uri: str, data: bytes) -> None:
        time.sleep(30)

    options = {"flush_seconds": 60, "writer": never, "shutdown_deadline": 0.3}
    async with running_proxy(upstream.url, uri, **options) as proxy, aiohttp.ClientSession() as s:
        await post(s, proxy.url + "/v1/chat/completions", chat("lost"))
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert proxy.stats.dropped_storage == 1


def test_cli_sigterm_flushes(tmp_path: Path) -> None:
    """`tao-stage capture` as the sidecar runs it: SIGTERM drains, flushes, exits 0."""

    async def scenario() -> None:
        fake = FakeOpenAI()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        upstream_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        uri = f"file://{tmp_path}/captured"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tao_trainer.cli", "capture",
            "--upstream", upstream_url, "--listen", "127.0.0.1:0", "--prompts-uri", uri,
            "--flush-seconds", "60", "--redact", "tao_trainer.capture:redact_basic",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert "listening on" in line, line
            port = int(line.rsplit(":", 1)[1])
            async with aiohttp.ClientSession() as s:
                for i in range(3):
                    status, _, _ = await post(
                        s, f"http://127.0.0.1:{port}/v1/chat/completions", chat(f"cli {i} a@b.io")
                    )
                    assert status == 200
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            err = (await proc.stderr.read()).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
            await runner.cleanup()
        assert [r.prompt for r in load_prompts(uri).records] == [f"cli {i} [EMAIL]" for i in range(3)]
        assert '"flushed_records": 3' in err and "sk-secret" not in err

    asyncio.run(scenario())
