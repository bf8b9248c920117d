"""Property-based API testing: schemathesis generates requests from ``/openapi.json`` and sends them to a live
stack (``creditq api``, ``creditq worker`` and ``creditq sim`` as real processes, real Postgres and Redis), for
every operation, with the caller's API key or the admin token as the operation's security says.

Every answer must be one the document allows: no 5xx (``not_a_server_error``), a documented status code, the
documented content type, headers and body schema; and in negative mode (requests that break the document) the
API must refuse with a 4xx (``negative_data_rejection``). Failures of every operation are collected and reported
together.

Bounded: :data:`EXAMPLES` generated cases per operation and mode, no shrinking, derandomized (the same cases on
every run, so CI is reproducible; set ``CREDITQ_SCHEMATHESIS_EXAMPLES`` for a longer run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.apiserver import ADMIN
from tests.conftest import Processes

EXAMPLES = int(os.environ.get("CREDITQ_SCHEMATHESIS_EXAMPLES", "50"))
# Private callbacks allowed, and every generated callbackUrl replaced by a closed loopback port: nothing leaves
# the machine (a generated host name would be looked up in DNS, at submit and at delivery).
ENV = {"KIE_TIMEOUT": "3", "CREDITQ_ALLOW_PRIVATE_CALLBACKS": "true"}
HOOK = "http://127.0.0.1:9/hook"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class Live:
    url: str
    api_key: str
    task_id: str  # a task of the caller's that has ended (its event stream closes at once)
    webhook_id: str


@pytest.fixture(scope="module")
def live(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    procs = Processes(base_env, Path(tmp_path_factory.mktemp("live")))
    try:
        procs.sim("--time-scale", "0.01")
        api = procs.api(env=ENV)
        procs.worker(env=ENV)
        with httpx.Client(base_url=api.url, timeout=10) as c:
            made = c.post("/v1/admin/accounts", json={"tier": "pro_plus", "credits": 10**6}, headers=ADMIN).json()
            key = made["apiKey"]
            auth = {"Authorization": f"Bearer {key}"}
            # A task with a callback URL (a closed port), canceled: it has a delivery in its log.
            r = c.post(
                "/v1/jobs",
                json={"model": "google/nano-banana", "input": {"prompt": "x"}, "callbackUrl": HOOK},
                headers=auth,
            )
            task_id = r.json()["taskId"] if r.status_code == 202 else "task_missing"
            c.post(f"/v1/jobs/{task_id}/cancel", headers=auth)
            items = c.get(f"/v1/jobs/{task_id}/deliveries", headers=auth).json().get("items", [])
            webhook_id = items[0]["webhookId"] if items else "msg_missing"
        yield Live(api.url, key, task_id, webhook_id)
    finally:
        for p in procs.procs:
            if p.popen.poll() is not None and p.popen.returncode not in (0, -15):
                print(f"----- {p.name} -----\n{p.output()[-4000:]}")
        procs.close()


def _auth(live: Live, operation: Any) -> dict[str, str]:
    schemes = {name for requirement in operation.definition.raw.get("security", []) for name in requirement}
    if "adminToken" in schemes:
        return dict(ADMIN)
    if "apiKey" in schemes:
        return {"Authorization": f"Bearer {live.api_key}"}
    return {}


def _run(live: Live, operation: Any, mode: GenerationMode, failures: list[str], **fixed: Any) -> None:
    strategy = operation.as_strategy(generation_mode=mode, **fixed)
    checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS
    headers = _auth(live, operation)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("callbackUrl"), str):
            case.body["callbackUrl"] = HOOK
        case.call_and_validate(base_url=live.url, headers=headers, checks=checks, timeout=20)

    try:
        run()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE, operation.label  # nothing to break: no parameters, no body
    except (Exception, BaseExceptionGroup) as e:  # failed checks: keep going, report every operation at the end
        failures.append(f"{operation.label} [{mode.value}{' ' + str(fixed) if fixed else ''}]: {e}"[:3000])


@pytest.mark.slow
def test_every_answer_is_one_the_document_allows(live: Live) -> None:
    with httpx.Client(base_url=live.url) as c:
        raw = c.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    # The credential is the test's (the operation's scheme, below), not generated; and unknown query parameters
    # are ignored by creditq, as by most APIs, so a request is not "invalid" for carrying one.
    schema.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    failures: list[str] = []
    operations = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot read: {result}"
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(live, operation, mode, failures)
        # And with ids that exist, so that the operations' success answers are checked too.
        params = {p["name"] for p in operation.definition.raw.get("parameters", []) if p.get("in") == "path"}
        if params and params <= {"taskId", "webhookId"}:
            ids = {"taskId": live.task_id, "webhookId": live.webhook_id}
            _run(live, operation, GenerationMode.POSITIVE, failures, path_parameters={p: ids[p] for p in params})
    took = time.monotonic() - started
    print(f"schemathesis: {operations} operations, {EXAMPLES} examples per operation and mode, {took:.0f} s")
    assert operations >= 20
    assert failures == [], "\n\n".join(failures)


# --- What schemathesis found, pinned ----------------------------------------------------------------------------


async def test_a_query_parameter_given_twice_is_refused(client: httpx.AsyncClient) -> None:
    """``?fix=<junk>&fix=0`` was read as its last value and answered 200: which one the client meant is unknown,
    so a repeated parameter is a 422 (like a second Idempotency-Key)."""
    for url in ("/v1/admin/reconcile?fix=maybe&fix=0", "/v1/admin/payments/events?limit=5&limit=7"):
        r = await client.get(url, headers=ADMIN)
        assert r.status_code == 422, (url, r.text)
        assert r.json()["error"]["details"][0]["message"] == "must be given at most once"


async def test_an_empty_query_parameter_means_not_given(client: httpx.AsyncClient) -> None:
    """As the document says (an HTML form sends its empty fields)."""
    r = await client.get("/v1/admin/payments/events?limit=&status=", headers=ADMIN)
    assert r.status_code == 200, r.text
