"""User reward functions: TRL-style callables (or veRL `compute_score`) from a .py file, a module, or a dotted path.

Users bring the reward code they already run with TRL, unchanged:
`fn(prompts, completions, completion_ids, **kwargs) -> list[float | None]`. We call it the way TRL 1.16's
GRPOTrainer does: keyword arguments only; conversational completions (`[{"role": "assistant", "content": ...}]`)
when the prompt is conversational (a chat, or a text prompt the model reads through its chat template), else
strings; `completion_ids`; the data columns as kwargs; `trainer_state`, `log_extra` and `log_metric`. A
factory (`factory: true`, as `trl.rewards.get_soft_overlong_punishment`) is called once with the scorer's
`args`. A veRL `compute_score(data_source, solution_str, ground_truth, extra_info)` is called once per
completion (`convention: verl`). What comes back is checked, and a signature that cannot take the call fails
at `tao validate` and in preflight with the scorer's name on it (`signatures.py`), not in training.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from tao_trainer.spec import CustomSpec, PythonSpec

from .base import Detailed, Scorer, ScorerError, coerce_scores, completion_text
from .signatures import TRL_CONTEXT_KWARGS, check_call, make_reward

__all__ = ["TRL_PROMPT", "FunctionScorer", "TrlPrompt", "conversational", "load_function"]

TRL_PROMPT = "tao_trl_prompt"
"""A keyword the score, preflight and evaluate stages pass beside the data columns: per candidate, a
`TrlPrompt`. Function scorers read it (and drop it) to call user code as GRPO training will; the other scorers
ignore it."""


@dataclass(frozen=True)
class TrlPrompt:
    """A candidate's prompt as TRL's GRPOTrainer gets it (the chat messages when the model reads it through its
    chat template, else the text), and the tokenizer whose ids `completion_ids` are."""

    prompt: Any
    tokenizer: Any = None


def _load_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    if not resolved.is_file():
        raise ScorerError(f"no such file: {path}")
    # A stable synthetic name: loading the same file twice reuses the module (and its state), and
    # two files that share a basename do not overwrite each other in sys.modules.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"tao_user_scorer_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ScorerError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it, as the import system does, so dataclasses and pickling by
    # reference work inside the user's file.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_function(spec: PythonSpec | CustomSpec, *, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import the function a python or dotted-path spec names. Relative `path`s resolve against
    `base_dir` (the current directory when None). Raises ScorerError naming the scorer."""
    module_name: str | None  # a python spec may name a file instead of a module
    if isinstance(spec, CustomSpec):
        module_name, function = spec.target
        path = None
    else:
        module_name, function, path = spec.module, spec.function, spec.path
    where = f"scorer {spec.name!r}"
    try:
        if path is not None:
            file = Path(path)
            if not file.is_absolute() and base_dir is not None:
                file = base_dir / file
            module = _load_file(file)
        else:
            assert module_name is not None  # guaranteed by PythonSpec / CustomSpec validation
            module = importlib.import_module(module_name)
    except ScorerError as exc:
        raise ScorerError(f"{where}: {exc}") from exc
    except Exception as exc:
        source = path if path is not None else module_name
        raise ScorerError(f"{where}: importing {source} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, function, None)
    if fn is None:
        raise ScorerError(
            f"{where}: {module.__name__ if path is None else path} has no attribute {function!r}"
        )
    if not callable(fn):
        raise ScorerError(f"{where}: {function!r} is a {type(fn).__name__}, not a function")
    return fn


async def _await(awaitable: Any) -> Any:
    return await awaitable


def conversational(prompt: Any) -> bool:
    """Whether TRL would treat a prompt as conversational (a list of messages), as `trl.is_conversational` does.

    >>> conversational("2+2?"), conversational([{"role": "user", "content": "2+2?"}])
    (False, True)
    """
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def _as_trl_completion(completion: Any, chat: bool) -> Any:
    if chat and isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    if not chat and not isinstance(completion, str):
        return completion_text(completion)
    return completion


def _ignore(*args: Any, **kwargs: Any) -> None:
    """`log_extra` / `log_metric` outside training: TRL logs these to its completions table and metrics."""


class FunctionScorer(Scorer[PythonSpec | CustomSpec]):
    """A user's TRL-style reward function, called as TRL's GRPOTrainer calls it (see the module), with the
    spec's `args` on top. Its result is checked: one float, int, bool or None per completion (NaN counts as None).

    Example (a file `rewards.py`; `base_dir` is where relative paths resolve):

    ```python
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "rewards.py").write_text(
    ...     "def short(completions, max_chars=20, **kwargs):\\n"
    ...     "    return [float(len(c) <= max_chars) for c in completions]\\n"
    ... )
    >>> scorer = FunctionScorer(path="rewards.py", function="short", args={"max_chars": 5}, base_dir=folder)
    >>> scorer.name, scorer(["q", "q"], ["short", "far too long"])
    ('short', [1.0, 0.0])

    ```

    The same function from an importable module is `{"type": "python", "module": "rewards",
    "function": "short"}`, or, as a dotted path, `{"type": "rewards:short"}`.
    """

    spec_model = PythonSpec
    scorer_type = "python"

    def __init__(
        self, spec: PythonSpec | CustomSpec | None = None, /, *, base_dir: Path | None = None, **fields: Any
    ) -> None:
        super().__init__(spec, **fields)
        self.base_dir = base_dir
        if isinstance(self.spec, CustomSpec):
            self.target = self.spec.type
        else:
            self.target = f"{self.spec.path or self.spec.module}:{self.spec.function}"
        self.where = f"scorer {self.name!r} ({self.target})"
        loaded = load_function(self.spec, base_dir=base_dir)
        # A factory is configured and called once, here; the reward function is what it returns.
        self.function = make_reward(loaded, self.spec, self.where)
        self.call_args: dict[str, Any] = {} if self.spec.factory else dict(self.spec.args)

    @classmethod
    def _spec_from_fields(cls, fields: dict[str, Any]) -> PythonSpec | CustomSpec:
        if fields.get("type", "python") != "python":
            return CustomSpec.model_validate(fields)  # a dotted path given as keywords
        return super()._spec_from_fields(fields)

    @classmethod
    def from_spec(cls, spec: PythonSpec | CustomSpec, *, base_dir: Path | None = None) -> FunctionScorer:
        return cls(spec, base_dir=base_dir)

    def check(self, columns: Sequence[str] | None = None) -> None:
        """Raise ScorerError, naming the scorer, when the function cannot take the call it will get (the data
        `columns` of the prompt records, when known)."""
        problem = check_call(self.function, self.spec.convention, self.call_args, columns)
        if problem is not None:
            raise ScorerError(f"{self.where}: {problem}")

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        view = kwargs.pop(TRL_PROMPT, None)
        trl_prompts = [v.prompt for v in view] if view else prompts
        if view and kwargs.get("completion_ids") is None and view[0].tokenizer is not None:
            # Generation keeps text only: the ids are the text's, without the EOS TRL's ids end with when the model
            # stopped (length-based rewards see one token less).
            kwargs["completion_ids"] = [
                list(v.tokenizer(completion_text(c), add_special_tokens=False)["input_ids"])
                for v, c in zip(view, completions, strict=True)
            ]
        try:
            if self.spec.convention == "verl":
                from .verl import call_compute_score

                values: Any = call_compute_score(self.function, completions, kwargs, self.call_args)
            else:
                chat = bool(trl_prompts) and conversational(trl_prompts[0])
                context = {key: kwargs.get(key) for key in TRL_CONTEXT_KWARGS}
                context["log_extra"] = context["log_extra"] or _ignore
                context["log_metric"] = context["log_metric"] or _ignore
                values = self.function(
                    prompts=list(trl_prompts),
                    completions=[_as_trl_completion(c, chat) for c in completions],
                    **{**kwargs, **context, **self.call_args},
                )
            if inspect.isawaitable(values):
                # TRL accepts async reward functions; the score stage runs outside any event loop.
                values = asyncio.run(_await(values))
        except Exception as exc:
            exc.add_note(f"raised in {self.where}")
            raise
        return Detailed(coerce_scores(values, len(completions), self.where))
