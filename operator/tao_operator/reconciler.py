"""The Reconciler: read the TAOJob, ask the plan what is next, create what is missing, record what finished, write
status if it changed. Every trigger runs the same pass.

Progress lives in the TAOJob's status and in the cluster, never in this process: a restarted operator reconciles
from there and, since child names are deterministic and creates are idempotent, never duplicates. A child counts
as this TAOJob's only when its controller ownerReference carries the TAOJob's uid (`children.foreign`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any, cast

import kopf

from tao_operator import builders, metrics
from tao_operator.allowlist import refusals
from tao_operator.api import (
    ANNOTATION_RETRY,
    ConditionType,
    EventReason,
    Reason,
    SpecError,
    TAOJob,
    TAOJobStatus,
    parse_taojob,
)
from tao_operator.cluster import ApiError, Cluster
from tao_operator.edits import refused_edits, spec_digest
from tao_operator.plan import Failed, Finished, RunStage, next_action
from tao_operator.reconcile_pass import Event, Pass, new_attempt
from tao_operator.rollout import Rollout
from tao_operator.stage_step import StageStep
from tao_operator.status import (
    champion_text,
    derive_phase,
    dump,
    merge_patch,
    own_status,
    results_from_status,
    set_condition,
)
from tao_operator.triggers import EndedJobs
from tao_trainer.spec import LoopSpec

# Each reconcile records at most one finished stage per loop turn; this bounds a single pass.
MAX_STEPS_PER_PASS = 32
# A pass that failed (an API error, a crash) runs again after this many seconds, and on every later event.
RETRY_DELAY = 10.0

log = logging.getLogger("tao_operator.reconciler")


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A TAOJob as validated, keyed by what it was validated from (uid, generation, spec, annotations, labels)."""

    key: tuple[str | None, int | None, str]
    job: TAOJob
    loop: LoopSpec
    digest: dict[str, str]  # edits.spec_digest: one digest per spec section


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kopf_event(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    # The raw object as read from the API: kopf reads only its apiVersion, kind and metadata.
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message[:1000])


