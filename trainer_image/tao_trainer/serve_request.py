"""What `tao serve` reads from a request: sampling parameters, chat messages, completion prompts.

Every function raises `RequestError` naming the bad field; the server answers it in OpenAI's error shape.
Messages and content parts are read by `openai_wire`, the format shared with the capture proxy, so that the
prompt served here is the prompt captured for training.

>>> parse_sampling({"max_tokens": 8, "stop": "\\n", "n": 2})
Sampling(max_tokens=8, temperature=1.0, top_p=1.0, n=2, seed=None, stop=('\\n',))
>>> parse_sampling({"temperature": "hot"})
Traceback (most recent call last):
...
tao_trainer.serve_request.RequestError: 'temperature' must be a number, got str
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tao_trainer import openai_wire
from tao_trainer.openai_wire import type_name

__all__ = [
    "MAX_N",
    "MAX_STOP",
    "RequestError",
    "Sampling",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
]

MAX_N = 16
MAX_STOP = 8


class RequestError(Exception):
    """A client error, answered in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.type, self.code = message, status, param, type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Sampling:
    """Validated sampling parameters of one request (`max_tokens` None: as many as the context allows,
    up to the server's default)."""

    max_tokens: int | None
    temperature: float
    top_p: float
    n: int
    seed: int | None
    stop: tuple[str, ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_sampling(body: dict[str, Any]) -> Sampling:
    """Sampling parameters of a request body, with OpenAI's defaults; RequestError names a bad field.

    An absent `max_tokens` stays None: the backend resolves it against the prompt's length.
    """
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise RequestError(f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
    temperature = body.get("temperature")
    if temperature is None:
        temperature = 1.0
    if not _is_number(temperature):
        raise RequestError(
            f"'temperature' must be a number, got {type_name(temperature)}", param="temperature"
        )
    if not 0 <= temperature <= 2:
        raise RequestError(f"'temperature' must be between 0 and 2, got {temperature}", param="temperature")
    top_p = body.get("top_p")
    if top_p is None:
        top_p = 1.0
    if not _is_number(top_p):
        raise RequestError(f"'top_p' must be a number, got {type_name(top_p)}", param="top_p")
    if not 0 < top_p <= 1:
        raise RequestError(f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    n = body.get("n")
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise RequestError(f"'n' must be an integer from 1 to {MAX_N}, got {n!r}", param="n")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"'seed' must be an integer, got {type_name(seed)}", param="seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(s for s in stop if s)
    else:
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP:
        raise RequestError(f"'stop' takes at most {MAX_STOP} strings, got {len(stops)}", param="stop")
    if body.get("stream"):
        raise RequestError("streaming is not supported by tao serve; send 'stream': false", param="stream")
    return Sampling(max_tokens, float(temperature), float(top_p), n, seed, stops)


def parse_messages(value: Any) -> list[dict[str, str]]:
    """Chat messages as `[{"role", "content"}]` with text content (text parts joined by a newline).

    >>> parse_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "you"}]}])
    [{'role': 'user', 'content': 'hi\\nyou'}]
    """
    try:
        return openai_wire.parse_messages(value)
    except openai_wire.WireError as exc:
        raise RequestError(str(exc), param=exc.param) from None


def parse_prompts(value: Any) -> list[str]:
    """The `prompt` of a completions request: a string or a non-empty list of strings.

    >>> parse_prompts("2+2=")
    ['2+2=']
    """
    if value is None:
        raise RequestError("'prompt' is required", param="prompt")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return list(value)
    raise RequestError(
        "'prompt' must be a string or a non-empty list of strings (token ids are not supported)",
        param="prompt",
    )
