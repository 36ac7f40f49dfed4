"""Latency the prompt-capture proxy adds per request, with storage up, refusing connections, or hanging.

    python benchmarks/capture_latency.py [--requests 2000] [--concurrency 1,16]

Three processes on one machine: a fast upstream (aiohttp answering a fixed chat completion at once, so
that no model time hides the proxy's cost), `tao-stage capture` in front of it as the sidecar runs, and
this load generator. Requests alternate between the upstream (direct) and the proxy in blocks of 100, so
that background load on a shared machine falls on both alike. Storage scenarios:

- ``ok``: file:// in a temp dir (what the proxy does while flushing is counted in its figures);
- ``refusing``: s3:// at a closed port: every write fails (boto3 retries 5 times inside each write);
- ``hanging``: s3:// at a server that accepts connections and never answers: writes hang.

A stream row measures a 20-event SSE answer end to end. The proxy's CPU time per request comes from
/proc. The printed table is the result; nothing is written elsewhere.

``--hostile`` runs one more scenario (storage ok, ``--redact tao_trainer.capture:redact_basic``): blocks of
16-concurrent benign requests through the proxy, alternating between quiet blocks and blocks during which
one more client keeps a 1 MB hostile prompt in flight at all times (texts that made the old e-mail regex
backtrack quadratically, and the new patterns' slowest inputs), and compares the p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _bench as bench
import aiohttp

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "model": "champion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "The answer is 4."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}
BLOCK = 100
SSE_EVENTS = 20


# ------------------------------------------------------------------------------------------ the upstream


def serve_upstream() -> None:
    from aiohttp import web

    body = json.dumps(ANSWER).encode()
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok "}}]}
    event = f"data: {json.dumps(chunk)}\n\n".encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        if not payload.get("stream"):
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(SSE_EVENTS):
            await response.write(event)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{cmd[:4]} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, int(line.rsplit(":", 1)[1])


def black_hole() -> int:
    """A TCP server that accepts connections and never answers (a hung S3)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ------------------------------------------------------------------------------------------------- load