class Reconciler:
    def __init__(
        self,
        cluster: Cluster,
        defaults: builders.OperatorDefaults,
        post_event: Callable[[dict[str, Any], str, str, str], None] = kopf_event,
    ) -> None:
        self.cluster = cluster
        self.defaults = defaults
        self.post_event = post_event
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.waiting: dict[tuple[str, str], int] = {}
        self.retries: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.parsed: dict[tuple[str, str], Parsed] = {}
        self.ended_jobs = EndedJobs()
        # When each TAOJob's last pass ended (the event loop's clock): the safety sweep skips those seen lately.
        self.last_pass: dict[tuple[str, str], float] = {}
        # Each TAOJob as this operator last read or wrote it, and the resourceVersion of the last TAOJob event
        # the watch delivered (`saw_version`). A pass reads the TAOJob from here instead of the API when the two
        # versions agree: nothing the watch knows of has changed it since (as an informer's cache is read).
        self.bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.watched: dict[tuple[str, str], str] = {}

    def saw_version(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        """The TAOJob watch delivered `body` (None: the TAOJob was deleted)."""
        version = ((body or {}).get("metadata") or {}).get("resourceVersion")
        if version is None:
            self.watched.pop((namespace, name), None)
        else:
            self.watched[(namespace, name)] = version

    def _remembered(self, key: tuple[str, str]) -> dict[str, Any] | None:
        body = self.bodies.get(key)
        if body is None or self.watched.get(key) != body["metadata"].get("resourceVersion"):
            return None
        return body

    async def trigger(self, namespace: str, name: str, fresh: bool = False) -> bool:
        """A pass for a watch event or the sweep that never raises (False: the TAOJob is gone). One that fails
        is logged and runs again after RETRY_DELAY (a kopf.TemporaryError's own delay), once per TAOJob
        however many passes failed: kopf retries only the handlers it keeps progress for, which these (event
        handlers) are not."""
        try:
            return await self.reconcile(namespace, name, fresh)
        except Exception as e:
            delay = e.delay if isinstance(e, kopf.TemporaryError) and e.delay else RETRY_DELAY
            log.warning("TAOJob %s/%s: the pass failed (again in %gs): %s", namespace, name, delay, e)
            key = (namespace, name)
            if key not in self.retries:
                self.retries[key] = asyncio.get_running_loop().create_task(self._retry_later(key, delay))
            return True

    async def _retry_later(self, key: tuple[str, str], delay: float) -> None:
        await asyncio.sleep(delay)
        del self.retries[key]
        await self.trigger(*key, fresh=True)

    async def close(self) -> None:
        """Stop the scheduled retries and the API session (the operator is stopping)."""
        for task in self.retries.values():
            task.cancel()
        await asyncio.gather(*self.retries.values(), return_exceptions=True)
        self.retries.clear()
        await self.cluster.close()

    async def reconcile(self, namespace: str, name: str, fresh: bool = False) -> bool:
        """One pass over the TAOJob; False when it does not exist (or is being deleted). `fresh`: read the
        TAOJob from the API even when the one remembered is as new as the watch knows (the safety sweep's passes,
        which are there for what the watch missed)."""
        # One pass at a time per TAOJob: Job events and TAOJob events may arrive together. A lock lives only
        # while someone holds or waits for it, so the map stays as small as the work in flight.
        key = (namespace, name)
        lock = self.locks.setdefault(key, asyncio.Lock())
        self.waiting[key] = self.waiting.get(key, 0) + 1
        try:
            async with lock:
                metrics.RECONCILES.inc()
                try:
                    body = None if fresh else self._remembered(key)
                    if body is None:
                        body = await self.cluster.get("taojobs", namespace, name)
                    self.bodies.pop(key, None)  # until this pass has written, or found nothing to write
                    if body is None or body["metadata"].get("deletionTimestamp"):
                        metrics.set_phase(namespace, name, None)
                        self.parsed.pop(key, None)
                        self.last_pass.pop(key, None)
                        self.watched.pop(key, None)
                        return False
                    phase = await self._reconcile(body)
                    metrics.set_phase(namespace, name, phase)
                    self.last_pass[key] = asyncio.get_running_loop().time()
                    return True
                except Exception:
                    metrics.RECONCILE_ERRORS.inc()
                    raise
        finally:
            self.waiting[key] -= 1
            if not self.waiting[key]:
                del self.waiting[key], self.locks[key]

    async def _reconcile(self, body: dict[str, Any]) -> str:
        meta = body["metadata"]
        generation = meta.get("generation")
        old = body.get("status") or {}
        status = TAOJobStatus.model_validate(own_status(old))
        now = utcnow()
        # Every generation is observed, accepted or not: the conditions say what became of it.
        status.observed_generation = generation
        try:
            parsed = self._parsed(body)
        except SpecError as e:
            problems = "; ".join(e.problems)
            set_condition(
                status, ConditionType.DEGRADED, True, Reason.INVALID_SPEC, problems, generation, now
            )
            if not any(c.type == ConditionType.READY for c in status.conditions):
                # Not a failure: the run starts once the spec is fixed. A run under way keeps its phase.
                set_condition(
                    status, ConditionType.READY, False, Reason.INVALID_SPEC, problems, generation, now
                )
            await self._write(body, old, status, [("Warning", EventReason.INVALID_SPEC, problems)])
            return status.phase

        p = Pass(parsed.job, parsed.loop, status, now)
        error: Exception | None = None
        try:
            await self._run(p, parsed.digest)
        except (ApiError, ValueError) as e:
            # Said on the object, then retried by kopf: a 500 passes, a 422 or a quota needs the user; a
            # ValueError is a spec the models accepted but a manifest cannot carry (a bad URI, a long name).
            api = isinstance(e, ApiError)
            p.problems.append((Reason.API_ERROR if api else Reason.INVALID_SPEC, str(e)))
            p.events.append(("Warning", EventReason.API_ERROR if api else EventReason.INVALID_SPEC, str(e)))
            error = e
        if p.problems:
            reason, message = p.problems[0]
            said = set_condition(status, ConditionType.DEGRADED, True, reason, message, generation, now)
            if reason == Reason.POD_STUCK and said:
                p.events.append(("Warning", EventReason.POD_STUCK, message))  # once, not every pass
        else:
            set_condition(status, ConditionType.DEGRADED, False, Reason.AS_EXPECTED, "", generation, now)
        was_suspended = old.get("phase") == "Suspended"
        is_suspended = derive_phase(status) == "Suspended"
        if was_suspended != is_suspended:
            p.events.append(
                ("Normal", EventReason.SUSPENDED, "spec.suspend is true: no new stage starts")
                if is_suspended
                else ("Normal", EventReason.RESUMED, "spec.suspend is false: the run continues")
            )
        await self._write(body, old, status, p.events)
        if error is not None:
            raise kopf.TemporaryError(str(error), delay=RETRY_DELAY) from error
        return status.phase

    def _parsed(self, body: dict[str, Any]) -> Parsed:
        """The TAOJob validated, its loop spec and its digest: built once per spec and metadata, not per pass
        (validation is most of a pass's own CPU). Raises SpecError."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        # The spec's text, not only its generation: writers that do not bump generation are not trusted.
        source = {
            "spec": body.get("spec"),
            "annotations": meta.get("annotations"),
            "labels": meta.get("labels"),
        }
        key = (meta.get("uid"), meta.get("generation"), json.dumps(source, sort_keys=True))
        cached = self.parsed.get((namespace, name))
        if cached is not None and cached.key == key:
            return cached
        job = parse_taojob({k: v for k, v in body.items() if k != "status"}, f"TAOJob {namespace}/{name}")
        digest = spec_digest(job.spec.model_dump(mode="json", by_alias=True, exclude_defaults=True))
        parsed = Parsed(key, job, job.spec.loop(), digest)
        if key[0] is not None and key[1] is not None:
            self.parsed[(namespace, name)] = parsed
        return parsed

    async def _run(self, p: Pass, digest: dict[str, str]) -> None:
        job, status, spec = p.job, p.status, p.loop
        layout = job.run_layout()
        status.run_uri = layout.root
        if not_allowed := refusals(job, self.defaults):
            # Checked before the run records its spec: fixing the TAOJob is then not an edit of a started run.
            message = (
                "; ".join(not_allowed) + ": not allowed by the operator's allow-list (nothing was created)"
            )
            p.problems.append((Reason.NOT_ALLOWED, message))
            p.events.append(("Warning", EventReason.NOT_ALLOWED, message))
            return
        if not status.spec_digest:
            status.spec_digest = dict(digest)  # the run starts: what it may not lose from now on
        if refused := refused_edits(status.spec_digest, digest):
            message = (
                f"edits of {', '.join(refused)} are refused while the run goes on (nothing of them was "
                "applied; no new stage starts until they are reverted): create a new TAOJob for a new run"
            )
            p.problems.append((Reason.EDIT_REFUSED, message))
            if not any(e[1] == EventReason.EDIT_REFUSED for e in p.events):
                p.events.append(("Warning", EventReason.EDIT_REFUSED, message))
            return
        self._retry(p)
        step = StageStep(self.cluster, self.defaults, p, self.ended_jobs)
        rollout = Rollout(self.cluster, self.defaults, p)
        for _ in range(MAX_STEPS_PER_PASS):
            action = next_action(spec, layout, results_from_status(status))
            if isinstance(action, Failed):
                status.message = action.message
                p.ready(False, Reason.STAGE_FAILED, action.message)
                break
            if isinstance(action, Finished):
                await step.stop_unplanned(spec.last_round())
                await rollout.ensure(layout)
                done = status.serving is None or status.serving.ready
                status.message = None
                p.ready(done, Reason.SUCCEEDED if done else Reason.ROLLING_OUT, champion_text(status))
                break
            assert isinstance(action, RunStage)
            recorded = await step.advance(action)
            evaluated = results_from_status(status).get((action.round, "evaluate"))
            if recorded and action.stage == "evaluate" and evaluated is not None and evaluated.promoted:
                await rollout.ensure(layout)
            if not recorded:
                break

    def _retry(self, p: Pass) -> None:
        """`tao.dev/retry` raised past status.retry: each failed stage runs again as a new attempt."""
        raw = (p.job.metadata.model_extra or {}).get("annotations", {}).get(ANNOTATION_RETRY)
        if raw is None:
            return
        try:
            want = int(raw)
        except ValueError:
            p.problems.append(
                (Reason.INVALID_SPEC, f"annotation {ANNOTATION_RETRY} must be a number: {raw!r}")
            )
            return
        if want <= p.status.retry:
            return
        p.status.retry = want
        retried = []
        for rnd in p.status.rounds:
            failed = [st for st in rnd.stages if st.state == "Failed"]
            if failed:
                # A retry is the user going on after a fix, which may be a scorer's: the rest of the round
                # runs on evaluation and scoring as they are now (recorded again at the next stage created).
                rnd.spec = None
            for st in failed:
                new_attempt(p.job, rnd.round, st)
                retried.append(f"round {rnd.round} {st.stage} (attempt {st.attempt})")
        p.status.message = None
        message = f"retry {want}: " + (", ".join(retried) or "nothing had failed")
        p.events.append(("Normal", EventReason.RETRY, message))

    async def _write(
        self, body: dict[str, Any], old: dict[str, Any], status: TAOJobStatus, events: list[Event]
    ) -> None:
        """Derive the phase, patch status only when it changed, then post the transition events."""
        status.phase = derive_phase(status)
        patch = merge_patch(own_status(old), dump(status))
        meta = body["metadata"]
        key = (meta.get("namespace", "default"), meta["name"])
        if patch:
            written = await self.cluster.patch("taojobs", key[0], key[1], {"status": patch}, sub="status")
            # The API server's answer is the TAOJob as written, at its new resourceVersion.
            if isinstance(written, dict) and (written.get("metadata") or {}).get("resourceVersion"):
                self.bodies[key] = written
        else:
            self.bodies[key] = body
        for kind, reason, message in events:
            self.post_event(body, kind, reason, message)


__all__ = ["Reconciler"]
