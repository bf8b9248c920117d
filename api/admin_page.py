"""The operator's page (``GET /admin``) as HTML: :func:`render` fills ``api/templates/admin.html``.

Server-rendered, no script, no build step: the template is a :class:`string.Template` and every value that
reaches it is escaped here (:func:`html.escape`), whatever its source (account ids, external ids, model names and
error codes come from clients or the provider). Every figure sits in an element with an ``id`` (or a row with
``data-*`` attributes) and its exact value in ``data-value``, so tests and scripts read the page as reliably as a
person does. The page reloads itself every :data:`REFRESH_SECONDS` (``<meta http-equiv="refresh">``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from api.charts import Series, stacked_bars
from shared.ledger import stats
from shared.ledger.audit import Report
from shared.metrics import OpsState

REFRESH_SECONDS = 10
TEMPLATE = Path(__file__).with_name("templates") / "admin.html"
MAX_PROBLEMS_SHOWN = 50


@dataclass(slots=True)
class PageData:
    """Everything the page shows. A part that could not be read is None, with the reason in ``errors``."""

    state: OpsState
    by_status: dict[str, int] | None = None
    stuck: list[stats.StuckTask] | None = None
    failures: list[stats.FailureReason] | None = None
    samples: list[stats.FailureSample] | None = None
    history: list[stats.Bucket] | None = None
    history_step_seconds: float = 900.0
    queue_live: tuple[int, int] | None = None  # (live tasks with a queue entry, entries in all)
    account_jobs: list[Mapping[str, Any]] | None = None
    account_entries: list[dict[str, Any]] | None = None
    failure_window_seconds: float = 86_400.0
    audit: Report | None = None
    audit_at: float | None = None
    account_ref: str = ""
    account: Mapping[str, Any] | None = None
    account_error: str | None = None
    query_token: str | None = None
    debtors: list[stats.Debtor] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    now: float = field(default_factory=time.time)


@cache
def _template() -> Template:
    return Template(TEMPLATE.read_text(encoding="utf-8"))


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _utc(ts: float | datetime | None) -> str:
    if ts is None:
        return "never"
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _num(element_id: str, value: float | int | None, unit: str = "") -> str:
    """A right-aligned number cell with its exact value in ``data-value`` ("unknown" when None)."""
    if value is None:
        return f'<td class="num muted" id="{_e(element_id)}" data-value="">unknown</td>'
    shown = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    return f'<td class="num" id="{_e(element_id)}" data-value="{_e(value)}">{_e(shown)}{_e(unit)}</td>'


def _row(label: str, cell: str) -> str:
    return f"<tr><th>{_e(label)}</th>{cell}</tr>"


def _table(headers: Iterable[str], rows: list[str], empty: str, table_id: str) -> str:
    if not rows:
        return f'<p class="muted" id="{_e(table_id)}-empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<table id="{_e(table_id)}"><tr>{head}</tr>{"".join(rows)}</table>'


def _totals(d: PageData) -> str:
    g = d.state.gauges
    return "".join(
        (
            _row("accounts", _num("total-accounts", g.accounts if g else None)),
            _row("balance (Σ)", _num("total-balance", g.balance if g else None)),
            _row("held (Σ)", _num("total-held", g.held if g else None)),
            _row("available (Σ)", _num("total-available", g.available if g else None)),
            _row("open holds", _num("open-holds", g.open_holds if g else None)),
            _row("payment events pending", _num("payment-events-pending", g.pending_events if g else None)),
        )
    )


def _tasks(d: PageData) -> str:
    g = d.state.gauges
    rows = [
        _row("in flight: queued", _num("inflight-queued", g.queued if g else None)),
        _row("in flight: running", _num("inflight-running", g.running if g else None)),
        _row("stuck", _num("stuck-count", g.stuck if g else None)),
    ]
    for status in ("queued", "running", "succeeded", "failed", "canceled"):
        value = d.by_status.get(status, 0) if d.by_status is not None else None
        rows.append(_row(f"all time: {status}", _num(f"tasks-{status}", value)))
    if d.queue_live is None:
        rows.append(_row("queue: live tasks", _num("queue-depth", None)))
    else:
        live, entries = d.queue_live
        rows.append(_row("queue: live tasks", _num("queue-depth", live)))
        stale = f"{entries:,} entries in Redis; the rest are wake-ups of finished tasks, dropped when due"
        rows.append(
            f'<tr><td colspan="2" class="muted small" id="queue-entries" data-value="{entries}">{_e(stale)}</td></tr>'
        )
    return "".join(rows)


def _reach(s: OpsState) -> str:
    """The provider's reachability as the workers last saw it: the last connection error while it fails."""
    if not s.circuit_known:
        return '<td id="provider-reach" data-value="unknown" class="muted">unknown</td>'
    r = s.provider_reach
    if r is None:
        return '<td id="provider-reach" data-value="ok" class="ok">yes: the last call was answered</td>'
    state, cls = ("unreachable", "bad") if r["unreachable"] else ("failing", "warn")
    return (
        f'<td id="provider-reach" data-value="{state}" data-failures="{_e(r["failures"])}" class="{cls}">'
        f"{_e(state.upper())}: {_e(r['failures'])} connection failure(s) in a row, the last at "
        f'{_e(_utc(float(r["at"])))} UTC: <code id="provider-last-error">{_e(r["lastError"])}</code></td>'
    )


