"""The client commands: ``creditq submit``, ``models``, ``jobs list|get|cancel|wait`` and ``account``.

They talk to the API like any client (one httpx client, the caller's bearer key) and never touch Postgres or
Redis, so they need none of the server's settings: only ``CREDITQ_API_URL`` and ``CREDITQ_API_KEY`` (or
``--api-url`` / ``--api-key``), which ``./.env`` may supply (real environment variables win). Tables and the
progress display are rich's; ``--json`` prints the API's own JSON instead. Exit status: 0 done, 1 the API refused
(its error code and message on stderr) or a waited-for job did not succeed, 2 a usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from creditq.follow import TERMINAL, follow

DEFAULT_API_URL = "http://127.0.0.1:8000"
CLIENT_VARS = ("CREDITQ_API_URL", "CREDITQ_API_KEY")
TIMEOUT_SECONDS = 15.0

# Piped output (scripts, tests) gets wide tables rather than rich's 80 columns and ellipses.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ApiUrl = Annotated[str, typer.Option("--api-url", envvar="CREDITQ_API_URL", help="the API's base URL")]
ApiKey = Annotated[str, typer.Option("--api-key", envvar="CREDITQ_API_KEY", help="your API key", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


def load_dotenv(path: Path = Path(".env")) -> None:
    """Put ``CREDITQ_API_URL`` / ``CREDITQ_API_KEY`` from ``./.env`` into the environment where not already set,
    so that the client commands' options see them. Idempotent; a missing file changes nothing."""
    if not path.is_file():
        return
    from dotenv import dotenv_values

    for k, v in dotenv_values(path).items():
        if k in CLIENT_VARS and v and k not in os.environ:
            os.environ[k] = v


class ApiError(Exception):
    """The API refused a request: its error code and message, and the HTTP status."""

    def __init__(self, resp: httpx.Response) -> None:
        self.status = resp.status_code
        try:
            e = resp.json()["error"]
            self.code, self.message = str(e["code"]), str(e["message"])
            self.details: list[dict[str, Any]] = list(e.get("details") or [])
        except (ValueError, KeyError, TypeError):
            self.code, self.message, self.details = "http_error", resp.text[:200], []
        super().__init__(f"{self.code}: {self.message} (HTTP {self.status})")


def _fail(message: str, status: int = 1) -> NoReturn:
    err.print(f"creditq: error: {message}", markup=False)
    raise typer.Exit(status)


def _http(api_url: str, api_key: str | None) -> httpx.Client:
    if not api_key:
        _fail("no API key: pass --api-key or set CREDITQ_API_KEY (in the environment or ./.env)", 2)
    return httpx.Client(
        base_url=api_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=TIMEOUT_SECONDS
    )


def _call(http: httpx.Client, method: str, path: str, ok: int = 200, **kw: Any) -> dict[str, Any]:
    """One API call; its JSON object on ``ok``. Raises ApiError; exits 1 when the API cannot be reached."""
    try:
        resp = http.request(method, path, **kw)
    except httpx.HTTPError as e:
        _fail(f"cannot reach the API at {http.base_url}: {type(e).__name__}: {e}")
    if resp.status_code != ok:
        raise ApiError(resp)
    body: dict[str, Any] = resp.json()
    return body


def _call_or_fail(http: httpx.Client, method: str, path: str, ok: int = 200, **kw: Any) -> dict[str, Any]:
    """:func:`_call` for commands with nothing to add to an error: the API's answer becomes the exit message."""
    try:
        return _call(http, method, path, ok, **kw)
    except ApiError as e:
        _fail(str(e))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs → an input object. A value that parses as JSON is taken as JSON (``max_images=2`` is the
    number 2, ``image_urls='["https://..."]'`` a list, ``watermark=true`` a boolean), else as the string itself.
    Raises typer.BadParameter for a pair without ``=`` or an empty key."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--input")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        result[key.strip()] = value
    return result


