"""Serving unmerged LoRA rounds through the real Reconciler on the in-memory API server (tests/fake_cluster.py):
each promotion switches the served adapter over the same base, `pinnedRound` rolls back to an earlier adapter
(or to the base alone), and unpinning returns to the champion."""

from __future__ import annotations

import asyncio
from typing import Any

from taojob_rig import drive, setup, state, taojob

from tao_operator.api import ANNOTATION_ADAPTER_URI, ANNOTATION_MODEL_URI, EventReason

ROUND = "file:///store/default/arith/taojob-uid-1/round-{:03d}/train/model"


def _served(cluster: Any) -> tuple[list[str], list[str], dict[str, str]]:
    dep = cluster.objects[("deployments", "default", "arith-serve")]
    template = dep["spec"]["template"]
    inits = [c["command"][c["command"].index("--uri") + 1] for c in template["spec"]["initContainers"]]
    return inits, template["spec"]["containers"][0]["args"], template["metadata"]["annotations"]


def test_promotions_switch_the_adapter_and_pinned_round_rolls_back() -> None:
    cluster, rec, events = setup(taojob(training={"lora": {"r": 8, "merge": False}}))
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    # Both rounds were promoted: round 2's adapter is served over the base, round 1's beside it.
    inits, args, annotations = _served(cluster)
    assert inits == ["file:///base", ROUND.format(2), ROUND.format(1)]
    assert args[:4] == ["/models/model", "--served-model-name", "arith-base", "--port"]
    assert args[args.index("--lora-modules") + 1 :] == [
        "arith=/models/adapters/champion",
        "arith-previous=/models/adapters/previous",
    ]
    assert (annotations[ANNOTATION_MODEL_URI], annotations[ANNOTATION_ADAPTER_URI]) == (
        "file:///base",
        ROUND.format(2),
    )
    assert state(cluster)["serving"]["modelUri"] == ROUND.format(2)
    rollouts = [m for _, reason, m in events if reason == EventReason.ROLLOUT_STARTED]
    assert rollouts == [f"serving round 1: {ROUND.format(1)}", f"serving round 2: {ROUND.format(2)}"]

    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["serving"] = {"pinnedRound": 1}
    asyncio.run(drive(cluster, rec))
    inits, args, annotations = _served(cluster)
    assert inits == ["file:///base", ROUND.format(1)]  # round 1 replaced the base: nothing beside it
    assert args[args.index("--lora-modules") + 1 :] == ["arith=/models/adapters/champion"]
    assert annotations[ANNOTATION_ADAPTER_URI] == ROUND.format(1)
    assert state(cluster)["serving"]["round"] == 1

    doc["spec"]["serving"] = {"pinnedRound": 0}
    asyncio.run(drive(cluster, rec))
    inits, args, annotations = _served(cluster)
    assert (
        inits == ["file:///base"]
        and "--enable-lora" not in args
        and ANNOTATION_ADAPTER_URI not in annotations
    )
    assert args[:3] == ["/models/model", "--served-model-name", "arith"]

    doc["spec"]["serving"] = {}
    asyncio.run(drive(cluster, rec))
    assert _served(cluster)[2][ANNOTATION_ADAPTER_URI] == ROUND.format(2)
    assert state(cluster)["serving"]["modelUri"] == ROUND.format(2)
