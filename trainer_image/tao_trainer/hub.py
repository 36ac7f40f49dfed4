"""Hub (hf://) models at their pinned revision: `model.revision` and `generation.teacher.revision`.

A hub id handed to `from_pretrained` without a revision fetches whatever the branch holds today, so two rounds
(or two pods of one round) could load different weights. With a revision the snapshot at that revision is
downloaded (into the hub cache, once) and its local folder is what every loader reads.
"""

from __future__ import annotations

from typing import Any

# uri -> revision, set once per stage process from its spec (`pin_revisions`), read by `hub_path`.
_PINNED: dict[str, str] = {}


def pin_revisions(spec: Any) -> dict[str, str]:
    """Record the revisions the spec pins for its hub models (the model and the teacher); returns them.

    Every later `models.resolve` of one of those URIs then downloads that revision, whichever stage asks and
    whether or not it passed the revision itself (the champion of round 1 is the base model, for instance).
    """
    _PINNED.clear()
    teacher = getattr(getattr(spec, "generation", None), "teacher", None)
    for model in (getattr(spec, "model", None), teacher):
        if model is not None and model.revision and model.uri.startswith("hf://"):
            _PINNED[model.uri] = model.revision
    return dict(_PINNED)


def pinned_revision(uri: str, revision: str | None = None) -> str | None:
    """The revision to download `uri` at: the one passed, else the one the spec pinned, else None.

    >>> _ = pin_revisions(None); pinned_revision("hf://org/m"), pinned_revision("hf://org/m", "v1")
    (None, 'v1')
    """
    return revision or _PINNED.get(uri)


def hub_path(uri: str, revision: str | None = None) -> str:
    """What `from_pretrained` should read for an hf:// URI: the hub id when nothing is pinned (as before), else
    the local folder of the snapshot at the pinned revision."""
    repo_id = uri.removeprefix("hf://")
    revision = pinned_revision(uri, revision)
    if revision is None:
        return repo_id
    from huggingface_hub import snapshot_download

    return str(snapshot_download(repo_id=repo_id, revision=revision))
