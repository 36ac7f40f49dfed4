"""Token parity: a model reads the same token ids for the same prompt in generate, train (SFT, DPO, GRPO),
evaluate, `tao serve` and the capture proxy's record, whatever its tokenizer adds by itself.

Each tokenizer below is a real `tokenizers` tokenizer with the post-processor real models use: none (GPT-2,
Qwen), BOS in front (Llama, Mistral), BOS and EOS; with and without a chat template that writes the BOS itself.
The ids are read from the real paths: TRL's own dataset preparation, the serving backend, the generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny_model import CHAT_TEMPLATE, build_tiny_model

from tao_trainer import generation, models, prompts, storage
from tao_trainer.capture import records_from_request
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec
from tao_trainer.stages import common, train, train_data

pytestmark = pytest.mark.filterwarnings("ignore")

VARIANTS = [
    (specials, template) for specials in ("none", "bos", "bos_eos") for template in (None, CHAT_TEMPLATE)
]
PROMPTS: list[Any] = [
    "12+7=",
    [{"role": "system", "content": "Add."}, {"role": "user", "content": "3+4="}],
]


def variant_id(variant: tuple[str, str | None]) -> str:
    return f"{variant[0]}-{'chat' if variant[1] else 'plain'}"


@pytest.fixture(scope="module", params=VARIANTS, ids=variant_id)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    specials, template = request.param
    return build_tiny_model(
        tmp_path_factory.mktemp("parity") / variant_id(request.param),
        specials=specials,
        chat_template=template,
    )


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return models.load_tokenizer(str(model_dir))


def expected_ids(tokenizer: Any, prompt: Any, system: str | None = None) -> list[int]:
    """What a model should read, spelled out from the tokenizer's own parts: the chat template's text with no
    special token added (it writes its own), or the text with the tokenizer's leading specials and none after."""
    messages = models.prompt_messages(prompt, system)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n".join(m["content"] for m in messages)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("prompt", PROMPTS, ids=["text", "messages"])
def test_specials_appear_exactly_once(tokenizer: Any, prompt: Any) -> None:
    ids = models.prepare_prompt(tokenizer, prompt, "Be brief.").ids
    assert ids == expected_ids(tokenizer, prompt, "Be brief.")
    bos = tokenizer.bos_token_id
    assert ids.count(bos) == (1 if bos is not None else 0)  # a template's BOS and the tokenizer's never both
    assert tokenizer.eos_token_id not in ids  # a prompt never ends before the answer starts


def test_batched_generation_with_padding_answers_as_unbatched(model_dir: Path, tokenizer: Any) -> None:
    generator = generation.TransformersGenerator(str(model_dir), batch_size=4)
    records = [{"prompt": p} for p in ("1+1=", "123+456=", "9=", "77+8=")]
    ids = common.render(generator, records, None)
    assert len({len(i) for i in ids}) > 1  # prompts of different lengths: the batch is padded
    greedy = generation.Sampling(1, 0.0, 1.0, 6, 0)
    batched = generator.generate(ids, greedy)
    alone = [generator.generate([i], greedy)[0] for i in ids]
    assert batched == alone


def write_round(run: Path, spec: LoopSpec, prompt_values: list[Any]) -> StageConfig:
    """A round's prompt, candidate and score shards, as prepare, generate and score leave them."""
    lay = RunLayout(run.as_uri())
    recs = [{"id": str(i), "prompt": p, "fields": {"topic": "sum"}} for i, p in enumerate(prompt_values)]
    storage.write_jsonl(lay.shard("prompts", 1, 0), recs)
    storage.write_jsonl(lay.shard("candidates", 1, 0), [{**r, "candidates": ["7", "8"]} for r in recs])
    storage.write_jsonl(lay.shard("scores", 1, 0), [{"id": r["id"], "scores": [1.0, 0.0]} for r in recs])
    return StageConfig(stage="train", round=1, run_uri=run.as_uri(), model_uri=spec.model.uri, spec=spec)


def loop_spec(model_dir: Path, method: str) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": model_dir.as_uri()},
            "prompts": {"uri": "file:///unused.jsonl"},
            "storage": {"uri": "file:///unused"},
            "generation": {"candidates": 2, "maxNewTokens": 4, "systemPrompt": "Add."},
            "scoring": {"scorers": [{"type": "regex", "pattern": "7"}]},
            "training": {"method": method, "batchSize": 2, "dpo": {"minMargin": 0.5}},
        }
    )


