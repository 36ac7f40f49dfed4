"""The operator's Prometheus gauge of TAOJobs by phase follows each TAOJob across every phase it passes."""

from __future__ import annotations

import typing

from tao_operator import metrics
from tao_operator.api import PHASES, Phase


def gauge(phase: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("tao_taojobs", {"phase": phase})


def test_every_phase_of_the_type_is_a_series() -> None:
    # The gauge's series come from the Phase type itself: a phase added there cannot be forgotten here.
    assert typing.get_args(Phase) == PHASES
    metrics.set_phase("ns", "probe", "Pending")
    assert all(gauge(phase) is not None for phase in PHASES)
    metrics.set_phase("ns", "probe", None)


def test_a_taojob_leaving_a_phase_is_no_longer_counted_there() -> None:
    # Preflight and Watching were missing from the phase list once: a job that left them stayed counted.
    for phase in ("Preflight", "Generating", "Watching", "Training", "Succeeded"):
        metrics.set_phase("ns", "moving", phase)
        assert gauge(phase) == 1.0
        assert sum(gauge(p) or 0.0 for p in PHASES) == 1.0
    metrics.set_phase("ns", "moving", None)
    assert sum(gauge(p) or 0.0 for p in PHASES) == 0.0


def test_jobs_are_counted_per_phase() -> None:
    metrics.set_phase("a", "one", "Preflight")
    metrics.set_phase("b", "two", "Preflight")
    metrics.set_phase("b", "three", "Failed")
    assert (gauge("Preflight"), gauge("Failed")) == (2.0, 1.0)
    for ns, name in (("a", "one"), ("b", "two"), ("b", "three")):
        metrics.set_phase(ns, name, None)
    assert gauge("Preflight") == 0.0
