"""`generation.teacher.endpoint`: candidates for distillation from an OpenAI-compatible server, against a real
`tao serve` and against scripted servers (fewer choices than asked, 429 with Retry-After, timeouts, malformed
replies, a key the server echoes), with answers kept in the run's storage so that a re-run pays for nothing."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_process import Served, tao_serve
from stage import test_stages as stage_tests
from stage.test_stages import config, run_through
from unit.test_judge import Reply, ScriptedJudge

from tao_trainer import storage
from tao_trainer.answer_cache import AnswerCache
from tao_trainer.cli import _runner
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.spec import ServedModelSpec, TeacherSpec
from tao_trainer.teacher import EndpointSampler

pytestmark = pytest.mark.filterwarnings("ignore")

workspace = stage_tests.workspace  # the fixture, shared with the other stage tests

SAMPLING = Sampling(n=3, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=7)


def completion(*texts: str, prompt_tokens: int = 4, completion_tokens: int = 3) -> Reply:
    """A 200 text_completion with one choice per text."""
    choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return 200, {"object": "text_completion", "choices": choices, "usage": usage}, {}


@pytest.fixture
def server() -> Iterator[ScriptedJudge]:
    s = ScriptedJudge()
    yield s
    s.close()


def teacher(url: str, tmp: Path, api: str = "completions", **endpoint: Any) -> EndpointSampler:
    spec = TeacherSpec.model_validate(
        {
            "endpoint": {"url": url, "model": "big", "maxRetries": 0, "timeoutSeconds": 5} | endpoint,
            "api": api,
        }
    )
    made = EndpointSampler(spec, AnswerCache((tmp / "cache").as_uri()), system_prompt=None)
    made.client.backoff_base = 0.01
    return made


RECORDS = [{"id": f"p{i}", "prompt": f"{i}+1=", "fields": {}} for i in range(4)]


def test_a_server_giving_fewer_choices_than_asked_is_asked_again(
    server: ScriptedJudge, tmp_path: Path
) -> None:
    server.respond = lambda body, n: completion(f"answer {n}")  # one choice, whatever n says
    answers = teacher(server.url, tmp_path).sample(RECORDS[:1], 3, SAMPLING)
    assert answers[0].texts == ["answer 0", "answer 1", "answer 2"] and answers[0].missing == 0
    assert [r["n"] for r in server.requests] == [3, 2, 1]
    assert server.requests[0]["prompt"] == "0+1=" and server.requests[0]["max_tokens"] == 8


def test_chat_requests_carry_the_messages_and_the_sampling(server: ScriptedJudge, tmp_path: Path) -> None:
    from unit.test_judge import chat

    server.respond = lambda body, n: chat("4")
    made = teacher(server.url, tmp_path, api="chat")
    made.system_prompt = "Answer with a number."
    made.sample(RECORDS[:2], 1, SAMPLING)
    # The two requests run concurrently: taken in prompt order, whichever arrived first.
    first, second = sorted(server.requests, key=lambda r: r["messages"][-1]["content"])
    assert first["messages"] == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "0+1="},
    ]
    assert (first["temperature"], first["top_p"], first["n"]) == (1.0, 1.0, 1)
    # Each prompt has a seed of its own, from its place in the shard: a part asked again asks the same.
    assert first["seed"] != second["seed"]


def test_429_with_retry_after_is_waited_for(server: ScriptedJudge, tmp_path: Path) -> None:
    replies = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"}), completion("a", "b", "c")]
    server.respond = lambda body, n: replies[n]
    made = teacher(server.url, tmp_path, maxRetries=2)
    started = time.monotonic()
    answers = made.sample(RECORDS[:1], 3, SAMPLING)
    assert time.monotonic() - started >= 0.2
    assert answers[0].texts == ["a", "b", "c"] and made.stats["retries"] == 1


@pytest.mark.parametrize(
    "reply",
    [
        (200, "<html>not json</html>", {}),
        (200, {"choices": "many"}, {}),
        (200, {"object": "text_completion"}, {}),
        (500, {"error": {"message": "down"}}, {}),
    ],
    ids=["not-json", "choices-not-a-list", "no-choices", "http-500"],
)
def test_a_failed_prompt_is_counted_and_never_fatal(
    server: ScriptedJudge, tmp_path: Path, reply: Reply
) -> None:
    server.respond = lambda body, n: reply if body["prompt"] == "1+1=" else completion("x", "y", "z")
    made = teacher(server.url, tmp_path)
    answers = made.sample(RECORDS, 3, SAMPLING)
    assert [a.missing for a in answers] == [0, 3, 0, 0]
    assert answers[1].texts == [] and answers[0].texts == ["x", "y", "z"]
    assert made.stats["failedPrompts"] == 1 and made.stats["httpErrors"] == 1


def test_refused_choices_and_choices_without_text_are_left_out(server: ScriptedJudge, tmp_path: Path) -> None:
    choices = [
        {"index": 0, "text": "ok", "finish_reason": "stop"},
        {"index": 1, "text": None, "finish_reason": "stop"},
        {"index": 2, "text": "bad", "finish_reason": "content_filter"},
    ]
    server.respond = lambda body, n: (200, {"choices": choices}, {})
    made = teacher(server.url, tmp_path)
    [answer] = made.sample(RECORDS[:1], 3, SAMPLING)
    assert answer.texts == ["ok"] and answer.missing == 2
    assert made.stats["parseFailures"] == 1 and made.stats["refusals"] == 1


def test_a_timeout_is_a_failed_prompt(server: ScriptedJudge, tmp_path: Path) -> None:
    server.delay = 1.5
    made = teacher(server.url, tmp_path, timeoutSeconds=0.3)
    [answer] = made.sample(RECORDS[:1], 2, SAMPLING)
    assert answer.missing == 2 and made.stats["httpErrors"] == 1


def test_the_key_is_sent_and_never_logged(
    server: ScriptedJudge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-teacher-" + "q7" * 12
    monkeypatch.setenv("TEACHER_KEY", key)
    server.respond = lambda body, n: (401, {"error": {"message": f"invalid key {key}"}}, {})
    with caplog.at_level(logging.DEBUG):
        [answer] = teacher(server.url, tmp_path, apiKeyEnv="TEACHER_KEY").sample(RECORDS[:1], 1, SAMPLING)
    assert server.headers[0]["Authorization"] == f"Bearer {key}"
    assert answer.missing == 1 and "invalid key" in caplog.text and key not in caplog.text
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(ValueError, match=r"TEACHER_KEY \(apiKeyEnv\) is not set"):
        teacher(server.url, tmp_path, apiKeyEnv="TEACHER_KEY")


def test_requests_per_minute_spaces_the_requests(server: ScriptedJudge, tmp_path: Path) -> None:
    server.respond = lambda body, n: completion("a")
    made = teacher(server.url, tmp_path, requestsPerMinute=2, concurrency=4)
    made.client.limits.window = 0.5  # a shorter "minute"
    started = time.monotonic()
    made.sample(RECORDS, 1, SAMPLING)
    # 4 requests, 2 per window: the third waits for the first window to pass.
    assert time.monotonic() - started >= 0.5 and len(server.requests) == 4


def test_tokens_per_minute_holds_requests_back(server: ScriptedJudge, tmp_path: Path) -> None:
    server.respond = lambda body, n: completion("a", prompt_tokens=50, completion_tokens=50)
    made = teacher(server.url, tmp_path, tokensPerMinute=100, concurrency=1)
    made.client.limits.window = 0.4
    started = time.monotonic()
    made.sample(RECORDS[:2], 1, SAMPLING)
    assert time.monotonic() - started >= 0.4 and made.stats["promptTokens"] == 100


def test_answers_are_kept_so_a_rerun_pays_for_nothing(server: ScriptedJudge, tmp_path: Path) -> None:
    server.respond = lambda body, n: completion("a", "b")
    first = teacher(server.url, tmp_path)
    first.sample(RECORDS, 2, SAMPLING)
    assert len(server.requests) == 4 and first.stats["completionTokens"] == 12
    again = teacher(server.url, tmp_path)  # a new process: reads the answers from storage
    answers = again.sample(RECORDS, 2, SAMPLING)
    assert len(server.requests) == 4 and again.stats["cacheHits"] == 4 and again.stats["calls"] == 0
    assert all(a.texts == ["a", "b"] for a in answers)
    # Another sampling setting is another request.
    again.sample(RECORDS[:1], 2, Sampling(n=2, temperature=0.5, top_p=1.0, max_new_tokens=8, seed=7))
    assert len(server.requests) == 5


def test_the_served_model_is_cached_per_starting_model(server: ScriptedJudge, tmp_path: Path) -> None:
    """generation.modelEndpoint: a later round's champion, served under the same name, is asked anew."""
    server.respond = lambda body, n: completion("a")
    served = ServedModelSpec.model_validate(
        {"endpoint": {"url": server.url, "model": "bot"}, "api": "completions"}
    )
    cache = AnswerCache((tmp_path / "cache").as_uri())
    EndpointSampler(served, cache, None, key_salt="round-1 model").sample(RECORDS[:2], 1, SAMPLING)
    again = EndpointSampler(served, cache, None, key_salt="round-1 model")
    again.sample(RECORDS[:2], 1, SAMPLING)
    assert len(server.requests) == 2 and again.stats["cacheHits"] == 2
    EndpointSampler(served, cache, None, key_salt="round-2 champion").sample(RECORDS[:2], 1, SAMPLING)
    assert len(server.requests) == 4


