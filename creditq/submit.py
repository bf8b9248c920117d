"""``creditq submit``: submit a job with your API key and (``--wait``) follow it to its end.

Talks to the API like any client (httpx). Prints the task id at once; with ``--wait`` shows the status and the
elapsed time until the task ends, then the result URLs (exit 0) or the error (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "canceled")


def _fail(message: str) -> int:
    print(f"creditq: error: {message}", file=sys.stderr)
    return 1


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{err['code']}: {err['message']} (HTTP {resp.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def run(args: argparse.Namespace) -> int:
    """Submit, optionally follow. Exit status: 0 succeeded (or submitted without --wait), 1 otherwise."""
    url = (args.api_url or os.environ.get("CREDITQ_API_URL") or "http://127.0.0.1:8000").rstrip("/")
    key = args.api_key or os.environ.get("CREDITQ_API_KEY")
    if not key:
        return _fail("no API key: pass --api-key or set CREDITQ_API_KEY")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": args.model, "input": {"prompt": args.prompt}}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            resp = http.post("/v1/jobs", json=body)
            if resp.status_code != 202:
                return _fail(_error_text(resp))
            task: dict[str, Any] = resp.json()
            print(f"task {task['taskId']}: {task['status']} ({task['cost']} credits held)")
            if not args.wait:
                return 0
            return _follow(http, task)
    except httpx.HTTPError as e:
        return _fail(f"cannot reach the API at {url}: {e}")


def _follow(http: httpx.Client, task: dict[str, Any]) -> int:
    start = time.monotonic()
    tty = sys.stdout.isatty()
    last = ""
    while task["status"] not in TERMINAL:
        time.sleep(1)
        resp = http.get(f"/v1/jobs/{task['taskId']}")
        if resp.status_code != 200:
            return _fail(_error_text(resp))
        task = resp.json()
        line = f"  {task['status']:<9} {time.monotonic() - start:5.0f}s"
        if tty:
            print("\r" + line, end="", flush=True)
        elif task["status"] != last:
            print(line, flush=True)
        last = task["status"]
    if tty:
        print()
    if task["status"] == "succeeded":
        print(f"succeeded: charged {task['charged']} credits")
        for u in task.get("result", {}).get("urls", []):
            print(f"  {u}")
        return 0
    err = task.get("error") or {}
    print(f"{task['status']}: {err.get('code', '?')}: {err.get('message', '')} (charged {task['charged']})")
    return 1
