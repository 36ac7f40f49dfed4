"""Pure builders: a TAOJob and an action in, the Kubernetes manifests that carry it out as plain dicts.

No I/O and no Kubernetes client here: `handlers.py` creates what these return, and the unit tests validate
every manifest offline against the real Kubernetes schemas (kubernetes-validate, strict mode).

Every child is owned by its TAOJob (garbage-collected with it), carries the same label set (so the operator
and `kubectl` select them the same way), and runs hardened: non-root, read-only root filesystem, no
privilege escalation, no capabilities, no API token (stage pods never talk to the Kubernetes API).
"""

from tao_operator.builders.common import (
    UID,
    Manifest,
    OperatorDefaults,
    child_labels,
    child_name,
    effective_pod_settings,
    owner_reference,
    serving_name,
)
from tao_operator.builders.multinode import stage_services
from tao_operator.builders.serving import serving_deployment, serving_service, serving_url
from tao_operator.builders.stage_jobs import stage_configmap, stage_job

__all__ = [
    "UID",
    "Manifest",
    "OperatorDefaults",
    "child_labels",
    "child_name",
    "effective_pod_settings",
    "owner_reference",
    "serving_deployment",
    "serving_name",
    "serving_service",
    "serving_url",
    "stage_configmap",
    "stage_job",
    "stage_services",
]