def _suggest(http: httpx.Client, model: str) -> str:
    """' (did you mean X?)' when ``model`` is not in GET /v1/models and a close match is; else ''."""
    try:
        items = _call(http, "GET", "/v1/models").get("items", [])
    except ApiError:
        return ""
    names = [str(i["model"]) for i in items]
    if model in names:
        return ""
    close = difflib.get_close_matches(model, names, n=1, cutoff=0.5)
    if not close:  # a bare name ("nano-banana") matches the part after the vendor
        tails = {n.rsplit("/", 1)[-1]: n for n in names}
        close = [tails[t] for t in difflib.get_close_matches(model, list(tails), n=1, cutoff=0.6)]
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (models: {', '.join(names)}; see creditq models)"


def _task_line(task: dict[str, Any]) -> str:
    line = f"task {task['taskId']}: {task['status']} ({task['model']}, cost {task['cost']}, charged {task['charged']})"
    if task.get("lastError"):
        line += f" - last attempt: {task['lastError']}"
    return line


def _ended(task: dict[str, Any]) -> int:
    """Print a terminal task's outcome; 0 when it succeeded."""
    if task["status"] == "succeeded":
        out.print(f"succeeded: charged {task['charged']} credits", markup=False)
        for u in (task.get("result") or {}).get("urls", []):
            out.print(f"  {u}", markup=False)
        return 0
    e = task.get("error") or {}
    out.print(
        f"{task['status']}: {e.get('code', '?')}: {e.get('message', '')} (charged {task['charged']})", markup=False
    )
    return 1


def _wait(http: httpx.Client, task: dict[str, Any]) -> int:
    try:
        final = follow(http, task, out)
    except KeyboardInterrupt:
        tid = task["taskId"]
        err.print(
            f"\ncreditq: stopped following task {tid}; the job goes on (its credits stay held until it ends).\n"
            f"  follow it again: creditq jobs wait {tid}\n"
            f"  look at it:      creditq jobs get {tid}\n"
            f"  cancel it (only while queued): creditq jobs cancel {tid}",
            markup=False,
        )
        raise typer.Exit(130) from None
    except ApiError as e:
        _fail(str(e))
    return _ended(final)


def submit(
    model: Annotated[str, typer.Option(help="a model from `creditq models`", show_default=False)],
    prompt: Annotated[str | None, typer.Option(help="the text prompt (input.prompt)", show_default=False)] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="an input field as KEY=VALUE, repeatable; JSON values are parsed", show_default=False
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="send again with the same key: the same task, nothing held twice", show_default=False),
    ] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="a URL that gets the task's end (signed webhook)", show_default=False)
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the task to its end, then print the result")] = False,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> int:
    """Submit a job with your API key and (--wait) follow it to its end (exit 0 when it succeeded)."""
    body_input = parse_inputs(inputs or [])
    if prompt is not None:
        body_input["prompt"] = prompt
    if "prompt" not in body_input:
        raise typer.BadParameter("give --prompt (or --input prompt=...)", param_hint="--prompt")
    body: dict[str, Any] = {"model": model, "input": body_input}
    if callback_url:
        body["callbackUrl"] = callback_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with _http(api_url, api_key) as http:
        try:
            task = _call(http, "POST", "/v1/jobs", ok=202, json=body, headers=headers)
        except ApiError as e:
            _fail(f"{e}{_suggest(http, model)}" if e.status == 422 else str(e))
        if as_json and not wait:
            _print_json(task)
            return 0
        out.print(f"task {task['taskId']}: {task['status']} ({task['cost']} credits held)", markup=False)
        if not wait:
            out.print(f"  follow it: creditq jobs wait {task['taskId']}", markup=False)
            return 0
        return _wait(http, task)


