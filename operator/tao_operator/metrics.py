"""Prometheus metrics of the operator: TAOJobs by phase, stage durations, promotions, reconcile errors.

Module-level collectors on a registry of our own: one set per process, however often the operator restarts in it.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tao_operator.api import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

TAOJOBS = Gauge(
    "tao_taojobs", "TAOJobs by phase, as last reconciled by this operator.", ["phase"], registry=REGISTRY
)
STAGE_DURATION = Histogram(
    "tao_stage_duration_seconds",
    "Stage run time reported by stage pods (longest pod of the stage).",
    ["stage", "outcome"],
    registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200),
)
ROUNDS = Counter("tao_rounds_total", "Rounds evaluated, by gate verdict.", ["verdict"], registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "tao_reconcile_errors_total", "Reconcile passes that raised an error.", registry=REGISTRY
)
RECONCILES = Counter("tao_reconciles_total", "Reconcile passes run.", registry=REGISTRY)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()
_server_port: int | None = None


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Remember one TAOJob's phase (None: deleted) and refresh the per-phase gauge."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        counts: dict[str, int] = {p: 0 for p in PHASES}
        for p in _phases.values():
            counts[p] = counts.get(p, 0) + 1
    for p, n in counts.items():
        TAOJOBS.labels(phase=p).set(n)


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Expose /metrics once per process; returns the bound port (port 0 picks a free one)."""
    global _server_port
    with _lock:
        if _server_port is None:
            server, _ = start_http_server(port, addr=addr, registry=REGISTRY)
            _server_port = server.server_port
        return _server_port