async def one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with session.post(url, json=payload, headers={"Authorization": "Bearer bench"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return time.perf_counter() - started


async def measure(
    direct: str, proxied: str, requests: int, concurrency: int, stream: bool = False
) -> tuple[list[float], list[float]]:
    """Latencies (seconds) direct and through the proxy, in alternating blocks."""
    results: dict[str, list[float]] = {direct: [], proxied: []}
    counter = 0

    def payload() -> dict[str, Any]:
        nonlocal counter
        counter += 1
        text = f"Question {counter}: what is {counter} + {counter}? Show your work briefly."
        return {"model": "champion", "messages": [{"role": "user", "content": text}], "stream": stream}

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (direct, proxied):  # warm connections and code paths
            await asyncio.gather(*(one(session, url, payload()) for _ in range(min(50, requests))))
        for block in range(0, requests, BLOCK):
            n = min(BLOCK, requests - block)
            for url in (direct, proxied) if (block // BLOCK) % 2 == 0 else (proxied, direct):
                queue = list(range(n))

                async def worker(url: str = url, queue: list[int] = queue) -> None:
                    while queue:
                        queue.pop()
                        results[url].append(await one(session, url, payload()))

                await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results[direct], results[proxied]


def pct(values: list[float], q: float) -> float:
    """The q-th percentile of latencies in seconds, in ms."""
    return bench.percentile(values, q) * 1000


HOSTILE_UNITS = ("a", "+1 ", "(1)", "a.", "1 ")
HOSTILE_CHARS = 1_000_000


async def hostile_blocks(
    proxied: str, requests: int, rounds: int = 4
) -> tuple[list[float], list[float], int]:
    """Benign p99 material without and with a 1 MB hostile prompt in flight; and hostile prompts sent."""
    quiet: list[float] = []
    loud: list[float] = []
    sent = 0
    counter = 0

    async def benign(session: aiohttp.ClientSession, out: list[float], n: int) -> None:
        queue = list(range(n))

        async def worker() -> None:
            nonlocal counter
            while queue:
                queue.pop()
                counter += 1
                text = f"Question {counter}: what is {counter} + {counter}? Show your work briefly."
                payload = {"model": "champion", "messages": [{"role": "user", "content": text}]}
                out.append(await one(session, proxied, payload))

        await asyncio.gather(*(worker() for _ in range(16)))

    async def hostile(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while True:
            unit = HOSTILE_UNITS[sent % len(HOSTILE_UNITS)]
            text = (unit * (HOSTILE_CHARS // len(unit) + 1))[:HOSTILE_CHARS]
            await one(
                session, proxied, {"model": "champion", "messages": [{"role": "user", "content": text}]}
            )
            sent += 1

    per_block = max(1, requests // rounds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        await benign(session, [], min(100, requests))  # warm
        for _ in range(rounds):
            await benign(session, quiet, per_block)
            task = asyncio.create_task(hostile(session))
            await asyncio.sleep(0.2)  # the first hostile prompt is in flight
            await benign(session, loud, per_block)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return quiet, loud, sent


def run_hostile(up_port: int, tmp: Path, env: dict[str, str], requests: int) -> None:
    cmd = [sys.executable, "-m", "tao_trainer.cli", "capture", "--upstream", f"http://127.0.0.1:{up_port}"]
    cmd += ["--listen", "127.0.0.1:0", "--prompts-uri", f"file://{tmp}/hostile/", "--flush-seconds", "1"]
    cmd += ["--redact", "tao_trainer.capture:redact_basic"]
    proxy, port = start(cmd, env)
    try:
        proxied = f"http://127.0.0.1:{port}/v1/chat/completions"
        quiet, loud, sent = asyncio.run(hostile_blocks(proxied, requests))
        time.sleep(2.5)
        s = stats_of(port)
    finally:
        proxy.terminate()
        proxy.wait(30)
    header = ["benign x16", "requests", "p50", "p95", "p99"]
    rows = [
        [name, str(len(v))] + [f"{pct(v, q):.2f}" for q in (50, 95, 99)]
        for name, v in (("quiet", quiet), ("1 MB hostile in flight", loud))
    ]
    print("\nhostile prompts (ms, through the proxy with redact_basic):")
    print(bench.right_table(header, rows))
    print(f"p99 difference: {pct(loud, 99) - pct(quiet, 99):+.2f} ms (acceptance: within 50 ms)")
    keys = ("forwarded", "captured", "redact_timeouts", "too_large", "dropped_full", "flushed_records")
    print(f"hostile prompts sent: {sent}; counters: " + "  ".join(f"{k}={s[k]}" for k in keys))


def stats_of(port: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/capture/stats", timeout=5) as r:
        return json.loads(r.read())


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hostile", action="store_true", help="also run the 1 MB hostile-prompt scenario")
    parser.add_argument("--only-hostile", action="store_true", help="run the hostile scenario alone")
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream()
        return
    levels = [int(c) for c in args.concurrency.split(",")]

    upstream, up_port = start([sys.executable, __file__, "--serve-upstream"])
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    tmp = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    base_env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "TAO_S3_PATH_STYLE": "1",
        "TAO_LOG_LEVEL": "ERROR",
    }
    scenarios = [
        ("ok", f"file://{tmp}/captured", {}),
        ("refusing", "s3://bench/captured", {"TAO_S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}),
        ("hanging", "s3://bench/captured", {"TAO_S3_ENDPOINT_URL": f"http://127.0.0.1:{black_hole()}"}),
    ]
    if args.hostile or args.only_hostile:
        try:
            run_hostile(up_port, tmp, {**base_env}, args.requests)
        finally:
            if args.only_hostile:
                upstream.terminate()
                upstream.wait(10)
        if args.only_hostile:
            return
    rows: list[list[str]] = []
    counters: list[str] = []
    print(f"machine: {os.cpu_count()} cores (shared); {args.requests} requests per row, each way", flush=True)
    try:
        for name, uri, env in scenarios:
            cmd = [
                sys.executable,
                "-m",
                "tao_trainer.cli",
                "capture",
                "--upstream",
                f"http://127.0.0.1:{up_port}",
            ]
            cmd += [
                "--listen",
                "127.0.0.1:0",
                "--prompts-uri",
                uri,
                "--batch-size",
                "500",
                "--flush-seconds",
                "1",
            ]
            cmd += ["--max-buffer", "2000", "--write-timeout", "2", "--shutdown-deadline", "2"]
            proxy, port = start(cmd, {**base_env, **env})
            proxied = f"http://127.0.0.1:{port}/v1/chat/completions"
            try:
                runs = [(c, False) for c in levels] + ([(1, True)] if name == "ok" else [])
                for concurrency, stream in runs:
                    cpu0 = bench.proc_cpu_seconds(proxy.pid)
                    d, p = asyncio.run(measure(direct, proxied, args.requests, concurrency, stream))
                    cpu = (bench.proc_cpu_seconds(proxy.pid) - cpu0) / (len(p) + min(50, args.requests)) * 1e6
                    md, mp = statistics.median(d) * 1000, statistics.median(p) * 1000
                    label = f"{name}{' sse' if stream else ''}"
                    rows.append(
                        [label, str(concurrency)]
                        + [f"{pct(d, q):.2f}" for q in (50, 95, 99)]
                        + [f"{pct(p, q):.2f}" for q in (50, 95, 99)]
                        + [
                            f"{mp - md:+.2f}",
                            f"{pct(p, 95) - pct(d, 95):+.2f}",
                            f"{mp / md:.2f}x",
                            f"{cpu:.0f}",
                        ]
                    )
                    print("  done:", label, concurrency, flush=True)
                time.sleep(2.5)  # let a flush (or a failed one) happen
                s = stats_of(port)
                keys = ("forwarded", "captured", "flushed_records", "flushed_objects", "buffered")
                keys += ("dropped_full", "storage_errors", "storage")
                counters.append(f"{name:9s} " + "  ".join(f"{k}={s[k]}" for k in keys))
            finally:
                proxy.terminate()
                try:
                    proxy.wait(30)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                err = proxy.stderr.read() if proxy.stderr else ""
                if "Traceback" in err:
                    print(err, file=sys.stderr)
    finally:
        upstream.terminate()
        upstream.wait(10)

    header = ["storage", "conc", "dir p50", "dir p95", "dir p99", "prx p50", "prx p95", "prx p99"]
    header += ["+p50", "+p95", "p50 ratio", "proxy cpu us/req"]
    print("\nlatency in ms (direct = client -> upstream; prx = client -> proxy -> upstream)")
    print(bench.right_table(header, rows))
    print("\ncounters after each scenario (/capture/stats):")
    for line in counters:
        print(" ", line)


if __name__ == "__main__":
    main()
