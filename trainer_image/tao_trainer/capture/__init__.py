"""`tao-stage capture`: a sidecar proxy in front of vLLM that feeds served prompts to the next round.

Every request is forwarded to ``--upstream`` (method, path, query, headers minus hop-by-hop ones, body) and
the response is streamed back unchanged, chunk by chunk (SSE included). For a successful (2xx)
``POST /v1/chat/completions`` or ``POST /v1/completions``, once the response has been sent, the prompt is
turned into a record of the loop's prompt format (see ``prompts.py``) and queued::

    {"prompt": "What is 2+2?", "endpoint": "chat", "model": "champion",
     "capturedAt": "2026-11-21T10:00:00.123456Z", "captureId": "9f0c..."}

The row is flat, like a user's prompt file: ``load_prompts`` takes ``prompt`` and keeps every other key as
the record's ``fields`` (its id is a hash of the prompt, so a prompt seen twice is loaded once). A chat made
of a single user message becomes that message's text (the same id as the same prompt in a prompt file);
a chat with a system prompt or several turns keeps its ``[{role, content}]`` list, which the loop renders
with the model's chat template. Requests the loop cannot use are skipped and counted: token-id prompts,
non-text content parts, tool calls, a conversation that ends with an assistant turn. Responses are kept
only with ``--capture-responses`` (as ``response``, the first choice's text).

A background task writes the queue to ``--prompts-uri`` as one new JSON-lines object per batch (every
``--flush-seconds`` or ``--batch-size`` records), named ``<UTC time>-<hostname>-<process token>-<seq>.jsonl``
so that names sort by time and never collide across replicas or restarts. The loop's ``load_prompts``
reads every object under a prefix, so pointing a TAOJob's ``prompts.uri`` at a parent of the capture prefix
feeds the next round.

The capture never delays or fails a request: it runs after the response is sent, and everything it
queues goes into a buffer of at most ``--max-buffer`` records (the batch being written included). When
storage is slow or down, writes (in a thread: boto3 blocks) are retried with backoff, one at a time;
records arriving while the buffer is full are dropped and counted (``dropped_full``). A write that takes
longer than ``--write-timeout`` is counted as a storage error and waited for (never started twice, so a
hung connection neither duplicates objects nor piles up threads). On SIGTERM the proxy stops accepting,
lets requests in flight finish, then tries a final flush within ``--shutdown-deadline``; what it cannot
write is counted as ``dropped_storage`` and logged.

``--redact module:function`` names a hook ``fn(record) -> record | None`` run before a record is queued
(None drops it, counted as ``redacted``; a hook that raises drops the record too: fail closed).
``tao_trainer.capture:redact_basic`` masks e-mail addresses, phone numbers and long digit runs.

``GET /capture/stats`` (JSON counters) and ``GET /capture/health`` are answered by the proxy itself and never
forwarded; ``--metrics-port`` adds a Prometheus ``/metrics`` endpoint. Request headers (Authorization) and
bodies are never logged nor stored; the access log is off.

The package is cut at its seams: ``records`` (what a captured record is, built from a request),
``redaction`` (``redact_basic`` and loading a ``module:function`` hook), ``buffer`` (the bounded buffer and
its batched writes to storage) and ``proxy`` (the aiohttp app and ``main``). Importing the package does not
import aiohttp (an optional extra): only starting the proxy does.
"""

from __future__ import annotations

from .buffer import CaptureBuffer, Stats, object_name
from .proxy import CAPTURE_PATHS, CaptureConfig, CaptureProxy, build_parser, config_from_args, main, serve
from .records import Record, records_from_request, response_texts
from .redaction import Hook, load_hook, redact_basic

__all__ = [
    "CAPTURE_PATHS",
    "CaptureBuffer",
    "CaptureConfig",
    "CaptureProxy",
    "Hook",
    "Record",
    "Stats",
    "build_parser",
    "config_from_args",
    "load_hook",
    "main",
    "object_name",
    "records_from_request",
    "redact_basic",
    "response_texts",
    "serve",
]
