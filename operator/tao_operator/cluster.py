"""The operator's Kubernetes API calls, in one place: every verb on every resource it uses goes through here.

Plain aiohttp on kopf's event loop (kopf already depends on it), authenticated the way kopf logs in: the pod's
service account in a cluster, else the kubeconfig. Speaks plain dicts (the builders' output); 404 reads as
None and 409 on create as "already exists", so that callers stay idempotent.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

from tao_operator.api import GROUP, PLURAL, VERSION

# (api path prefix, plural) of each resource the operator touches; tests derive the chart's RBAC from this.
RESOURCES = {
    "taojobs": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "jobs": ("/apis/batch/v1", "jobs"),
    "configmaps": ("/api/v1", "configmaps"),
    "pods": ("/api/v1", "pods"),
    "deployments": ("/apis/apps/v1", "deployments"),
    "services": ("/api/v1", "services"),
    # Kueue's Workloads, to stop a queued stage Job the way Kueue keeps stopped. v1beta1 is served by every
    # Kueue release with `spec.active` (0.6 on; deprecated beside v1beta2 since 0.15, same fields used here).
    "workloads": ("/apis/kueue.x-k8s.io/v1beta1", "workloads"),
}
KIND_TO_RESOURCE = {
    "Job": "jobs",
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "Service": "services",
}
Objects = list[dict[str, Any]]
# Objects per page of a list: a page of Jobs is a few MB, however many there are.
LIST_PAGE = 500
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, detail: str) -> None:
        self.status = status
        super().__init__(f"Kubernetes API {method} {path}: {status} {detail[:300]}")


@dataclass
class Cluster:
    """An API server connection; the session is opened lazily inside the operator's event loop."""

    info: kopf.ConnectionInfo
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_environment(cls, settings: kopf.OperatorSettings) -> Cluster:
        """The pod's service account in a cluster, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        info = kopf.login_with_service_account(
            settings=settings, logger=_null_logger()
        ) or kopf.login_with_kubeconfig(settings=settings, logger=_null_logger())
        if info is None:
            raise RuntimeError(
                "no Kubernetes credentials: neither a service account nor a kubeconfig was found"
            )
        return cls(info)

    @classmethod
    def for_url(cls, url: str) -> Cluster:
        return cls(kopf.ConnectionInfo(server=url, insecure=True))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **self.info.as_http_headers()}
        # Bound service-account tokens rotate: read the file the kubelet refreshes, not the copy taken at start.
        if self.info.token and os.path.exists(SERVICE_ACCOUNT_TOKEN):
            with open(SERVICE_ACCOUNT_TOKEN, encoding="utf-8") as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        return headers

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl = self.info.as_ssl_context() if self.info.server.startswith("https") else False
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl), auth=self.info.as_aiohttp_basic_auth()
            )
        return self._session

    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        session = self._open()
        headers = self._headers() | {"Content-Type": content_type}
        data = None if body is None else json.dumps(body)
        async with session.request(
            method, self.info.server.rstrip("/") + path, data=data, headers=headers
        ) as resp:
            raw = await resp.read()  # JSON is UTF-8: no charset detection, no decoded copy
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, raw.decode("utf-8", "replace"))
            return json.loads(raw) if raw else None

    def _path(
        self, resource: str, namespace: str | None, name: str | None = None, sub: str | None = None
    ) -> str:
        """The resource's path in `namespace`, or across all namespaces (None: lists and watches only)."""
        prefix, plural = RESOURCES[resource]
        path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace is not None else f"{prefix}/{plural}"
        if name is not None:
            path += f"/{name}"
        if sub is not None:
            path += f"/{sub}"
        return path

    async def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._path(resource, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create; False when it already exists (409): creation is idempotent through deterministic names."""
        resource = KIND_TO_RESOURCE[manifest["kind"]]
        try:
            await self._call("POST", self._path(resource, manifest["metadata"]["namespace"]), manifest)
            return True
        except ApiError as e:
            if e.status == 409:
                return False
            raise

    async def patch(
        self, resource: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None
    ) -> Any:
        return await self._call(
            "PATCH",
            self._path(resource, namespace, name, sub),
            body,
            content_type="application/merge-patch+json",
        )

    async def list(self, resource: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects carrying all these labels. Also filtered here, so a server that ignores selectors is harmless."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items, _ = await self.list_versioned(resource, namespace, selector)
        return [
            i
            for i in items
            if all((i["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def list_versioned(
        self, resource: str, namespace: str | None, selector: str, page: int = LIST_PAGE
    ) -> tuple[Objects, str | None]:
        """All objects matching a label `selector` (raw syntax, e.g. "tao.dev/job": the label is present), in
        pages of `page`, and the list's resourceVersion, from which a watch then starts."""
        items: Objects = []
        token = ""
        while True:
            query = urlencode(
                {"labelSelector": selector, "limit": page} | ({"continue": token} if token else {})
            )
            out = await self._call("GET", f"{self._path(resource, namespace)}?{query}") or {}
            items.extend(out.get("items") or [])
            meta = out.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, meta.get("resourceVersion")

    async def watch(
        self, resource: str, namespace: str | None, selector: str, since: str | None, timeout: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events of objects matching `selector` after resourceVersion `since`, as the API server
        streams them (one JSON object a line, bookmarks included), until it ends the request after `timeout`
        seconds. A connection silent for a minute longer than that is taken as lost (aiohttp's read timeout)."""
        params: dict[str, str | int] = {
            "watch": "true",
            "labelSelector": selector,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        if since:
            params["resourceVersion"] = since
        session = self._open()
        url = f"{self.info.server.rstrip('/')}{self._path(resource, namespace)}?{urlencode(params)}"
        wait = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout + 60)
        async with session.get(url, headers=self._headers(), timeout=wait) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, "GET", url, (await resp.read()).decode("utf-8", "replace"))
            pending = b""
            async for chunk in resp.content.iter_any():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _null_logger() -> Any:
    import logging

    return logging.getLogger("tao_operator.login")
