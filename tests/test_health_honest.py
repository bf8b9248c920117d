"""An unreachable provider is visible: the worker's error at start, ``/readyz`` degraded with ``"provider":
"unreachable"`` and the last error, the operator's page saying so, a queued task's ``lastError``; and all of it
clears when the provider answers again (a simulator started on the address the worker was pointed at)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.apiserver import ADMIN, bearer, free_port, job
from tests.conftest import MakeAccount, Processes

pytestmark = pytest.mark.slow


def _ready(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/readyz", timeout=5).json()
    return body


async def test_unreachable_provider_is_reported_then_clears(procs: Processes, make_account: MakeAccount) -> None:
    kie_port = free_port()
    procs.env["KIE_BASE_URL"] = f"http://127.0.0.1:{kie_port}"  # nothing listens there yet
    api = procs.api()
    worker = procs.worker()
    _, key = await make_account(credits=20, tier="pro")

    deadline = time.monotonic() + 20
    while "provider.unreachable_at_start" not in worker.output():
        assert time.monotonic() < deadline, worker.output()[-3000:]
        time.sleep(0.2)
    line = next(json.loads(x) for x in worker.output().splitlines() if "provider.unreachable_at_start" in x)
    assert line["level"] == "error" and line["kie_base_url"] == f"http://127.0.0.1:{kie_port}"

    r = httpx.post(f"{api.url}/v1/jobs", json=job(), headers=bearer(key), timeout=10)
    assert r.status_code == 202
    task_id = r.json()["taskId"]
    deadline = time.monotonic() + 30
    while True:
        ready = _ready(api.url)
        view = httpx.get(f"{api.url}/v1/jobs/{task_id}", headers=bearer(key), timeout=5).json()
        if ready["checks"] == {"postgres": "ok", "redis": "ok", "provider": "unreachable"} and "lastError" in view:
            break
        assert time.monotonic() < deadline, (ready, view, worker.output()[-2000:])
        time.sleep(0.3)
    assert ready["status"] == "degraded"
    details = ready["details"]["provider"]
    assert details["failures"] >= 3 and "cannot reach the provider" in details["lastError"]
    assert view["status"] == "queued" and "cannot reach the provider" in view["lastError"]

    page = httpx.get(f"{api.url}/admin", headers=ADMIN, timeout=20).text
    assert 'id="provider-reach" data-value="unreachable"' in page
    assert "cannot reach the provider" in page

    # The provider comes up where the worker looks for it: the task runs, and health clears.
    procs.start("sim", "sim", "--port", str(kie_port), "--time-scale", "0.2")
    deadline = time.monotonic() + 45
    while True:
        view = httpx.get(f"{api.url}/v1/jobs/{task_id}", headers=bearer(key), timeout=5).json()
        if view["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, (view, worker.output()[-3000:])
        time.sleep(0.3)
    assert "lastError" not in view and view["charged"] == 4
    ready = _ready(api.url)
    assert ready["status"] == "ok" and ready["checks"]["provider"] == "ok"
    assert "details" not in ready
    page = httpx.get(f"{api.url}/admin", headers=ADMIN, timeout=20).text
    assert 'id="provider-reach" data-value="ok"' in page
