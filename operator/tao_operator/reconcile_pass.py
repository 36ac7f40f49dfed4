"""What one reconcile pass carries between the Reconciler and the parts it drives (stage steps, the rollout):
the events to post and the problems for the Degraded condition; and how a stage's next attempt is recorded."""

from __future__ import annotations

from tao_operator import builders
from tao_operator.api import ConditionType, EventReason, Reason, StageStatus, TAOJob, TAOJobStatus
from tao_operator.children import Foreign
from tao_operator.status import set_condition
from tao_trainer.spec import LoopSpec

Event = tuple[str, str, str]  # (type, reason, message)
Problem = tuple[str, str]  # (reason, message) for the Degraded condition


class Pass:
    """What one reconcile pass collects: events to post and problems for the Degraded condition. `loop` is
    the spec's loop part (`job.spec.loop()`), built once per spec."""

    def __init__(self, job: TAOJob, loop: LoopSpec, status: TAOJobStatus, now: str) -> None:
        self.job, self.loop, self.status, self.now = job, loop, status, now
        self.events: list[Event] = []
        self.problems: list[Problem] = []
        self.generation = job.metadata.generation

    def conflict(self, f: Foreign) -> None:
        reason = Reason.DELETING if f.deleting else Reason.CONFLICT
        self.problems.append((reason, f.message()))
        if not f.deleting:
            self.events.append(("Warning", EventReason.CONFLICT, f.message()))

    def ready(self, state: bool, reason: str, message: str) -> None:
        set_condition(self.status, ConditionType.READY, state, reason, message, self.generation, self.now)


def new_attempt(job: TAOJob, round_: int, st: StageStatus) -> None:
    """Record a stage's next attempt: a Job of a new name, created on the next step (started_at unset)."""
    st.attempt += 1
    st.state = "Running"
    st.job = builders.child_name(job.metadata.name, round_, st.stage, st.attempt)
    st.started_at = st.finished_at = None
    st.message = ""
