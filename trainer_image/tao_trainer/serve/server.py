"""Starting and stopping `tao serve`: the server handle, the CLI entry point, and the served model's name.

>>> default_served_name("s3://bucket/runs/job/round-002/train/model/")
'model'
>>> default_served_name("hf://Qwen/Qwen3-0.6B")
'Qwen/Qwen3-0.6B'
"""

from __future__ import annotations

import os
import sys
import threading

from tao_trainer import models
from tao_trainer.serve.backend import (
    DEFAULT_MAX_LORA_RANK,
    DEFAULT_MAX_TOKENS,
    LoraModule,
    TransformersBackend,
    parse_lora_module,
)
from tao_trainer.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, Batcher
from tao_trainer.serve.handler import Server
from tao_trainer.serve.request import (
    RequestError,
    Sampling,
    parse_messages,
    parse_prompts,
    parse_sampling,
)

__all__ = [
    "API_KEY_ENV",
    "LoraModule",
    "RequestError",
    "Sampling",
    "ServerHandle",
    "TransformersBackend",
    "default_served_name",
    "parse_lora_module",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
    "serve_cli",
    "start_server",
]

API_KEY_ENV = "TAO_SERVE_API_KEY"


def default_served_name(model_uri: str) -> str:
    """The model's name in requests and in /v1/models: the hub id of an hf:// URI, else the directory name."""
    if model_uri.startswith("hf://"):
        return model_uri.removeprefix("hf://")
    tail = model_uri.rstrip("/").rsplit("/", 1)[-1]
    return tail or model_uri


class ServerHandle:
    """A running server: `url` is the OpenAI base URL (ending in /v1); `close()` stops it."""

    def __init__(self, server: Server, thread: threading.Thread, own_batcher: bool) -> None:
        self._server, self._thread, self._own_batcher = server, thread, own_batcher
        self.host, self.port = server.server_address[0], server.server_address[1]
        self.served_model_name = server.served_model_name
        self.url = f"http://{_url_host(str(self.host))}:{self.port}/v1"

    @property
    def backend(self) -> TransformersBackend:
        return self._server.backend

    @property
    def batcher(self) -> Batcher:
        """The request queue and its counters (`stats`: batches, forward passes, requests, rows)."""
        return self._server.batcher

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        if self._own_batcher:
            self._server.batcher.close()

    def wait(self) -> None:
        """Block until the server stops (the CLI's foreground loop)."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r}, model={self.served_model_name!r})"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_server(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 0,
    served_model_name: str | None = None,
    *,
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    log_requests: bool = False,
    backend: TransformersBackend | None = None,
    batcher: Batcher | None = None,
    lora_modules: list[LoraModule] | None = None,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> ServerHandle:
    """Load the model (or reuse `backend`, and its batcher) and serve it from a background thread; port 0
    picks a free port. `lora_modules` are loaded beside the base (vLLM's `--enable-lora --lora-modules`).

    `api_key` None reads `TAO_SERVE_API_KEY`; an empty string turns authentication off.
    """
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if backend is None:
        backend = TransformersBackend(
            model_uri,
            default_max_tokens=default_max_tokens,
            lora_modules=lora_modules,
            max_lora_rank=max_lora_rank,
        )
    # One worker per model: servers sharing a backend share its queue (the first one started owns it).
    batcher = batcher or getattr(backend, "batcher", None)
    own_batcher = batcher is None
    if batcher is None:
        batcher = Batcher(backend, max_batch=max_batch, max_queue=max_queue)
        backend.batcher = batcher
    server = Server(
        (host, port),
        backend,
        batcher,
        served_model_name or default_served_name(model_uri),
        model_uri,
        api_key or None,
        log_requests,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"tao-serve:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return ServerHandle(server, thread, own_batcher)


def serve_cli(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 0,
    served_model_name: str | None = None,
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    quiet: bool = False,
    enable_lora: bool = False,
    lora_modules: list[str] | None = None,
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> int:
    """`tao serve`: print `serving NAME at URL` on one line once the port is open, then serve until interrupted."""
    import signal

    if lora_modules and not enable_lora:
        print("tao serve: --lora-modules needs --enable-lora (as vLLM)", file=sys.stderr)
        return 2
    try:
        modules = [parse_lora_module(m) for m in lora_modules or []]
    except ValueError as exc:
        print(f"tao serve: {exc}", file=sys.stderr)
        return 2
    models.cpu_threads()
    try:
        handle = start_server(
            model_uri,
            host,
            port,
            served_model_name,
            api_key=api_key,
            default_max_tokens=default_max_tokens,
            log_requests=not quiet,
            lora_modules=modules,
            max_lora_rank=max_lora_rank,
            max_batch=max_batch,
            max_queue=max_queue,
        )
    except ValueError as exc:  # an adapter refused: its rank, a missing adapter_config.json, a name twice
        print(f"tao serve: {exc}", file=sys.stderr)
        return 2

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (kill, a pod stopping) ends the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate)
    if handle._server.api_key:
        print("tao serve: /v1 requires an API key (Authorization: Bearer ...)", file=sys.stderr, flush=True)
    for module in modules:
        print(f"tao serve: LoRA adapter {module.name} from {module.path}", file=sys.stderr, flush=True)
    # One line on stdout, the URL last: scripts read it to find the port.
    print(f"serving {handle.served_model_name} at {handle.url}", flush=True)
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.close()
    return 0
