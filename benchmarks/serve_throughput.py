"""`tao serve` throughput: requests/s and tokens/s at concurrency 1, 8 and 32, batched and one at a time.

    python benchmarks/serve_throughput.py [--model DIR] [--requests 64] [--max-tokens 32] [--concurrency 1,8,32]

The server runs in this process (start_server, on 127.0.0.1) over a model directory, by default a random
char-level GPT-2 built on the spot (4 layers, 256 wide; no download). Clients are threads posting
/v1/completions with urllib (sampling, temperature 0.8, a seed each, `max_tokens` fixed and no stop, so every
request writes about as many tokens). Each concurrency runs twice: with batching (`--max-batch 32`, the
default) and with `--max-batch 1`, which is what serving one request at a time behind a lock did. The
server's own counters give the mean rows per batch and the forward passes.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _bench as bench

REPO = Path(__file__).resolve().parent.parent


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.load(response))


def measure(handle: Any, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    url = handle.url + "/completions"
    before = dict(handle.batcher.stats)
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"prompt": f"request {i}: ", "max_tokens": max_tokens, "temperature": 0.8, "seed": i}
        started = time.monotonic()
        answer = post(url, body)
        with lock:
            latencies.append(time.monotonic() - started)
            tokens[0] += answer["usage"]["completion_tokens"]

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.monotonic() - started
    stats = {k: handle.batcher.stats[k] - before[k] for k in ("batches", "forwardPasses", "rows")}
    return {
        "concurrency": concurrency,
        "requests": requests,
        "wallSeconds": round(wall, 3),
        "requestsPerSecond": round(requests / wall, 2),
        "tokensPerSecond": round(tokens[0] / wall, 1),
        "completionTokens": tokens[0],
        "latencyP50Seconds": round(statistics.median(latencies), 3),
        "latencyMaxSeconds": round(max(latencies), 3),
        "meanBatchRows": round(stats["rows"] / max(1, stats["batches"]), 2),
        "forwardPasses": stats["forwardPasses"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--model", type=Path, help="a model directory (default: a random GPT-2 built here)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=bench.parse_ints, default=[1, 8, 32])
    bench.add_output_flags(parser, "serve_throughput", "the tiny test model, 8 requests of 8 tokens")
    args = parser.parse_args(argv)
    if args.smoke:
        args.requests, args.max_tokens = 8, 8
    out = bench.results_path(args, "serve_throughput")

    sys.path.insert(0, str(REPO / "tests"))
    from tao_trainer import models
    from tao_trainer.serve import TransformersBackend, start_server
    from tao_trainer.serve.batching import Batcher

    machine = bench.Machine()
    model = args.model
    if model is None:
        from tiny_model import build_tiny_model

        size = {"layers": 2, "hidden": 64} if args.smoke else {"layers": 4, "hidden": 256}
        model = build_tiny_model(Path(tempfile.mkdtemp(prefix="tao-serve-bench-")) / "model", **size)
    machine.announce(
        f"{model.name}; {args.requests} requests x {args.max_tokens} tokens at concurrency {args.concurrency}"
    )
    models.cpu_threads()
    backend = TransformersBackend(str(model))
    runs = []
    for max_batch in (32, 1):
        batcher = Batcher(backend, max_batch=max_batch)
        with start_server(str(model), backend=backend, batcher=batcher) as handle:
            post(handle.url + "/completions", {"prompt": "warm up", "max_tokens": 2})
            for concurrency in args.concurrency:
                run = {"maxBatch": max_batch, **measure(handle, concurrency, args.requests, args.max_tokens)}
                runs.append(run)
                print(
                    f"  max-batch {max_batch:>2}  concurrency {concurrency:>2}: "
                    f"{run['requestsPerSecond']:.2f} req/s, {run['tokensPerSecond']:.0f} tok/s",
                    flush=True,
                )
        batcher.close()
    header = ["max-batch", "concurrency", "req/s", "tok/s", "p50 s", "max s", "rows/batch", "forwards"]
    rows = [
        [
            str(r["maxBatch"]),
            str(r["concurrency"]),
            f"{r['requestsPerSecond']:.2f}",
            f"{r['tokensPerSecond']:.0f}",
            f"{r['latencyP50Seconds']:.3f}",
            f"{r['latencyMaxSeconds']:.3f}",
            f"{r['meanBatchRows']:.1f}",
            str(r["forwardPasses"]),
        ]
        for r in runs
    ]
    print(bench.right_table(header, rows, indent="  "))
    speedup = {}
    for c in args.concurrency:
        batched, serial = (
            next(r for r in runs if r["maxBatch"] == b and r["concurrency"] == c) for b in (32, 1)
        )
        speedup[str(c)] = round(batched["tokensPerSecond"] / max(serial["tokensPerSecond"], 1e-9), 2)
    print(f"  tokens/s batched / one at a time, by concurrency: {speedup}")
    figures = {
        "model": str(model) if args.model else f"random GPT-2 ({model.name})",
        "maxTokens": args.max_tokens,
        "runs": runs,
        "batchedOverSerialTokensPerSecond": speedup,
    }
    machine.finish("serve_throughput", out, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
