"""GPU smoke: the product's GPU paths on one CUDA machine, with tokens/s and samples/s.

On a small HF model (`--model DIR`, e.g. SmolLM2-135M-Instruct saved locally): the generate stage with the
transformers backend, and with vLLM when it is installed (generated tokens per second), then the train stage
with SFT, DPO and GRPO, each with and without LoRA (training samples per second, steps, final loss). Each path
runs as the product runs it (the stages' own entry points on a run in a temporary folder), so a failure here is
a failure of the product on GPUs. Without CUDA it says so and exits 2: nothing here is meaningful on a CPU.

    python benchmarks/gpu_smoke.py --model /models/SmolLM2-135M-Instruct
    python benchmarks/gpu_smoke.py --model DIR --prompts 64 --only sft,dpo   # a subset
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

NAME = "gpu_smoke"
METHODS = ("sft", "dpo", "grpo")


def _spec(model: Path, prompts: Path, runs: Path, backend: str, method: str, lora: bool) -> Any:
    from tao_trainer.spec import LoopSpec

    training: dict[str, Any] = {
        "method": method,
        "learningRate": 1e-5,
        "batchSize": 8,
        "sft": {"minScore": 0.0},
        "dpo": {"minMargin": 0.0},
        "checkpoints": {"everyMinutes": None},
        "reportTo": [],
    }
    if lora:
        training["lora"] = {"r": 16, "merge": True}
    return LoopSpec.model_validate(
        {
            "model": {"uri": model.as_uri()},
            "prompts": {"uri": prompts.as_uri(), "heldOutFraction": 0.1},
            "storage": {"uri": runs.as_uri()},
            "generation": {"candidates": 4, "maxNewTokens": 64, "backend": backend, "batchSize": 32},
            "scoring": {"scorers": [{"type": "majority", "extract": r"(-?\d+)"}]},
            "training": training,
            "preflight": {"enabled": False},
        }
    )


def _stage(stage: str, spec: Any, run_uri: str) -> tuple[Any, float]:
    from tao_trainer.cli import _runner
    from tao_trainer.contract import StageConfig

    cfg = StageConfig(stage=stage, round=1, run_uri=run_uri, model_uri=spec.model.uri, spec=spec)
    started = time.perf_counter()
    result = _runner(stage)(cfg)
    return result, time.perf_counter() - started


def _generated_tokens(run_uri: str, model: Path) -> int:
    from transformers import AutoTokenizer

    from tao_trainer import storage
    from tao_trainer.layout import RunLayout

    tok = AutoTokenizer.from_pretrained(model)
    lay = RunLayout(run_uri)
    total = 0
    for uri in storage.list_uris(f"{lay.round_dir(1)}/candidates"):
        if uri.endswith(".jsonl"):
            for rec in storage.read_jsonl(uri):
                total += sum(len(tok(c, add_special_tokens=False)["input_ids"]) for c in rec["candidates"])
    return total


def main() -> int:
    p = _bench.parser(__doc__)
    p.add_argument(
        "--model", type=Path, required=True, help="a local HF-format model folder (small: ~100M-1B)"
    )
    p.add_argument("--prompts", type=int, default=64, help="arithmetic prompts generated and trained on")
    p.add_argument("--only", default=",".join(METHODS), help="training methods to run (comma-separated)")
    _bench.add_output_flags(p, NAME, "fewer prompts (16)")
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; this benchmark measures the GPU paths only (exit 2)")
        return 2
    n = 16 if args.smoke else args.prompts
    machine = _bench.Machine()
    machine.announce(f"{torch.cuda.get_device_name(0)}, model {args.model}, {n} prompts")
    rows: list[list[str]] = []
    figures: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "model": str(args.model), "prompts": n}
    backends = ["transformers"]
    try:
        import vllm  # noqa: F401

        backends.append("vllm")
    except ImportError:
        print("vllm is not installed: the vLLM generation path is skipped")
    with tempfile.TemporaryDirectory(prefix="tao-gpu-smoke-") as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text(
            "".join(
                json.dumps({"prompt": f"What is {a} + {2 * a + 3}? Answer with the number."}) + "\n"
                for a in range(n)
            )
        )
        for backend in backends:
            runs = Path(tmp) / f"runs-{backend}"
            spec = _spec(args.model, prompts, runs, backend, "sft", lora=False)
            run_uri = (runs / "gen").as_uri()
            _stage("prepare", spec, run_uri)
            _, seconds = _stage("generate", spec, run_uri)
            tokens = _generated_tokens(run_uri, args.model)
            figures[f"generate-{backend}"] = {"tokens": tokens, "seconds": round(seconds, 2)}
            rows.append([f"generate ({backend})", f"{tokens / seconds:,.0f} tokens/s", f"{seconds:.1f} s"])
        runs = Path(tmp) / "runs-transformers"
        _stage(
            "score", _spec(args.model, prompts, runs, "transformers", "sft", False), (runs / "gen").as_uri()
        )
        for method in [m for m in args.only.split(",") if m]:
            for lora in (False, True):
                label = f"{method}{' + LoRA' if lora else ''}"
                spec = _spec(args.model, prompts, runs, "transformers", method, lora)
                run_uri = (runs / "gen").as_uri()
                _clear_training(run_uri)
                result, seconds = _stage("train", spec, run_uri)
                examples = result.counts.get("examples", 0)
                figures[label] = {"seconds": round(seconds, 2)} | result.counts | result.metrics
                rows.append([label, f"{examples / seconds:,.2f} samples/s", f"{seconds:.1f} s"])
    print(_bench.format_table(["path", "throughput", "wall (whole stage)"], rows))
    machine.finish(NAME, _bench.results_path(args, NAME), figures)
    return 0


def _clear_training(run_uri: str) -> None:
    """Each method trains round 1 afresh: the previous method's model, result and checkpoints go."""
    import shutil

    from tao_trainer.layout import RunLayout

    lay = RunLayout(run_uri)
    for uri in (lay.train_dir(1), f"{lay.round_dir(1)}/results"):
        shutil.rmtree(uri.removeprefix("file://"), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
