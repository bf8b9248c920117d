"""The cost of one log line: µs per ``task.queued`` line (the submit's one line) through ``shared.logging``.

    python -m bench.logline [--format json|console] [--lines 20000] [--repeats 7]

Configures logging as a process does (``shared.logging.configure``, info level) onto ``/dev/null`` opened as text,
as stderr is, binds a ``request_id`` as the API's middleware does, and logs the line ``shared.ledger.reports``
writes for a submit, with its fields. Prints the median and the fastest repeat, and the same for one stdlib
record (as arq and uvicorn log). Compare two code states by running each tree's copy with ``PYTHONPATH`` set to it
(``git archive`` into a directory), in the same minutes: the machine is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable

import structlog

from shared.config import Settings
from shared.logging import configure

TASK = {
    "task_id": "task_01JD3ZK8Q2W5X7Y9A1B3C5D7E9",
    "account_id": "acct_01JD3ZK8Q2W5X7Y9A1B3C5D7E9",
    "model": "google/nano-banana",
    "provider_task_id": None,
}


def _per_line(one: Callable[[], None], lines: int, repeats: int) -> list[float]:
    for _ in range(lines // 10):
        one()  # warm: the logger is cached on first use
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(lines):
            one()
        runs.append((time.perf_counter() - started) / lines * 1e6)
    return runs


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.logline", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=["json", "console"], default="json")
    p.add_argument("--lines", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    settings = dataclasses.replace(Settings.from_env({}, dotenv=False), log_format=args.format, log_level="info")
    with open("/dev/null", "w") as out:
        configure(settings, out)
        log = structlog.get_logger("creditq.shared.ledger")
        lib = logging.getLogger("arq.worker")
        structlog.contextvars.bind_contextvars(request_id="0f8e2b7c9d1a4e3f")
        own = _per_line(
            lambda: log.info("task.queued", **TASK, status="queued", money="hold", amount=4), args.lines, args.repeats
        )
        std = _per_line(lambda: lib.info("job %s started", "task:abc"), args.lines, args.repeats)
    for name, runs in (("task.queued (structlog)", own), ("a stdlib record", std)):
        print(f"{args.format}, {name}: {statistics.median(runs):.1f} µs per line (fastest repeat {min(runs):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
