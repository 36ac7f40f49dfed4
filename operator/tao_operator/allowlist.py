"""The operator-side allow-list: which images and service accounts a TAOJob may ask for (pure).

Creating a TAOJob means creating pods; where the chart sets `operator.allowList`, a TAOJob that names an image
outside the allowed prefixes, or a service account not on the list, is refused whole: the reconciler creates
nothing for it and says why on the Degraded condition (reason `NotAllowed`). Empty lists allow anything. The
operator's own default images are always allowed (a TAOJob that names none gets them anyway).
"""

from __future__ import annotations

from tao_operator.api import TAOJob
from tao_operator.builders.common import OperatorDefaults


def requested(job: TAOJob) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(field, image) and (field, service account) pairs the TAOJob sets, in spec order."""
    images: list[tuple[str, str]] = []
    accounts: list[tuple[str, str]] = []
    settings = [
        (f"spec.pods.{name}", getattr(job.spec.pods, name)) for name in type(job.spec.pods).model_fields
    ]
    settings.append(("spec.serving.pod", job.spec.serving.pod))
    for where, pod in settings:
        if pod.image:
            images.append((f"{where}.image", pod.image))
        if pod.service_account_name:
            accounts.append((f"{where}.serviceAccountName", pod.service_account_name))
    if job.spec.serving.image:
        images.append(("spec.serving.image", job.spec.serving.image))
    return images, accounts


def refusals(job: TAOJob, defaults: OperatorDefaults) -> list[str]:
    """What the TAOJob asks for that the allow-list does not allow: one message per field, empty when allowed.

    >>> from tao_operator.api import parse_taojob
    >>> job = parse_taojob({"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob",
    ...     "metadata": {"name": "j", "namespace": "ml"}, "spec": {"model": {"uri": "s3://m"},
    ...     "prompts": {"uri": "s3://p.jsonl"}, "storage": {"uri": "s3://r"},
    ...     "scoring": {"scorers": [{"type": "regex", "pattern": "a"}]},
    ...     "pods": {"train": {"image": "evil.example/x:1", "serviceAccountName": "admin"}}}}, "j")
    >>> refusals(job, OperatorDefaults())
    []
    >>> for m in refusals(job, OperatorDefaults(allowed_image_prefixes="reg.example/ml/",
    ...                                          allowed_service_accounts="tao-runner")):
    ...     print(m)
    spec.pods.train.image 'evil.example/x:1' does not start with an allowed prefix (reg.example/ml/)
    spec.pods.train.serviceAccountName 'admin' is not an allowed service account (tao-runner)
    """
    images, accounts = requested(job)
    out: list[str] = []
    prefixes = defaults.allowed_image_prefixes
    if prefixes:
        always = {defaults.trainer_image, defaults.serving_image}
        for field, image in images:
            if image not in always and not image.startswith(prefixes):
                out.append(f"{field} {image!r} does not start with an allowed prefix ({', '.join(prefixes)})")
    allowed = defaults.allowed_service_accounts
    if allowed:
        for field, account in accounts:
            if account not in allowed:
                out.append(f"{field} {account!r} is not an allowed service account ({', '.join(allowed)})")
    return out
