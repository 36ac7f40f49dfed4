"""The `judge` scorer against a real `tao serve` of a tiny random model, over HTTP.

The model writes gibberish, so nearly every judgement is a parse failure (None, counted): what is under
test is the protocol: requests made and answered, tokens counted from `usage`, no crash, concurrency.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tao_trainer.scorers import JudgeScorer, score_all
from tao_trainer.serve import ServerHandle, start_server

pytestmark = pytest.mark.filterwarnings("ignore")

KEY = "judge-http-key-5d1e"


@pytest.fixture(scope="module")
def long_tiny_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's tokenizer with a 2048-position random GPT-2: judge prompts (rubric, instructions,
    candidates; one token per character) do not fit in the shared tiny model's 256 positions."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("models") / "long-tiny"
    out.mkdir()
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    config = GPT2Config.from_pretrained(tiny_model)
    config.n_positions = 2048
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judge_server(long_tiny_model: Path) -> Iterator[ServerHandle]:
    with start_server(str(long_tiny_model), served_model_name="judge", api_key=KEY) as handle:
        yield handle


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TAO_JUDGE_HTTP_KEY", KEY)
    return KEY


def judge_for(url: str, **fields: object) -> JudgeScorer:
    endpoint = {
        "url": url,
        "model": "judge",
        "apiKeyEnv": "TAO_JUDGE_HTTP_KEY",
        "maxRetries": 1,
        "timeoutSeconds": 60,
    }
    endpoint.update(fields.pop("endpoint", {}))  # type: ignore[arg-type]
    judge = JudgeScorer(
        endpoint=endpoint, rubric="The answer is correct and shows its work.", max_tokens=12, **fields
    )
    judge.client.backoff_base = 0.01
    return judge


def assert_protocol_worked(judge: JudgeScorer, calls: int, values: list[float | None]) -> None:
    stats = judge.stats
    assert stats["calls"] == calls
    assert stats["httpErrors"] == 0 and stats["retries"] == 0
    judged = sum(v is not None for v in values)
    # Every call either parsed or was counted as a failure; gibberish parses (almost) never.
    assert stats["parseFailures"] + stats["refusals"] >= (calls if judged == 0 else 1)
    assert all(v is None or 0.0 <= v <= 1.0 for v in values)
    assert stats["promptTokens"] > calls * 500  # instructions + rubric + candidate, one token per character
    assert calls <= stats["completionTokens"] <= calls * 12


def test_pointwise_over_http_with_concurrency(judge_server: ServerHandle, api_key: str) -> None:
    judge = judge_for(judge_server.url, endpoint={"concurrency": 4})
    prompts = ["What is 12 * 3?"] * 4 + ["Name a prime above 10."] * 4
    completions = ["36", "12 * 3 = 36", "It is 38.", "thirty-six", "11", "13", "15", "I don't know"]
    result = judge.detailed(prompts, completions)
    assert len(result.values) == 8 and len(result.details) == 8
    assert all(d is not None and ("error" in d or "raw" in d) for d in result.details)
    assert_protocol_worked(judge, 8, result.values)
    # Greedy judge, cache on: asking again costs nothing.
    again = judge.detailed(prompts, completions)
    assert again.values == result.values
    assert judge.stats["calls"] + judge.stats["cacheHits"] >= 16


def test_relative_over_http(judge_server: ServerHandle, api_key: str) -> None:
    judge = judge_for(
        judge_server.url, mode="relative", endpoint={"concurrency": 2}, include_fields=["topic"]
    )
    prompts = ["2+2?"] * 3 + ["3+3?"] * 3
    values = judge(prompts, ["4", "5", "four"] + ["6", "7", "six"], topic=["arithmetic"] * 6)
    assert len(values) == 6
    assert_protocol_worked(judge, 2, values)
    against = judge.score_against(["2+2?"], ["4"], references=[["5", "four"]])
    assert len(against) == 1 and judge.stats["calls"] == 3


def test_combined_with_another_scorer(judge_server: ServerHandle, api_key: str) -> None:
    from tao_trainer.scorers import build_scorers

    scorers = build_scorers(
        [
            {"type": "regex", "pattern": r"\d+", "mode": "search"},
            {
                "type": "judge",
                "rubric": "Correct.",
                "maxTokens": 8,
                "endpoint": {
                    "url": judge_server.url,
                    "model": "judge",
                    "apiKeyEnv": "TAO_JUDGE_HTTP_KEY",
                    "maxRetries": 0,
                },
            },
        ]
    )
    batch = score_all(scorers, ["q", "q"], ["42", "none"])
    assert batch.per_scorer["regex"] == [1.0, 0.0]
    assert len(batch.per_scorer["judge"]) == 2 and scorers[1].stats["calls"] == 2
    assert all(t is not None for t in batch.total)  # the judge's abstentions do not erase the regex's values


def test_wrong_key_is_a_401_not_retried(judge_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAO_JUDGE_HTTP_KEY", "not-the-key")
    judge = judge_for(judge_server.url, endpoint={"maxRetries": 3})
    result = judge.detailed(["q"], ["a"])
    assert result.values == [None]
    assert result.details[0]["error"].startswith("HTTP 401")
    assert judge.stats["httpErrors"] == 1 and judge.stats["retries"] == 0
    assert "not-the-key" not in str(result.details)


def test_context_overflow_is_reported(tiny_model: Path) -> None:
    # The shared tiny model has 256 positions: the judge's prompt does not fit, and the server says so.
    with start_server(str(tiny_model), served_model_name="small") as small:
        judge = JudgeScorer(endpoint={"url": small.url, "model": "small", "maxRetries": 2}, rubric="Correct.")
        judge.client.backoff_base = 0.01
        result = judge.detailed(["q"], ["a"])
    assert result.values == [None]
    assert "maximum context length is 256" in result.details[0]["error"]
    assert judge.stats["httpErrors"] == 1 and judge.stats["retries"] == 0  # a 400 is not retried
