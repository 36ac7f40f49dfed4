"""Sampling from one model in a process of its own: never two vLLM engines in one process.

vLLM does not reliably give a finished engine's GPU memory back inside the process that made it (vllm#3281,
#21073), so a stage that samples from two models (evaluate: the champion, then the challenger) or loads another
model after sampling (preflight: a reward model or a local judge) runs each model's sampling in a child
process: when the child exits, its GPU memory goes with it. The request and the answers travel as JSON files;
the child's log goes to the stage's own stderr.

The transformers backend samples in the stage's process: torch frees its memory when the model is dropped,
and a child would pay the imports and model load again (see `needs_own_process`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tao_trainer.generation import Sampling
from tao_trainer.spec import GenerationSpec
from tao_trainer.spec.engine import EngineSpec
from tao_trainer.stages.common import open_generator, render

Completions = list[list[str]]
"""For each record, its completions under one `Sampling`."""


def needs_own_process(backend: str) -> bool:
    """Whether sampling with `backend` (auto resolved here) runs in a child process: vLLM only."""
    from tao_trainer.generation import pick_backend

    return pick_backend(backend) == "vllm"


def sample(
    gen: GenerationSpec,
    model_uri: str,
    records: Sequence[dict[str, Any]],
    samplings: Sequence[Sampling],
    revision: str | None = None,
    engine: EngineSpec | None = None,
    own_process: bool | None = None,
) -> list[Completions]:
    """For each of `samplings` in turn, the completions of `records` by `model_uri`, all from one loaded model
    that is gone when this returns. `own_process`: None decides by backend (`needs_own_process`)."""
    if own_process is None:
        own_process = needs_own_process(gen.backend)
    if not own_process:
        return _sample_here(gen, model_uri, records, samplings, revision, engine)
    request = {
        "generation": gen.model_dump(mode="json", by_alias=True),
        "model": model_uri,
        "revision": revision,
        "engine": engine.model_dump(mode="json", by_alias=True) if engine is not None else None,
        "records": list(records),
        "samplings": [dataclasses.asdict(s) for s in samplings],
    }
    with tempfile.TemporaryDirectory(prefix="tao-model-worker-") as tmp:
        request_path, answer_path = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "-m", __name__, str(request_path), str(answer_path)], check=False
        )
        answer = json.loads(answer_path.read_text(encoding="utf-8")) if answer_path.exists() else {}
    if proc.returncode != 0 or "outputs" not in answer:
        reason = answer.get("error") or f"the process exited with status {proc.returncode}"
        raise RuntimeError(f"sampling from {model_uri} in its own process failed: {reason}")
    outputs: list[Completions] = answer["outputs"]
    return outputs


def _sample_here(
    gen: GenerationSpec,
    model_uri: str,
    records: Sequence[dict[str, Any]],
    samplings: Sequence[Sampling],
    revision: str | None,
    engine: EngineSpec | None,
) -> list[Completions]:
    generator = open_generator(gen, model_uri, revision, engine)
    rendered = render(generator, records, gen.system_prompt)
    outputs = [generator.generate(rendered, s) for s in samplings]
    del generator
    gc.collect()
    return outputs


def main(argv: Sequence[str]) -> int:
    """`python -m tao_trainer.stages.model_worker REQUEST ANSWER`: sample as the request says, here."""
    request_path, answer_path = Path(argv[0]), Path(argv[1])
    try:
        request = json.loads(request_path.read_text(encoding="utf-8"))
        engine = request["engine"]
        outputs = _sample_here(
            GenerationSpec.model_validate(request["generation"]),
            request["model"],
            request["records"],
            [Sampling(**s) for s in request["samplings"]],
            request["revision"],
            EngineSpec.model_validate(engine) if engine is not None else None,
        )
    except Exception as exc:
        answer_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), encoding="utf-8")
        raise
    answer_path.write_text(json.dumps({"outputs": outputs}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
