"""Pure checks on observed children: whose they are, which pods belong to a Job, what is stuck, what drifted.

A child is this TAOJob's only if its controller ownerReference carries the TAOJob's uid: a name is not proof
(a re-created TAOJob of the same name, an orphaned predecessor, or anyone's object of that name).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from tao_operator.api import ANNOTATION_TEMPLATE_HASH, LABEL_CONTROLLER_UID

# Waiting reasons that do not go away by themselves: the user must fix an image, a Secret or a config.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)


@dataclass(frozen=True)
class Foreign:
    """A child's name is taken by an object this TAOJob does not control."""

    kind: str
    name: str
    deleting: bool  # it is being deleted: wait for it, then create ours

    def message(self) -> str:
        if self.deleting:
            return f"{self.kind} {self.name} of a previous owner is being deleted; waiting for it to go"
        return (
            f"{self.kind} {self.name} exists and is not controlled by this TAOJob (another owner, or an orphan "
            "of a deleted TAOJob of the same name): delete it or rename the TAOJob"
        )


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid in the object's controller ownerReference.

    >>> controller_uid({"metadata": {"ownerReferences": [{"uid": "a"}, {"uid": "b", "controller": True}]}})
    'b'
    >>> controller_uid({"metadata": {}}) is None
    True
    """
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def foreign(obj: dict[str, Any] | None, owner_uid: str | None) -> Foreign | None:
    """None when `obj` is absent or ours; else what stands in the way.

    >>> mine = {"kind": "Job", "metadata": {"name": "j", "ownerReferences": [{"uid": "u", "controller": True}]}}
    >>> foreign(mine, "u") is None, foreign(None, "u") is None
    (True, True)
    >>> foreign(mine, "other")
    Foreign(kind='Job', name='j', deleting=False)
    """
    if obj is None or (owner_uid is not None and controller_uid(obj) == owner_uid):
        return None
    meta = obj.get("metadata", {})
    return Foreign(
        str(obj.get("kind") or "object"), str(meta.get("name")), bool(meta.get("deletionTimestamp"))
    )


def pods_of(k8s_job: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Job's own pods: controlled by the Job's uid (a pod carrying its `job-name` label is not enough).

    >>> job = {"metadata": {"uid": "j1"}}
    >>> own = {"metadata": {"name": "a", "ownerReferences": [{"uid": "j1", "controller": True}]}}
    >>> fake = {"metadata": {"name": "b", "labels": {"job-name": "x"}}}
    >>> [p["metadata"]["name"] for p in pods_of(job, [own, fake])]
    ['a']
    """
    uid = k8s_job["metadata"].get("uid")
    return [p for p in pods if uid and controller_uid(p) == uid]


def pod_selector(k8s_job: dict[str, Any]) -> dict[str, str]:
    """The label the Job controller puts on its pods: the Job's uid."""
    return {LABEL_CONTROLLER_UID: str(k8s_job["metadata"].get("uid"))}


def stuck_pod(pods: list[dict[str, Any]]) -> str | None:
    """`pod NAME: REASON: message` for the first pod waiting for something only a user can fix.

    >>> waiting = {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
    >>> stuck_pod([{"metadata": {"name": "p"}, "status": {"containerStatuses": [waiting]}}])
    'pod p: ImagePullBackOff: no such image'
    """
    for pod in pods:
        st = pod.get("status") or {}
        for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = f": {waiting['message'][:300]}" if waiting.get("message") else ""
                return f"pod {pod['metadata']['name']}: {waiting['reason']}{detail}"
    return None


def template_hash(manifest: dict[str, Any]) -> str:
    """A digest of a desired manifest's spec (and labels), recorded on the object to detect drift."""
    desired = {"spec": manifest.get("spec"), "labels": manifest["metadata"].get("labels")}
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]


def with_template_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        ANNOTATION_TEMPLATE_HASH: template_hash(manifest),
    }
    return manifest


def drifted(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether the live object differs from the desired one (its recorded hash, or its replicas).

    >>> d = with_template_hash({"metadata": {"name": "s"}, "spec": {"replicas": 1}})
    >>> drifted(d, d), drifted({"metadata": {}, "spec": {"replicas": 1}}, d)
    (False, True)
    """
    ours = (desired["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH)
    theirs = (live["metadata"].get("annotations") or {}).get(ANNOTATION_TEMPLATE_HASH)
    replicas = (desired.get("spec") or {}).get("replicas")
    return ours != theirs or (replicas is not None and (live.get("spec") or {}).get("replicas") != replicas)