def test_a_torn_cache_object_costs_a_request_not_the_stage(server: ScriptedJudge, tmp_path: Path) -> None:
    server.respond = lambda body, n: completion("a")
    teacher(server.url, tmp_path).sample(RECORDS[:2], 1, SAMPLING)
    [written] = list((tmp_path / "cache").glob("*.jsonl"))
    lines = written.read_text().splitlines()
    written.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")  # the second entry torn
    again = teacher(server.url, tmp_path)
    again.sample(RECORDS[:2], 1, SAMPLING)
    assert again.stats["cacheHits"] == 1 and len(server.requests) == 3


# --------------------------------------------------------------------------- the generate stage, end to end

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def served_teacher(tiny_model: Path) -> Iterator[Served]:
    """The tiny model behind a real `tao serve`, as a teacher."""
    with tao_serve([tiny_model.as_uri(), "--port", "0"], ENV) as served:
        yield served


def _teacher(served: Served, **extra: Any) -> dict[str, Any]:
    endpoint = {"url": served.url, "model": served.name, "concurrency": 4}
    return {"teacher": {"endpoint": endpoint, "api": "completions"} | extra}


def test_generate_asks_the_served_teacher_and_a_rerun_pays_nothing(
    workspace: dict[str, Path], served_teacher: Served
) -> None:
    gen = {"generation": _teacher(served_teacher)}
    res = run_through(workspace, "prepare", "generate", **gen)["generate"]
    prompts = res.counts["prompts"]
    assert res.counts["candidates"] == 4 * prompts == res.counts["candidatesFromTeacher"]
    assert res.counts["teacher.calls"] == prompts and res.counts["teacher.completionTokens"] > 0
    assert res.outputs["generator"] == f"{served_teacher.url} ({served_teacher.name})"
    lay = RunLayout(config(workspace, "generate").run_uri)
    rows = [row for i in range(2) for row in storage.read_jsonl(lay.shard("candidates", 1, i))]
    assert all(row["sources"] == ["teacher"] * 4 and len(row["candidates"]) == 4 for row in rows)

    # The candidates lost (a new attempt of the stage): asked again from the run's answer cache, not the server.
    for i in range(2):
        storage.delete(lay.shard("candidates", 1, i))
    again = _runner("generate")(config(workspace, "generate", **gen))
    assert again.counts["teacher.calls"] == 0 and again.counts["teacher.cacheHits"] == prompts
    assert [row for i in range(2) for row in storage.read_jsonl(lay.shard("candidates", 1, i))] == rows


