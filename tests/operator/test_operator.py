"""The real operator against an emulated API server, stages run as real local processes.

Covers what a platform team relies on: a TAOJob runs its rounds as Jobs and ends serving its champion; the gate
keeps a worse model out; suspend/resume; a restarted operator duplicates nothing; a failed stage fails the TAOJob
once, with the pod's message; an invalid spec is reported on the object; deletion leaves storage alone.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kube_harness import (
    TAOJOBS,
    Api,
    Emulator,
    declare_resources,
    eventually,
    stage_env,
)

pytestmark = pytest.mark.filterwarnings("ignore")


EXAMPLE = Path(__file__).parents[2] / "examples" / "arithmetic" / "taojob.yaml"


def manifest(tmp: Path, model: Path, name: str = "arith", **spec: Any) -> dict[str, Any]:
    """The arithmetic example as a user would apply it, at test size: a tiny model, 40 prompts, short answers."""
    prompts = tmp / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text(
            "".join(
                json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                for a in range(8)
                for b in range(5)
            )
        )
    doc = yaml.safe_load(EXAMPLE.read_text())
    body: dict[str, Any] = doc["spec"]
    small: dict[str, Any] = {
        "model": {"uri": model.as_uri()},
        "prompts": {"uri": prompts.as_uri(), "maxPerRound": 30},
        "storage": {"uri": (tmp / "store").as_uri()},
        "rounds": 1,
        "generation": {"candidates": 4, "maxNewTokens": 6, "shards": 2, "batchSize": 16},
        # A random tiny model never writes ';123': keep one candidate per prompt so that training runs.
        "training": {"learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0, "topK": 1}},
        "evaluation": {"maxPrompts": 6, "minImprovement": -10.0, "alarms": False},
        "pods": {"default": {"backoffLimit": 0}},
        # The preflight has its own test below; the random tiny model gives the vote nothing to agree on.
        "preflight": {"enabled": False},
    }
    for key, value in (small | spec).items():
        body[key] = body.get(key, {}) | value if isinstance(value, dict) else value
    doc["metadata"] = {"name": name, "namespace": "default"}
    return doc


async def taojob(api: Api, name: str = "arith") -> dict[str, Any]:
    return await api.get("taojobs", name) or {}


async def status(api: Api, name: str = "arith") -> dict[str, Any]:
    return (await taojob(api, name)).get("status") or {}


async def phase_is(api: Api, *phases: str, name: str = "arith") -> bool:
    return (await status(api, name)).get("phase") in phases


async def events(api: Api) -> list[tuple[str, str]]:
    out = await api.call("GET", "/api/v1/namespaces/default/events") or {}
    return [(e.get("reason", ""), e.get("message", "")) for e in out.get("items", [])]


def creations(emu: Emulator, kind: str) -> dict[str, int]:
    return {name: n for (plural, name), n in emu.creations.items() if plural == kind}


async def test_two_rounds_promote_serve_and_the_gate_keeps_a_worse_model_out(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    exports = tmp_path / "exports"
    await api.call(
        "POST", TAOJOBS, manifest(tmp_path, tiny_model, rounds=2, export={"uri": exports.as_uri()})
    )
    # Once round 1 is under way, raise the gate out of reach: round 1 runs on the spec it started with, the edit
    # applies from round 2 (each round's evaluation and scoring are recorded when it starts).
    await eventually(lambda: api.get("jobs", "arith-r1-prepare"))
    await api.patch("taojobs", "arith", {"spec": {"evaluation": {"minImprovement": 10.0}}})

    # Round 1 passes the gate (minImprovement -10): its model is rolled out behind a Deployment + Service.
    await eventually(lambda: _round(api, 1, "verdict"), timeout=300)
    r1 = (await status(api))["rounds"][0]
    assert r1["promoted"] is True, r1
    dep = await eventually(lambda: api.get("deployments", "arith-serve"))
    assert dep["spec"]["template"]["metadata"]["annotations"]["tao.dev/model-uri"].endswith(
        "round-001/train/model"
    )
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # Suspend while round 2 runs.
    await api.patch("taojobs", "arith", {"spec": {"suspend": True}})
    await eventually(lambda: phase_is(api, "Suspended"))
    jobs_when_suspended = {j["metadata"]["name"] for j in await api.list("jobs")}
    await asyncio.sleep(2.5)  # longer than the operator's safety timer
    jobs_later = await api.list("jobs")
    assert {j["metadata"]["name"] for j in jobs_later} == jobs_when_suspended, (
        "a suspended TAOJob started a stage"
    )
    for job in jobs_later:
        if not any(
            c["type"] in ("Complete", "Failed") for c in (job.get("status") or {}).get("conditions", [])
        ):
            assert job["spec"]["suspend"] is True
    await api.patch("taojobs", "arith", {"spec": {"suspend": False}})

    await eventually(lambda: phase_is(api, "Succeeded", "Failed"), timeout=300)
    st = await status(api)
    assert st["phase"] == "Succeeded", st.get("message")
    r1, r2 = st["rounds"]
    assert r1["promoted"] is True and r2["promoted"] is False
    assert r1["spec"]["digest"] != r2["spec"]["digest"]
    assert "kept the champion" in r2["verdict"]
    for r in (r1, r2):
        assert r["prompts"] > 0 and r["candidates"] == 4 * r["prompts"] and r["trainExamples"] > 0
        assert set(r["champion"]) >= {"score", "accuracy"} and set(r["challenger"]) >= {"score", "accuracy"}
        assert [s["stage"] for s in r["stages"]] == ["prepare", "generate", "score", "train", "evaluate"]
        assert all(s["state"] == "Succeeded" for s in r["stages"])
    # The promoted round's champion was exported (by its evaluate pod); the rejected round's was not.
    assert r1["exportUri"] == (exports / "round-001").as_uri() and r2.get("exportUri") is None
    assert json.loads((exports / "latest.json").read_text())["source"] == r1["modelUri"]
    assert not (exports / "round-002").exists()
    # The previous champion keeps serving.
    assert st["champion"]["round"] == 1 and st["serving"]["round"] == 1 and st["serving"]["ready"] is True
    assert st["serving"]["url"] == "http://arith-serve.default.svc.cluster.local:8000/v1"
    dep = await api.get("deployments", "arith-serve")
    assert dep["spec"]["template"]["metadata"]["annotations"]["tao.dev/model-uri"].endswith(
        "round-001/train/model"
    )
    assert await api.get("services", "arith-serve") is not None
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] >= 1

    # Every stage ran as one Job, created once, owned by the TAOJob; generate and score as Indexed Jobs.
    uid = (await taojob(api))["metadata"]["uid"]
    jobs = {j["metadata"]["name"]: j for j in await api.list("jobs")}
    assert set(jobs) == {
        f"arith-r{r}-{s}" for r in (1, 2) for s in ("prepare", "generate", "score", "train", "evaluate")
    }
    assert set(creations(k8s.emu, "jobs").values()) == {1}
    assert jobs["arith-r1-generate"]["spec"]["completionMode"] == "Indexed"
    assert jobs["arith-r1-generate"]["spec"]["completions"] == 2
    for obj in [*jobs.values(), dep]:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid
    reasons = [r for r, _ in await events(api)]
    for reason in (
        "StageStarted",
        "StageSucceeded",
        "Promoted",
        "NotPromoted",
        "RolloutStarted",
        "Suspended",
        "Resumed",
    ):
        assert reason in reasons, reason

    # Rollback: pinning round 0 serves the base model; unpinning serves the champion again.
    await api.patch("taojobs", "arith", {"spec": {"serving": {"pinnedRound": 0}}})
    await eventually(lambda: _served(api, tiny_model.as_uri()))
    assert (await status(api))["serving"]["round"] == 0
    await api.patch("taojobs", "arith", {"spec": {"serving": {"pinnedRound": None}}})
    await eventually(lambda: _served(api, r1["modelUri"]))
    await eventually(lambda: phase_is(api, "Succeeded"))  # the Deployment rolled back to the champion

    # Prometheus sees the run: phases, stage durations, one promoted and one rejected round.
    scraped = await scrape_metrics(api)
    assert scraped['tao_taojobs{phase="Succeeded"}'] >= 1
    assert scraped['tao_rounds_total{verdict="promoted"}'] >= 1
    assert scraped['tao_rounds_total{verdict="rejected"}'] >= 1
    for stage in ("prepare", "generate", "score", "train", "evaluate"):
        assert scraped[f'tao_stage_duration_seconds_count{{outcome="ok",stage="{stage}"}}'] >= 2
    assert "tao_reconcile_errors_total" in scraped


async def scrape_metrics(api: Api) -> dict[str, float]:
    from tao_operator import metrics

    async with api.session.get(f"http://127.0.0.1:{metrics.serve(0)}/metrics") as resp:
        text = await resp.text()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            series[key] = float(value)
    return series


async def _served(api: Api, model_uri: str) -> bool:
    dep = await api.get("deployments", "arith-serve") or {}
    served = (
        dep.get("spec", {})
        .get("template", {})
        .get("metadata", {})
        .get("annotations", {})
        .get("tao.dev/model-uri")
    )
    return served == model_uri and (await status(api)).get("serving", {}).get("modelUri") == model_uri


async def _round(api: Api, round_: int, key: str, name: str = "arith") -> Any:
    rounds = (await status(api, name)).get("rounds") or []
    return len(rounds) >= round_ and rounds[round_ - 1].get(key)


async def test_a_restarted_operator_resumes_without_duplicating_jobs(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model))
    await eventually(lambda: api.get("jobs", "arith-r1-generate"), timeout=120)
    k8s.operator.stop()  # mid-stage: the generate Job runs on without an operator
    await eventually(lambda: _complete(api, "arith-r1-generate"), timeout=120)
    k8s.operator.start()
    await eventually(lambda: phase_is(api, "Succeeded", "Failed"), timeout=300)
    st = await status(api)
    assert st["phase"] == "Succeeded", st.get("message")
    assert set(creations(k8s.emu, "jobs").values()) == {1}
    assert sorted(creations(k8s.emu, "jobs")) == sorted(
        f"arith-r1-{s}" for s in ("prepare", "generate", "score", "train", "evaluate")
    )


async def _complete(api: Api, name: str) -> bool:
    job = await api.get("jobs", name) or {}
    return any(c["type"] == "Complete" for c in (job.get("status") or {}).get("conditions", []))


async def test_a_failed_stage_fails_the_taojob_once_with_the_pods_message(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    await api.call(
        "POST", TAOJOBS, manifest(tmp_path, tiny_model, prompts={"uri": (tmp_path / "nope.jsonl").as_uri()})
    )
    await eventually(lambda: phase_is(api, "Failed"), timeout=120)
    st = await status(api)
    assert (
        "prepare" in st["message"]
        and "nope.jsonl" in st["message"]
        and "pod arith-r1-prepare" in st["message"]
    )
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "StageFailed")
    await asyncio.sleep(3)  # the safety timer fires: a terminal round is never recreated
    assert creations(k8s.emu, "jobs") == {"arith-r1-prepare": 1}
    assert "StageFailed" in [r for r, _ in await events(api)]


async def test_a_pod_stuck_on_its_image_is_said_once_by_the_safety_sweep_and_cleared_when_it_starts(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    # Pods are not watched and a running Job's events start no pass: only the safety sweep (every 2 s here) finds
    # a stuck pod, so its Warning event is posted from a sweep pass (kopf.event needs the handler context there).
    api: Api = k8s.api
    k8s.plane.unpullable.add("arith-r1-prepare")
    await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model))

    async def degraded() -> dict[str, Any]:
        return next((c for c in (await status(api)).get("conditions", []) if c["type"] == "Degraded"), {})

    async def stuck_events() -> list[str]:
        return [m for r, m in await events(api) if r == "PodStuck"]

    said = await eventually(stuck_events, timeout=60)
    assert "round 1 prepare" in said[0] and "ImagePullBackOff" in said[0], said
    cond = await degraded()
    assert (cond["status"], cond["reason"]) == ("True", "PodStuck"), cond
    await asyncio.sleep(5)  # two more sweeps: the condition stays, the event is not repeated
    assert len(await stuck_events()) == 1 and (await status(api)).get("phase") == "Generating"

    k8s.plane.unpullable.discard("arith-r1-prepare")  # the image arrives: the pod runs, the stage ends
    await eventually(lambda: _complete(api, "arith-r1-prepare"), timeout=120)
    cond = await eventually(lambda: _cleared(degraded), timeout=30)
    assert cond["reason"] == "AsExpected"


async def _cleared(degraded: Any) -> dict[str, Any] | None:
    cond = await degraded()
    return cond if cond.get("status") == "False" else None


async def test_a_preflight_that_finds_no_signal_stops_the_taojob_before_round_one(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    # The random tiny model never writes ';123', so the vote never reaches a majority: every candidate scores 0.
    await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model, preflight={"enabled": True, "prompts": 4}))
    await eventually(lambda: phase_is(api, "Failed"), timeout=120)
    st = await status(api)
    assert "preflight" in st, st.get("message")
    assert st["preflight"]["signal"] is False and st["preflight"]["informativeShare"] == 0.0
    assert st["preflight"]["report"].endswith("round-001/preflight/report.json")
    assert "no signal" in st["preflight"]["verdict"] and "stopOnNoSignal" in st["message"]
    informative = next(c for c in st["conditions"] if c["type"] == "ScorersInformative")
    assert (informative["status"], informative["reason"]) == ("False", "NoSignal")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "StageFailed")
    # Nothing else was started: no GPU was spent on prompts, generation or training.
    assert creations(k8s.emu, "jobs") == {"arith-r1-preflight": 1}
    assert any(r == "StageFailed" and "no signal" in m for r, m in await events(api))


async def _chat(url: str, text: str) -> dict[str, Any]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/chat/completions",
            json={"model": "flywheel", "max_tokens": 4, "messages": [{"role": "user", "content": text}]},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def test_the_flywheel_serves_captures_and_starts_the_next_round_by_itself(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    k8s.plane.serve_models = True
    data = tmp_path / "prompts"
    data.mkdir()
    (data / "seed.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n" for a in range(6) for b in range(5))
    )
    body = manifest(tmp_path, tiny_model, name="flywheel", rounds=1)
    del body["spec"]["rounds"]
    body["spec"]["prompts"] = {"uri": data.as_uri() + "/", "heldOutFraction": 0.2}
    body["spec"]["evaluation"].pop("metrics", None)
    body["spec"]["continuous"] = {"interval": "1s", "minNewPrompts": 6}
    body["spec"]["serving"] = {"capture": {"enabled": True, "batchSize": 3, "flushSeconds": 1}}
    await api.call("POST", TAOJOBS, body)

    # Round 1 promotes and is served; round 2 waits for prompts (a watch Job), not for a fixed schedule.
    await eventually(lambda: _round(api, 1, "promoted", name="flywheel"), timeout=300)
    url = await eventually(lambda: k8s.plane.endpoints.get("flywheel-serve"), timeout=120)
    await eventually(lambda: phase_is(api, "Watching", name="flywheel"), timeout=60)
    assert await api.get("jobs", "flywheel-r2-watch") is not None
    assert await api.get("jobs", "flywheel-r2-prepare") is None
    # A gate out of reach: round 2's challenger must not replace the champion.
    await api.patch("taojobs", "flywheel", {"spec": {"evaluation": {"minImprovement": 10.0}}})

    # Users talk to the served model through the capture proxy; their prompts (e-mails masked) land in storage.
    for i in range(8):
        answer = await _chat(url, f"{i}+7= (from user{i}@example.com)")
        assert answer["choices"][0]["message"]["role"] == "assistant"
    captured = await eventually(lambda: sorted((data / "captured").glob("*.jsonl")), timeout=60)
    assert captured and all(name.parent == data / "captured" for name in captured)

    # Round 2 starts by itself once 6 new prompts arrived, trains from the champion, and is not promoted.
    await eventually(lambda: _round(api, 2, "verdict", name="flywheel"), timeout=300)
    st = await status(api, "flywheel")
    r1, r2 = st["rounds"][:2]  # round 3 may have begun: its watch
    assert r1["promoted"] is True and r2["promoted"] is False and "kept the champion" in r2["verdict"]
    run = Path(st["runUri"].removeprefix("file://"))
    round2 = [json.loads(line) for line in (run / "round-002/prompts/shard-00000.jsonl").open()] + [
        json.loads(line) for line in (run / "round-002/prompts/shard-00001.jsonl").open()
    ]
    texts = json.dumps([p["prompt"] for p in round2])
    assert round2 and "+7=" in texts and "@example.com" not in texts  # the captured prompts, redacted
    watch = next(s for s in r2["stages"] if s["stage"] == "watch")
    assert watch["state"] == "Succeeded" and "new prompts since round 1" in watch["message"]
    # The champion keeps serving: the Deployment still runs round 1's model.
    assert st["champion"]["round"] == 1 and st["serving"]["round"] == 1
    dep = await api.get("deployments", "flywheel-serve")
    assert dep["spec"]["template"]["metadata"]["annotations"]["tao.dev/model-uri"].endswith(
        "round-001/train/model"
    )
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["vllm", "capture"]
    # ...and the flywheel turns on: round 3 waits for the next prompts.
    await eventually(lambda: api.get("jobs", "flywheel-r3-watch"), timeout=60)
    assert (await status(api, "flywheel"))["phase"] == "Watching"


async def test_tao_operator_logs_in_from_a_kubeconfig_and_runs_a_taojob(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The command the chart's Deployment runs, logging in as kopf does outside a pod (no server URL given)."""
    import socket
    import subprocess
    import sys

    async with Emulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "emu",
                    "clusters": [{"name": "emu", "cluster": {"server": url}}],
                    "users": [{"name": "me", "user": {"token": "t0ken"}}],
                    "contexts": [
                        {"name": "emu", "context": {"cluster": "emu", "user": "me", "namespace": "default"}}
                    ],
                }
            )
        )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = stage_env() | {"KUBECONFIG": str(kubeconfig), "TAO_METRICS_PORT": ""}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tao_operator.cli",
                "operator",
                "--namespace",
                "default",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        api = Api(url)
        try:
            await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model, name="via-kubeconfig"))
            job = await eventually(lambda: api.get("jobs", "via-kubeconfig-r1-prepare"), timeout=60)
            assert job["metadata"]["ownerReferences"][0]["name"] == "via-kubeconfig"
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            await api.close()
        assert "TypeError" not in err and "t0ken" not in err


