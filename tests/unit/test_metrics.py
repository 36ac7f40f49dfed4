"""The operator's Prometheus gauge of TAOJobs by phase follows each TAOJob across every phase it passes.

The gauge is process-wide (other tests' operators count their TAOJobs in it too), so these tests read changes.
"""

from __future__ import annotations

import typing

from tao_operator import metrics
from tao_operator.api import PHASES, Phase


def gauges() -> dict[str, float]:
    return {p: metrics.REGISTRY.get_sample_value("tao_taojobs", {"phase": p}) or 0.0 for p in PHASES}


def change(before: dict[str, float]) -> dict[str, float]:
    return {p: v - before[p] for p, v in gauges().items() if v != before[p]}


def test_every_phase_of_the_type_is_a_series() -> None:
    # The gauge's series come from the Phase type itself: a phase added there cannot be forgotten here.
    assert typing.get_args(Phase) == PHASES
    metrics.set_phase("test-metrics", "probe", "Pending")
    assert all(metrics.REGISTRY.get_sample_value("tao_taojobs", {"phase": p}) is not None for p in PHASES)
    metrics.set_phase("test-metrics", "probe", None)


def test_a_taojob_leaving_a_phase_is_no_longer_counted_there() -> None:
    # Preflight and Watching were missing from the phase list once: a job that left them stayed counted.
    before = gauges()
    for phase in ("Preflight", "Generating", "Watching", "Training", "Succeeded"):
        metrics.set_phase("test-metrics", "moving", phase)
        assert change(before) == {phase: 1.0}
    metrics.set_phase("test-metrics", "moving", None)
    assert change(before) == {}


def test_jobs_are_counted_per_phase() -> None:
    before = gauges()
    metrics.set_phase("test-metrics-a", "one", "Preflight")
    metrics.set_phase("test-metrics-b", "two", "Preflight")
    metrics.set_phase("test-metrics-b", "three", "Failed")
    assert change(before) == {"Preflight": 2.0, "Failed": 1.0}
    for ns, name in (("test-metrics-a", "one"), ("test-metrics-b", "two"), ("test-metrics-b", "three")):
        metrics.set_phase(ns, name, None)
    assert change(before) == {}
