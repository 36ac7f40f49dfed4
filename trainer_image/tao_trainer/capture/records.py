"""What a captured record is, and building records from a served request (and its response).

A record is flat, like a row of a user's prompt file: ``load_prompts`` takes ``prompt`` and keeps every
other key as the record's ``fields``::

    {"prompt": "What is 2+2?", "endpoint": "chat", "model": "champion",
     "capturedAt": "2026-11-21T10:00:00.123456Z", "captureId": "9f0c..."}

A chat made of a single user message becomes that message's text (the same id as the same prompt in a
prompt file); a chat with a system prompt or several turns keeps its ``[{role, content}]`` list, which the
loop renders with the model's chat template. Content parts are flattened by ``openai_wire`` exactly as
``tao serve`` flattens them. Tool-using chats are kept whole: assistant ``tool_calls`` and ``tool`` turns stay in
the messages, and the request's ``tools`` becomes the record's ``tools`` field (what the chat template renders).
Requests the loop cannot use are skipped and counted: token-id prompts, non-text content parts, a conversation
that ends with an assistant turn.

>>> records, _ = records_from_request("chat", {"tools": [{"type": "function", "function": {"name": "add"}}],
...     "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": None, "tool_calls": [
...     {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
...     {"role": "tool", "tool_call_id": "c1", "content": "2"}]})
>>> [m["role"] for m in records[0]["prompt"]], records[0]["tools"][0]["function"]["name"]
(['user', 'assistant', 'tool'], 'add')

>>> records, skipped = records_from_request("chat", {"model": "m", "messages": [
...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]})
>>> records[0]["prompt"], records[0]["endpoint"], records[0]["model"], skipped
([{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}], 'chat', 'm', 0)
>>> records_from_request("chat", {"messages": [{"role": "user", "content": "2+2?"}]})[0][0]["prompt"]
'2+2?'
>>> records_from_request("chat", {"messages": [{"role": "user", "content": [
...     {"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]}]})[0][0]["prompt"]
'What is\\n2+2?'
>>> [r["prompt"] for r in records_from_request("completions", {"prompt": ["a", "b"]})[0]]
['a', 'b']
>>> records_from_request("completions", {"prompt": [1, 2, 3]})[1], records_from_request("completions", {"prompt": [[1], "x"]})[1]
(1, 1)
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tao_trainer import openai_wire

Record = dict[str, Any]
"""One captured prompt: ``prompt`` plus flat fields (``endpoint``, ``model``, ``capturedAt``, ...)."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TOOL_CALL_KEYS = ("id", "type", "function")


def _chat_prompt(messages: Any) -> str | list[dict[str, Any]] | None:
    """The loop's prompt for a chat request, or None when the loop could not use it."""
    if not isinstance(messages, list) or not messages:
        return None
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("function_call"):
            return None  # the deprecated single function_call: no template renders it
        if openai_wire.prompt_message_problem(message) is not None:
            return None
        role, calls = message["role"], message.get("tool_calls")
        # Text parts are joined as `tao serve` and vLLM join them: the stored prompt is the served one.
        text = openai_wire.text_or_none(message.get("content"))
        if text is None and not calls:
            return None
        kept: dict[str, Any] = {"role": role, "content": text}
        if calls:
            kept["tool_calls"] = [{k: c[k] for k in _TOOL_CALL_KEYS if k in c} for c in calls]
        if role == "tool" and isinstance(message.get("tool_call_id"), str):
            kept["tool_call_id"] = message["tool_call_id"]
        out.append(kept)
    last = out[-1]
    if last["role"] not in ("user", "tool") or not (last["content"] or "").strip():
        return None  # the loop renders prompts with a generation prompt after the last user (or tool) turn
    if len(out) == 1:
        return str(out[0]["content"])
    return out


def records_from_request(endpoint: str, payload: Any) -> tuple[list[Record], int]:
    """(records, skipped) for one request body. Raises ValueError when the body is not a JSON object."""
    if not isinstance(payload, dict):
        raise ValueError("request body is not a JSON object")
    if endpoint == "chat":
        prompt = _chat_prompt(payload.get("messages"))
        found: list[str | list[dict[str, Any]] | None] = [prompt]
    else:
        raw: Any = payload.get("prompt")
        # A list is a batch of prompts (strings, or token-id lists the loop cannot use) unless it is
        # itself one prompt's token ids.
        batch = isinstance(raw, list) and bool(raw) and not all(isinstance(t, int) for t in raw)
        items = raw if batch else [raw]
        found = [p if isinstance(p, str) and p.strip() else None for p in items]
    model = payload.get("model") if isinstance(payload.get("model"), str) else None
    now = now_iso()
    records: list[Record] = []
    for prompt in found:
        if prompt is None:
            continue
        record: Record = {"prompt": prompt, "endpoint": endpoint}
        tools = payload.get("tools") if endpoint == "chat" else None
        if isinstance(tools, list) and tools and all(isinstance(t, dict) for t in tools):
            record["tools"] = tools
        if model is not None:
            record["model"] = model
        record["capturedAt"] = now
        record["captureId"] = uuid.uuid4().hex
        records.append(record)
    return records, len(found) - len(records)


def response_texts(endpoint: str, body: bytes, event_stream: bool) -> dict[int, str]:
    """Choice index -> generated text, from a JSON response or an SSE stream of chunks.

    >>> response_texts("chat", b'{"choices": [{"index": 0, "message": {"content": "4"}}]}', False)
    {0: '4'}
    >>> sse = b'data: {"choices": [{"index": 0, "delta": {"content": "4"}}]}\\n\\n'
    >>> response_texts("chat", sse + sse + b"data: [DONE]\\n\\n", True)
    {0: '44'}
    """
    texts: dict[int, str] = {}

    def take(choices: Any, streamed: bool) -> None:
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if endpoint == "chat":
                holder = choice.get("delta" if streamed else "message")
                text = holder.get("content") if isinstance(holder, dict) else None
            else:
                text = choice.get("text")
            if isinstance(index, int) and isinstance(text, str):
                texts[index] = texts.get(index, "") + text

    if not event_stream:
        doc = json.loads(body)
        take(doc.get("choices") if isinstance(doc, dict) else None, False)
        return texts
    for line in body.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            break
        with contextlib.suppress(ValueError):
            chunk = json.loads(data)
            if isinstance(chunk, dict):
                take(chunk.get("choices"), True)
    return texts