async def test_an_invalid_spec_is_reported_on_the_object(k8s: Any, tmp_path: Path, tiny_model: Path) -> None:
    api: Api = k8s.api
    await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model, generation={"candidates": 0}))
    # Not Failed (nothing terminal happened: the run starts once the spec is fixed); Degraded says why.
    await eventually(lambda: _degraded(api, "InvalidSpec"), timeout=30)
    st = await status(api)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "spec.generation.candidates" in ready["message"]
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1
    assert any(r == "InvalidSpec" and "spec.generation.candidates" in m for r, m in await events(api))
    assert await api.list("jobs") == []


async def _degraded(api: Api, reason: str) -> bool:
    conds = (await status(api)).get("conditions") or []
    return any(c["type"] == "Degraded" and c["status"] == "True" and c["reason"] == reason for c in conds)


async def test_no_finalizer_holds_a_taojob_and_only_the_operators_jobs_are_watched(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    """A TAOJob carries nothing of the operator's in its metadata, so deleting it never waits for a running
    operator; one left with an earlier version's kopf finalizer is released. The API server selects the
    Jobs and Deployments the operator watches (other workloads' events never reach it)."""
    api: Api = k8s.api
    doc = manifest(tmp_path, tiny_model)
    # What an earlier version left: kopf's finalizer (for its per-TAOJob timer) and its bookkeeping.
    doc["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    await api.call("POST", TAOJOBS, doc)
    await eventually(lambda: api.get("jobs", "arith-r1-prepare"), timeout=120)

    async def released() -> bool:
        return not (await taojob(api))["metadata"].get("finalizers")

    await eventually(released, timeout=30)
    annotations = (await taojob(api))["metadata"].get("annotations") or {}
    assert not [a for a in annotations if a.startswith(("tao.dev/", "kopf.zalando.org/"))], annotations
    assert k8s.emu.watch_selectors["jobs"] == {"tao.dev/job"}
    assert k8s.emu.watch_selectors["deployments"] == {"tao.dev/job"}
    k8s.operator.stop()
    await api.call("DELETE", f"{TAOJOBS}/arith")
    assert await api.get("taojobs", "arith") is None  # gone at once, with no operator running


async def test_deleting_a_taojob_removes_children_and_keeps_artifacts(
    k8s: Any, tmp_path: Path, tiny_model: Path
) -> None:
    api: Api = k8s.api
    await api.call("POST", TAOJOBS, manifest(tmp_path, tiny_model))
    await eventually(lambda: api.get("jobs", "arith-r1-generate"), timeout=120)
    uid = (await taojob(api))["metadata"]["uid"]
    await api.call("DELETE", f"{TAOJOBS}/arith")
    removed = await k8s.plane.collect_garbage(uid)
    assert "jobs/arith-r1-prepare" in removed and "configmaps/arith-r1-prepare-config" in removed
    await asyncio.sleep(3)
    assert await api.list("jobs") == []
    assert (tmp_path / "store" / "default" / "arith" / uid / "round-001" / "prompts").is_dir()