def test_the_model_being_tuned_can_be_sampled_from_a_server(
    workspace: dict[str, Path], served_teacher: Served
) -> None:
    served = {"endpoint": {"url": served_teacher.url, "model": served_teacher.name}, "api": "completions"}
    results = run_through(
        workspace, "prepare", "generate", "score", "train", generation={"modelEndpoint": served}
    )
    generated = results["generate"]
    prompts = generated.counts["prompts"]
    assert (
        generated.counts["candidatesFromModel"] == 4 * prompts and generated.counts["model.calls"] == prompts
    )
    assert generated.counts["model.completionTokens"] > 0 and results["train"].counts["examples"] > 0
    assert generated.outputs["generator"] == f"{served_teacher.url} ({served_teacher.name})"


def test_a_mixed_round_keeps_each_candidates_source_through_training(
    workspace: dict[str, Path], served_teacher: Served
) -> None:
    gen = {"generation": _teacher(served_teacher, share=0.5), "evaluation": {"teacherBaseline": True}}
    results = run_through(workspace, "prepare", "generate", "score", "train", "evaluate", **gen)
    generated, trained = results["generate"], results["train"]
    prompts = generated.counts["prompts"]
    assert generated.counts["candidatesFromTeacher"] == generated.counts["candidatesFromModel"] == 2 * prompts
    lay = RunLayout(config(workspace, "score").run_uri)
    scores = storage.read_jsonl(lay.shard("scores", 1, 0))
    assert scores and all(row["sources"] == ["teacher", "teacher", "model", "model"] for row in scores)
    kept = trained.counts["examplesFromTeacher"] + trained.counts["examplesFromModel"]
    assert kept == trained.counts["examples"] > 0
    dataset = storage.read_jsonl(trained.outputs["dataset"])
    assert {row["source"] for row in dataset} <= {"teacher", "model"}

    # Cost per success on the held-out prompts, for both models and the teacher asked beside them.
    figures = results["evaluate"].metrics
    held_out = results["evaluate"].counts["heldOut"]
    for side in ("champion", "challenger", "teacher"):
        assert figures[f"{side}.successes"] == round(figures[f"{side}.accuracy"] * held_out)
        if figures[f"{side}.successes"]:
            assert (
                figures[f"{side}.inputTokensPerSuccess"] > 0
                and figures[f"{side}.outputTokensPerSuccess"] >= 0
            )
        else:
            assert figures[f"{side}.inputTokensPerSuccess"] is None
    assert "teacher.score" in figures


