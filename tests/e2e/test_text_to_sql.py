"""The text-to-SQL example end to end at test size: prepare, a `tao serve` judge, `tao run` with sql + judge.

What it pins: the example's manifest runs as shipped (only sizes, the judge URL and the database path change),
the score stage reports the sql verifier's and the judge's counters, the reference queries (labels) never
leave the held-out labels file, and the database is byte for byte the same after the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from serve_process import tao_serve

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

EXAMPLE = Path(__file__).parents[2] / "examples" / "text-to-sql"
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare.py into a temporary directory, with a short pretraining (a weaker base is fine here)."""
    work = tmp_path_factory.mktemp("text-to-sql") / "work"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "prepare.py"), "--out", str(work), "--max-steps", "100"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "greedy SQL runs on" in proc.stdout
    return work


@pytest.fixture(scope="module")
def judge_url(prepared: Path) -> Iterator[str]:
    """`tao serve` on the tiny base model, on a free port, named as the manifest's judge model."""
    log = (prepared.parent / "serve.log").open("w")
    args = [str(prepared / "base-model"), "--port", "0", "--served-model-name", "judge", "--quiet"]
    try:
        with tao_serve(args, ENV, stderr=log) as served:
            assert served.name == "judge"
            yield served.url
    finally:
        log.close()


def test_manifests_validate() -> None:
    for name in ("taojob.yaml", "taojob-cluster.yaml"):
        proc = subprocess.run(
            [sys.executable, "-m", "tao_operator.cli", "validate", str(EXAMPLE / name)],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def test_prepare_writes_database_prompts_and_a_model_behind_the_manifest_system_prompt(
    prepared: Path,
) -> None:
    import sqlite3

    conn = sqlite3.connect(prepared / "shop.sqlite")
    counts = {
        t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("customers", "products", "orders", "order_items")
    }
    conn.close()
    assert counts["customers"] == 60 and counts["products"] == 30 and counts["orders"] == 200
    assert 300 <= counts["order_items"] <= 800
    questions = [json.loads(line) for line in (EXAMPLE / "questions.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (prepared / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == len(questions) >= 150
    assert {p["prompt"] for p in prompts} == {q["question"] for q in questions}
    # The model was pretrained behind the manifest's system prompt, which its tokenizer holds as one token.
    from transformers import AutoTokenizer

    system = yaml.safe_load((EXAMPLE / "taojob.yaml").read_text())["spec"]["generation"]["systemPrompt"]
    tok = AutoTokenizer.from_pretrained(prepared / "base-model")
    assert len(tok(system, add_special_tokens=False)["input_ids"]) == 1


def test_tao_run_scores_with_sql_and_judge_and_leaves_the_database_alone(
    prepared: Path, judge_url: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load((EXAMPLE / "taojob.yaml").read_text())
    spec = doc["spec"]
    spec["model"]["uri"] = str(prepared / "base-model")
    spec["prompts"]["uri"] = str(prepared / "prompts.jsonl")
    spec["prompts"]["maxPerRound"] = 12
    spec["storage"]["uri"] = str(tmp_path / "runs")
    spec["rounds"] = 1
    spec["preflight"]["prompts"] = 4
    spec["preflight"]["stopOnNoSignal"] = False  # a briefly trained base may fail every query of 4 prompts
    spec["evaluation"]["maxPrompts"] = 6
    spec["evaluation"]["minImprovement"] = -10.0  # promotion is not the point here
    spec["evaluation"]["alarms"] = False
    spec["training"]["sft"]["minScore"] = 0.0  # train on whatever ran, however few
    sql, judge = spec["scoring"]["scorers"]
    assert (sql["type"], judge["type"]) == ("sql", "judge")
    sql["database"] = str(prepared / "shop.sqlite")
    judge["endpoint"]["url"] = judge_url
    manifest = tmp_path / "taojob.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))

    before = sha256(prepared / "shop.sqlite")
    proc = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "run", str(manifest)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sha256(prepared / "shop.sqlite") == before

    run_dir = tmp_path / "runs" / "default" / "text-to-sql" / "local"
    score = json.loads((run_dir / "round-001/results/score.json").read_text())["counts"]
    assert score["candidates"] == 12 * 4
    assert score.get("sql.executed", 0) + score.get("sql.errors", 0) == score["candidates"]
    assert score["judge.calls"] > 0 and score["judge.httpErrors"] == 0
    # The tiny judge's replies do not parse: each is counted and abstains (the sql verifier alone decides).
    assert score.get("judge.parseFailures", 0) + score.get("judge.refusals", 0) == score["judge.calls"]
    preflight = json.loads((run_dir / "round-001/results/preflight.json").read_text())["counts"]
    assert preflight["judge.calls"] > 0
    assert (
        preflight.get("sql.executed", 0) + preflight.get("sql.errors", 0) == 4 * 4
    )  # a counter appears once used
    evaluate = json.loads((run_dir / "round-001/results/evaluate.json").read_text())
    assert evaluate["counts"]["judge.calls"] > 0
    assert evaluate["counts"].get("sql.executed", 0) + evaluate["counts"].get("sql.errors", 0) == 2 * 6
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1]

    # reference_sql is a label: stripped from every record the loop reads, so the sql scorer never compared
    # result sets (it would have, had a record carried the field); only the held-out labels file holds it.
    for shard in [*run_dir.glob("round-001/*/shard-*.jsonl"), run_dir / "round-001/heldout/prompts.jsonl"]:
        for line in shard.read_text().splitlines():
            assert "reference_sql" not in json.loads(line).get("fields", {}), shard
    for line in (run_dir / "round-001/scores/shard-00000.jsonl").read_text().splitlines():
        assert all(d["matchesReference"] is None for d in json.loads(line)["details"]["sql"])
    labels = [
        json.loads(line) for line in (run_dir / "round-001/heldout/labels.jsonl").read_text().splitlines()
    ]
    assert labels and all(row["reference_sql"].startswith("SELECT") for row in labels)

    measured = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "measure.py"),
            str(run_dir),
            "--database",
            str(prepared / "shop.sqlite"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert measured.returncode == 0, measured.stderr
    figures = json.loads(measured.stdout)["rounds"][0]
    assert 0.0 <= figures["champion"]["execAccuracy"] <= figures["champion"]["runs"] <= 1.0


def test_prepare_is_deterministic_for_the_database(prepared: Path, tmp_path: Path) -> None:
    import importlib.util
    import sqlite3

    spec = importlib.util.spec_from_file_location("text_to_sql_prepare", EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    prepare.build_database(tmp_path / "again.sqlite")

    def dump(path: Path) -> list[str]:
        conn = sqlite3.connect(path)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    assert dump(tmp_path / "again.sqlite") == dump(prepared / "shop.sqlite")
