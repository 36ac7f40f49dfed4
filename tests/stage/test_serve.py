"""`tao serve`: the OpenAI-compatible server over the tiny random model, over real HTTP."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_process import tao_serve

from tao_trainer import models
from tao_trainer.capture.records import records_from_request
from tao_trainer.serve import ServerHandle, parse_messages, start_server

pytestmark = pytest.mark.filterwarnings("ignore")


def call(
    url: str, body: Any = None, *, method: str | None = None, key: str | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture(scope="module")
def served(tiny_model: Path) -> Iterator[ServerHandle]:
    with start_server(str(tiny_model), served_model_name="tiny") as handle:
        yield handle


def test_health_and_models(served: ServerHandle) -> None:
    assert served.url.startswith("http://127.0.0.1:") and served.url.endswith("/v1")
    assert call(served.url.removesuffix("/v1") + "/health") == (200, {"status": "ok"})
    status, body = call(served.url + "/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny"] and body["data"][0]["max_model_len"] == 256


def test_chat_completion_shape_and_usage(served: ServerHandle) -> None:
    status, body = call(
        served.url + "/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "temperature": 0.7,
            "seed": 3,
        },
    )
    assert status == 200, body
    assert (
        body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    )
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    # No chat template: the messages are joined by a newline, one token per character.
    assert usage["prompt_tokens"] == len("Be brief.\nhello")
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 8
    # The model is named optionally (one model); text parts are accepted.
    status, body = call(
        served.url + "/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}
            ],
            "max_tokens": 2,
        },
    )
    # Text parts are joined by a newline (as vLLM and the capture proxy join them): "hel\nlo".
    assert status == 200 and body["usage"]["prompt_tokens"] == 6


@pytest.mark.parametrize(
    "messages",
    [
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}],
            }
        ],
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}],
            },
            {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "=?"}]},
        ],
    ],
)
def test_multi_part_prompt_is_the_same_served_and_captured(
    served: ServerHandle, tiny_model: Path, messages: list[dict[str, Any]]
) -> None:
    """What `tao serve` generated from is what the capture proxy stores for the next round to train on."""
    [record], skipped = records_from_request("chat", {"messages": messages})
    assert skipped == 0
    backend = served.backend
    served_ids = backend.chat_ids(parse_messages(messages))
    assert models.prepare_prompt(backend.tokenizer, record["prompt"], None).ids == served_ids
    status, body = call(served.url + "/chat/completions", {"messages": messages, "max_tokens": 1})
    assert status == 200 and body["usage"]["prompt_tokens"] == len(served_ids)
    # With a chat template too (a single user turn is stored as plain text, which the loop wraps as one).
    templated = models.load_tokenizer(models.resolve(f"file://{tiny_model}"))
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert models.render_prompt(templated, record["prompt"], None) == models.render_prompt(
        templated, parse_messages(messages), None
    )


def test_seed_reproduces(served: ServerHandle) -> None:
    request = {
        "messages": [{"role": "user", "content": "abc"}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 7,
    }
    first, second = (call(served.url + "/chat/completions", request)[1] for _ in range(2))
    assert first["choices"] == second["choices"]


def test_n_samples(served: ServerHandle) -> None:
    status, body = call(
        served.url + "/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "n": 3,
            "temperature": 1.0,
            "seed": 1,
        },
    )
    assert status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == 2
    assert 3 <= body["usage"]["completion_tokens"] <= 18
    # Greedy: n copies of the one answer.
    status, body = call(
        served.url + "/chat/completions",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "n": 2,
            "temperature": 0,
        },
    )
    assert body["choices"][0]["message"] == body["choices"][1]["message"]


def test_completions_with_several_prompts(served: ServerHandle) -> None:
    status, body = call(
        served.url + "/completions",
        {
            "model": "tiny",
            "prompt": ["ab", "cde"],
            "max_tokens": 4,
            "n": 2,
            "temperature": 0.9,
            "seed": 0,
        },
    )
    assert status == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(isinstance(c["text"], str) for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == 5
    assert 4 <= body["usage"]["completion_tokens"] <= 16


def test_stop_strings(served: ServerHandle) -> None:
    request = {"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0}
    text = call(served.url + "/completions", request)[1]["choices"][0]["text"]
    visible = [ch for ch in text if ch.strip()]
    assert len(visible) >= 3, f"greedy output too short to test stop strings: {text!r}"
    stop = visible[2]
    status, body = call(served.url + "/completions", {**request, "stop": ["\x00never", stop]})
    choice = body["choices"][0]
    assert status == 200
    assert choice["text"] == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] <= text.index(stop) + len(stop) + 1
    # A plain string works too.
    assert (
        call(served.url + "/completions", {**request, "stop": stop})[1]["choices"][0]["text"]
        == choice["text"]
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "needle"),
    [
        ("/chat/completions", b"{not json", 400, None, "invalid JSON"),
        ("/chat/completions", [1, 2], 400, None, "must be a JSON object"),
        ("/chat/completions", {"model": "tiny"}, 400, "messages", "'messages' is required"),
        ("/chat/completions", {"messages": "hi"}, 400, "messages", "non-empty list"),
        ("/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages", "role"),
        ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages", "content"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"},
            400,
            "max_tokens",
            "positive integer",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
            "must be a number",
        ),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n", "'n'"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stop": 5},
            400,
            "stop",
            "'stop'",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 10}},
            400,
            "logit_bias",
            "not supported",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            400,
            "tools",
            "not supported",
        ),
        (
            "/completions",
            {"prompt": "x", "frobnicate": 1},
            400,
            "frobnicate",
            "not a field tao serve supports",
        ),
        ("/completions", {"prompt": "x", "echo": True}, 400, "echo", "not supported"),
        ("/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs", "from 0 to 20"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            400,
            "top_logprobs",
            "needs 'logprobs'",
        ),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
            400,
            "stream_options",
            "only allowed with 'stream'",
        ),
        (
            "/chat/completions",
            {"model": 3, "messages": [{"role": "user", "content": "x"}]},
            400,
            "model",
            "string",
        ),
        ("/completions", {"model": "tiny"}, 400, "prompt", "'prompt' is required"),
        ("/completions", {"prompt": [1, 2, 3]}, 400, "prompt", "token ids are not supported"),
        ("/completions", {"prompt": "x" * 300}, 400, "prompt", "maximum context length is 256"),
        ("/completions", {"prompt": "x" * 200, "max_tokens": 100}, 400, "prompt", "maximum context length"),
    ],
)
def test_request_errors(
    served: ServerHandle, path: str, body: Any, status: int, param: str | None, needle: str
) -> None:
    raw = body if isinstance(body, bytes) else None
    got, payload = call(served.url + path, None if raw else body, raw=raw, method="POST")
    assert got == status
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert needle in error["message"]


def test_unknown_model_and_paths(served: ServerHandle) -> None:
    status, payload = call(
        served.url + "/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    )
    assert (
        status == 404
        and payload["error"]["code"] == "model_not_found"
        and payload["error"]["param"] == "model"
    )
    assert call(served.url + "/nope")[0] == 404
    assert call(served.url + "/nope", {"a": 1})[0] == 404
    assert call(served.url + "/chat/completions")[0] == 405
    # The server still answers after all of that.
    assert call(served.url + "/completions", {"prompt": "ok", "max_tokens": 1})[0] == 200


def test_api_key(served: ServerHandle, capsys: pytest.CaptureFixture[str]) -> None:
    key = "tao-secret-key-81f3"
    with start_server(
        "unused", served_model_name="tiny", api_key=key, backend=served.backend, log_requests=True
    ) as secured:
        request = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
        status, payload = call(secured.url + "/chat/completions", request)
        assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        assert call(secured.url + "/chat/completions", request, key="wrong")[0] == 401
        assert call(secured.url + "/models")[0] == 401
        assert call(secured.url + "/chat/completions", request, key=key)[0] == 200
        assert call(secured.url + "/models", key=key)[0] == 200
        assert call(secured.url.removesuffix("/v1") + "/health")[0] == 200  # probes need no key
    logged = capsys.readouterr()
    assert "POST /v1/chat/completions" in logged.err  # requests are logged...
    assert key not in logged.err + logged.out  # ...never the key


def test_concurrent_requests(served: ServerHandle) -> None:
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        result = call(
            served.url + "/chat/completions",
            {
                "messages": [{"role": "user", "content": f"request {i}"}],
                "max_tokens": 16,
                "temperature": 0.8,
                "seed": i,
            },
        )
        with lock:
            results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 8
    assert all(status == 200 and body["choices"] for status, body in results)


def test_cli_prints_the_url(tiny_model: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TAO_SERVE_API_KEY": "cli-key-77",
    }
    with tao_serve([f"file://{tiny_model}", "--port", "0"], env) as served:
        name, url = served.name, served.url
        assert name == tiny_model.name
        assert call(url.removesuffix("/v1") + "/health") == (200, {"status": "ok"})
        assert call(url + "/models")[0] == 401  # TAO_SERVE_API_KEY is honoured
        status, body = call(url + "/models", key="cli-key-77")
        assert status == 200 and body["data"][0]["id"] == name
    assert served.proc.returncode == 0, served.stderr
    assert "cli-key-77" not in served.stderr