def test_a_teacher_failing_for_some_prompts_leaves_the_stage_running(
    workspace: dict[str, Path], server: ScriptedJudge
) -> None:
    server.respond = lambda body, n: (
        (500, {"error": {"message": "down"}}, {})
        if body["prompt"].startswith("1+")
        else completion("7", "8", "9", "0")
    )
    endpoint = {"url": server.url, "model": "big", "maxRetries": 0}
    gen = {"generation": {"teacher": {"endpoint": endpoint, "api": "completions"}}}
    results = run_through(workspace, "prepare", "generate", "score", **gen)
    generated = results["generate"]
    assert generated.ok and generated.counts["candidatesMissing"] > 0
    assert (
        generated.counts["candidates"] + generated.counts["candidatesMissing"]
        == 4 * generated.counts["prompts"]
    )
    assert generated.counts["teacher.failedPrompts"] * 4 == generated.counts["candidatesMissing"]
    assert results["score"].ok
    # A re-run finds the parts complete (a missing candidate is accounted for) and asks nothing again.
    before = len(server.requests)
    lay = RunLayout(config(workspace, "generate").run_uri)
    assert _runner("generate")(config(workspace, "generate", **gen)).counts["shardsSkipped"] == 2
    assert len(server.requests) == before and storage.exists(lay.shard("candidates", 1, 0))


@pytest.mark.parametrize(
    ("teacher_doc", "message"),
    [
        ({}, "exactly one of uri"),
        ({"uri": "file:///t", "endpoint": {"url": "http://x/v1", "model": "m"}}, "exactly one of uri"),
        (
            {"endpoint": {"url": "http://x/v1", "model": "m"}, "engine": {"dtype": "bfloat16"}},
            "engine and revision",
        ),
        ({"uri": "file:///t", "share": 0}, "share"),
        ({"endpoint": {"url": "ftp://x", "model": "m"}}, "url"),
        ({"endpoint": {"url": "http://x/v1", "model": "m", "requestsPerMinute": 0}}, "requestsPerMinute"),
    ],
)
def test_a_bad_teacher_is_refused_naming_the_field(teacher_doc: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        TeacherSpec.model_validate(teacher_doc)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"evaluation": {"teacherBaseline": True}}, "teacherBaseline needs generation.teacher.endpoint"),
        (
            {"costs": {"endpoints": {"teachr": {"inputPer1k": 1}}}},
            r"costs.endpoints.teachr: no such endpoint",
        ),
        ({"budget": {"money": 10}}, "budget.money needs spec.costs"),
        ({"budget": {}}, "budget needs at least one of"),
    ],
)
def test_bad_costs_and_budgets_are_refused_naming_the_field(
    workspace: dict[str, Path], overrides: dict[str, Any], message: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        stage_tests.loop_spec(workspace["model"], workspace["prompts"], workspace["runs"], **overrides)
