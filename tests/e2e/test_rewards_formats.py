"""Rewards and prompts in the formats users already have: TRL's shipped reward functions and a veRL
`compute_score`, unchanged, through preflight and a one-round `tao run` on text and chat prompts; chats with tool
calls loaded, rendered through a tool-aware template and run. One small run per convention keeps it fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CHECKSUM = "def checksum(prompts, completions, **kwargs):\n    return [sum(map(ord, str(c))) % 97 / 96 for c in completions]\n"
VERL = (
    "def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):\n"
    "    assert data_source == 'arith' and isinstance(extra_info, dict)\n"
    "    return {'score': float(ground_truth in solution_str) + bonus + len(solution_str) % 3 / 10, 'acc': 0}\n"
)
# Records what a scorer was given, so the test can see that tool chats reach scorers whole.
SEEN = (
    "import json, os\n"
    "def seen(prompts, completions, tools, completion_ids, **kwargs):\n"
    "    with open(os.environ['TAO_SEEN'], 'a') as f:\n"
    "        f.write(json.dumps({'prompt': prompts[0], 'completion': completions[0], 'tools': tools[0],\n"
    "                            'ids': completion_ids[0]}) + '\\n')\n"
    "    return [len(c[0]['content']) % 5 / 4 for c in completions]\n"
)
TRL_SCORERS: list[dict[str, Any]] = [
    {"type": "trl.rewards:think_format_reward"},
    {"type": "trl.rewards:accuracy_reward"},
    {
        "type": "trl.rewards:get_soft_overlong_punishment",
        "factory": True,
        "args": {"max_completion_len": 8, "soft_punish_cache": 4},
        "name": "overlong",
    },
    {"type": "trl.rewards:get_repetition_penalty_reward", "factory": True, "args": {"ngram_size": 2}},
    {
        "type": "python",
        "path": "verl_reward.py",
        "function": "compute_score",
        "convention": "verl",
        "args": {"bonus": 0.5},
    },
    {"type": "majority", "match": "math", "weight": 0.5},
    {"type": "python", "path": "checksum.py", "function": "checksum"},
]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def _tool_chat(i: int) -> dict[str, Any]:
    call = {
        "id": f"c{i}",
        "type": "function",
        "function": {"name": "add", "arguments": json.dumps({"a": i, "b": 2})},
    }
    return {
        "prompt": [
            {"role": "user", "content": [{"type": "text", "text": f"What is {i}+2?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": str(i + 2)},
        ],
        "tools": TOOLS,
    }


def _math_record(i: int) -> dict[str, Any]:
    # Half text prompts, half chats: TRL's rewards must work on both (the model has a chat template).
    prompt: Any = (
        f"{i}+2="
        if i % 2
        else [{"role": "system", "content": "Add."}, {"role": "user", "content": f"{i}+2="}]
    )
    return {
        "prompt": prompt,
        "solution": f"${i + 2}$",
        "data_source": "arith",
        "reward_model": {"style": "rule", "ground_truth": str(i + 2)},
        "extra_info": {"index": i},
    }


def write_job(tmp: Path, model: Path, records: list[dict[str, Any]], scorers: list[dict[str, Any]]) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp / "checksum.py").write_text(CHECKSUM)
    (tmp / "verl_reward.py").write_text(VERL)
    (tmp / "seen.py").write_text(SEEN)
    body: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": 0.25},
        "storage": {"uri": "runs"},
        "generation": {"candidates": 4, "maxNewTokens": 8, "batchSize": 16},
        "scoring": {"scorers": scorers},
        "training": {"learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0, "topK": 1}},
        "evaluation": {"maxPrompts": 4, "minImprovement": -10.0, "alarms": False},
        "preflight": {"prompts": 4},
    }
    doc = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "fmt"}, "spec": body}
    path = tmp / "taojob.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tao(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", *args],
        capture_output=True,
        text=True,
        env=ENV | (env or {}),
        check=False,
        timeout=600,
    )


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import CHAT_TEMPLATE, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "chat", chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import TOOL_CHAT_TEMPLATE, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tools", chat_template=TOOL_CHAT_TEMPLATE)


def _round_one(tmp: Path) -> dict[str, Any]:
    report = json.loads(next((tmp / "runs").rglob("report.json")).read_text())
    return report


def test_trl_and_verl_rewards_run_unchanged_on_text_and_chat_prompts(
    tmp_path: Path, chat_model: Path
) -> None:
    job = write_job(tmp_path, chat_model, [_math_record(i) for i in range(16)], TRL_SCORERS)
    proc = tao("run", str(job), "--rounds", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    preflight = json.loads(next((tmp_path / "runs").rglob("preflight/report.json")).read_text())
    assert set(preflight["scorers"]) >= {
        "think_format_reward",
        "accuracy_reward",
        "overlong",
        "compute_score",
    }
    rows = [json.loads(line) for f in (tmp_path / "runs").rglob("scores/shard-*.jsonl") for line in f.open()]
    per = {name: [v for row in rows for v in row["perScorer"][name]] for name in rows[0]["perScorer"]}
    assert all(v in (0.0, 1.0) for v in per["think_format_reward"])
    assert all(v is None or v in (0.0, 1.0) for v in per["accuracy_reward"])
    assert all(-1.0 <= v <= 0.0 for v in per["overlong"]) and any(
        v < 0 for v in per["overlong"]
    )  # ids counted
    assert all(-1.0 <= v <= 0.0 for v in per["get_repetition_penalty_reward"])
    assert all(v >= 0.5 for v in per["compute_score"])  # veRL's dict result, reward kwargs applied
    assert _round_one(tmp_path)


def test_preflight_names_a_scorer_whose_signature_cannot_take_trls_call(
    tmp_path: Path, chat_model: Path
) -> None:
    (tmp_path / "strict.py").write_text(
        "def strict(prompts, completions):\n    return [0.0] * len(completions)\n"
    )
    scorers = [{"type": "python", "path": "strict.py", "function": "strict"}]
    proc = tao(
        "preflight", str(write_job(tmp_path, chat_model, [_math_record(i) for i in range(4)], scorers))
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "scorer 'strict'" in out and "completion_ids" in out and "**kwargs" in out


def test_text_prompts_without_a_chat_template_get_a_hint_not_a_bare_typeerror(
    tmp_path: Path, tiny_model: Path
) -> None:
    records = [{"prompt": f"{i}+2="} for i in range(4)]
    proc = tao(
        "preflight",
        str(write_job(tmp_path, tiny_model, records, [{"type": "trl.rewards:think_format_reward"}])),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "scorer 'think_format_reward'" in out and "chat template" in out


def test_tool_chats_load_render_with_tools_and_run_one_round(tmp_path: Path, tool_model: Path) -> None:
    from tao_trainer import models, prompts
    from tao_trainer.stages.common import prepare

    job = write_job(
        tmp_path,
        tool_model,
        [_tool_chat(i) for i in range(12)],
        [
            {"type": "python", "path": "seen.py", "function": "seen"},
            {"type": "python", "path": "checksum.py", "function": "checksum"},
        ],
    )
    loaded = prompts.load_prompts(str(tmp_path / "prompts.jsonl"))
    assert loaded.rejects == [] and len(loaded.records) == 12
    tokenizer = models.load_tokenizer(str(tool_model))
    prepared = prepare(tokenizer, [loaded.records[0].model_dump()], None)[0]
    # The tools, the call and the tool result all reach the template (newlines after tags are trimmed by it).
    assert (
        prepared.text
        == '<tools>add;<user>What is 0+2?<assistant><call>add({"a": 0, "b": 2})<tool>2<assistant>'
    )
    assert prepared.ids == list(tokenizer(prepared.text, add_special_tokens=False)["input_ids"])

    seen_file = tmp_path / "seen.jsonl"
    proc = tao("run", str(job), "--rounds", "1", env={"TAO_SEEN": str(seen_file)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads(line) for line in seen_file.read_text().splitlines()]
    assert seen and all(s["tools"] == TOOLS for s in seen)
    assert [m["role"] for m in seen[0]["prompt"]] == ["user", "assistant", "tool"]
    assert seen[0]["prompt"][1]["tool_calls"][0]["function"]["name"] == "add"
    assert isinstance(seen[0]["completion"], list) and isinstance(seen[0]["ids"], list)
