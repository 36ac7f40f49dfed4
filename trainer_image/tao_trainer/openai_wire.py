"""OpenAI chat messages and their content parts: the one place that reads them.

`tao serve` answers them, the capture proxy turns them into training prompts, prompt files hold them and the
scorers read completions shaped like them. A message's content is a string, or a list of parts of which only
``{"type": "text", "text": ...}`` parts are text. Text parts are joined with a newline, the convention vLLM
uses when it flattens text parts for a chat template that takes a string: so the prompt ``tao serve`` renders,
the prompt vLLM renders and the prompt the capture proxy stores for the next round are one and the same text.

>>> content_text([{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}])
'What is\\n2+2?'
>>> parse_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
Traceback (most recent call last):
...
tao_trainer.openai_wire.WireError: messages[0].content: only text parts ({'type': 'text', 'text': ...}) are supported
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "PART_SEPARATOR",
    "PROMPT_ROLES",
    "ROLES",
    "WireError",
    "content_text",
    "is_plain_message",
    "is_text_part",
    "parse_messages",
    "prompt_message_problem",
    "text_or_none",
    "type_name",
]

ROLES = ("system", "developer", "user", "assistant", "tool")
"""Every chat role an OpenAI-compatible server accepts."""
PROMPT_ROLES = ("system", "developer", "user", "assistant")
"""Roles a text prompt can hold: a tool result belongs to a tool call, which a text prompt cannot carry."""
PART_SEPARATOR = "\n"
"""What joins the text parts of one message (as vLLM joins them for a string chat template)."""
_TEXT_PART = "({'type': 'text', 'text': ...})"


class WireError(ValueError):
    """A message or content that is not OpenAI's chat format; the message names the field, `param` the
    request field it sits in (what an OpenAI error body reports)."""

    def __init__(self, message: str, param: str = "messages") -> None:
        super().__init__(message)
        self.param = param


def type_name(value: Any) -> str:
    """A value's JSON-ish type name for error messages.

    >>> type_name(None), type_name(3), type_name([])
    ('null', 'int', 'list')
    """
    return "null" if value is None else type(value).__name__


def is_text_part(part: Any) -> bool:
    """Whether one content part is a text part with string text.

    >>> is_text_part({"type": "text", "text": "hi"}), is_text_part({"type": "image_url"}), is_text_part("hi")
    (True, False, False)
    """
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)


def content_text(content: Any, where: str = "content", *, skip_other_parts: bool = False) -> str:
    """A message's content as text: a string as is, null as "", text parts joined with a newline.

    Anything else raises `WireError` naming ``where``; with ``skip_other_parts`` (reading what a model wrote,
    where an extra part is no reason to fail) parts that are not text are left out instead.

    >>> content_text("hi"), content_text(None), content_text([])
    ('hi', '', '')
    >>> content_text([{"type": "text", "text": "a"}, {"type": "image_url"}], skip_other_parts=True)
    'a'
    >>> content_text(3, "messages[1].content")
    Traceback (most recent call last):
    ...
    tao_trainer.openai_wire.WireError: messages[1].content must be a string or a list of text parts, got int
    """
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list | tuple):
        texts = []
        for part in content:
            if is_text_part(part):
                texts.append(part["text"])
            elif not skip_other_parts:
                raise WireError(f"{where}: only text parts {_TEXT_PART} are supported")
        return PART_SEPARATOR.join(texts)
    raise WireError(f"{where} must be a string or a list of text parts, got {type_name(content)}")


def text_or_none(content: Any) -> str | None:
    """`content_text`, or None when the content has no text to read: absent, an empty list, or a part that
    is not text (what the capture proxy skips rather than guess at).

    >>> text_or_none([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    'a\\nb'
    >>> text_or_none(None), text_or_none([]), text_or_none([{"type": "image_url"}])
    (None, None, None)
    """
    if content is None or (isinstance(content, list | tuple) and not content):
        return None
    try:
        return content_text(content)
    except WireError:
        return None


def parse_messages(value: Any, roles: tuple[str, ...] = ROLES) -> list[dict[str, str]]:
    """Chat messages as ``[{"role", "content"}]`` with text content; `WireError` names the bad field.

    >>> parse_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "x"}])
    [{'role': 'user', 'content': 'hi'}]
    >>> parse_messages([{"role": "robot", "content": "hi"}], PROMPT_ROLES)
    Traceback (most recent call last):
    ...
    tao_trainer.openai_wire.WireError: messages[0].role must be one of system, developer, user, assistant, got 'robot'
    """
    if value is None:
        raise WireError("'messages' is required")
    if not isinstance(value, list) or not value:
        raise WireError("'messages' must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise WireError(f"{where} must be an object, got {type_name(message)}")
        role = message.get("role")
        if role not in roles:
            raise WireError(f"{where}.role must be one of {', '.join(roles)}, got {role!r}")
        out.append({"role": role, "content": content_text(message.get("content"), f"{where}.content")})
    return out


def prompt_message_problem(message: Any) -> str | None:
    """Why one message cannot be part of a stored chat prompt, or None: a role of ``ROLES``; content a string,
    null (an assistant turn that only calls tools) or a list of text parts; an assistant's ``tool_calls`` a
    list of ``{"type": "function", "function": {"name", "arguments"}}``; a tool turn's ``tool_call_id`` a string.

    >>> prompt_message_problem({"role": "assistant", "content": None, "tool_calls": [
    ...     {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]}) is None
    True
    >>> prompt_message_problem({"role": "tool", "tool_call_id": "c1", "content": "2"}) is None
    True
    >>> prompt_message_problem({"role": "user", "content": None})
    'a user message needs content'
    """
    if not isinstance(message, Mapping):
        return f"a message must be an object, got {type_name(message)}"
    role = message.get("role")
    if role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}, got {role!r}"
    content = message.get("content")
    calls = message.get("tool_calls")
    try:
        content_text(content)
    except WireError as exc:
        return str(exc)
    if content is None and not (role == "assistant" and calls):
        return f"a {role} message needs content"
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            return "tool_calls must be a list, on an assistant message"
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                return "each tool call needs a function with a string name"
            if not isinstance(function.get("arguments", ""), str | Mapping):
                return "a tool call's arguments must be a JSON string or an object"
    if role == "tool" and not isinstance(message.get("tool_call_id", ""), str):
        return "tool_call_id must be a string"
    return None


def is_plain_message(message: Any) -> bool:
    """Whether a message is in the flat form prompt files and captured records keep: a non-empty string role
    and string content (content parts are flattened before a prompt is stored).

    >>> is_plain_message({"role": "user", "content": "hi"}), is_plain_message({"role": "user", "content": ["hi"]})
    (True, False)
    """
    return (
        isinstance(message, Mapping)
        and isinstance(message.get("role"), str)
        and bool(message["role"])
        and isinstance(message.get("content"), str)
    )
