"""`tao serve MODEL_URI`: a small OpenAI-compatible HTTP server over a transformers model (CPU or one GPU).

For local runs and tests, not for production traffic (a cluster serves the champion with vLLM): it lets a
local run try its champion with any OpenAI client, and lets the `judge` scorer be tested against a real model
over real HTTP. Standard library only (`http.server`); torch and transformers are imported when a model loads.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`.
Request fields: `model` (optional: there is one model; a wrong name is a 404), `messages` (chat) or `prompt`
(a string or a list of strings), `max_tokens` (`max_completion_tokens` too), `temperature` (0: greedy),
`top_p`, `n`, `seed`, `stop` (a string or a list). Other OpenAI fields are accepted and ignored, except
`stream: true`, which is refused. Responses carry `usage` and a `finish_reason` of "stop" or "length".

Connections are served concurrently (a thread each); generation is serialised by one lock, as there is one
model. With an API key (`--api-key`, or `TAO_SERVE_API_KEY`), `/v1/*` needs `Authorization: Bearer <key>`;
`/health` stays open for probes. The key is never logged.

>>> default_served_name("s3://bucket/runs/job/round-002/train/model/")
'model'
>>> default_served_name("hf://Qwen/Qwen3-0.6B")
'Qwen/Qwen3-0.6B'
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tao_trainer import models
from tao_trainer.openai_wire import type_name
from tao_trainer.serve_request import (
    RequestError,
    Sampling,
    parse_messages,
    parse_prompts,
    parse_sampling,
)

__all__ = [
    "API_KEY_ENV",
    "Choice",
    "RequestError",
    "Sampling",
    "ServerHandle",
    "TransformersBackend",
    "default_served_name",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
    "serve_cli",
    "start_server",
]

log = logging.getLogger(__name__)

API_KEY_ENV = "TAO_SERVE_API_KEY"
DEFAULT_MAX_TOKENS = 256
"""Completion length when a request gives no `max_tokens` (capped by what the context has left)."""
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    completion_tokens: int


def default_served_name(model_uri: str) -> str:
    """The model's name in requests and in /v1/models: the hub id of an hf:// URI, else the directory name."""
    if model_uri.startswith("hf://"):
        return model_uri.removeprefix("hf://")
    tail = model_uri.rstrip("/").rsplit("/", 1)[-1]
    return tail or model_uri