def trl_trainer(
    model_dir: Path, tokenizer: Any, tmp_path: Path, method: str
) -> tuple[Any, list[dict[str, Any]]]:
    spec = loop_spec(model_dir, method)
    cfg = write_round(tmp_path / "run", spec, PROMPTS)
    rows = train_data.build_dataset(cfg, tokenizer)
    return train._trainer(cfg, str(model_dir), tokenizer, rows, str(tmp_path / "out")), rows


def test_sft_trains_on_the_generated_prompt_ids(model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    trainer, rows = trl_trainer(model_dir, tokenizer, tmp_path, "sft")
    example = trainer.train_dataset[0]  # after TRL's own preparation
    want = expected_ids(tokenizer, PROMPTS[0], "Add.")
    completion = tokenizer("7", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example["input_ids"] == want + completion
    assert example["labels"] == [-100] * len(want) + completion  # only the answer and its EOS are learned
    assert rows[0]["prompt_ids"] == want


def test_dpo_reads_the_generated_prompt_ids(model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    trainer, _ = trl_trainer(model_dir, tokenizer, tmp_path, "dpo")
    for example, prompt in zip(trainer.train_dataset, PROMPTS, strict=True):
        assert example["prompt_ids"] == expected_ids(tokenizer, prompt, "Add.")


def test_grpo_samples_from_the_generated_prompt_ids(model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    if tokenizer.chat_template is None and tokenizer("x")["input_ids"][-1] == tokenizer.eos_token_id:
        # TRL tokenizes GRPO's plain-text prompts with the tokenizer's defaults: refused before training.
        with pytest.raises(ValueError, match="appends special tokens"):
            trl_trainer(model_dir, tokenizer, tmp_path, "grpo")
        return
    trainer, rows = trl_trainer(model_dir, tokenizer, tmp_path, "grpo")
    ids, _, _ = trainer._tokenize_prompts([row["prompt"] for row in rows])
    assert [list(i) for i in ids] == [expected_ids(tokenizer, p, "Add.") for p in PROMPTS]


def test_serve_and_capture_agree_with_the_loop(model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    from tao_trainer.serve import TransformersBackend

    backend = TransformersBackend(model_dir.as_uri())
    chat = [{"role": "user", "content": "12+7="}]
    text = "5+5="  # another prompt: the loop keeps one record per distinct prompt
    # What the server read, and what the loop reads for the prompts the capture proxy stored from it.
    served = {"chat": backend.chat_ids(chat), "completions": backend.text_ids(text, "prompt")}
    lines = [records_from_request("chat", {"messages": chat})[0][0]]
    lines += records_from_request("completions", {"prompt": text})[0]
    path = tmp_path / "captured.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = [r.model_dump() for r in prompts.load_prompts(path.as_uri()).records]
    looped = {
        r["fields"]["endpoint"]: p.ids
        for r, p in zip(loaded, common.prepare(tokenizer, loaded, None), strict=True)
    }
    assert looped == served
    assert served["chat"] == expected_ids(tokenizer, chat)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    assert served["completions"] == bos + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_tool_chat_renders_with_its_tools_once_and_dpo_rows_carry_them(tmp_path: Path) -> None:
    from tiny_model import TOOL_CHAT_TEMPLATE

    tok = models.load_tokenizer(str(build_tiny_model(tmp_path / "m", chat_template=TOOL_CHAT_TEMPLATE)))
    tools = [{"type": "function", "function": {"name": "add"}}]
    chat = [
        {"role": "user", "content": [{"type": "text", "text": "1+1?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "add", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "2"},
    ]
    with_tools = models.prepare_prompt(tok, chat, None, tools=tools)
    assert with_tools.text == "<tools>add;<user>1+1?<assistant><call>add({})<tool>2<assistant>"
    assert with_tools.ids == list(tok(with_tools.text, add_special_tokens=False)["input_ids"])
    assert models.prepare_prompt(tok, chat, None, tools=[]).text == with_tools.text.removeprefix(
        "<tools>add;"
    )
    row = train_data._trl_prompt(with_tools)
    assert row["tools"] == tools  # TRL's DPOTrainer renders a row's tools: the same text as generation
    with pytest.raises(ValueError, match="tools"):
        train_data.check_trl_prompt_ids(tok, row)  # GRPO would render without them
