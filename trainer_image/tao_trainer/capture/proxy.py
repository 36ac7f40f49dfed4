"""The capture proxy: an aiohttp reverse proxy in front of vLLM, and `tao-stage capture`'s ``main``.

Every request is forwarded to ``--upstream`` (method, path, query, headers minus hop-by-hop ones, body) and
the response is streamed back unchanged, chunk by chunk (SSE included). For a successful (2xx)
``POST /v1/chat/completions`` or ``POST /v1/completions``, once the response has been sent, the request is
handed to the capture pipeline (``pipeline.py``: off the event loop, it builds the records, caps their
size and runs the redaction hook in a worker process with a time budget) and the survivors are offered
to the buffer (``buffer.py``). Responses are kept only with ``--capture-responses``.

The capture never delays or fails a request: it runs after the response is sent, off the event loop. On SIGTERM the proxy
stops accepting, lets requests in flight finish, then tries a final flush within ``--shutdown-deadline``.
aiohttp is imported when the proxy starts, not when this module is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
from typing import Any

from tao_trainer import storage

from .buffer import CaptureBuffer, Stats, Writer
from .pipeline import CapturePipeline
from .redaction import Hook, load_hook

log = logging.getLogger("tao.capture")

# Path -> the `endpoint` value records carry.
CAPTURE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# RFC 9110 section 7.6.1, plus Host (the client sets the upstream's) and Content-Length (recomputed).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {"host", "content-length"}
_RESPONSE_DROP = _HOP_BY_HOP
# Bodies of known length up to this size are read whole and sent in one write (Content-Length is reset).
_BUFFERED_LIMIT = 1 << 20
_BUFFERED_DROP = _HOP_BY_HOP | {"content-length"}
# Headers the aiohttp client would add on its own; a client that sent them still has them forwarded.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Response bodies kept for --capture-responses are capped: a bigger one is forwarded but not captured.
_RESPONSE_CAPTURE_LIMIT = 8 << 20


@dataclasses.dataclass
class CaptureConfig:
    upstream: str
    prompts_uri: str
    host: str = "0.0.0.0"
    port: int = 8080
    batch_size: int = 500
    flush_seconds: float = 30.0
    max_buffer: int = 10_000
    max_buffer_bytes: int = 256 << 20
    max_record_bytes: int = 1 << 20
    redact_budget: float = 2.0
    dead_letter_after: int = 5
    write_timeout: float = 30.0
    max_backoff: float = 60.0
    redact: Hook | None = None
    capture_responses: bool = False
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    drain_seconds: float = 15.0
    shutdown_deadline: float = 10.0
    max_body: int = 64 << 20
    upstream_keepalive: float = 2.0
    hostname: str | None = None


class CaptureProxy:
    """The reverse proxy; ``start`` binds (port 0 picks a free one), ``stop`` drains and flushes."""

    def __init__(self, config: CaptureConfig, *, writer: Writer | None = None) -> None:
        self.config = config
        self.stats = Stats()
        self.buffer = CaptureBuffer(
            config.prompts_uri,
            batch_size=config.batch_size,
            flush_seconds=config.flush_seconds,
            max_buffer=config.max_buffer,
            max_bytes=config.max_buffer_bytes,
            dead_letter_after=config.dead_letter_after,
            write_timeout=config.write_timeout,
            max_backoff=config.max_backoff,
            writer=writer,
            hostname=config.hostname,
            stats=self.stats,
        )
        self.pipeline = CapturePipeline(
            self.buffer,
            self.stats,
            config.redact,
            budget=config.redact_budget,
            max_record_bytes=config.max_record_bytes,
            max_pending_bytes=min(64 << 20, config.max_buffer_bytes),
        )
        self._upstream = config.upstream.rstrip("/")
        self._session: Any = None
        self._runners: list[Any] = []
        self.port: int | None = None
        self.metrics_port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        if self.buffer.prompts_uri.startswith("s3://"):
            # Import boto3 and build the client before serving, not in the first flush, where the import
            # (and the GIL it holds) would slow the requests served at that moment. No network I/O.
            try:
                storage._client()
            except Exception as exc:  # noqa: BLE001 - the writes will report it
                log.warning("capture: S3 client not ready: %s", exc)
        await self.pipeline.start()
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self.config.upstream_keepalive)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # A generation can take minutes: only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,  # bytes go back exactly as the upstream sent them
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_get("/capture/stats", self._stats)
        app.router.add_get("/capture/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self.port = await self._serve(app, self.config.host, self.config.port)
        if self.config.metrics_port is not None:
            metrics = web.Application()
            metrics.router.add_get("/metrics", self._metrics)
            metrics.router.add_get("/capture/stats", self._stats)
            metrics.router.add_get("/capture/health", self._health)
            self.metrics_port = await self._serve(metrics, self.config.metrics_host, self.config.metrics_port)
        self.buffer.start()
        log.info(
            "capture proxy on %s:%s -> %s, prompts to %s",
            self.config.host,
            self.port,
            self._upstream,
            self.buffer.prompts_uri,
        )

    async def _serve(self, app: Any, host: str, port: int) -> int:
        from aiohttp import web

        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, shutdown_timeout=self.config.drain_seconds)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (``drain_seconds``), then the final flush."""
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.pipeline.drain(self.config.shutdown_deadline / 2)
        self.pipeline.close()
        await self.buffer.close(self.config.shutdown_deadline)
        log.info("capture proxy stopped: %s", json.dumps(self.buffer.snapshot()))

    # ------------------------------------------------------------------ own endpoints

    async def _stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.buffer.snapshot())

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        # Always 200: storage trouble must never get the proxy (and with it, serving) restarted.
        return web.json_response({"status": "ok", "storage": self.buffer.storage_state})

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        lines = []
        for name, value in dataclasses.asdict(self.stats).items():
            lines += [f"# TYPE tao_capture_{name}_total counter", f"tao_capture_{name}_total {value}"]
        lines += ["# TYPE tao_capture_buffered gauge", f"tao_capture_buffered {self.buffer.buffered}"]
        lines += [
            "# TYPE tao_capture_buffered_bytes gauge",
            f"tao_capture_buffered_bytes {self.buffer.buffered_bytes}",
        ]
        up = 1 if self.buffer.storage_state == "ok" else 0
        lines += ["# TYPE tao_capture_storage_ok gauge", f"tao_capture_storage_ok {up}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    # ------------------------------------------------------------------ forwarding

    def _forward_headers(self, request: Any) -> Any:
        from multidict import CIMultiDict

        connection_named = {
            token.strip().lower()
            for value in request.headers.getall("Connection", ())
            for token in value.split(",")
        }
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            lower = name.lower()
            if lower not in _REQUEST_DROP and lower not in connection_named:
                headers.add(name, value)
        peer = request.remote
        if peer:
            prior = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        return headers

    async def _open_upstream(self, request: Any, body: bytes) -> Any:
        import aiohttp
        from yarl import URL

        url = URL(self._upstream + request.raw_path, encoded=True)
        headers = self._forward_headers(request)
        for attempt in (1, 2):
            try:
                return await self._session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body if body else None,
                    allow_redirects=False,
                    skip_auto_headers=_NO_AUTO_HEADERS,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A kept-alive connection the upstream closed as it was reused: no response was read,
                # so sending once more is safe for a stateless inference server.
                if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
        raise AssertionError("unreachable")

    async def _proxy(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        body = await request.read()
        endpoint = CAPTURE_PATHS.get(request.path) if request.method == "POST" else None
        try:
            upstream = await self._open_upstream(request, body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats.upstream_errors += 1
            log.warning("capture: upstream unreachable: %s", type(exc).__name__)
            return web.json_response(
                {"error": {"message": "upstream unavailable", "type": "proxy_error", "code": 502}}, status=502
            )
        capture = endpoint is not None and 200 <= upstream.status < 300
        keep: bytes | bytearray | None = None
        response: web.StreamResponse
        length = upstream.content_length
        if (
            length is not None
            and length <= _BUFFERED_LIMIT
            and request.method != "HEAD"
            and upstream.status >= 200
        ):
            # A small body of known length (every non-streamed completion): read it whole and answer in
            # one write: same bytes and headers as streaming it; measured ~20% less proxy CPU and ~0.15 ms
            # less added latency per request at concurrency 1.
            try:
                data = await upstream.read()
            except BaseException:
                upstream.close()
                raise
            upstream.release()
            headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _BUFFERED_DROP]
            response = web.Response(
                body=data, status=upstream.status, reason=upstream.reason, headers=headers
            )
            keep = data if capture and self.config.capture_responses else None
        else:
            keep = bytearray() if capture and self.config.capture_responses else None
            try:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _RESPONSE_DROP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if keep is not None:
                        keep += chunk
                        if len(keep) > _RESPONSE_CAPTURE_LIMIT:
                            keep = None
                await response.write_eof()
            except ConnectionError:
                # The client went away mid-response: drop the upstream connection so that vLLM aborts
                # the generation. Nothing is captured from an unfinished exchange.
                upstream.close()
                return response
            except BaseException:
                upstream.close()
                raise
            upstream.release()
        self.stats.forwarded += 1
        if capture and endpoint is not None:
            # Runs on the loop's next turn: after this response has been handed to the socket.
            asyncio.get_running_loop().call_soon(self.pipeline.submit, endpoint, body, keep, upstream.headers)
        return response


# ------------------------------------------------------------------------------------------------- CLI


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tao-stage capture",
        description="reverse proxy in front of an OpenAI-compatible server that stores served prompts",
    )
    p.add_argument("--upstream", default="http://127.0.0.1:8000", help="the server to forward to")
    p.add_argument("--listen", type=_host_port, default=("0.0.0.0", 8080), help="HOST:PORT to serve on")
    p.add_argument(
        "--prompts-uri", required=True, help="file:// or s3:// prefix the batches are written under"
    )
    p.add_argument("--batch-size", type=int, default=500, help="records per object at most")
    p.add_argument(
        "--flush-seconds", type=float, default=30.0, help="write what is buffered at least this often"
    )
    p.add_argument("--max-buffer", type=int, default=10_000, help="records held in memory at most")
    p.add_argument("--max-buffer-mb", type=int, default=256, help="MiB of text held in memory at most")
    p.add_argument(
        "--max-record-kb", type=int, default=1024, help="a bigger request body or record is not captured"
    )
    p.add_argument(
        "--redact-budget", type=float, default=2.0, help="seconds to redact one record; slower: dropped"
    )
    p.add_argument(
        "--dead-letter-after", type=int, default=5, help="failures of one batch before it is set aside"
    )
    p.add_argument(
        "--write-timeout", type=float, default=30.0, help="a write slower than this counts as an error"
    )
    p.add_argument("--max-backoff", type=float, default=60.0, help="longest wait between failed writes")
    p.add_argument("--redact", help="module:function hook, e.g. tao_trainer.capture:redact_basic")
    p.add_argument("--capture-responses", action="store_true", help="also store the first choice's text")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument(
        "--drain-seconds", type=float, default=15.0, help="on SIGTERM, time for requests in flight"
    )
    p.add_argument(
        "--shutdown-deadline", type=float, default=10.0, help="on SIGTERM, time for the final flush"
    )
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body accepted")
    p.add_argument(
        "--s3-endpoint-url", default=None, help="S3-compatible endpoint (else TAO_S3_ENDPOINT_URL)"
    )
    p.add_argument("--s3-region", default=None)
    p.add_argument("--s3-path-style", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> CaptureConfig:
    host, port = args.listen
    return CaptureConfig(
        upstream=args.upstream,
        prompts_uri=args.prompts_uri,
        host=host,
        port=port,
        batch_size=args.batch_size,
        flush_seconds=args.flush_seconds,
        max_buffer=args.max_buffer,
        max_buffer_bytes=args.max_buffer_mb << 20,
        max_record_bytes=args.max_record_kb << 10,
        redact_budget=args.redact_budget,
        dead_letter_after=args.dead_letter_after,
        write_timeout=args.write_timeout,
        max_backoff=args.max_backoff,
        redact=load_hook(args.redact) if args.redact else None,
        capture_responses=args.capture_responses,
        metrics_port=args.metrics_port,
        drain_seconds=args.drain_seconds,
        shutdown_deadline=args.shutdown_deadline,
        max_body=args.max_body_mb << 20,
    )


async def serve(config: CaptureConfig, stop: asyncio.Event | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT (or ``stop`` is set), then drain and flush."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    proxy = CaptureProxy(config)
    await proxy.start()
    print(f"capture proxy listening on {config.host}:{proxy.port}", flush=True)
    await stop.wait()
    log.info("capture: stopping")
    await proxy.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TAO_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.s3_endpoint_url or args.s3_region or args.s3_path_style:
        storage.configure(
            storage.StorageOptions(
                endpoint_url=args.s3_endpoint_url, region=args.s3_region, path_style=args.s3_path_style
            )
        )
    asyncio.run(serve(config_from_args(args)))
    return 0