class TransformersBackend:
    """One causal LM and its tokenizer; `complete` is serialised by a lock (one model, one forward at a time)."""

    def __init__(self, model_uri: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        path = models.resolve(model_uri)
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.load_causal_lm(path)
        self.default_max_tokens = default_max_tokens
        self.lock = threading.Lock()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length: int | None = limit if isinstance(limit, int) and limit > 0 else None
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        pad = self.tokenizer.pad_token_id
        self.pad_id: int | None = pad if pad is not None else (min(eos_ids) if eos_ids else None)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A chat's tokens: the chat template's rendering, as training and generation read the same chat."""
        return models.prepare_prompt(self.tokenizer, messages, None).ids

    def text_ids(self, prompt: str, param: str) -> list[int]:
        """A completion prompt's tokens: the text with the tokenizer's leading special tokens (BOS), as the loop
        reads a prompt captured from /v1/completions."""
        if not self.tokenizer(prompt, add_special_tokens=False)["input_ids"]:
            raise RequestError(f"'{param}' is empty after tokenization", param=param)
        return models.prepare_prompt(self.tokenizer, prompt, None, raw=True).ids

    def complete(self, ids: list[int], sampling: Sampling, param: str) -> tuple[int, list[Choice]]:
        """(prompt tokens, `sampling.n` choices) for one prompt's token ids."""
        with (
            self.lock
        ):  # one generation at a time; fast tokenizers are not safe to share across threads either
            return self._complete(ids, sampling, param)

    def _complete(self, ids: list[int], sampling: Sampling, param: str) -> tuple[int, list[Choice]]:
        import torch

        prompt_tokens = len(ids)
        if prompt_tokens == 0:
            raise RequestError(f"'{param}' is empty after tokenization", param=param)
        room = None if self.context_length is None else self.context_length - prompt_tokens
        max_tokens = sampling.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens if room is None else min(self.default_max_tokens, room)
        if room is not None and room < 1:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, the {param} "
                f"has {prompt_tokens} tokens, which leaves no room for a completion.",
                param=param,
            )
        if room is not None and max_tokens > room:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} for the "
                "completion). Please reduce the length of the prompt or of max_tokens.",
                param=param,
            )
        greedy = sampling.temperature <= 0.0
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self.pad_id,
            "num_return_sequences": 1 if greedy else sampling.n,
        }
        if greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            # Ends generation early; the text is cut at the stop string below either way.
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        input_ids = torch.tensor([ids], device=self.model.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        rows = seqs[:, prompt_tokens:].tolist()
        choices = [self._choice(row, max_tokens, sampling.stop) for row in rows]
        return prompt_tokens, choices * sampling.n if greedy else choices

    def _choice(self, row: list[int], max_tokens: int, stop: Sequence[str]) -> Choice:
        ended = False
        for i, token in enumerate(row):
            if token in self.eos_ids:
                row, ended = row[: i + 1], True  # the end-of-sequence token counts, as in vLLM
                break
        else:
            while row and row[-1] == self.pad_id:  # a shorter row of the batch, padded after it stopped
                row = row[:-1]
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        cuts = [pos for pos in (text.find(s) for s in stop) if pos >= 0]
        if cuts:
            return Choice(text[: min(cuts)], "stop", len(row))
        reason = "length" if not ended and len(row) >= max_tokens else "stop"
        return Choice(text, reason, len(row))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        backend: TransformersBackend,
        served_model_name: str,
        api_key: str | None,
        log_requests: bool,
    ) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.log_requests = log_requests
        self.created = int(time.time())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for clients that pool connections
    timeout = 120  # seconds an idle kept-alive connection may hold its thread
    server_version = "tao-serve"

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Only the request line and status are logged, never headers (so never the API key).
        if self.server.log_requests:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError) -> None:
        self._send(exc.status, exc.body())

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _read_json(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            raise RequestError("a JSON body with a Content-Length header is required", status=411)
        try:
            length = int(length_header)
        except ValueError:
            self.close_connection = True
            raise RequestError("invalid Content-Length header") from None
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(f"the request body must be a JSON object, got {type_name(body)}")
        return body

    def _unauthorized(self) -> RequestError:
        return RequestError(
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            status=401,
            type="authentication_error",
            code="invalid_api_key",
        )

    # ------------------------------------------------------------------ endpoints

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        route = self._route()
        if route == "/health":
            self._send(200, {"status": "ok"})
        elif route == "/v1/models":
            if not self._authorized():
                self._error(self._unauthorized())
                return
            card = {
                "id": self.server.served_model_name,
                "object": "model",
                "created": self.server.created,
                "owned_by": "tao",
                "max_model_len": self.server.backend.context_length,
            }
            self._send(200, {"object": "list", "data": [card]})
        elif route in ("/v1/chat/completions", "/v1/completions"):
            self._error(RequestError(f"use POST for {route}", status=405))
        else:
            self._error(RequestError(f"no such endpoint: GET {route}", status=404, code="not_found"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        route = self._route()
        try:
            # The body is read before anything is answered so that a kept-alive connection stays in sync.
            body = self._read_json() if route in ("/v1/chat/completions", "/v1/completions") else None
            if body is None:
                self.close_connection = True
                raise RequestError(f"no such endpoint: POST {route}", status=404, code="not_found")
            if not self._authorized():
                raise self._unauthorized()
            self._check_model(body)
            if route == "/v1/chat/completions":
                self._send(200, self._chat(body))
            else:
                self._send(200, self._completions(body))
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # a bug or an out-of-memory: say so, keep serving
            log.exception("tao serve: request failed")
            self._error(
                RequestError(f"internal error: {type(exc).__name__}", status=500, type="server_error")
            )

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            return  # one model: an absent name means it
        if not isinstance(model, str):
            raise RequestError(f"'model' must be a string, got {type_name(model)}", param="model")
        if model != self.server.served_model_name:
            raise RequestError(
                f"The model {model!r} does not exist; this server serves {self.server.served_model_name!r}",
                status=404,
                param="model",
                code="model_not_found",
            )

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = parse_messages(body.get("messages"))
        sampling = parse_sampling(body)
        backend = self.server.backend
        prompt_tokens, choices = backend.complete(backend.chat_ids(messages), sampling, "messages")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.served_model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(prompt_tokens, choices),
        }

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = parse_prompts(body.get("prompt"))
        sampling = parse_sampling(body)
        total_prompt, all_choices = 0, []
        for prompt in prompts:
            backend = self.server.backend
            prompt_tokens, choices = backend.complete(backend.text_ids(prompt, "prompt"), sampling, "prompt")
            total_prompt += prompt_tokens
            all_choices.extend(choices)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.server.served_model_name,
            # As OpenAI: choice i*n + j is sample j of prompt i.
            "choices": [
                {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(all_choices)
            ],
            "usage": _usage(total_prompt, all_choices),
        }


def _usage(prompt_tokens: int, choices: Sequence[Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


class ServerHandle:
    """A running server: `url` is the OpenAI base URL (ending in /v1); `close()` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.host, self.port = server.server_address[0], server.server_address[1]
        self.served_model_name = server.served_model_name
        self.url = f"http://{_url_host(str(self.host))}:{self.port}/v1"

    @property
    def backend(self) -> TransformersBackend:
        return self._server.backend

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

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
) -> ServerHandle:
    """Load the model (or reuse `backend`) and serve it from a background thread; port 0 picks a free port.

    `api_key` None reads `TAO_SERVE_API_KEY`; an empty string turns authentication off.
    """
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    backend = backend or TransformersBackend(model_uri, default_max_tokens=default_max_tokens)
    server = _Server(
        (host, port),
        backend,
        served_model_name or default_served_name(model_uri),
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
    return ServerHandle(server, thread)


def serve_cli(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 0,
    served_model_name: str | None = None,
    api_key: str | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    quiet: bool = False,
) -> int:
    """`tao serve`: print `serving NAME at URL` on one line once the port is open, then serve until interrupted."""
    import signal

    models.cpu_threads()
    handle = start_server(
        model_uri,
        host,
        port,
        served_model_name,
        api_key=api_key,
        default_max_tokens=default_max_tokens,
        log_requests=not quiet,
    )

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (kill, a pod stopping) ends the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminate)
    if handle._server.api_key:
        print("tao serve: /v1 requires an API key (Authorization: Bearer ...)", file=sys.stderr, flush=True)
    # One line on stdout, the URL last: scripts read it to find the port.
    print(f"serving {handle.served_model_name} at {handle.url}", flush=True)
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.close()
    return 0
