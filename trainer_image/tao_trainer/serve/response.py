"""`tao serve`'s answers in OpenAI's shapes: whole responses and server-sent-event chunks, chat and completions,
with logprobs in each endpoint's format (chat: `{"content": [{token, logprob, bytes, top_logprobs}]}`;
completions: `{tokens, token_logprobs, top_logprobs, text_offset}`).

>>> completion_logprobs([TokenLogprob("a", -0.5, (("a", -0.5), ("b", -1.0)))], 0)
{'tokens': ['a'], 'token_logprobs': [-0.5], 'top_logprobs': [{'a': -0.5, 'b': -1.0}], 'text_offset': [0]}
"""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tao_trainer.serve.decode import Delta, Done, Failed, Finish, Job, TokenLogprob
from tao_trainer.serve.request import RequestError

__all__ = ["Answer", "chat_logprobs", "completion_logprobs", "events", "stream_chunks", "whole_response"]

WAIT_SECONDS = 600.0
"""Longest a request waits for its next token before it is answered with a 503."""


def events(job: Job) -> Iterator[Delta | Finish]:
    """A request's events until it is done; a failure raises its RequestError."""
    while True:
        try:
            event = job.events.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            job.cancelled = True
            raise RequestError(
                "tao serve: no token for too long", status=503, type="server_error", code="timeout"
            ) from None
        if isinstance(event, Done):
            return
        if isinstance(event, Failed):
            raise event.error
        yield event


@dataclass
class Answer:
    """What a response is about: chat or completions, under which id and model name."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def envelope(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.model,
        }


def _token(entry: tuple[str, float] | TokenLogprob) -> dict[str, Any]:
    text, logprob = (entry.token, entry.logprob) if isinstance(entry, TokenLogprob) else entry
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{**_token(e), "top_logprobs": [_token(t) for t in e.top]} for e in entries]}


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """`offset`: where the first token's text starts in the completion (streamed chunks continue it)."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        # As vLLM: the k most likely tokens, and the sampled one among them.
        "top_logprobs": [
            dict([*e.top, (e.token, e.logprob)]) if e.top else {e.token: e.logprob} for e in entries
        ],
        "text_offset": offsets,
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def whole_response(job: Job, answer: Answer) -> dict[str, Any]:
    """Collect every event of a request into one response body."""
    choices = job.rows
    texts: list[list[str]] = [[] for _ in range(choices)]
    entries: list[list[TokenLogprob]] = [[] for _ in range(choices)]
    finish: list[Finish | None] = [None] * choices
    for event in events(job):
        if isinstance(event, Delta):
            texts[event.index].append(event.text)
            if event.logprob is not None:
                entries[event.index].append(event.logprob)
        else:
            finish[event.index] = event
    wanted = job.sampling.logprobs is not None
    out = []
    for i in range(choices):
        text, done = "".join(texts[i]), finish[i]
        reason = done.reason if done else "stop"
        if answer.chat:
            logprobs = chat_logprobs(entries[i]) if wanted else None
            message = {"role": "assistant", "content": text}
            out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason})
        else:
            logprobs = completion_logprobs(entries[i], 0) if wanted else None
            out.append({"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason})
    completion = sum(f.completion_tokens for f in finish if f is not None)
    return {**answer.envelope(False), "choices": out, "usage": _usage(job.prompt_tokens, completion)}


def stream_chunks(job: Job, answer: Answer) -> Iterator[dict[str, Any]]:
    """A request's server-sent-event chunks, as vLLM sends them: for chat, a first chunk per choice with the
    role; a chunk per token; a chunk with the finish reason; then, with `stream_options.include_usage`, one
    chunk with no choices and the usage (every earlier chunk then carries `"usage": null`)."""
    include_usage = job.sampling.include_usage
    wanted = job.sampling.logprobs is not None
    offsets = [0] * job.rows

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        body = {**answer.envelope(True), "choices": [choice]}
        return {**body, "usage": None} if include_usage else body

    if answer.chat:
        for i in range(job.rows):
            delta = {"role": "assistant", "content": ""}
            yield chunk({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
    completion = 0
    for event in events(job):
        i = event.index
        if isinstance(event, Finish):
            completion += event.completion_tokens
            if answer.chat:
                yield chunk({"index": i, "delta": {}, "logprobs": None, "finish_reason": event.reason})
            else:
                yield chunk({"index": i, "text": "", "logprobs": None, "finish_reason": event.reason})
            continue
        entry = [event.logprob] if event.logprob is not None and wanted else []
        if answer.chat:
            logprobs = chat_logprobs(entry) if entry else None
            yield chunk(
                {"index": i, "delta": {"content": event.text}, "logprobs": logprobs, "finish_reason": None}
            )
        else:
            logprobs = completion_logprobs(entry, offsets[i]) if entry else None
            offsets[i] += len(event.logprob.token) if entry and event.logprob else 0
            yield chunk({"index": i, "text": event.text, "logprobs": logprobs, "finish_reason": None})
    if include_usage:
        yield {**answer.envelope(True), "choices": [], "usage": _usage(job.prompt_tokens, completion)}