def _provider(d: PageData) -> str:
    s = d.state
    if not s.circuit_known:
        circuit = '<td id="circuit-state" data-value="unknown" class="muted">unknown</td>'
    elif s.circuit is None:
        circuit = '<td id="circuit-state" data-value="closed" class="ok">closed: submitting</td>'
    else:
        why = s.circuit.get("reason", "unknown")
        since = s.circuit.get("since")
        when = f" since {_utc(float(since))} UTC" if isinstance(since, int | float) else ""
        # Which provider key (its public id), and how many of the keys are open (KIE_API_KEYS).
        key, opened, keys = s.circuit.get("providerKey"), s.circuit.get("openKeys"), s.circuit.get("keys")
        which = f" (key {key}, {opened} of {keys} keys)" if key is not None else ""
        circuit = f'<td id="circuit-state" data-value="open" class="bad">OPEN: {_e(why)}{_e(which)}{_e(when)}</td>'
    rows = [_row("reachable", _reach(s)), _row("circuit", circuit)]
    if s.provider_credits is None:
        rows.append(_row("credit balance", _num("provider-credits", None)))
    else:
        credits, at = s.provider_credits
        rows.append(_row("credit balance", _num("provider-credits", credits)))
        rows.append(
            _row(
                "polled",
                f'<td id="provider-credits-age" data-value="{_e(round(d.now - at, 1))}">'
                f"{_e(_ago(d.now - at))} ago</td>",
            )
        )
    for kind, plural in (("create", "creates"), ("query", "queries")):
        used, limit = s.budget.get(kind, (None, None)) if s.budget is not None else (None, None)
        if used is None or limit is None:
            rows.append(_row(f"budget: {kind}", _num(f"budget-{kind}-used", None)))
            continue
        cls = "bad" if used >= limit else ("warn" if used >= 0.8 * limit else "")
        rows.append(
            _row(
                f"budget: {plural} in window",
                f'<td class="num {cls}" id="budget-{kind}-used" data-value="{used}" data-limit="{limit}">'
                f"{used} / {limit}</td>",
            )
        )
    rows.append(_row("live workers", _num("workers", len(s.workers) if "redis" not in s.errors else None)))
    return "".join(rows)


def _audit(d: PageData) -> str:
    r = d.audit
    if r is None:
        why = d.errors.get("audit", "not run")
        return f'<p id="audit-ok" data-value="unknown" class="muted">unknown: {_e(why)}</p>'
    count = f'<span id="audit-problems" data-value="{len(r.problems)}">{len(r.problems)}</span>'
    if r.ok:
        return (
            f'<p id="audit-ok" data-value="true" class="ok">clean: every invariant holds<span hidden>{count}</span></p>'
        )
    head = f'<p id="audit-ok" data-value="false" class="bad">{count} problem(s)</p>'
    rows = [
        f'<tr class="problem" data-kind="{_e(p.kind)}" data-task="{_e(p.taskId or "")}" '
        f'data-account="{_e(p.accountId or "")}" data-event="{_e(p.eventId or "")}">'
        f"<td><code>{_e(p.kind)}</code></td>"
        f"<td><code>{_e(p.taskId or p.eventId or p.accountId or '')}</code></td><td>{_e(p.detail)}</td></tr>"
        for p in r.problems[:MAX_PROBLEMS_SHOWN]
    ]
    more = len(r.problems) - MAX_PROBLEMS_SHOWN
    tail = f'<p class="muted">and {more} more: see <code>creditq audit</code></p>' if more > 0 else ""
    return head + _table(("kind", "where", "detail"), rows, "no problems", "audit-table") + tail


def _stuck(d: PageData) -> str:
    if d.stuck is None:
        return f'<p class="muted">unknown: {_e(d.errors.get("stuck", "not read"))}</p>'
    rows = [
        f'<tr class="stuck" data-task="{_e(t.task_id)}"><td><code>{_e(t.task_id)}</code></td>'
        f"<td><code>{_e(t.account_id)}</code></td><td>{_e(t.model)}</td><td>{_e(t.status)}</td>"
        f"<td><code>{_e(t.provider_task_id or '-')}</code></td><td>{_e(_utc(t.deadline_at))}</td>"
        f'<td class="num">{_e(_ago(t.overdue_seconds))}</td></tr>'
        for t in d.stuck
    ]
    headers = ("task", "account", "model", "status", "provider task", "deadline (UTC)", "overdue")
    return _table(headers, rows, "none: the sweeper is keeping up", "stuck-table")


