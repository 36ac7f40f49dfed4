"""The generate stage on vLLM vs vLLM's own offline throughput, same model, prompts and settings (GPU only).

    python benchmarks/vllm_throughput.py --model DIR [--prompts 1024] [--candidates 8] [--max-new-tokens 256]
        [--tensor-parallel-size N] [--gpu-memory-utilization 0.9] [--max-model-len N] [--dtype auto]
        [--enforce-eager] [--part-size 256]

Both sides run in a process of their own (one vLLM engine per process) on the same prompts (synthetic, rendered
by the model's chat template into token ids once, by the stage's own `prepare`) and the same sampling: N samples
per prompt, temperature 1, top_p 1, `--max-new-tokens`, one seed.

- ours: `run_generate` on a one-shard round in a local run directory, backend vllm, `generation.engine` set
  from the flags: engine start, parts of `--part-size` prompts (each one `LLM.generate` call), and the shard
  written to storage;
- vLLM: `LLM(**the same engine arguments)` and one `LLM.generate` of every prompt with `SamplingParams(n=N)`.

Tokens are counted the same way on both sides (the completions' texts re-tokenized), and the script prints
prompts/s and tokens/s for each, whole (engine start included) and generation only for vLLM, and the ratio of
ours to vLLM's; the target is 0.9. Without vllm or a CUDA device it says so and exits 2: this has never run on a
GPU in the project (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench as bench

TOPICS = ["a lighthouse", "tax law", "sourdough", "orbital mechanics", "a chess opening", "jazz", "glaciers"]
TARGET = 0.9


def missing_requirement() -> str | None:
    """Why this cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'tao-operator[vllm]' on a machine with a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible (vLLM's offline engine needs a GPU)"
    return None


def prompt_records(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"p{i:06d}",
            "prompt": f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (note {i}).",
            "fields": {},
        }
        for i in range(n)
    ]


def engine_doc(args: argparse.Namespace) -> dict[str, Any]:
    """generation.engine as a TAOJob would set it from the flags."""
    doc: dict[str, Any] = {
        "gpuMemoryUtilization": args.gpu_memory_utilization,
        "dtype": args.dtype,
        "enforceEager": args.enforce_eager,
    }
    if args.tensor_parallel_size:
        doc["tensorParallelSize"] = args.tensor_parallel_size
    if args.max_model_len:
        doc["maxModelLen"] = args.max_model_len
    return doc


def generation_doc(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "backend": "vllm",
        "candidates": args.candidates,
        "temperature": 1.0,
        "topP": 1.0,
        "maxNewTokens": args.max_new_tokens,
        "partSize": args.part_size,
        "seed": 0,
        "engine": engine_doc(args),
    }


def count_tokens(tokenizer: Any, completions: list[list[str]]) -> int:
    return sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) for group in completions for text in group
    )


def side_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tao_trainer import models, storage
    from tao_trainer.contract import StageConfig
    from tao_trainer.layout import RunLayout
    from tao_trainer.spec import LoopSpec
    from tao_trainer.stages.generate import run_generate

    spec = LoopSpec.model_validate(
        {
            "model": {"uri": Path(args.model).resolve().as_uri()},
            "prompts": {"uri": (work / "unused.jsonl").as_uri()},
            "storage": {"uri": (work / "runs").as_uri()},
            "generation": generation_doc(args),
            "scoring": {"scorers": [{"type": "regex", "pattern": "."}]},
        }
    )
    run = (work / "runs" / "bench").as_uri()
    lay = RunLayout(run)
    storage.write_jsonl(lay.shard("prompts", 1, 0), prompt_records(args.prompts))
    cfg = StageConfig(stage="generate", round=1, run_uri=run, model_uri=spec.model.uri, spec=spec, shards=[0])
    import vllm  # noqa: F401  (imported before the clock starts, as on the vLLM side)

    started = time.perf_counter()
    run_generate(cfg)
    seconds = time.perf_counter() - started
    rows = storage.read_jsonl(lay.shard("candidates", 1, 0))
    tokens = count_tokens(models.load_tokenizer(args.model), [row["candidates"] for row in rows])
    return {"seconds": seconds, "prompts": len(rows), "tokens": tokens}


