"""Client webhooks (Standard Webhooks) end to end: real API and worker processes, the simulator, Postgres, Redis,
and a real HTTP receiver whose requests the official ``standardwebhooks`` package verifies.

Covered: the signed POST of a job's end (through the provider, and of a cancel), the delivery log and the retry
endpoint, a receiver that fails and then recovers (same webhook-id, first retry within 10 s), a receiver that
answers 410, a worker SIGKILLed mid-delivery, a flushed Redis, secret rotation (both secrets sign for 24 h), and
the URL check at delivery time: refusal with private callbacks off, a name whose resolution changes between
deliveries (pinned to the address checked, no second lookup), and every IPv4-embedding IPv6 form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from standardwebhooks import Webhook, WebhookVerificationError

from shared import callback_urls, queue, redis_keys, webhooks
from shared.config import Settings
from shared.ledger import audit, tasks
from shared.ledger import webhooks as outbox
from shared.pricing import load
from tests.apiserver import bearer, job
from tests.conftest import MakeAccount, Processes
from tests.webhook_receiver import HANG, receiver
from worker import deliveries
from worker.runtime import Runtime, close_runtime, open_runtime

ENV = {"CREDITQ_ALLOW_PRIVATE_CALLBACKS": "true", "CREDITQ_WEBHOOK_RETRY_SECONDS": "0.5,1,60", "KIE_TIMEOUT": "3"}
IMAGE = "google/nano-banana"  # cost 4


@pytest.fixture(scope="module")
async def arq_redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    r = await queue.connect(settings)
    yield r
    await r.aclose()


async def _queued_task(pool: asyncpg.Pool, settings: Settings, account_id: str, callback_url: str) -> str:
    """A queued task with a callback URL and no queue entry (no worker ever starts it): it ends by a cancel."""
    model = load(settings.pricing_path).model(IMAGE)
    assert model is not None
    sub = await tasks.submit(pool, account_id, model, {"prompt": "to be canceled"}, callback_url, None, None)
    return str(sub.task["id"])


async def _deliveries(api: httpx.Client | httpx.AsyncClient, key: str, task_id: str) -> list[dict[str, Any]]:
    resp = api.get(f"/v1/jobs/{task_id}/deliveries", headers=bearer(key))
    resp = await resp if not isinstance(resp, httpx.Response) else resp
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


async def _settled(
    client: httpx.AsyncClient, key: str, task_id: str, status: str, timeout: float = 20
) -> dict[str, Any]:
    """Wait until the task's one delivery has ``status``; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        items = await _deliveries(client, key, task_id)
        if items and items[0]["status"] == status:
            assert len(items) == 1, items
            return items[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery not {status} after {timeout}s: {items}")
        await asyncio.sleep(0.2)


def _verified(secret: str, got: Any) -> dict[str, Any]:
    """What the official verifier makes of a received request (raises if the signature is wrong)."""
    payload: dict[str, Any] = Webhook(secret).verify(got.body, got.headers)
    return payload


async def _clean_audit(pool: asyncpg.Pool, account_id: str) -> None:
    assert [p for p in await audit.check(pool, 2) if p.accountId == account_id] == []


# --- Through real processes -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_signed_delivery_of_a_job_end_log_and_retry(
    procs: Processes, pool: asyncpg.Pool, make_account: MakeAccount
) -> None:
    procs.sim("--time-scale", "0.01")
    api = procs.api(env=ENV)
    procs.worker(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver() as rcv:
        secret = (await client.get("/v1/account/webhook-secret", headers=bearer(key))).json()["secret"]
        assert secret.startswith("whsec_")
        # Made once: asking again answers the same secret.
        assert (await client.get("/v1/account/webhook-secret", headers=bearer(key))).json()["secret"] == secret
        r = await client.post(
            "/v1/jobs", json=job("a lighthouse [sim:seconds=1]", callbackUrl=rcv.url), headers=bearer(key)
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["taskId"]

        (first,) = await rcv.wait_for(1, 30)
        event = _verified(secret, first)
        view = (await client.get(f"/v1/jobs/{task_id}", headers=bearer(key))).json()
        assert event == {"type": "job.succeeded", "timestamp": view["finishedAt"], "data": view}
        assert view["status"] == "succeeded" and view["charged"] == 4
        assert first.headers["webhook-id"].startswith("msg_")
        assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 30
        assert first.target == "/hooks/creditq"
        with pytest.raises(WebhookVerificationError):
            _verified(webhooks.new_secret(), first)

        done = await _settled(client, key, task_id, "delivered")
        assert done["webhookId"] == first.headers["webhook-id"]
        assert (done["type"], done["attempts"], done["lastStatusCode"], done["nextAttemptAt"]) == (
            "job.succeeded",
            1,
            200,
            None,
        )

        # The receiver asks for it again: 202, sent again now with the same webhook-id.
        r = await client.post(f"/v1/jobs/{task_id}/deliveries/{done['webhookId']}/retry", headers=bearer(key))
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending"
        _, again = await rcv.wait_for(2, 15)
        assert again.headers["webhook-id"] == first.headers["webhook-id"]
        assert _verified(secret, again) == event
        assert (await _settled(client, key, task_id, "delivered"))["attempts"] == 2

        # Another account sees neither the log nor the retry.
        _, other = await make_account(credits=0)
        assert (await client.get(f"/v1/jobs/{task_id}/deliveries", headers=bearer(other))).status_code == 404
        r = await client.post(f"/v1/jobs/{task_id}/deliveries/{done['webhookId']}/retry", headers=bearer(other))
        assert r.status_code == 404
    assert (await pool.fetchrow("SELECT balance, held FROM accounts WHERE id = $1", acct.id)) == (6, 0)
    await _clean_audit(pool, acct.id)


@pytest.mark.slow
async def test_a_receiver_that_fails_then_recovers_gets_it_with_the_same_id(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    api = procs.api(env=ENV)
    procs.worker(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver(script=[500, 503]) as rcv:
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        r = await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        got = await rcv.wait_for(3, 20)
        assert len({g.headers["webhook-id"] for g in got}) == 1
        assert got[1].at - got[0].at < 10  # the first retry within 10 s
        assert got[2].at - got[1].at > 0.8  # backing off: the second retry waits 1 s (±10 %), the first 0.5 s
        secret = (await client.get("/v1/account/webhook-secret", headers=bearer(key))).json()["secret"]
        events = [_verified(secret, g) for g in got]
        assert {e["type"] for e in events} == {"job.canceled"}
        assert events[0]["data"]["taskId"] == task_id and events[0]["data"]["status"] == "canceled"
        done = await _settled(client, key, task_id, "delivered")
        assert (done["attempts"], done["lastStatusCode"]) == (3, 200)
    await _clean_audit(pool, acct.id)


@pytest.mark.slow
async def test_410_stops_the_delivery(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    api = procs.api(env=ENV)
    procs.worker(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver(script=[410]) as rcv:
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        await rcv.wait_for(1, 20)
        stopped = await _settled(client, key, task_id, "failed")
        assert (stopped["attempts"], stopped["lastStatusCode"], stopped["nextAttemptAt"]) == (1, 410, None)
        await asyncio.sleep(2.5)  # longer than the first two retry delays: nothing more comes
        assert len(rcv.got) == 1


@pytest.mark.slow
async def test_a_worker_killed_mid_delivery_loses_nothing(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    api = procs.api(env=ENV)
    first_worker = procs.worker(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver(script=[HANG]) as rcv:
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        await rcv.wait_for(1, 20)  # the worker is now waiting for the answer that never comes
        first_worker.kill()  # SIGKILL, mid-delivery
        (pending,) = await _deliveries(client, key, task_id)
        assert pending["status"] == "pending" and pending["attempts"] == 1
        procs.worker(env=ENV)
        # The dead attempt's claim lapses (15 s timeout + margin); then it is sent again, same id.
        got = await rcv.wait_for(2, 45)
        assert got[1].headers["webhook-id"] == got[0].headers["webhook-id"]
        done = await _settled(client, key, task_id, "delivered")
        assert done["attempts"] == 2


@pytest.mark.slow
async def test_a_flushed_redis_loses_no_delivery(
    procs: Processes,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    settings: Settings,
    make_account: MakeAccount,
) -> None:
    api = procs.api(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver() as rcv:
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        (pending,) = await _deliveries(client, key, task_id)
        job_key = f"arq:job:{redis_keys.delivery_job_id(pending['webhookId'])}"
        assert await redis.exists(job_key)  # scheduled in Redis by the cancel ...
        await redis.flushdb()  # ... and lost
        assert not await redis.exists(job_key)
        procs.worker(env=ENV)
        (got,) = await rcv.wait_for(1, 30)  # the delivery sweep found it in Postgres
        assert got.headers["webhook-id"] == pending["webhookId"]
        assert (await _settled(client, key, task_id, "delivered"))["attempts"] == 1


@pytest.mark.slow
async def test_rotation_signs_with_both_secrets_for_24_hours(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    api = procs.api(env=ENV)
    procs.worker(env=ENV)
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver() as rcv:
        old = (await client.get("/v1/account/webhook-secret", headers=bearer(key))).json()["secret"]
        rotated = (await client.post("/v1/account/webhook-secret/rotate", headers=bearer(key))).json()
        new = rotated["secret"]
        assert new != old and new.startswith("whsec_")
        left = datetime.fromisoformat(rotated["previous"]["expiresAt"]) - datetime.now(UTC)
        assert 23.9 * 3600 < left.total_seconds() <= 24 * 3600
        assert (await client.get("/v1/account/webhook-secret", headers=bearer(key))).json()["secret"] == new
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        (got,) = await rcv.wait_for(1, 20)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert _verified(old, got) == _verified(new, got)  # a receiver on either secret accepts it


@pytest.mark.slow
async def test_worker_refuses_a_private_address_when_not_allowed(
    procs: Processes, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    """The API would refuse this URL at submit; the worker's own check at delivery refuses it too (the task is
    written straight to the ledger, as if the address had been public at submit)."""
    api = procs.api(env={**ENV, "CREDITQ_ALLOW_PRIVATE_CALLBACKS": "false"})
    procs.worker(env={**ENV, "CREDITQ_ALLOW_PRIVATE_CALLBACKS": "false"})
    acct, key = await make_account(credits=10)
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client, receiver() as rcv:
        task_id = await _queued_task(pool, settings, acct.id, rcv.url)
        assert (await client.post(f"/v1/jobs/{task_id}/cancel", headers=bearer(key))).status_code == 200
        deadline = time.monotonic() + 20
        while True:
            (d,) = await _deliveries(client, key, task_id)
            if d["attempts"] >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert d["attempts"] >= 2 and d["status"] == "pending"
        assert d["lastStatusCode"] is None and "private" in d["lastError"]
        assert rcv.got == []  # nothing ever connected


# --- The URL check at delivery, in-process with a resolver the test controls ----------------------------------


class Hosts:
    """A resolver seam: a hosts mapping the test changes at will, counting lookups. No real DNS."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[callback_urls.IPAddress]:
        self.lookups.append(host)
        if host not in self.mapping:
            raise OSError(f"unknown host {host}")
        return [ipaddress.ip_address(self.mapping[host])]


@pytest.fixture
async def runtime(settings: Settings, arq_redis: ArqRedis, pool: asyncpg.Pool) -> AsyncIterator[Runtime]:
    own = dataclasses.replace(
        settings, queue_name=f"{settings.queue_name}:hooks", webhook_retry_seconds=(60.0, 60.0, 60.0)
    )
    rt = await open_runtime(own, arq_redis, pool)
    yield rt
    await close_runtime(rt)


async def _ended_with_callback(pool: asyncpg.Pool, settings: Settings, account_id: str, url: str) -> tuple[str, str]:
    task_id = await _queued_task(pool, settings, account_id, url)
    await tasks.cancel(pool, task_id, account_id)
    (webhook_id,) = await outbox.pending_for_task(pool, task_id)
    return task_id, webhook_id


async def test_a_name_whose_resolution_changes_is_resolved_and_pinned_at_each_delivery(
    runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    acct, _ = await make_account(credits=10)
    hosts = Hosts({"hooks.example.test": "127.0.0.1"})
    rt = dataclasses.replace(runtime, resolver=hosts)
    rt.settings = dataclasses.replace(rt.settings, allow_private_callbacks=True)
    async with receiver("127.0.0.1") as one, receiver("127.0.0.2", one.port) as two:  # one port, two addresses
        url = f"http://hooks.example.test:{one.port}/hook?x=1"
        task_id, webhook_id = await _ended_with_callback(pool, settings, acct.id, url)
        assert await deliveries.attempt(rt, webhook_id) == ("delivered", None)
        assert len(one.got) == 1 and two.got == []
        assert one.got[0].headers["host"] == f"hooks.example.test:{one.port}"  # the name, not the address
        assert one.got[0].target == "/hook?x=1"
        assert hosts.lookups == ["hooks.example.test"]  # one lookup per delivery, none by the HTTP client

        hosts.mapping["hooks.example.test"] = "127.0.0.2"  # the name now points elsewhere
        await outbox.retry_now(pool, task_id, acct.id, webhook_id)
        assert await deliveries.attempt(rt, webhook_id) == ("delivered", None)
        assert len(one.got) == 1 and len(two.got) == 1  # resolved again at send time, sent where it checked
        assert hosts.lookups == ["hooks.example.test"] * 2

        # With private callbacks off, the same name now resolving to loopback is refused before any connect.
        rt.settings = dataclasses.replace(rt.settings, allow_private_callbacks=False)
        await outbox.retry_now(pool, task_id, acct.id, webhook_id)
        outcome, again_in = await deliveries.attempt(rt, webhook_id)
        assert outcome == "pending" and again_in is not None
        d = await outbox.get(pool, webhook_id)
        assert d is not None and "private" in d["last_error"] and d["last_status_code"] is None
        assert len(one.got) == 1 and len(two.got) == 1


async def test_a_redirect_is_not_followed(
    runtime: Runtime, pool: asyncpg.Pool, settings: Settings, make_account: MakeAccount
) -> None:
    acct, _ = await make_account(credits=10)
    rt = dataclasses.replace(runtime)
    rt.settings = dataclasses.replace(rt.settings, allow_private_callbacks=True)
    async with receiver() as elsewhere, receiver(script=[302]) as hook:
        hook.location = elsewhere.url
        _, webhook_id = await _ended_with_callback(pool, settings, acct.id, hook.url)
        outcome, again_in = await deliveries.attempt(rt, webhook_id)
        assert outcome == "pending" and again_in is not None  # a failed attempt, retried on the schedule
        d = await outbox.get(pool, webhook_id)
        assert d is not None and d["last_status_code"] == 302
        assert d["last_error"] == "HTTP 302 (redirects are not followed)"
        assert len(hook.got) == 1 and elsewhere.got == []


async def test_public_at_submit_then_private_at_delivery_is_refused() -> None:
    hosts = Hosts({"rebind.example.test": "93.184.216.34"})
    url = "https://rebind.example.test/hook"
    assert await callback_urls.problem(url, False, hosts) is None  # what the API saw at submit
    t = await callback_urls.target(url, False, hosts)
    assert str(t.address) == "93.184.216.34" and t.host == "rebind.example.test" and t.port == 443
    for private in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe"):
        hosts.mapping["rebind.example.test"] = private
        with pytest.raises(callback_urls.Refused, match="private"):
            await callback_urls.target(url, False, hosts)


EMBEDDED_PRIVATE = [
    "::127.0.0.1",  # IPv4-compatible loopback
    "::ffff:0:7f00:1",  # IPv4-translated loopback
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "fec0::1",  # site-local
    "64:ff9b:1::1",  # local-use NAT64
    "2001::1",  # Teredo
    "fe80::1",  # link-local
    "::",
    "::1",
    "ff02::1",  # multicast
]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
async def test_ipv6_forms_that_embed_or_are_non_global_addresses_are_refused(address: str) -> None:
    assert not callback_urls.is_public(ipaddress.ip_address(address))
    problem = await callback_urls.problem(f"http://[{address}]/hook", False)
    assert problem is not None and "private" in problem
    hosts = Hosts({"aaaa.example.test": address})  # and reached through a name
    assert await callback_urls.problem("http://aaaa.example.test/hook", False, hosts) is not None


@pytest.mark.parametrize("address", ["2606:4700::1111", "64:ff9b::5db8:d822", "2002:5db8:d822::", "93.184.216.34"])
async def test_public_addresses_and_their_embeddings_are_accepted(address: str) -> None:
    assert callback_urls.is_public(ipaddress.ip_address(address))
    literal = f"[{address}]" if ":" in address else address
    assert await callback_urls.problem(f"https://{literal}/hook", False) is None


async def test_the_api_refuses_the_issue_15_forms_at_submit(
    client: httpx.AsyncClient, make_account: MakeAccount
) -> None:
    _, key = await make_account(credits=100)
    for address in ["::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "fec0::1"]:
        r = await client.post("/v1/jobs", json=job(callbackUrl=f"http://[{address}]/cb"), headers=bearer(key))
        assert r.status_code == 422, (address, r.text)
        assert [d["field"] for d in r.json()["error"]["details"]] == ["callbackUrl"]


def test_pinned_request_keeps_the_name_for_host_and_sni() -> None:
    client = httpx.AsyncClient()
    t = callback_urls.Target(
        "https://hooks.example.test/a/b?c=d",
        "https",
        "hooks.example.test",
        443,
        ipaddress.ip_address("2606:4700::1111"),
    )
    req = callback_urls.pinned_request(client, t, b"{}", {"webhook-id": "msg_1"})
    assert str(req.url) == "https://[2606:4700::1111]/a/b?c=d"
    assert req.headers["host"] == "hooks.example.test"
    assert req.extensions["sni_hostname"] == "hooks.example.test"
    assert req.headers["webhook-id"] == "msg_1"
