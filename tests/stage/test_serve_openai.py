"""`tao serve` driven by the official `openai` client, as users' code and chat UIs drive it: streaming (sync and
async), logprobs, models.retrieve, 32 concurrent requests sharing forward passes, LoRA adapters selected by
model name, and errors for what it does not honour."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from tao_trainer.serve import LoraModule, ServerHandle, start_server  # noqa: E402
from tao_trainer.serve.batching import Batcher  # noqa: E402
from tao_trainer.serve.decode import Job  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

CHAT = [{"role": "user", "content": "SELECT"}]


def train_adapter(model_dir: Path, out: Path) -> Path:
    """A tiny LoRA adapter trained with peft on the tiny model for a few steps (no download)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0),
    )
    ids = torch.tensor([tokenizer("SELECT * FROM t;" * 4)["input_ids"]])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "sql")


@pytest.fixture(scope="module")
def served(tiny_model: Path, adapter: Path) -> Iterator[ServerHandle]:
    with start_server(
        str(tiny_model), served_model_name="tiny", lora_modules=[LoraModule("sql", str(adapter))]
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(served: ServerHandle) -> Any:
    return openai.OpenAI(base_url=served.url, api_key="unused", max_retries=0)


def test_models_list_and_retrieve(client: Any, served: ServerHandle, adapter: Path) -> None:
    cards = {m.id: m for m in client.models.list()}
    assert list(cards) == ["tiny", "sql"]
    # As vLLM lists adapters: the adapter's path as its root and the base model as its parent.
    assert cards["tiny"].model_extra["parent"] is None and cards["tiny"].model_extra["max_model_len"] == 256
    assert cards["sql"].model_extra == {**cards["sql"].model_extra, "root": str(adapter), "parent": "tiny"}
    assert client.models.retrieve("sql").id == "sql" and client.models.retrieve("tiny").owned_by == "tao"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_streaming_chat_matches_the_whole_answer(client: Any) -> None:
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len(chunks) > 3  # token by token, not one blob


def test_streaming_completions_with_n_and_stop(client: Any) -> None:
    request: dict[str, Any] = {"model": "tiny", "prompt": ["ab", "cd"], "max_tokens": 10, "seed": 5, "n": 2}
    whole = client.completions.create(**request)
    texts = ["", "", "", ""]
    reasons: list[str | None] = [None] * 4
    for chunk in client.completions.create(**request, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [c.text for c in whole.choices]  # the same seed: the same samples, streamed or not
    assert reasons == [c.finish_reason for c in whole.choices]
    # A stop string is never streamed, even in part.
    full = client.completions.create(model="tiny", prompt="The quick", max_tokens=30, temperature=0)
    stop = full.choices[0].text[3:5]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="The quick", max_tokens=30, temperature=0, stop=[stop], stream=True
        )
    )
    assert streamed == full.choices[0].text[: full.choices[0].text.index(stop)]


async def test_async_streaming_and_32_concurrent_requests(served: ServerHandle) -> None:
    client = openai.AsyncOpenAI(base_url=served.url, api_key="unused", max_retries=0)
    before = dict(served.batcher.stats)

    async def chat(i: int) -> str:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=8,
            temperature=0.8,
            seed=i,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def complete(i: int) -> str:
        answer = await client.completions.create(
            model="tiny", prompt=f"request {i}", max_tokens=8, temperature=0.8, seed=i
        )
        return str(answer.choices[0].text)

    results = await asyncio.gather(*(chat(i) if i % 2 else complete(i) for i in range(32)))
    assert len(results) == 32 and all(isinstance(r, str) for r in results)
    stats = served.batcher.stats
    requests = stats["requests"] - before["requests"]
    batches = stats["batches"] - before["batches"]
    assert requests == 32 and batches < requests  # requests arriving together shared forward passes
    # A seeded request gives the same text alone as in a batch of 32.
    assert await chat(3) == results[3] and await complete(4) == results[4]
    await client.close()


def test_logprobs(client: Any, served: ServerHandle) -> None:
    answer = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(answer.choices[0].message.content)
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.logprob == pytest.approx(max(t.logprob for t in token.top_logprobs))  # greedy
        assert token.bytes == list(token.token.encode())
    completion = client.completions.create(model="tiny", prompt="ab", max_tokens=5, temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(
        len(top) == 2 and tok in top for tok, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True)
    )
    assert logprobs.text_offset[0] == 0 and "".join(logprobs.tokens).startswith(completion.choices[0].text)
    assert client.completions.create(model="tiny", prompt="ab", max_tokens=2).choices[0].logprobs is None


def test_lora_modules_selected_by_model_name(
    client: Any, served: ServerHandle, adapter: Path, tiny_model: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def greedy(model: str) -> Any:
        return client.completions.create(model=model, prompt="SEL", max_tokens=12, temperature=0, logprobs=0)

    base, tuned = greedy("tiny").choices[0], greedy("sql").choices[0]
    assert tuned.logprobs.token_logprobs != pytest.approx(base.logprobs.token_logprobs, abs=1e-3)
    assert tuned.text != base.text
    # The adapter served beside the base answers as the merged adapter does.
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), adapter
    ).merge_and_unload()
    prompt = served.backend.text_ids("SEL", "prompt")
    with torch.inference_mode():
        out = merged.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)
        new = out[0, len(prompt) :].tolist()
        logits = merged(out).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
    expected = [float(logits[i, t]) for i, t in enumerate(new)]
    assert served.backend.text(new) == tuned.text
    assert tuned.logprobs.token_logprobs == pytest.approx(expected, abs=1e-4)
    # The base model's answers are unchanged by the adapters loaded beside it.
    assert greedy("tiny").choices[0].text == base.text


def test_unsupported_fields_are_a_400_naming_the_field(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, logit_bias={"5": 3})
    assert info.value.body["param"] == "logit_bias" and "not supported" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=2, response_format={"type": "json_object"}
        )
    assert info.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"guided_regex": "a+"})
    assert info.value.body["param"] == "guided_regex"
    # Neutral values are accepted: they change nothing.
    answer = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=2, presence_penalty=0, frequency_penalty=0.0, user="u"
    )
    assert answer.choices[0].message.content is not None


def test_a_full_queue_is_a_429(served: ServerHandle) -> None:
    stalled = Batcher(served.backend, max_queue=1)
    stalled.close()  # no worker: what is queued stays queued
    with start_server("unused", served_model_name="tiny", backend=served.backend, batcher=stalled) as full:
        stalled.submit(Job([[5]], [1], _sampling()))  # fills the queue
        client = openai.OpenAI(base_url=full.url, api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert info.value.body["code"] == "queue_full" and info.value.response.headers["retry-after"] == "1"


def _sampling() -> Any:
    from tao_trainer.serve.request import parse_sampling

    return parse_sampling({"max_tokens": 1})


def test_stream_errors_before_the_first_token_are_http_errors(served: ServerHandle) -> None:
    import urllib.error
    import urllib.request

    body = {"prompt": "x" * 300, "stream": True}
    request = urllib.request.Request(
        served.url + "/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 400 and "maximum context length" in json.load(info.value)["error"]["message"]