def models(as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> int:
    """The models you can submit, with their kind, family and cost (no key needed)."""
    with httpx.Client(base_url=api_url.rstrip("/"), timeout=TIMEOUT_SECONDS) as http:
        body = _call_or_fail(http, "GET", "/v1/models")
    if as_json:
        _print_json(body)
        return 0
    table = Table("model", "kind", "family", "cost", title="models")
    for m in body.get("items", []):
        table.add_row(str(m["model"]), str(m["kind"]), str(m.get("family", "")), str(m["cost"]))
    out.print(table)
    return 0


def account(as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL, api_key: ApiKey = "") -> int:
    """Your account: balance, held, available, tier and today's limits."""
    with _http(api_url, api_key) as http:
        a = _call_or_fail(http, "GET", "/v1/account")
    if as_json:
        _print_json(a)
        return 0
    table = Table(show_header=False, box=None)
    for label in ("accountId", "externalId", "tier", "status", "balance", "held", "available"):
        table.add_row(label, str(a.get(label) if a.get(label) is not None else "-"))
    for name, value in (a.get("limits") or {}).items():
        table.add_row(f"limits.{name}", json.dumps(value))
    out.print(table)
    return 0


jobs_app = typer.Typer(help="list, look at, follow and cancel your jobs", no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="only jobs in this status (queued, running, succeeded, failed, canceled)")
    ] = None,
    limit: Annotated[int, typer.Option(help="how many, newest first", min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option(help="the next page: a nextCursor printed before")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> int:
    """Your jobs, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if status:
        params["status"] = status
    if cursor:
        params["cursor"] = cursor
    with _http(api_url, api_key) as http:
        page = _call_or_fail(http, "GET", "/v1/jobs", params=params)
    if as_json:
        _print_json(page)
        return 0
    table = Table("task", "model", "status", "cost", "charged", "created (UTC)", "error")
    for t in page.get("items", []):
        why = (t.get("error") or {}).get("code") or t.get("lastError") or ""
        table.add_row(t["taskId"], t["model"], t["status"], str(t["cost"]), str(t["charged"]), t["createdAt"], why)
    out.print(table)
    if page.get("nextCursor"):
        out.print(f"more: creditq jobs list --cursor {page['nextCursor']}", markup=False)
    return 0


@jobs_app.command("get")
def jobs_get(
    task_id: Annotated[str, typer.Argument(help="the task id", show_default=False)],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> int:
    """One job's view (exit 0 whatever its status)."""
    with _http(api_url, api_key) as http:
        task = _call_or_fail(http, "GET", f"/v1/jobs/{task_id}")
    if as_json:
        _print_json(task)
        return 0
    out.print(_task_line(task), markup=False)
    for u in (task.get("result") or {}).get("urls", []):
        out.print(f"  {u}", markup=False)
    if task.get("error"):
        out.print(f"  error: {task['error'].get('code')}: {task['error'].get('message')}", markup=False)
    return 0


@jobs_app.command("wait")
def jobs_wait(
    task_id: Annotated[str, typer.Argument(help="the task id", show_default=False)],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> int:
    """Follow a job to its end (exit 0 when it succeeded)."""
    with _http(api_url, api_key) as http:
        task = _call_or_fail(http, "GET", f"/v1/jobs/{task_id}")
        if task["status"] in TERMINAL:
            return _ended(task)
        return _wait(http, task)


@jobs_app.command("cancel")
def jobs_cancel(
    task_id: Annotated[str, typer.Argument(help="the task id", show_default=False)],
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = "",
) -> int:
    """Cancel a job that is still queued (its credits are released). A job already at the provider cannot be
    canceled: the API answers not_cancelable (exit 1)."""
    with _http(api_url, api_key) as http:
        try:
            task = _call(http, "POST", f"/v1/jobs/{task_id}/cancel")
        except ApiError as e:
            if e.code == "not_cancelable":
                _fail(f"{e} - only a queued job can be canceled; a running one ends at the provider")
            _fail(str(e))
    if as_json:
        _print_json(task)
        return 0
    out.print(_task_line(task), markup=False)
    return 0


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``creditq`` app."""
    app.command()(submit)
    app.command()(models)
    app.command()(account)
    app.add_typer(jobs_app, name="jobs")
