"""The operator's page ``GET /admin``: who may see it, that it escapes what it shows, and what a real browser
renders (headless Chromium, Debian's ``chromium`` package): the figures in its DOM are the API's figures.

Set ``CREDITQ_UPDATE_SCREENSHOT=1`` to also copy the screenshot to docs/admin-page.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared import metrics, queue
from shared.config import Settings
from shared.ledger import stats
from shared.provider_budget import Circuit
from tests.conftest import ROOT, Processes

ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHROMIUM = Path("/usr/bin/chromium")
IMAGE = "google/nano-banana"  # cost 4


class Figures(HTMLParser):
    """Every element with an ``id``: its ``data-value`` (or its text) and its text; and the audit's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.problems: list[dict[str, str]] = []
        self.refresh: str | None = None
        self._open: list[tuple[str, str]] = []  # (tag, id) of elements with an id, innermost last

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.refresh = a.get("content")
        if tag == "tr" and "problem" in a.get("class", "").split():
            self.problems.append(a)
        if "id" in a:
            self._open.append((tag, a["id"]))
            self.texts[a["id"]] = ""
            if "data-value" in a:
                self.values[a["id"]] = a["data-value"]

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            self.texts[element_id] += data


def figures(html: str) -> Figures:
    parser = Figures()
    parser.feed(html)
    return parser


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={user_data}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_page_needs_the_admin_token(procs: Processes) -> None:
    api = procs.api()
    disabled = procs.api(env={"CREDITQ_ADMIN_TOKEN": ""})
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{api.url}/admin").status_code == 401
        assert client.get(f"{api.url}/admin", params={"token": "wrong"}).status_code == 401
        assert client.get(f"{api.url}/admin", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(f"{disabled.url}/admin", headers=ADMIN).status_code == 403
        assert client.get(f"{disabled.url}/admin", params={"token": ""}).status_code == 403
        by_header = client.get(f"{api.url}/admin", headers=ADMIN)
        assert by_header.status_code == 200
        assert by_header.headers["content-type"].startswith("text/html")
        assert by_header.headers["cache-control"] == "no-store"
        assert by_header.headers["referrer-policy"] == "no-referrer"
        assert 'name="token"' not in by_header.text  # a header token is never written into the page
        # A browser without the token gets a page to type it into, not JSON; same status codes.
        browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        hint = client.get(f"{api.url}/admin", headers=browser)
        assert hint.status_code == 401 and hint.headers["content-type"].startswith("text/html")
        assert '<input type="password" name="token"' in hint.text and "needs the admin token" in hint.text
        wrong = client.get(f"{api.url}/admin", params={"token": "nope"}, headers=browser)
        assert wrong.status_code == 401 and "not the admin token" in wrong.text and "nope" not in wrong.text
        off = client.get(f"{disabled.url}/admin", headers=browser)
        assert off.status_code == 403 and "CREDITQ_ADMIN_TOKEN" in off.text
        assert client.get(f"{api.url}/admin").headers["content-type"].startswith("application/json")
        by_query = client.get(f"{api.url}/admin", params={"token": ADMIN_TOKEN})
        assert by_query.status_code == 200
        page = figures(by_query.text)
        assert page.refresh == "10"
        assert page.values["audit-ok"] in ("true", "false")


def test_the_page_escapes_what_it_shows(procs: Processes) -> None:
    api = procs.api()
    # An externalId cannot hold markup any more (docs/API.md, "Limits at the edge"), but a looked-up reference can.
    nasty = '<script>alert("x")</script>'
    with httpx.Client(base_url=api.url, timeout=30) as client:
        created = client.post("/v1/admin/accounts", json={"externalId": "page-ok", "credits": 3}, headers=ADMIN)
        assert created.status_code == 201, created.text
        html = client.get("/admin", params={"account": nasty}, headers=ADMIN).text
        assert "<script>" not in html
        assert "&lt;script&gt;" in html
        page = figures(client.get("/admin", params={"account": "page-ok"}, headers=ADMIN).text)
        assert page.values["account-id"] == created.json()["accountId"]
        assert page.values["account-balance"] == "3"
        missing = figures(client.get("/admin", params={"account": "acct_nope"}, headers=ADMIN).text)
        assert "no account" in missing.texts["account-error"]


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
async def test_a_browser_shows_the_apis_figures(
    procs: Processes,
    tmp_path: Path,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = procs.api()
    await metrics.record_provider_credits(redis, settings, 1234.5)
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        created = await client.post("/v1/admin/accounts", json={"credits": 100, "tier": "pro"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        account_id = created.json()["accountId"]
        key = {"Authorization": f"Bearer {created.json()['apiKey']}"}
        job = {"model": IMAGE, "input": {"prompt": "a lighthouse"}}
        assert (await client.post("/v1/jobs", json=job, headers=key)).status_code == 202  # queued: 4 held
        # A second job, canceled: a queue entry of it is not live work.
        other = (await client.post("/v1/jobs", json=job, headers=key)).json()["taskId"]
        assert (await client.post(f"/v1/jobs/{other}/cancel", headers=key)).status_code == 200
        # A wake-up left queued for the canceled task (as a finished task's deferred step stays until due).
        arq = await queue.connect(settings)
        try:
            await queue.enqueue(arq, settings, other, defer_by=600)
        finally:
            await arq.aclose()
        account = (await client.get(f"/v1/admin/accounts/{account_id}", headers=ADMIN)).json()
        # The page shows the audit the API ran last (at most 15 s ago): this one.
        reconcile = (await client.get("/v1/admin/reconcile", headers=ADMIN)).json()
    circuit_before = await Circuit(redis, settings).info()

    url = f"{api.url}/admin?token={ADMIN_TOKEN}&account={account_id}"
    dom = chromium("--dump-dom", url, user_data=tmp_path / "chromium-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = figures(dom.stdout)
    gauges = await stats.gauges(pool, settings.sweep_seconds)
    by_status = await stats.tasks_by_status(pool)
    circuit_after = await Circuit(redis, settings).info()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        # A slow browser start can outlive the cached audit; then the page ran its own, as a reconcile would now.
        reconciled_after = (await client.get("/v1/admin/reconcile", headers=ADMIN)).json()

    assert page.refresh == "10"
    assert page.values["account-id"] == account_id
    assert int(page.values["account-balance"]) == account["balance"] == 100
    assert int(page.values["account-held"]) == account["held"] == 4
    assert int(page.values["account-available"]) == account["available"] == 96
    shown = (page.values["audit-ok"], int(page.values["audit-problems"]), [p["data-kind"] for p in page.problems])
    assert shown in [
        ("true" if r["ok"] else "false", len(r["problems"]), [p["kind"] for p in r["problems"][:50]])
        for r in (reconcile, reconciled_after)
    ]
    # The totals are the ledger's (nothing else runs in this session meanwhile).
    assert int(page.values["total-balance"]) == gauges.balance
    assert int(page.values["total-held"]) == gauges.held
    assert int(page.values["total-accounts"]) == gauges.accounts
    for status, n in by_status.items():
        assert int(page.values[f"tasks-{status}"]) == n
    assert float(page.values["provider-credits"]) == 1234.5
    if circuit_before is None and circuit_after is None:
        assert page.values["circuit-state"] == "closed"
    assert page.values["budget-create-used"].isdigit()
    live = await pool.fetchval("SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')")
    entries = await redis.zcard(settings.queue_name)
    assert int(page.values["queue-depth"]) == live  # every live task here has its entry: no worker runs
    assert int(page.values["queue-entries"]) == entries > live  # the canceled task's entry is not counted
    assert page.texts["audit-ok"].count("clean") <= 1


async def _wait_ended(client: httpx.AsyncClient, key: dict[str, str], ids: list[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while True:
        views = [(await client.get(f"/v1/jobs/{i}", headers=key)).json() for i in ids]
        if all(v["status"] in ("succeeded", "failed", "canceled") for v in views):
            return views
        assert time.monotonic() < deadline, views
        await asyncio.sleep(0.3)


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
async def test_a_browser_shows_the_last_hours_failures_and_an_accounts_jobs(
    procs: Processes, tmp_path: Path, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    procs.sim("--time-scale", "0.1")
    api = procs.api()
    procs.worker()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        created = await client.post("/v1/admin/accounts", json={"credits": 200, "tier": "pro"}, headers=ADMIN)
        account_id = created.json()["accountId"]
        key = {"Authorization": f"Bearer {created.json()['apiKey']}"}
        prompts = [f"[sim:seconds=1] ok {i}" for i in range(6)] + ["[sim:seconds=1] [sim:fail=500] bad"] * 2
        ids = []
        for p in prompts:
            r = await client.post("/v1/jobs", json={"model": IMAGE, "input": {"prompt": p}}, headers=key)
            assert r.status_code == 202, r.text
            ids.append(r.json()["taskId"])
        views = await _wait_ended(client, key, ids)
    failed = {str(v["taskId"]): v for v in views if v["status"] == "failed"}
    assert len(failed) == 2 and sum(v["status"] == "succeeded" for v in views) == 6
    # Spread them over the last hours (as a day's traffic would be), so the pictures have a shape.
    for k, task_id in enumerate(ids):
        await pool.execute(
            "UPDATE tasks SET created_at = created_at - make_interval(mins => $2), "
            "finished_at = finished_at - make_interval(mins => $2) WHERE id = $1",
            task_id,
            40 * k,
        )

    url = f"{api.url}/admin?token={ADMIN_TOKEN}&account={account_id}"
    dom = chromium("--dump-dom", url, user_data=tmp_path / "chromium-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    page = figures(html)
    # Failures: the reason, its count, and the newest task ids with the provider's message.
    reason = str(next(iter(failed.values()))["error"]["code"])  # type: ignore[index]
    row = re.search(rf'<tr class="failure" data-reason="{reason}" data-value="(\d+)">(.*?)</tr>', html, re.S)
    assert row is not None and int(row.group(1)) >= 2
    for task_id, v in failed.items():
        assert f'data-task="{task_id}"' in row.group(2)
        assert str(v["error"]["message"])[:50] in row.group(2)  # type: ignore[index]
    # The account: its recent jobs (newest first, at most 10) and entries.
    shown_jobs = re.findall(r'<tr class="account-job" data-task="([^"]+)"', html)
    assert set(shown_jobs) == set(ids)
    kinds = re.findall(r"<tr class=\"account-entry\" data-entry=\"[^\"]+\"><td>([a-z_]+)</td>", html)
    assert kinds, html[html.find("recent entries") : html.find("recent entries") + 1500]
    assert {"capture", "release"} <= set(kinds)
    # The pictures: what is drawn is the database's count per quarter hour.
    series = {
        name: json.loads(unescape(m))
        for name, m in re.findall(r'<svg id="chart-([a-z-]+)" data-series="([^"]+)"', html)
    }
    assert set(series) == {"submitted", "outcomes", "captured", "in-flight"}, html[
        html.find("<svg") : html.find("<svg") + 600
    ]
    assert len(series["submitted"]["submitted"]) == 24
    in_window = await pool.fetchval("SELECT count(*) FROM tasks WHERE created_at > now() - interval '6 hours'")
    assert sum(series["submitted"]["submitted"]) == in_window
    assert sum(series["outcomes"]["failed"]) >= 2 and sum(series["outcomes"]["succeeded"]) >= 6
    assert sum(series["captured"]["captured"]) >= 6 * 4
    assert series["in-flight"]["in flight"][-1] == int(
        await pool.fetchval("SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')")
    )
    assert page.values["provider-reach"] == "ok"

    shot = tmp_path / "admin-page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1280,1900", url, user_data=tmp_path / "chromium-shot")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    with capsys.disabled():
        print(f"\nadmin page screenshot: {shot}")
    if os.environ.get("CREDITQ_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "admin-page.png")
