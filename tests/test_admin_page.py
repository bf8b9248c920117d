"""The operator's page ``GET /admin``: who may see it, that it escapes what it shows, and what a real browser
renders (headless Chromium, Debian's ``chromium`` package): the figures in its DOM are the API's figures.

Set ``CREDITQ_UPDATE_SCREENSHOT=1`` to also copy the screenshot to docs/admin-page.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from shared import metrics
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
    assert page.values["queue-depth"].isdigit()

    shot = tmp_path / "admin-page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1280,900", url, user_data=tmp_path / "chromium-shot")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    with capsys.disabled():
        print(f"\nadmin page screenshot: {shot}")
    if os.environ.get("CREDITQ_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "admin-page.png")
