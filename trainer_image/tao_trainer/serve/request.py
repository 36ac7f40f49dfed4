"""What `tao serve` reads from a request: sampling parameters, chat messages, completion prompts.

Every function raises `RequestError` naming the bad field; the server answers it in OpenAI's error shape.
Messages and content parts are read by `openai_wire`, the format shared with the capture proxy, so that the
prompt served here is the prompt captured for training.

>>> parse_sampling({"max_tokens": 8, "stop": "\\n", "n": 2})
Sampling(max_tokens=8, temperature=1.0, top_p=1.0, n=2, seed=None, stop=('\\n',), logprobs=None, stream=False, include_usage=False)
>>> parse_sampling({"logit_bias": {"50256": -100}})
Traceback (most recent call last):
...
tao_trainer.serve.request.RequestError: 'logit_bias' is not supported by tao serve (send it absent or null)
>>> parse_sampling({"temperature": "hot"})
Traceback (most recent call last):
...
tao_trainer.serve.request.RequestError: 'temperature' must be a number, got str
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tao_trainer import openai_wire
from tao_trainer.openai_wire import type_name

__all__ = [
    "MAX_LOGPROBS",
    "MAX_N",
    "MAX_STOP",
    "RequestError",
    "Sampling",
    "check_fields",
    "parse_messages",
    "parse_prompts",
    "parse_sampling",
]

MAX_N = 16
MAX_STOP = 8
MAX_LOGPROBS = 20
"""Most `top_logprobs` (chat) or `logprobs` (completions) a request may ask for, as vLLM's default."""

_COMMON = frozenset(
    {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop", "stream"}
    | {"stream_options", "user"}
)
HONOURED = {
    "chat": _COMMON | {"messages", "logprobs", "top_logprobs"},
    "completions": _COMMON | {"prompt", "logprobs"},
}
"""Request fields `tao serve` reads, per endpoint (docs/serve.md lists them)."""
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "repetition_penalty": (1, 1.0),
    "echo": (False,),
    "best_of": (1,),
    "logit_bias": ({},),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "response_format": ({"type": "text"},),
    "store": (False,),
    "parallel_tool_calls": (True, False),
    "metadata": ({},),
    "service_tier": ("auto", "default"),
}
"""Fields accepted only at the value that changes nothing; any other value is a 400 naming the field."""


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
    logprobs: int | None = None
    """None: no logprobs; k >= 0: each token's logprob and its k most likely alternatives."""
    stream: bool = False
    include_usage: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_fields(body: dict[str, Any], endpoint: str) -> None:
    """A 400 naming the first field `tao serve` would not honour: never a silent ignore. Null counts as absent."""
    for field, value in body.items():
        if value is None or field in HONOURED[endpoint]:
            continue
        if field in NEUTRAL:
            if any(value == v and type(value) is type(v) for v in NEUTRAL[field]):
                continue
            raise RequestError(
                f"'{field}' is not supported by tao serve (send it absent or null)", param=field
            )
        raise RequestError(f"'{field}' is not a field tao serve supports for /v1/{endpoint}", param=field)


def _parse_logprobs(body: dict[str, Any], endpoint: str) -> int | None:
    logprobs = body.get("logprobs")
    if endpoint == "completions":  # an integer: how many alternatives per token
        if logprobs is None:
            return None
        if not _is_int(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS:
            raise RequestError(
                f"'logprobs' must be an integer from 0 to {MAX_LOGPROBS}, got {logprobs!r}", param="logprobs"
            )
        return int(logprobs)
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(f"'logprobs' must be a boolean, got {type_name(logprobs)}", param="logprobs")
    top = body.get("top_logprobs")
    if top is not None and (not _is_int(top) or not 0 <= top <= MAX_LOGPROBS):
        raise RequestError(
            f"'top_logprobs' must be an integer from 0 to {MAX_LOGPROBS}, got {top!r}", param="top_logprobs"
        )
    if top and not logprobs:
        raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return int(top or 0) if logprobs else None


def _parse_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(f"'stream' must be a boolean, got {type_name(stream)}", param="stream")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise RequestError("'stream_options' is only allowed with 'stream': true", param="stream_options")
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    for key, value in options.items():
        if key != "include_usage" or not isinstance(value, bool | None):
            raise RequestError(
                f"'stream_options.{key}' is not supported (only include_usage: a boolean)",
                param="stream_options",
            )
    return True, bool(options.get("include_usage"))


def parse_sampling(body: dict[str, Any], endpoint: str = "chat") -> Sampling:
    """Sampling parameters of a request body, with OpenAI's defaults; RequestError names a bad field.

    An absent `max_tokens` stays None: the backend resolves it against the prompt's length. `endpoint`
    ("chat" or "completions") decides which fields are honoured and what `logprobs` means.
    """
    check_fields(body, endpoint)
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
    stream, include_usage = _parse_stream(body)
    logprobs = _parse_logprobs(body, endpoint)
    return Sampling(
        max_tokens, float(temperature), float(top_p), n, seed, stops, logprobs, stream, include_usage
    )


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