def _failures(d: PageData) -> str:
    if d.failures is None:
        return f'<p class="muted">unknown: {_e(d.errors.get("failures", "not read"))}</p>'
    by_reason: dict[str, list[stats.FailureSample]] = {}
    for sample in d.samples or []:
        by_reason.setdefault(sample.reason, []).append(sample)
    rows = []
    for f in d.failures:
        samples = "".join(
            f'<div class="sample" data-task="{_e(x.task_id)}"><code>{_e(x.task_id)}</code> '
            f'<span class="muted">{_e(_utc(x.at)[11:])}</span> {_e(x.message[:200])}</div>'
            for x in by_reason.get(f.reason, [])
        )
        rows.append(
            f'<tr class="failure" data-reason="{_e(f.reason)}" data-value="{f.count}"><td><code>{_e(f.reason)}</code>'
            f'</td><td class="num">{f.count:,}</td><td>{_e(_utc(f.last_at))}</td><td>{samples}</td></tr>'
        )
    return _table(
        ("reason", "tasks", "last (UTC)", "newest (task id, time, message)"), rows, "no failed tasks", "failures-table"
    )


def _history(d: PageData) -> str:
    h = d.history
    if h is None:
        return f'<p class="muted">unknown: {_e(d.errors.get("history", "not read"))}</p>'
    starts = [b.start for b in h]
    step = d.history_step_seconds
    charts = (
        stacked_bars("chart-submitted", "jobs submitted", starts, [Series("submitted", "#0969da", [b.submitted for b in h])], step),
        stacked_bars(
            "chart-outcomes",
            "jobs ended",
            starts,
            [
                Series("succeeded", "#1a7f37", [b.succeeded for b in h]),
                Series("failed", "#cf222e", [b.failed for b in h]),
                Series("canceled", "#8c959f", [b.canceled for b in h]),
            ],
            step,
        ),
        stacked_bars("chart-captured", "credits captured", starts, [Series("captured", "#8250df", [b.captured for b in h])], step),
        stacked_bars(
            "chart-in-flight", "in flight (queued + running) at each interval's end", starts,
            [Series("in flight", "#bf8700", [b.in_flight for b in h])], step,
        ),
    )  # fmt: skip
    return f'<div class="charts">{"".join(charts)}</div>'


def _account(d: PageData) -> str:
    if not d.account_ref:
        return '<p class="muted">Look up an account by its id or external id.</p>'
    if d.account is None:
        return f'<p class="bad" id="account-error">{_e(d.account_error or "not found")}</p>'
    a = d.account
    rows = [
        _row(
            "account", f'<td id="account-id" data-value="{_e(a["accountId"])}"><code>{_e(a["accountId"])}</code></td>'
        ),
        _row("external id", f'<td id="account-external-id">{_e(a.get("externalId") or "-")}</td>'),
        _row("tier", f'<td id="account-tier" data-value="{_e(a["tier"])}">{_e(a["tier"])}</td>'),
        _row("status", f'<td id="account-status" data-value="{_e(a["status"])}">{_e(a["status"])}</td>'),
        _row("balance", _num("account-balance", int(a["balance"]))),
        _row("held", _num("account-held", int(a["held"]))),
        _row("available", _num("account-available", int(a["available"]))),
    ]
    jobs = [
        f'<tr class="account-job" data-task="{_e(t["taskId"])}"><td><code>{_e(t["taskId"])}</code></td>'
        f'<td>{_e(t["model"])}</td><td class="{_status_class(str(t["status"]))}">{_e(t["status"])}</td>'
        f'<td class="num">{_e(t["cost"])}</td><td class="num">{_e(t["charged"])}</td>'
        f"<td>{_e(str(t['createdAt'])[:19].replace('T', ' '))}</td>"
        f"<td>{_e(((t.get('error') or {}).get('code')) or t.get('lastError') or '')}</td></tr>"
        for t in d.account_jobs or []
    ]
    entries = [
        f'<tr class="account-entry" data-entry="{_e(x["id"])}"><td>{_e(x["kind"])}</td>'
        f'<td class="num">{_e(x["amount"])}</td><td class="num">{_e(x["heldDelta"])}</td>'
        f'<td class="num">{_e(x["balanceAfter"])}</td><td><code>{_e(x.get("taskId") or "")}</code>'
        f"{_e(x.get('reason') or '')}</td><td>{_e(str(x['createdAt'])[:19].replace('T', ' '))}</td></tr>"
        for x in d.account_entries or []
    ]
    unread = (
        f'<p class="bad">cannot read its jobs or entries: {_e(d.errors["account"])}</p>'
        if "account" in d.errors
        else ""
    )
    return (
        f"<table>{''.join(rows)}</table>{unread}"
        "<h3>recent jobs</h3>"
        + _table(
            ("task", "model", "status", "cost", "charged", "created (UTC)", "error"), jobs, "no jobs", "account-jobs"
        )
        + "<h3>recent entries</h3>"
        + _table(
            ("kind", "amount", "held Δ", "balance after", "task / reason", "at (UTC)"),
            entries,
            "no entries",
            "account-entries",
        )
    )


