"""A tiny, randomly initialised char-level causal LM in HF format, built locally in well under a second.

Stage tests need a real model (real tokenizer, real generate, real TRL steps), not its quality.
"""

from __future__ import annotations

import string
from pathlib import Path

# What a tokenizer adds to a text by itself, as real tokenizers do: nothing (GPT-2, Qwen), a BOS in front (Llama,
# Mistral), or a BOS in front and an EOS at the end (some sequence-to-sequence and older tokenizers).
SPECIALS = {"none": None, "bos": "<bos> $A", "bos_eos": "<bos> $A <eos>"}
# A chat template that writes the BOS itself, as Llama's and Mistral's do (so a tokenizer must not add another).
CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def build_tiny_model(
    out: Path,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    specials: str = "none",
    chat_template: str | None = None,
) -> Path:
    """`specials`: what the tokenizer adds to every text (see SPECIALS); `chat_template`: saved with it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(chars)}
    if specials != "none":
        vocab["<bos>"] = len(vocab)  # last, so that the other ids match the default tiny model's
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    if SPECIALS[specials] is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=SPECIALS[specials], special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", 1)]
        )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        **({"bos_token": "<bos>"} if specials != "none" else {}),
    )
    if chat_template is not None:
        hf_tok.chat_template = chat_template
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=256,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


# A chat template that renders tools and tool calls (as Qwen's and Llama 3.1's do), for prompts from agent apps.
TOOL_CHAT_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t['function']['name'] }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] or '' }}"
    "{% for c in m.get('tool_calls') or [] %}<call>{{ c['function']['name'] }}({{ c['function']['arguments'] }})"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
