"""The emulated cluster the operator tests share: the Kubernetes API emulator over HTTP, a control plane that
runs each stage Job's pod as a real `tao-stage` process, and the operator in a thread. At teardown every API
call the operator made is checked against what the chart's RBAC grants (tests/operator/api_calls.json)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kmock
import pytest_asyncio
from kube_harness import (
    Api,
    ControlPlane,
    Emulator,
    OperatorThread,
    check_recorded_calls,
    declare_resources,
    stage_env,
)


@pytest_asyncio.fixture
async def k8s() -> Any:
    async with Emulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        api = Api(url)
        plane = ControlPlane(api, stage_env())
        plane.start()
        operator = OperatorThread(url)
        operator.start()
        yield SimpleNamespace(emu=emu, api=api, plane=plane, operator=operator)
        operator.stop()
        await plane.stop()
        await api.close()
        check_recorded_calls(emu.operator_calls)
