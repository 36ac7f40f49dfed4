"""Unit tests of the label-free scorers: specs, each family, combining, TRL hand-off."""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tao_trainer.scorers import (
    BUILTIN_SCORER_TYPES,
    SCORER_TYPES,
    CustomSpec,
    FunctionScorer,
    JsonScorer,
    MajorityScorer,
    MajoritySpec,
    RegexScorer,
    ScoredBatch,
    ScorerError,
    ScorerSpecList,
    as_reward_funcs,
    build_scorer,
    build_scorers,
    combine_scores,
    completion_text,
    group_spans,
    parse_scorer_spec,
    score_against_all,
    score_all,
    validate_scorer_list,
)
from tao_trainer.scorers.base import Detailed

MESSAGES_PROMPT = [{"role": "user", "content": "What is 2+2?"}]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# --------------------------------------------------------------------------- helpers


def test_group_spans_runs_of_equal_prompts() -> None:
    assert group_spans([]) == []
    assert group_spans(["a"]) == [(0, 1)]
    assert group_spans(["a", "a", "b", "b", "b", "a"]) == [(0, 2), (2, 5), (5, 6)]
    assert group_spans([MESSAGES_PROMPT, list(MESSAGES_PROMPT), [{"role": "user", "content": "x"}]]) == [
        (0, 2),
        (2, 3),
    ]


def test_completion_text_forms() -> None:
    assert completion_text("x") == "x"
    assert completion_text([]) == ""
    assert completion_text(chat("hi")) == "hi"
    assert completion_text([{"role": "assistant", "content": None}]) == ""
    assert (
        completion_text([{"role": "assistant", "content": "tool call"}, {"role": "tool", "content": "4"}])
        == "4"
    )
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        completion_text(42)


# --------------------------------------------------------------------------- specs


def test_spec_defaults_and_camel_case() -> None:
    spec = parse_scorer_spec({"type": "majority", "extract": r"(\d+)", "minAgreement": 0.75})
    assert isinstance(spec, MajoritySpec)
    assert spec.name == "majority" and spec.weight == 1.0 and spec.normalize is True
    assert spec.min_agreement == 0.75
    assert spec.model_dump(by_alias=True)["minAgreement"] == 0.75
    # populate_by_name: Python code may use the snake_case names.
    assert MajoritySpec(type="majority", extract="x", min_agreement=0.2).min_agreement == 0.2
    json_spec = parse_scorer_spec({"type": "json", "schema": {"type": "object"}})
    assert json_spec.json_schema == {"type": "object"}
    assert json_spec.model_dump(by_alias=True)["schema"] == {"type": "object"}


