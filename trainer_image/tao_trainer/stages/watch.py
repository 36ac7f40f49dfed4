"""Stage `watch` (continuous mode): wait until enough prompts no earlier round used have arrived.

It polls the prompts location every `continuous.interval` and counts, with `prompt_history`, the unseen
prompts in objects that are new or changed since the previous round's watermark. It runs as a stage pod, not
inside the operator: reading the prompts needs the job's storage credentials, which only stage pods hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.prompt_history import count_new
from tao_trainer.stages.common import log

# A storage outage must not fail a TAOJob that waits for days; a location that stays unreadable for this many
# polls in a row (a wrong bucket, revoked credentials) fails the stage with the error, so that it is seen.
MAX_FAILED_POLLS = 10


def run_watch(cfg: StageConfig, sleep: Callable[[float], None] = time.sleep) -> StageResult:
    """Poll until `minNewPrompts` unseen prompts have arrived; a pod may run this for days (it is cheap)."""
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    if spec.continuous is None:
        raise ValueError("the watch stage runs only in continuous mode (spec.continuous)")
    wanted, interval = spec.continuous.min_new_prompts, spec.continuous.interval_seconds()
    polls = failed = 0
    while True:
        polls += 1
        try:
            new, objects, rejects = count_new(spec, lay, r)
        except Exception as exc:  # noqa: BLE001 - any storage error is retried, up to MAX_FAILED_POLLS in a row
            failed += 1
            if failed >= MAX_FAILED_POLLS:
                raise RuntimeError(
                    f"prompts.uri {spec.prompts.uri!r} unreadable in {failed} polls in a row: {exc}"
                ) from exc
            log(
                f"watch: cannot read {spec.prompts.uri} ({type(exc).__name__}: {exc}); retrying in {interval}s"
            )
            sleep(interval)
            continue
        failed = 0
        log(
            f"watch: round {r}: {new}/{wanted} new prompts in {objects} new or changed object(s) under "
            f"{spec.prompts.uri}"
        )
        if new >= wanted:
            return StageResult(
                stage="watch",
                round=r,
                message=f"{new} new prompts since round {r - 1} (at least {wanted} start a round)",
                counts={"newPrompts": new, "changedObjects": objects, "rejects": rejects, "polls": polls},
            )
        sleep(interval)