def side_vllm(args: argparse.Namespace) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    from tao_trainer import generation, models
    from tao_trainer.spec import GenerationSpec
    from tao_trainer.spec.engine import vllm_engine_kwargs
    from tao_trainer.stages.common import prepare

    gen = GenerationSpec.model_validate(generation_doc(args))
    tokenizer = models.load_tokenizer(args.model)
    ids = [p.ids for p in prepare(tokenizer, prompt_records(args.prompts), None)]
    started = time.perf_counter()
    llm = LLM(**vllm_engine_kwargs(gen.engine, args.model, generation.visible_gpus()))
    loaded = time.perf_counter()
    params = SamplingParams(
        n=gen.candidates, temperature=1.0, top_p=1.0, max_tokens=gen.max_new_tokens, seed=0
    )
    results = llm.generate([{"prompt_token_ids": list(x)} for x in ids], params, use_tqdm=False)
    done = time.perf_counter()
    completions = [[o.text for o in r.outputs] for r in results]
    return {
        "seconds": done - started,
        "generateSeconds": done - loaded,
        "prompts": len(results),
        "tokens": count_tokens(tokenizer, completions),
    }


def run_side(side: str, argv: list[str]) -> dict[str, Any]:
    """One side in a child process: a process never holds two engines, and neither side warms the other."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.json"
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--side", side, "--side-out", str(out)], check=False
        )
        if proc.returncode != 0:
            raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its log is above")
        return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--model", required=True, help="an HF-format model directory")
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--tensor-parallel-size", type=int, default=None, help="default: every visible GPU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--part-size", type=int, default=256, help="generation.partSize of our side")
    bench.add_output_flags(p, "vllm_throughput", "64 prompts, 4 candidates, 32 new tokens")
    p.add_argument("--side", choices=["ours", "vllm"], help=argparse.SUPPRESS)
    p.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    if args.smoke:
        args.prompts, args.candidates, args.max_new_tokens = 64, 4, 32

    reason = missing_requirement()
    if reason is not None:
        print(f"vllm_throughput: cannot run here: {reason}. Nothing was measured.", file=sys.stderr)
        return 2
    if args.side is not None:
        with tempfile.TemporaryDirectory() as work:
            figures = side_ours(args, Path(work)) if args.side == "ours" else side_vllm(args)
        bench.write_json(args.side_out, figures)
        return 0

    machine = bench.Machine()
    machine.announce(
        f"{args.prompts} prompts x {args.candidates} candidates, {args.max_new_tokens} new tokens"
    )
    sides = {side: run_side(side, raw) for side in ("vllm", "ours")}
    rows, figures = [], {}
    for side, f in sides.items():
        tps = f["tokens"] / f["seconds"]
        figures[side] = {
            **f,
            "tokensPerSecond": round(tps, 1),
            "promptsPerSecond": round(f["prompts"] / f["seconds"], 2),
        }
        rows.append(
            [
                side,
                f"{f['seconds']:.1f}",
                f"{f['prompts'] / f['seconds']:.2f}",
                f"{tps:.0f}",
                str(f["tokens"]),
            ]
        )
    v = sides["vllm"]
    rows.append(
        [
            "vllm, generate only",
            f"{v['generateSeconds']:.1f}",
            "",
            f"{v['tokens'] / v['generateSeconds']:.0f}",
            "",
        ]
    )
    print(bench.right_table(["side", "seconds", "prompts/s", "tokens/s", "tokens"], rows))
    ratio = figures["ours"]["tokensPerSecond"] / figures["vllm"]["tokensPerSecond"]
    figures["ratio"] = round(ratio, 3)
    print(f"ours / vLLM (tokens/s, engine start included): {ratio:.2f} (target {TARGET})")
    machine.finish("vllm_throughput", bench.results_path(args, "vllm_throughput"), figures, gpu=True)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
