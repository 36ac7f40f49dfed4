"""Whether a user's reward function can take the call it will get, said before any GPU time is spent.

TRL's GRPOTrainer calls every reward function with keyword arguments only: `prompts`, `completions`,
`completion_ids`, each data column, `trainer_state`, `log_extra` and `log_metric`. A function that lacks
`**kwargs` and one of those names fails on the first training step with a TypeError; one that requires an
argument nobody passes fails the same way. veRL calls `compute_score(data_source=, solution_str=,
ground_truth=, extra_info=)` plus its reward kwargs. `check_call` says which of these goes wrong, in words.

>>> def good(completions, **kwargs): ...
>>> check_call(good, "trl", {}, None) is None
True
>>> def strict(prompts, completions): ...
>>> print(check_call(strict, "trl", {}, None))
does not accept the keyword arguments completion_ids, log_extra, log_metric, trainer_state that TRL's GRPOTrainer passes to every reward function; add **kwargs to its parameters
>>> def needs_answer(completions, answer, **kwargs): ...
>>> print(check_call(needs_answer, "trl", {}, ["question"]))
requires the argument 'answer', which is neither a TRL argument nor a field of the prompt records (fields: question)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

from .base import ScorerError

__all__ = [
    "TRL_CONTEXT_KWARGS",
    "TRL_KWARGS",
    "VERL_KWARGS",
    "check_call",
    "make_reward",
    "user_code_failure",
]

TRL_CONTEXT_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric")
"""What TRL passes to every reward function beside prompts, completions and the data columns."""
TRL_KWARGS = ("prompts", "completions", *TRL_CONTEXT_KWARGS)
VERL_KWARGS = ("data_source", "solution_str", "ground_truth", "extra_info")
"""What veRL's reward manager passes to `compute_score` (its reward kwargs come on top)."""


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without a readable signature: nothing to check
        return None


def check_call(
    fn: Callable[..., Any], convention: str, args: dict[str, Any], columns: Collection[str] | None
) -> str | None:
    """Why calling `fn` as `convention` says would fail, or None. `args` are the spec's per-call arguments;
    `columns` the prompt records' fields (None when not known yet: required arguments are then not checked
    against them)."""
    sig = _signature(fn)
    if sig is None:
        return None
    params = list(sig.parameters.values())
    positional_only = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        return (
            f"takes {', '.join(positional_only)} as positional-only parameters; reward functions are called with "
            "keyword arguments only"
        )
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    fixed = set(VERL_KWARGS if convention == "verl" else TRL_KWARGS)
    who = (
        "veRL's reward manager passes to compute_score"
        if convention == "verl"
        else ("TRL's GRPOTrainer passes to every reward function")
    )
    if not takes_any:
        refused = sorted((fixed | set(args)) - named)
        if refused:
            return (
                f"does not accept the keyword arguments {', '.join(refused)} that {who}"
                f"{' (or the scorer args give)' if set(refused) & set(args) else ''}; add **kwargs to its parameters"
            )
    if columns is None:
        return None
    # veRL passes no data columns: compute_score reads the record through ground_truth and extra_info.
    given = fixed | set(args) | (set() if convention == "verl" else set(columns))
    for p in params:
        if (
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is p.empty
            and p.name not in given
        ):
            what = "a veRL argument" if convention == "verl" else "a TRL argument"
            fields = ", ".join(sorted(columns)) or "none"
            return (
                f"requires the argument {p.name!r}, which is neither {what} nor a field of the prompt records "
                f"(fields: {fields})"
            )
    return None


def make_reward(fn: Callable[..., Any], spec: Any, where: str) -> Callable[..., Any]:
    """The reward function a spec names: `fn` itself, or, for `factory: true`, what `fn(**args)` returns (once)."""
    if not spec.factory:
        return fn
    sig = _signature(fn)
    if sig is not None:
        try:
            sig.bind(**spec.args)
        except TypeError as exc:
            raise ScorerError(f"{where}: the factory cannot take args {sorted(spec.args)}: {exc}") from None
    try:
        reward = fn(**spec.args)
    except Exception as exc:
        raise ScorerError(f"{where}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not callable(reward):
        raise ScorerError(
            f"{where}: factory: true, but the function returned a {type(reward).__name__}, not a reward function"
        )
    return reward


def user_code_failure(exc: BaseException) -> ScorerError | None:
    """A user function's exception (one `FunctionScorer` noted) as a ScorerError naming the scorer, with a hint
    for the most common mistake; None for any other exception.

    >>> exc = TypeError("string indices must be integers, not 'str'")
    >>> exc.add_note("raised in scorer 'fmt' (trl.rewards:think_format_reward)")
    >>> print(user_code_failure(exc))  # doctest: +ELLIPSIS
    scorer 'fmt' (trl.rewards:think_format_reward) raised TypeError: string indices must be integers, not 'str' (it reads ...
    """
    where = next(
        (
            note.removeprefix("raised in ")
            for note in getattr(exc, "__notes__", ())
            if note.startswith("raised in ")
        ),
        None,
    )
    if where is None:
        return None
    hint = ""
    if isinstance(exc, TypeError) and "string indices" in str(exc):
        hint = (
            " (it reads completions as chat messages, completion[0]['content'], as TRL gives them for conversational "
            "prompts only: the model has no chat template and the prompt is text, so TRL would pass strings too; give "
            "the model a chat template or use chat prompts)"
        )
    return ScorerError(f"{where} raised {type(exc).__name__}: {exc}{hint}")
