"""User reward functions: TRL-style callables loaded from a .py file, a module, or a dotted path.

Users bring the reward code they already run with TRL, unchanged:
`fn(prompts, completions, **kwargs) -> list[float | None]`. We call it the way GRPOTrainer does
(keyword arguments, data columns as kwargs) and check what comes back, so that a mistake in user
code fails with the scorer's name on it instead of somewhere deep in training.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tao_trainer.spec import CustomSpec, PythonSpec

from .base import Detailed, Scorer, ScorerError, coerce_scores

__all__ = ["FunctionScorer", "load_function"]


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


class FunctionScorer(Scorer[PythonSpec | CustomSpec]):
    """A user's TRL-style reward function, called with `prompts=`, `completions=`, the data columns
    as keyword arguments, and the spec's `args` on top. Its result is checked: one float, int,
    bool or None per completion (NaN counts as None).

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
        self.function = load_function(self.spec, base_dir=base_dir)
        if isinstance(self.spec, CustomSpec):
            self.target = self.spec.type
        else:
            self.target = f"{self.spec.path or self.spec.module}:{self.spec.function}"

    @classmethod
    def _spec_from_fields(cls, fields: dict[str, Any]) -> PythonSpec | CustomSpec:
        if fields.get("type", "python") != "python":
            return CustomSpec.model_validate(fields)  # a dotted path given as keywords
        return super()._spec_from_fields(fields)

    @classmethod
    def from_spec(cls, spec: PythonSpec | CustomSpec, *, base_dir: Path | None = None) -> FunctionScorer:
        return cls(spec, base_dir=base_dir)

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        # Completions go through untouched (strings or chat messages): the user's code expects
        # exactly what TRL would give it.
        where = f"scorer {self.name!r} ({self.target})"
        try:
            values = self.function(prompts=prompts, completions=completions, **{**kwargs, **self.spec.args})
            if inspect.isawaitable(values):
                # TRL accepts async reward functions; the score stage runs outside any event loop.
                values = asyncio.run(_await(values))
        except Exception as exc:
            exc.add_note(f"raised in {where}")
            raise
        return Detailed(coerce_scores(values, len(completions), where))