def test_default_names_for_user_functions() -> None:
    assert parse_scorer_spec({"type": "python", "module": "m", "function": "reward"}).name == "reward"
    assert parse_scorer_spec({"type": "pkg.mod:acc"}).name == "acc"
    assert parse_scorer_spec({"type": "pkg.mod.acc"}).name == "acc"
    custom = parse_scorer_spec({"type": "pkg.mod.acc", "name": "accuracy", "args": {"k": 1}})
    assert isinstance(custom, CustomSpec)
    assert custom.target == ("pkg.mod", "acc") and custom.name == "accuracy"
    assert parse_scorer_spec({"type": "pkg.mod:acc"}).target == ("pkg.mod", "acc")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "regex", "pattern": "(unclosed"}, "pattern: invalid regular expression"),
        ({"type": "majority", "extract": "[a-"}, "extract: invalid regular expression"),
        ({"type": "majority", "extract": "x", "minAgreement": 0}, "greater than 0"),
        ({"type": "majority", "extract": "x", "minAgreement": 1.5}, "less than or equal to 1"),
        ({"type": "json", "schema": {"type": "no-such-type"}}, "schema: not a valid JSON Schema"),
        (
            {"type": "python", "function": "f", "path": "a.py", "module": "m"},
            "exactly one of 'path' and 'module'",
        ),
        ({"type": "python", "function": "f"}, "exactly one of 'path' and 'module'"),
        ({"type": "regex", "pattern": "x", "weight": -1}, "greater than or equal to 0"),
        ({"type": "regex", "pattern": "x", "flags": "i"}, "Extra inputs are not permitted"),
        ({"type": "regex", "pattern": "x", "name": "has space"}, "should match pattern"),
        ({"type": "pkg..mod"}, "should match pattern"),
        ({"pattern": "x"}, "scorer needs a string 'type'"),
    ],
)
def test_spec_validation_errors(spec: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        parse_scorer_spec(spec)


def test_unknown_type_names_the_allowed_types_once() -> None:
    with pytest.raises(ValidationError) as info:
        parse_scorer_spec({"type": "majorty", "extract": "x"})
    errors = info.value.errors()
    assert len(errors) == 1  # no follow-up complaints about `extract`
    message = errors[0]["msg"]
    assert "'majorty'" in message
    for allowed in ("majority", "regex", "json", "python", "dotted path"):
        assert allowed in message


def test_list_validation_unique_names_and_weights() -> None:
    specs = validate_scorer_list(
        [{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b", "name": "other"}]
    )
    assert [s.name for s in specs] == ["regex", "other"]
    with pytest.raises(ValidationError, match="'regex' is used twice"):
        validate_scorer_list([{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}])
    with pytest.raises(ValidationError, match="weight above 0"):
        validate_scorer_list([{"type": "json", "weight": 0}])
    assert validate_scorer_list([]) == []
    # Zero weight is allowed next to a positive one: recorded, not steering.
    assert len(validate_scorer_list([{"type": "json", "weight": 0}, {"type": "regex", "pattern": "a"}])) == 2


def test_scorer_spec_list_as_a_field_type() -> None:
    class Job(BaseModel):
        scorers: ScorerSpecList

    job = Job.model_validate({"scorers": [{"type": "json", "extract": "first_object"}]})
    assert job.scorers[0].name == "json"
    with pytest.raises(ValidationError, match="unknown scorer type 'nope'"):
        Job.model_validate({"scorers": [{"type": "nope"}]})
    schema = Job.model_json_schema(by_alias=True)
    assert "MajoritySpec" in schema["$defs"]
    assert "minAgreement" in schema["$defs"]["MajoritySpec"]["properties"]
    # Every field carries a description for the CRD docs.
    for definition in schema["$defs"].values():
        for field, prop in definition["properties"].items():
            assert prop.get("description"), f"{definition['title']}.{field} has no description"


# --------------------------------------------------------------------------- majority


def majority(**fields: object) -> MajorityScorer:
    return MajorityScorer(extract=r"answer: (\S+)", **fields)


def test_majority_typical() -> None:
    prompts = ["p"] * 5
    completions = ["answer: 4", "answer: 4", "answer: 5", "answer: 4", "nothing"]
    assert majority()(prompts, completions) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_majority_takes_the_last_match_and_whole_match_without_group() -> None:
    scorer = MajorityScorer(extract=r"\d+")
    assert scorer(["p"] * 3, ["7+5=12, so 13", "13", "12"]) == [1.0, 1.0, 0.0]


def test_majority_normalizes_modestly() -> None:
    completions = ["answer: Paris.", "answer: paris", "answer: PARIS", "answer: Lyon"]
    assert majority()(["p"] * 4, completions) == [1.0, 1.0, 1.0, 0.0]
    assert majority(normalize=False)(["p"] * 4, completions) == [0.0, 0.0, 0.0, 0.0]


def test_majority_below_min_agreement_gives_no_signal() -> None:
    completions = ["answer: 1", "answer: 1", "answer: 2", "answer: 3", "none", "none"]
    # Share 2/6 < 0.5: nobody is rewarded.
    assert majority()(["p"] * 6, completions) == [0.0] * 6
    assert majority(min_agreement=1 / 3)(["p"] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_majority_exact_threshold_counts() -> None:
    assert majority(min_agreement=2 / 3)(["p"] * 3, ["answer: a", "answer: a", "answer: b"]) == [
        1.0,
        1.0,
        0.0,
    ]


def test_majority_tie_goes_to_the_first_answer() -> None:
    completions = ["answer: b", "answer: a", "answer: a", "answer: b"]
    assert majority()(["p"] * 4, completions) == [1.0, 0.0, 0.0, 1.0]


def test_majority_groups_of_different_prompts_and_size_one() -> None:
    prompts = ["p1", "p1", "p1", "p2", "p3", "p3"]
    completions = ["answer: 1", "answer: 1", "answer: 2", "answer: 9", "answer: x", "nothing"]
    assert majority()(prompts, completions) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_majority_no_extractable_answer_and_empty_batches() -> None:
    assert majority()(["p"] * 3, ["", "no", "answer:"]) == [0.0, 0.0, 0.0]
    assert majority()([], []) == []
    # An empty group-1 match is no answer, not a vote for "".
    assert MajorityScorer(extract=r"<(\w*)>")(["p"] * 2, ["<>", "<>"]) == [0.0, 0.0]


def test_majority_messages_prompts_and_completions() -> None:
    other = [{"role": "user", "content": "What is 3+3?"}]
    prompts = [MESSAGES_PROMPT, MESSAGES_PROMPT, other, other]
    completions = [chat("answer: 4"), chat("answer: 4"), chat("answer: 6"), chat("answer: 7")]
    assert majority()(prompts, completions) == [1.0, 1.0, 1.0, 0.0]


def test_majority_misaligned_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 prompts for 3 completions"):
        majority()(["p", "p"], ["a", "b", "c"])


def test_majority_score_against_references() -> None:
    scorer = majority()
    refs_confident = ["answer: 4", "answer: 4", "answer: 5"]
    refs_scattered = ["answer: 1", "answer: 2", "answer: 3", "answer: 4"]
    scores = scorer.score_against(
        ["p", "p", "q", "r"],
        ["answer: 4", "answer: 5", "answer: 1", "answer: 4"],
        references=[refs_confident, refs_confident, refs_scattered, []],
    )
    assert scores == [1.0, 0.0, 0.0, None]
    assert scorer.is_group is True
    with pytest.raises(ValueError, match="1 reference groups for 2 completions"):
        scorer.score_against(["p", "p"], ["a", "b"], references=[["a"]])


# --------------------------------------------------------------------------- regex


def test_regex_fullmatch_and_search() -> None:
    full = RegexScorer(pattern=r"<\d+>")
    assert full(["q"] * 4, ["<12>", "  <12>\n", "answer <12>", ""]) == [1.0, 1.0, 0.0, 0.0]
    search = RegexScorer(pattern=r"<\d+>", mode="search")
    assert search(["q"] * 3, ["answer <12>", "none", chat("<3>")]) == [1.0, 0.0, 1.0]
    assert full([], []) == []
    assert full.is_group is False


def test_non_group_score_against_ignores_references() -> None:
    scorer = RegexScorer(pattern="yes")
    assert scorer.score_against(["q", "q"], ["yes", "no"], references=[["no"], []]) == [1.0, 0.0]


# --------------------------------------------------------------------------- json


def test_json_whole_and_first_object() -> None:
    whole = JsonScorer()
    completions = ['{"a": 1}', " [1, 2] ", "null", "{bad}", '```json\n{"a": 1}\n```', "NaN", ""]
    assert whole(["q"] * len(completions), completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    first = JsonScorer(extract="first_object")
    completions = ['Sure: ```json\n{"a": {"b": 2}}\n```', '{x} then {"a": 1}', "[1, 2]", "no braces"]
    assert first(["q"] * 4, completions) == [1.0, 1.0, 0.0, 0.0]


def test_json_schema() -> None:
    scorer = JsonScorer(
        schema={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        extract="first_object",
    )
    completions = ['{"n": 3}', '{"n": "3"}', '{"m": 3}', "not json", chat('{"n": 1}')]
    assert scorer(["q"] * 5, completions) == [1.0, 0.0, 0.0, 0.0, 1.0]


# --------------------------------------------------------------------------- python / dotted path


REWARDS_SOURCE = textwrap.dedent(
    """
    def length_penalty(prompts, completions, max_chars=10, **kwargs):
        return [1.0 if len(c) <= max_chars else 0.0 for c in completions]

    def uses_answer(prompts, completions, answer, **kwargs):
        # `answer` is an extra column of the prompt record, one entry per completion.
        return [None if a is None else float(a in c) for c, a in zip(completions, answer)]

    def seen_kwargs(prompts, completions, **kwargs):
        seen_kwargs.last = kwargs
        return [0] * len(completions)

    def remember(prompts, completions, **kwargs):
        remember.last = completions
        return [1.0] * len(completions)

    def too_short(prompts, completions, **kwargs):
        return [1.0]

    def not_a_list(prompts, completions, **kwargs):
        return 1.0

    def bad_item(prompts, completions, **kwargs):
        return ["high"] * len(completions)

    def infinite(prompts, completions, **kwargs):
        return [float("inf")] * len(completions)

    def boom(prompts, completions, **kwargs):
        raise RuntimeError("user bug")

    async def async_reward(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def rewards_dir(tmp_path: Path) -> Path:
    (tmp_path / "my_rewards.py").write_text(REWARDS_SOURCE)
    return tmp_path


@pytest.fixture
def rewards_module(rewards_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # A uniquely named module per test, so that the import cache cannot leak between tests.
    name = f"tao_test_rewards_{rewards_dir.name.replace('-', '_')}"
    (rewards_dir / f"{name}.py").write_text(REWARDS_SOURCE)
    monkeypatch.syspath_prepend(str(rewards_dir))
    yield name
    sys.modules.pop(name, None)


def test_python_scorer_from_file_with_args(rewards_dir: Path) -> None:
    scorer = build_scorer(
        {
            "type": "python",
            "path": str(rewards_dir / "my_rewards.py"),
            "function": "length_penalty",
            "args": {"max_chars": 3},
        }
    )
    assert scorer.name == "length_penalty" and scorer.__name__ == "length_penalty"
    assert scorer(["q", "q"], ["abc", "abcd"]) == [1.0, 0.0]


def test_python_scorer_relative_path_uses_base_dir(rewards_dir: Path) -> None:
    spec = {"type": "python", "path": "my_rewards.py", "function": "length_penalty"}
    assert build_scorer(spec, base_dir=rewards_dir)(["q"], ["short"]) == [1.0]
    with pytest.raises(ScorerError, match="scorer 'length_penalty': no such file"):
        build_scorer(spec, base_dir=rewards_dir / "elsewhere")


def test_python_scorer_from_module_and_dotted_paths(rewards_module: str) -> None:
    by_module = build_scorer({"type": "python", "module": rewards_module, "function": "length_penalty"})
    by_colon = build_scorer({"type": f"{rewards_module}:length_penalty", "args": {"max_chars": 2}})
    by_dot = build_scorer({"type": f"{rewards_module}.length_penalty", "name": "lp", "weight": 0.5})
    assert by_module(["q"], ["0123456789"]) == [1.0]
    assert by_colon(["q"], ["abc"]) == [0.0]
    assert (by_dot.name, by_dot.weight, by_dot(["q"], ["abc"])) == ("lp", 0.5, [1.0])
    assert isinstance(by_dot, FunctionScorer)


def test_python_scorer_forwards_extra_columns_as_kwargs(rewards_module: str) -> None:
    scorer = build_scorer({"type": "python", "module": rewards_module, "function": "uses_answer"})
    scores = scorer(["q", "q", "r"], ["it is 4", "it is 5", "x"], answer=["4", "4", None])
    assert scores == [1.0, 0.0, None]
    probe = build_scorer(
        {"type": "python", "module": rewards_module, "function": "seen_kwargs", "args": {"k": 2}}
    )
    probe(["q"], ["a"], answer=["4"], trainer_state=None)
    seen = probe.function.last
    # What TRL's GRPOTrainer passes to every reward function is passed here too (logging hooks do nothing).
    assert {k: seen[k] for k in ("answer", "trainer_state", "completion_ids", "k")} == {
        "answer": ["4"],
        "trainer_state": None,
        "completion_ids": None,
        "k": 2,
    }
    assert callable(seen["log_extra"]) and callable(seen["log_metric"])


def test_python_scorer_passes_chat_completions_through(rewards_module: str) -> None:
    probe = build_scorer({"type": "python", "module": rewards_module, "function": "remember"})
    assert probe([MESSAGES_PROMPT], [chat("4")]) == [1.0]
    assert probe.function.last == [chat("4")]  # what TRL would have passed, not our extracted text


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("too_short", r"returned 1 scores for 2 completions"),
        ("not_a_list", r"returned float; expected a list of 2"),
        ("bad_item", r"returned str at index 0"),
        ("infinite", r"returned inf at index 0; scores must be finite"),
    ],
)
def test_python_scorer_bad_return_values(rewards_module: str, function: str, fragment: str) -> None:
    scorer = build_scorer({"type": "python", "module": rewards_module, "function": function, "name": "mine"})
    with pytest.raises(ScorerError, match=rf"scorer 'mine' \({rewards_module}:{function}\) {fragment}"):
        scorer(["q", "q"], ["a", "b"])


def test_python_scorer_user_exception_gets_a_note(rewards_module: str) -> None:
    scorer = build_scorer({"type": "python", "module": rewards_module, "function": "boom"})
    with pytest.raises(RuntimeError, match="user bug") as info:
        scorer(["q"], ["a"])
    assert any("scorer 'boom'" in note for note in info.value.__notes__)


def test_python_scorer_async_function(rewards_module: str) -> None:
    scorer = build_scorer({"type": f"{rewards_module}:async_reward"})
    assert scorer(["q", "q"], ["a", "b"]) == [0.5, 0.5]


def test_python_scorer_load_errors(rewards_module: str) -> None:
    with pytest.raises(ScorerError, match=r"scorer 'nope': .* has no attribute 'nope'"):
        build_scorer({"type": "python", "module": rewards_module, "function": "nope"})
    with pytest.raises(ScorerError, match="is a int, not a function"):
        build_scorer({"type": "python", "module": rewards_module, "function": "NOT_CALLABLE"})
    with pytest.raises(ScorerError, match="importing no_such_module_xyz failed: ModuleNotFoundError"):
        build_scorer({"type": "no_such_module_xyz:f"})


def test_nan_means_no_judgement(tmp_path: Path) -> None:
    (tmp_path / "nan_rewards.py").write_text(
        "def r(prompts, completions, **kw):\n    return [float('nan'), True, 2]\n"
    )
    scorer = build_scorer({"type": "python", "path": str(tmp_path / "nan_rewards.py"), "function": "r"})
    assert scorer(["q"] * 3, ["a", "b", "c"]) == [None, 1.0, 2.0]


# --------------------------------------------------------------------------- registry


def test_registry_and_keyword_construction() -> None:
    # Other families register beside these (judge, reward_model, sql, ...); each is a built-in type.
    assert (
        {"majority", "regex", "json", "python", "reward_model"}
        <= set(SCORER_TYPES)
        <= set(BUILTIN_SCORER_TYPES)
    )
    assert isinstance(build_scorer({"type": "majority", "extract": "x"}), MajorityScorer)
    spec = parse_scorer_spec({"type": "regex", "pattern": "a", "name": "fmt", "weight": 3})
    scorer = build_scorer(spec)
    assert (scorer.name, scorer.weight, scorer.spec is spec) == ("fmt", 3.0, True)
    with pytest.raises(ValidationError, match="invalid regular expression"):
        RegexScorer(pattern="(")
    with pytest.raises(TypeError, match="not both"):
        RegexScorer(spec, pattern="b")


def test_scorers_pickle_by_spec(rewards_dir: Path) -> None:
    scorers = build_scorers(
        [
            {"type": "majority", "extract": r"(\d+)"},
            {"type": "json", "schema": {"type": "object"}},
            {"type": "python", "path": "my_rewards.py", "function": "length_penalty"},
        ],
        base_dir=rewards_dir,
    )
    for scorer in scorers:
        copy = pickle.loads(pickle.dumps(scorer))
        assert type(copy) is type(scorer) and copy.spec == scorer.spec
        assert copy(["q", "q"], ["1", "{}"]) == scorer(["q", "q"], ["1", "{}"])


# --------------------------------------------------------------------------- combine


class Fixed(RegexScorer):
    """A scorer that returns preset values, to test combining in isolation."""

    def __init__(self, name: str, weight: float, values: list[float | None]) -> None:
        super().__init__(pattern="x", name=name, weight=weight)
        self.values = values

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        return Detailed(list(self.values))


def test_combine_weighted_sum_and_none_handling() -> None:
    a = Fixed("a", 1.0, [1.0, 1.0, None, 0.0])
    b = Fixed("b", 3.0, [0.0, None, None, 1.0])
    batch = score_all([a, b], ["q"] * 4, ["x"] * 4)
    assert isinstance(batch, ScoredBatch)
    # row 0: plain weighted sum; row 1: b abstains, a's value stands in (1.0 * 4); row 2: nobody.
    assert batch.total == [1.0, 4.0, None, 3.0]
    assert batch.per_scorer == {"a": a.values, "b": b.values}


def test_combine_zero_weight_scorer_is_recorded_but_does_not_steer() -> None:
    a = Fixed("a", 1.0, [1.0, None])
    monitor = Fixed("monitor", 0.0, [0.0, 1.0])
    batch = score_all([a, monitor], ["q", "q"], ["x", "x"])
    assert batch.total == [1.0, None]
    assert batch.per_scorer["monitor"] == [0.0, 1.0]


def test_combine_edge_cases() -> None:
    assert combine_scores([], []) == []
    assert score_all([], ["q"], ["x"]).total == [None]
    assert score_all([Fixed("a", 1.0, [])], [], []).total == []
    with pytest.raises(ValueError, match="unique; repeated: a"):
        score_all([Fixed("a", 1.0, [1.0]), Fixed("a", 1.0, [1.0])], ["q"], ["x"])
    with pytest.raises(ScorerError, match="scorer 'a' returned 1 scores for 2"):
        score_all([Fixed("a", 1.0, [1.0])], ["q", "q"], ["x", "y"])
    assert math.isclose(combine_scores([[0.5], [0.25]], [2.0, 2.0])[0], 1.5)


def test_score_all_forwards_kwargs(rewards_module: str) -> None:
    scorers = build_scorers(
        [
            {"type": "python", "module": rewards_module, "function": "uses_answer", "weight": 2},
            {"type": "regex", "pattern": r".*\d.*"},
        ]
    )
    batch = score_all(scorers, ["q", "q"], ["is 4", "is 5"], answer=["4", "4"])
    assert batch.per_scorer == {"uses_answer": [1.0, 0.0], "regex": [1.0, 1.0]}
    assert batch.total == [3.0, 1.0]


def test_score_against_all_for_evaluation() -> None:
    scorers = build_scorers(
        [{"type": "majority", "extract": r"=(\d+)"}, {"type": "regex", "pattern": r"=\d+"}]
    )
    batch = score_against_all(
        scorers,
        ["1+1", "2+2"],
        ["=2", "four"],
        references=[["=2", "=2", "=3"], ["=4", "=4"]],
    )
    assert batch.per_scorer == {"majority": [1.0, 0.0], "regex": [1.0, 0.0]}
    assert batch.total == [2.0, 0.0]


def test_as_reward_funcs_for_trl() -> None:
    scorers = build_scorers(
        [{"type": "majority", "extract": r"(\d+)", "weight": 2}, {"type": "json", "weight": 0.5}]
    )
    funcs, weights = as_reward_funcs(scorers)
    assert [f.__name__ for f in funcs] == ["majority", "json"] and weights == [2.0, 0.5]
    # Called the way GRPOTrainer calls reward functions: keywords, plus TRL's own extras.
    extras = {"completion_ids": [[1], [2]], "trainer_state": None, "log_extra": print, "log_metric": print}
    assert funcs[0](prompts=["q", "q"], completions=["1", "1"], **extras) == [1.0, 1.0]
    (total,), (weight,) = as_reward_funcs(scorers, combined=True)
    assert total.__name__ == "tao_total" and weight == 1.0
    assert total(prompts=["q", "q"], completions=["1", "{}"], **extras) == [2.5, 0.5]
