"""`tao serve`'s HTTP side: routing, API keys, JSON bodies, errors in OpenAI's shape, and server-sent events.

Each connection has a thread (`ThreadingHTTPServer`); a generation request is read and checked on that thread
(so a bad request is a 400 before anything is queued), queued on the batcher, and its tokens are sent as they
come (`stream: true`, chunked transfer encoding) or collected into one JSON body.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tao_trainer.openai_wire import type_name
from tao_trainer.serve.backend import TransformersBackend
from tao_trainer.serve.batching import Batcher
from tao_trainer.serve.decode import Job
from tao_trainer.serve.request import RequestError, parse_messages, parse_prompts, parse_sampling
from tao_trainer.serve.response import Answer, stream_chunks, whole_response

__all__ = ["MAX_BODY_BYTES", "Server"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
_GENERATE = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the listen backlog: socketserver's 5 resets a burst of concurrent clients

    def __init__(
        self,
        address: tuple[str, int],
        backend: TransformersBackend,
        batcher: Batcher,
        served_model_name: str,
        model_uri: str,
        api_key: str | None,
        log_requests: bool,
    ) -> None:
        super().__init__(address, _Handler)
        self.backend, self.batcher = backend, batcher
        self.served_model_name, self.model_uri = served_model_name, model_uri
        self.api_key = api_key
        self.log_requests = log_requests
        self.created = int(time.time())

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone is no server error
            super().handle_error(request, client_address)

    def model_cards(self) -> list[dict[str, Any]]:
        """The base model, then each LoRA adapter with the base as its parent, as vLLM lists them."""
        base = {
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "tao",
            "root": self.model_uri,
            "parent": None,
            "max_model_len": self.backend.context_length,
        }
        cards = [base]
        for name, module in self.backend.adapters.items():
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "tao",
                    "root": module.path,
                    "parent": module.base_model_name or self.served_model_name,
                    "max_model_len": None,
                }
            )
        return cards


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive for clients that pool connections
    timeout = 120  # seconds an idle kept-alive connection may hold its thread
    server_version = "tao-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Only the request line and status are logged, never headers (so never the API key).
        if self.server.log_requests:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError) -> None:
        self._send(exc.status, exc.body(), {"Retry-After": "1"} if exc.status == 429 else None)

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

    def _no_model(self, model: str) -> RequestError:
        names = ", ".join(repr(c["id"]) for c in self.server.model_cards())
        return RequestError(
            f"The model {model!r} does not exist; this server serves {names}",
            status=404,
            param="model",
            code="model_not_found",
        )

    # ------------------------------------------------------------------ endpoints

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        route = self._route()
        if route == "/health":
            self._send(200, {"status": "ok"})
        elif route == "/v1/models" or route.startswith("/v1/models/"):
            if not self._authorized():
                self._error(self._unauthorized())
                return
            cards = self.server.model_cards()
            if route == "/v1/models":
                self._send(200, {"object": "list", "data": cards})
                return
            name = route.removeprefix("/v1/models/")
            card = next((c for c in cards if c["id"] == name), None)
            if card is None:
                self._error(self._no_model(name))
            else:
                self._send(200, card)
        elif route in _GENERATE:
            self._error(RequestError(f"use POST for {route}", status=405))
        else:
            self._error(RequestError(f"no such endpoint: GET {route}", status=404, code="not_found"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        route = self._route()
        try:
            # The body is read before anything is answered so that a kept-alive connection stays in sync.
            body = self._read_json() if route in _GENERATE else None
            if body is None:
                self.close_connection = True
                raise RequestError(f"no such endpoint: POST {route}", status=404, code="not_found")
            if not self._authorized():
                raise self._unauthorized()
            self._generate(_GENERATE[route], body)
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # a bug or an out-of-memory: say so, keep serving
            log.exception("tao serve: request failed")
            self._error(
                RequestError(f"internal error: {type(exc).__name__}", status=500, type="server_error")
            )

    def _adapter(self, body: dict[str, Any]) -> tuple[str, str | None]:
        """(the model name answered with, the LoRA adapter to use or None for the base model)."""
        model = body.get("model")
        base = self.server.served_model_name
        if model is None:
            return base, None  # an absent name means the base model
        if not isinstance(model, str):
            raise RequestError(f"'model' must be a string, got {type_name(model)}", param="model")
        if model == base:
            return base, None
        if model in self.server.backend.adapters:
            return model, model
        raise self._no_model(model)

    def _generate(self, endpoint: str, body: dict[str, Any]) -> None:
        sampling = parse_sampling(body, endpoint)
        model, adapter = self._adapter(body)
        backend = self.server.backend
        if endpoint == "chat":
            param, prompts = "messages", [backend.chat_ids(parse_messages(body.get("messages")))]
        else:
            param = "prompt"
            prompts = [backend.text_ids(p, "prompt") for p in parse_prompts(body.get("prompt"))]
        max_tokens = [backend.max_tokens_for(ids, sampling, param) for ids in prompts]
        job = Job(prompts, max_tokens, sampling, adapter)
        self.server.batcher.submit(job)
        answer = Answer(chat=endpoint == "chat", model=model)
        try:
            if sampling.stream:
                self._stream(stream_chunks(job, answer))
            else:
                self._send(200, whole_response(job, answer))
        finally:
            job.cancelled = True  # a client gone mid-stream frees its rows at the next token

    def _stream(self, chunks: Iterator[dict[str, Any]]) -> None:
        """Server-sent events over chunked transfer encoding, ending in `data: [DONE]`; an error once the
        stream has started is sent as an event carrying OpenAI's error object (as vLLM does)."""
        try:
            first = next(chunks)  # a failure before the first token is still an HTTP error
        except StopIteration:
            first = None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if first is not None:
                self._event(json.dumps(first))
            for chunk in chunks:
                self._event(json.dumps(chunk))
        except RequestError as exc:
            self._event(json.dumps(exc.body()))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        self._event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _event(self, data: str) -> None:
        payload = f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()