def _status_class(status: str) -> str:
    return {"succeeded": "ok", "failed": "bad", "queued": "warn", "running": "warn"}.get(status, "muted")


def _money(d: PageData) -> str:
    """Money over time: lots expiring soon, accounts in debt (and what each owes), pending payment events."""
    g = d.state.gauges
    rows = "".join(
        (
            _row("lots expiring within 7 days", _num("lots-expiring", g.expiring_lots if g else None)),
            _row("credits expiring within 7 days", _num("credits-expiring", g.expiring_credits if g else None)),
            _row("accounts in debt", _num("accounts-in-debt", g.in_debt if g else None)),
            _row("credits owed (Σ)", _num("credits-owed", g.owed if g else None)),
            _row("payment events pending", _num("money-events-pending", g.pending_events if g else None)),
        )
    )
    if d.debtors is None:
        table = f'<p class="muted">unknown: {_e(d.errors.get("debtors", "not read"))}</p>'
    else:
        lines = [
            f'<tr class="debtor" data-account="{_e(x.account_id)}" data-value="{x.owed}">'
            f"<td><code>{_e(x.account_id)}</code></td><td>{_e(x.external_id or '-')}</td><td>{_e(x.status)}</td>"
            f'<td class="num">{x.owed:,}</td></tr>'
            for x in d.debtors
        ]
        table = _table(("account", "external id", "status", "owes"), lines, "no account is in debt", "debtors-table")
    return f"<table>{rows}</table>{table}"


def render(d: PageData) -> str:
    """The page's HTML. Pure."""
    errors = {**d.state.errors, **d.errors}
    source_errors = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()) if k in ("postgres", "redis"))
    token_field = f'<input type="hidden" name="token" value="{_e(d.query_token)}">' if d.query_token is not None else ""
    hours = d.failure_window_seconds / 3600
    return _template().substitute(
        refresh=REFRESH_SECONDS,
        generated_at=_e(_utc(d.now)),
        source_errors=_e(f"unreachable: {source_errors}" if source_errors else ""),
        totals=_totals(d),
        tasks=_tasks(d),
        provider=_provider(d),
        audit_at=_e(_utc(d.audit_at)),
        audit=_audit(d),
        stuck=_stuck(d),
        failure_window=_e(f"{hours:g} h"),
        failures=_failures(d),
        history=_history(d),
        history_window=_e(f"{d.history_step_seconds * len(d.history or []) / 3600:g} h"),
        history_step=_e(f"{d.history_step_seconds / 60:g} min"),
        token_field=token_field,
        account_ref=_e(d.account_ref),
        account=_account(d),
        money=_money(d),
    )


def login(message: str, disabled: bool, wrong: bool) -> str:
    """The page a browser gets without the right token: what is wrong and a form asking for the token (sent as
    ``?token=``), or, while the admin endpoints are disabled, how to enable them. Pure."""
    if disabled:
        body = (
            f'<p class="bad" id="login-error">{_e(message)}</p>'
            "<p>Start the API with <code>CREDITQ_ADMIN_TOKEN</code> set, then open <code>/admin</code> again.</p>"
        )
    else:
        why = "That token is not the admin token." if wrong else "This page needs the admin token."
        body = (
            f'<p class="bad" id="login-error">{_e(why)}</p>'
            '<form method="get" action="/admin"><input type="password" name="token" '
            'placeholder="CREDITQ_ADMIN_TOKEN" aria-label="admin token" autofocus> <button type="submit">Open</button>'
            '</form><p class="muted">Or send <code>Authorization: Bearer &lt;token&gt;</code>. '
            "<code>creditq dev</code> prints the page's address with its token.</p>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        "<title>creditq operations: sign in</title><style>body{font:15px/1.5 system-ui,sans-serif;margin:40px auto;"
        "max-width:34em;color:#1f2328}.bad{color:#cf222e;font-weight:600}.muted{color:#57606a}"
        "input{padding:5px 8px;width:20em}code{font:13px ui-monospace,monospace}</style></head><body>"
        f"<h1>creditq operations</h1>{body}</body></html>"
    )
