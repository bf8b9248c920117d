"""The real thing: ``creditq api`` as a subprocess (api/server.py), one worker process and several."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from shared.config import Settings
from tests.apiserver import ADMIN, bearer, free_port, job
from tests.conftest import Proc, Processes

pytestmark = pytest.mark.slow


def own_queue(api_settings: Settings) -> dict[str, str]:
    # The test queue of these tests: no worker of another test picks their tasks up.
    return {"CREDITQ_QUEUE": api_settings.queue_name}


def stopped(api: Proc) -> None:
    """SIGTERM stops the server gracefully (uvicorn re-raises the signal after its shutdown, hence -15)."""
    api.popen.send_signal(signal.SIGTERM)
    assert api.popen.wait(20) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in api.output()
    assert "Traceback" not in api.output()


def test_serves_the_whole_flow(procs: Processes, api_settings: Settings) -> None:
    api = procs.api(env=own_queue(api_settings))
    with httpx.Client(base_url=api.url, timeout=10) as client:
        assert client.get("/readyz").json()["status"] == "ok"
        created = client.post("/v1/admin/accounts", json={"credits": 40}, headers=ADMIN)
        assert created.status_code == 201, created.text
        key = created.json()["apiKey"]
        submitted = client.post("/v1/jobs", json=job(), headers=bearer(key))
        assert submitted.status_code == 202, submitted.text
        task = client.get(f"/v1/jobs/{submitted.json()['taskId']}", headers=bearer(key)).json()
        assert (task["status"], task["cost"]) == ("queued", 4)
        account = client.get("/v1/account", headers=bearer(key)).json()
        assert (account["balance"], account["held"], account["available"]) == (40, 4, 36)
        missing = client.get("/v1/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
    stopped(api)


def test_starts_with_postgres_down_and_answers_503(procs: Processes, api_settings: Settings) -> None:
    env = {**own_queue(api_settings), "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/creditq"}
    api = procs.api(env=env)
    with httpx.Client(base_url=api.url, timeout=10) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres"] == "down"
        started = time.monotonic()
        r = client.get("/v1/account", headers=bearer("cq_anything"))
        assert time.monotonic() - started < 6
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "unavailable"
    assert "Traceback" not in api.output()


def test_several_server_processes(procs: Processes, api_settings: Settings) -> None:
    port = free_port()
    api = procs.start(
        "api", "api", "--port", str(port), "--workers", "2", env=own_queue(api_settings), url=f"http://127.0.0.1:{port}"
    )
    procs.wait_http(api, "/healthz", timeout=30)
    with httpx.Client(base_url=api.url, timeout=10) as client:
        key = client.post("/v1/admin/accounts", json={"credits": 100, "tier": "pro"}, headers=ADMIN).json()["apiKey"]
        codes = [client.post("/v1/jobs", json=job(f"{i}"), headers=bearer(key)).status_code for i in range(10)]
        assert codes == [202] * 10
        assert client.get("/v1/account", headers=bearer(key)).json()["held"] == 40
    stopped(api)
