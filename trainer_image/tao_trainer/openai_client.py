"""A small client for OpenAI-compatible chat completions (vLLM, `tao serve`, a hosted API).

Stdlib HTTP only, so that it runs in any image: at most `endpoint.concurrency` requests in flight, a time
limit per request, retries with jittered exponential backoff that honour `Retry-After`, and no retry on a
4xx other than 408 and 429 (asking again will not help). It counts what it does through a `count` callback
(by default into its own `stats`): calls, retries, httpErrors, promptTokens, completionTokens, refusals, and
parseFailures for empty replies. The API key is sent as a Bearer token and is redacted from every message
the client raises or logs.

A reply that cannot be had raises `RequestFailed`, already counted, with a redacted message.

>>> from tao_trainer.spec import EndpointSpec
>>> client = OpenAIClient(EndpointSpec(url="http://127.0.0.1:9/v1/", model="m"))
>>> client.url, client.stats["calls"]
('http://127.0.0.1:9/v1/chat/completions', 0)
>>> OpenAIClient(EndpointSpec(url="http://x/v1", model="m"), api_key="sk-1").redact("key sk-1")
'key ***'
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from typing import Any, NoReturn

from tao_trainer.spec import EndpointSpec

__all__ = ["STAT_KEYS", "OpenAIClient", "RateLimits", "RequestFailed", "Sampled", "shorten"]

log = logging.getLogger(__name__)

STAT_KEYS = (
    "calls",
    "retries",
    "httpErrors",
    "refusals",
    "parseFailures",
    "promptTokens",
    "completionTokens",
)

Counter = Callable[[str, int], None]


class RequestFailed(Exception):
    """No usable reply (already counted); the message is redacted and short enough for a details file."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def shorten(text: str, limit: int) -> str:
    """`text` stripped and cut to `limit` characters, an ellipsis marking the cut.

    >>> shorten("  abcdef ", 4)
    'abc…'
    """
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class OpenAIClient:
    """Chat completions from one endpoint; thread-safe, so that callers can fan requests out to threads.

    `count` receives (stat, n) for every counted event; `warn` receives each failure message (already
    redacted), so that a caller can rate-limit its own log. Both default to this client's `stats` and log.
    """

    # Retry k waits about backoff_base * 2**k seconds (with jitter, at most backoff_max); a Retry-After
    # header wins, up to retry_after_max. Class attributes so that tests can shorten them per instance.
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0

    def __init__(
        self,
        endpoint: EndpointSpec,
        *,
        api_key: str | None = None,
        user_agent: str = "tao",
        count: Counter | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.base = endpoint.url.rstrip("/")
        self.url = self.base + "/chat/completions"
        self.limits = RateLimits(endpoint.requests_per_minute, endpoint.tokens_per_minute)
        self._api_key = api_key
        self._user_agent = user_agent
        self._slots = threading.BoundedSemaphore(endpoint.concurrency)
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._count: Counter = count or self._count_here
        self._warn: Callable[[str], None] = warn or self._log_warning

    def count(self, key: str, n: int = 1) -> None:
        """Count an event of the caller's (a cache hit, a failed prompt) with the client's own."""
        self._count(key, n)

    def _count_here(self, key: str, n: int = 1) -> None:
        with self._lock:  # requests run in threads
            self.stats[key] = self.stats.get(key, 0) + n

    def _log_warning(self, message: str) -> None:
        log.warning("endpoint %s: %s", self.url, message)

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by `***` (a server or proxy may quote it back)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> str:
        """The reply text to `messages`; `params` (temperature, max_tokens, ...) go into the request body.
        Raises `RequestFailed` (already counted) when there is none."""
        payload = self.request("chat/completions", {"messages": list(messages), **params})
        choice = _choices(payload)[0]
        return self._usable_text(choice, choice.get("message"), "content")

    def sample(self, prompt: str | Sequence[Mapping[str, Any]], n: int, **params: Any) -> Sampled:
        """`n` completions of `prompt`: chat messages go to /chat/completions, plain text to /completions. A
        server may return fewer choices than asked (some ignore `n`): the rest are asked for again, up to `n`
        requests in all. Unusable choices (refused, without text) are counted and left out, so the list can be short
        (an empty text is a candidate, as an empty sample of a local model is);
        raises `RequestFailed` when a request fails."""
        route, field = (
            ("completions", "prompt") if isinstance(prompt, str) else ("chat/completions", "messages")
        )
        texts: list[str] = []
        used = Sampled([], 0, 0)
        for _ in range(n):
            wanted = n - len(texts)
            body = {field: prompt if isinstance(prompt, str) else list(prompt), "n": wanted, **params}
            payload = self.request(route, body)
            usage = payload.get("usage")
            if isinstance(usage, Mapping):
                used.input_tokens += usage.get("prompt_tokens") or 0
                used.output_tokens += usage.get("completion_tokens") or 0
            choices = _choices(payload)
            for choice in choices[:wanted]:
                holder = choice if isinstance(prompt, str) else choice.get("message")
                # An unusable choice is counted, and is one candidate less, not a failed prompt.
                with contextlib.suppress(RequestFailed):
                    texts.append(
                        self._usable_text(
                            choice, holder, "text" if isinstance(prompt, str) else "content", allow_empty=True
                        )
                    )
            if len(choices) >= wanted:
                break
        used.texts = texts
        return used

    def request(self, route: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """POST `fields` (with the endpoint's model) to `<url>/<route>`, under the rate limits, with retries; the
        parsed reply, its token usage counted. Raises `RequestFailed` (already counted) when there is none."""
        body = json.dumps({"model": self.endpoint.model, **fields}).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": self._user_agent,
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._count("calls", 1)
        url = f"{self.base}/{route}"
        attempts = self.endpoint.max_retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                self.limits.wait()
                with (
                    self._slots,
                    urllib.request.urlopen(request, timeout=self.endpoint.timeout_seconds) as response,
                ):
                    raw = response.read()
                return self._payload(raw)
            except urllib.error.HTTPError as exc:
                detail = _error_body(exc)
                problem = f"HTTP {exc.code}{': ' + detail if detail else ''}"
                if exc.code not in (408, 429) and exc.code < 500:
                    self._give_up(problem)  # 400/401/403/404...: asking again will not help
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                problem = f"{type(exc).__name__}: {reason}"
            if attempt + 1 < attempts:
                self._count("retries", 1)
                time.sleep(self.backoff(attempt, retry_after))
        self._give_up(f"{problem} (after {attempts} attempt{'s' if attempts > 1 else ''})")

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry `attempt` (0-based): the server's Retry-After, capped, or jittered
        exponential backoff."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        cap = min(self.backoff_max, self.backoff_base * 2**attempt)
        return cap / 2 + self._rng.uniform(0, cap / 2)  # jitter spreads retries of concurrent requests

    def _give_up(self, problem: str) -> NoReturn:
        self._count("httpErrors", 1)
        message = self.redact(problem)
        self._warn(f"request failed: {message}")
        raise RequestFailed(message)

    def _payload(self, raw: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict) or not _choices(payload):
                raise ValueError("no choices")
        except (ValueError, TypeError):
            self._give_up(f"invalid response body {shorten(raw.decode('utf-8', 'replace'), 80)!r}")
        usage = payload.get("usage")
        if isinstance(usage, Mapping):
            used = 0
            for stat, field in (("promptTokens", "prompt_tokens"), ("completionTokens", "completion_tokens")):
                if isinstance(usage.get(field), int):
                    self._count(stat, usage[field])
                    used += usage[field]
            self.limits.spent(used)
        return payload

    def _usable_text(
        self, choice: Mapping[str, Any], holder: Any, field: str, allow_empty: bool = False
    ) -> str:
        """A choice's text (`holder[field]`), or `RequestFailed` (counted) for a refusal or a missing one (or an
        empty one, unless `allow_empty`: a sampled candidate may be empty, a judge's verdict may not)."""
        content = holder.get(field) if isinstance(holder, Mapping) else None
        refusal = holder.get("refusal") if isinstance(holder, Mapping) else None
        if refusal or choice.get("finish_reason") == "content_filter":
            self._count("refusals", 1)
            raise RequestFailed("refusal: " + self.redact(shorten(str(refusal or "content filter"), 120)))
        if not isinstance(content, str) or not (allow_empty or content.strip()):
            self._count("parseFailures", 1)
            raise RequestFailed("parse failure: empty reply")
        return content


@dataclass
class Sampled:
    """What `sample` got: the completions, and the tokens the server reported for them (0 when it did not)."""

    texts: list[str]
    input_tokens: int
    output_tokens: int


class RateLimits:
    """`endpoint.requestsPerMinute` and `tokensPerMinute` over a sliding minute, shared by a client's threads:
    `wait` blocks until a request may start, `spent` records the tokens a reply used."""

    window = 60.0

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.requests_per_minute, self.tokens_per_minute = requests_per_minute, tokens_per_minute
        self._starts: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def wait(self) -> None:
        while (delay := self._reserve()) > 0:
            time.sleep(delay)

    def _reserve(self) -> float:
        """0 after recording a start when both limits allow one now; else the seconds to wait first."""
        with self._lock:
            now = time.monotonic()
            while self._starts and self._starts[0] <= now - self.window:
                self._starts.popleft()
            while self._tokens and self._tokens[0][0] <= now - self.window:
                self._tokens.popleft()
            delays = [0.0]
            if self.requests_per_minute is not None and len(self._starts) >= self.requests_per_minute:
                delays.append(self._starts[0] + self.window - now)
            if (
                self.tokens_per_minute is not None
                and sum(n for _, n in self._tokens) >= self.tokens_per_minute
            ):
                delays.append(self._tokens[0][0] + self.window - now)
            delay = max(delays)
            if delay <= 0:
                self._starts.append(now)
            return max(delay, 0.0)

    def spent(self, tokens: int) -> None:
        if tokens > 0 and self.tokens_per_minute is not None:
            with self._lock:
                self._tokens.append((time.monotonic(), tokens))


def _choices(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    choices = payload.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _error_body(exc: urllib.error.HTTPError) -> str:
    """The message of an error response (OpenAI's `error.message` when present), short."""
    try:
        raw = exc.read(2048).decode("utf-8", "replace")
    except Exception:
        return ""
    finally:
        exc.close()
    try:
        error = json.loads(raw).get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return shorten(error["message"], 160)
        if isinstance(error, str):
            return shorten(error, 160)
    except (ValueError, AttributeError):
        pass
    return shorten(" ".join(raw.split()), 160)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when absent or unreadable.

    >>> _retry_after("2"), _retry_after(None), _retry_after("soon")
    (2.0, None, None)
    """
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
