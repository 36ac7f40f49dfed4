"""The promotion gate on the emulated cluster (the real operator, stage pods run as real local processes): a
challenger the gate rejects leaves the champion serving, and a gate that can never promote is reported by the
preflight before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gate_models import write_prompts
from kube_harness import (
    TAOJOBS,
    Api,
    eventually,
)

pytestmark = pytest.mark.filterwarnings("ignore")


def manifest(name: str, model: Path, prompts: Path, tmp: Path, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": model.as_uri()},
        "prompts": {
            "uri": prompts.as_uri(),
            "heldOutFraction": 0.5,
            "maxPerRound": 50,
            "labelFields": ["answer"],
        },
        "storage": {"uri": (tmp / "store").as_uri()},
        "rounds": 1,
        "generation": {"candidates": 8, "maxNewTokens": 3, "batchSize": 50},
        "scoring": {"scorers": [{"type": "majority", "extract": r"(\d)"}]},
        "training": {"learningRate": 1e-3, "batchSize": 10, "sft": {"minScore": 1.0}},
        "evaluation": {
            "maxPrompts": 50,
            "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\d)"}],
        },
        "pods": {"default": {"backoffLimit": 0}},
        "preflight": {"enabled": False},
    }
    for key, value in spec.items():
        body[key] = body.get(key, {}) | value if isinstance(value, dict) else value
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


async def status(api: Api, name: str) -> dict[str, Any]:
    return ((await api.get("taojobs", name)) or {}).get("status") or {}


async def finished(api: Api, name: str) -> bool:
    return (await status(api, name)).get("phase") in ("Succeeded", "Failed")


def served_model(dep: dict[str, Any] | None) -> str | None:
    return (
        (dep or {})
        .get("spec", {})
        .get("template", {})
        .get("metadata", {})
        .get("annotations", {})
        .get("tao.dev/model-uri")
    )


async def test_a_challenger_the_gate_rejects_leaves_the_champion_serving(
    k8s: Any, tmp_path: Path, gate_champion: Path
) -> None:
    api: Api = k8s.api
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    body = manifest(
        "gate",
        gate_champion,
        prompts,
        tmp_path,
        rounds=2,
        # A learning rate that leaves the weights as they were: each round's challenger is a no-op.
        training={"learningRate": 1e-9},
        # Round 1 is forced through (minImprovement -10, alarms off) so that there is a champion to serve.
        evaluation={"minImprovement": -10.0, "alarms": False},
    )
    await api.call("POST", TAOJOBS, body)
    # Round 2 runs on the product's default gate: the edit applies from the round not yet started.
    await eventually(lambda: api.get("jobs", "gate-r1-prepare"))
    await api.patch("taojobs", "gate", {"spec": {"evaluation": {"minImprovement": 0.01, "alarms": True}}})

    # Two rounds of real stage pods: slow on a busy machine (a deadline, not a timing check).
    await eventually(lambda: finished(api, "gate"), timeout=1200)
    st = await status(api, "gate")
    assert st["phase"] == "Succeeded", st.get("message")
    r1, r2 = st["rounds"]
    assert r1["promoted"] is True and r2["promoted"] is False
    # The no-op challenger answers every held-out prompt as the champion does: nothing to promote.
    assert r2["gate"]["reason"] == "not-better" and r2["gate"]["differing"] == 0
    assert r2["gate"]["estimate"] == 0.0 and r2["gate"]["lower"] == 0.0
    assert r2["champion"]["accuracy"] > 0.7  # a champion worth keeping
    assert "kept the champion (not-better)" in r2["verdict"]
    # Round 1's model keeps serving; round 2's is never rolled out.
    assert st["champion"]["round"] == 1 and st["serving"]["round"] == 1
    assert served_model(await api.get("deployments", "gate-serve")) == r1["modelUri"]
    reasons = [
        e.get("reason")
        for e in ((await api.call("GET", "/api/v1/namespaces/default/events")) or {}).get("items", [])
    ]
    assert "NotPromoted" in reasons


async def test_the_preflight_reports_a_gate_that_can_never_promote(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    body = manifest(
        "few",
        tiny_model,
        write_prompts(tmp_path / "prompts.jsonl"),
        tmp_path,
        preflight={"enabled": True, "prompts": 4},
        evaluation={"maxPrompts": 4},
    )
    await api.call("POST", TAOJOBS, body)
    # The random tiny model gives the vote nothing to agree on: the preflight also stops the run (no signal).
    await eventually(lambda: finished(api, "few"), timeout=600)
    st = await status(api, "few")
    warning = "warning: evaluation.maxPrompts 4 is below 5"
    assert warning in st["preflight"]["verdict"]
    condition = next(c for c in st["conditions"] if c["type"] == "ScorersInformative")
    assert warning in condition["message"]
    assert json.loads((Path(st["preflight"]["report"].removeprefix("file://"))).read_text())["warnings"]
