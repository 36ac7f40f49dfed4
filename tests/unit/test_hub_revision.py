"""`model.revision` and the teacher's reach every hub download, without touching the network: the download
function is replaced by a recorder, and the serving init container's command is read from the builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from tao_trainer import cli, hub, models
from tao_trainer.spec import LoopSpec


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return f"/hub-cache/{kwargs['repo_id']}@{kwargs.get('revision')}"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    yield calls
    hub.pin_revisions(None)


def spec(**over: Any) -> LoopSpec:
    doc: dict[str, Any] = {
        "model": {"uri": "hf://org/base", "revision": "abc123"},
        "prompts": {"uri": "file:///p.jsonl"},
        "storage": {"uri": "file:///runs"},
        "scoring": {"scorers": [{"type": "regex", "name": "r", "pattern": "a"}]},
    }
    doc.update(over)
    return LoopSpec.model_validate(doc)


def test_without_a_revision_resolve_keeps_the_hub_id(downloads: list[dict[str, Any]]) -> None:
    hub.pin_revisions(None)
    assert models.resolve("hf://org/base") == "org/base"
    assert downloads == []


def test_a_revision_passed_to_resolve_downloads_that_revision(downloads: list[dict[str, Any]]) -> None:
    assert models.resolve("hf://org/base", "v2") == "/hub-cache/org/base@v2"
    assert downloads == [{"repo_id": "org/base", "revision": "v2"}]


def test_the_specs_revisions_are_pinned_for_every_resolve(downloads: list[dict[str, Any]]) -> None:
    s = spec(generation={"teacher": {"uri": "hf://org/teacher", "revision": "t1"}})
    assert hub.pin_revisions(s) == {"hf://org/base": "abc123", "hf://org/teacher": "t1"}
    # A stage that resolves without passing the revision (train, evaluate's champion, an adapter's base).
    assert models.resolve("hf://org/base") == "/hub-cache/org/base@abc123"
    assert models.resolve("hf://org/teacher") == "/hub-cache/org/teacher@t1"
    # A revision passed explicitly wins; other hub ids are untouched.
    assert models.resolve("hf://org/base", "other") == "/hub-cache/org/base@other"
    assert models.resolve("hf://org/unpinned") == "org/unpinned"
    assert [d["revision"] for d in downloads] == ["abc123", "t1", "other"]


def test_a_new_spec_replaces_the_old_pins(downloads: list[dict[str, Any]]) -> None:
    hub.pin_revisions(spec())
    assert hub.pin_revisions(spec(model={"uri": "hf://org/base"})) == {}
    assert models.resolve("hf://org/base") == "org/base"


def test_the_download_command_passes_the_revision(downloads: list[dict[str, Any]], tmp_path: Path) -> None:
    to = str(tmp_path / "model")
    assert cli.main(["download", "--uri", "hf://org/base", "--to", to, "--revision", "abc123"]) == 0
    assert cli.main(["download", "--uri", "hf://org/base", "--to", to]) == 0
    assert downloads == [
        {"repo_id": "org/base", "revision": "abc123", "local_dir": to},
        {"repo_id": "org/base", "revision": None, "local_dir": to},
    ]
