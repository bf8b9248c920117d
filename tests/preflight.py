"""`python -m tests.preflight`: say in one line which service is missing, before any check runs."""

from __future__ import annotations

import socket
import sys

SERVICES = {
    "Postgres": (5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
    "Redis": (6379, "redis-server --daemonize yes --port 6379 --save '' --appendonly no"),
}


def missing() -> list[str]:
    """One line per service that does not accept connections on 127.0.0.1."""
    lines = []
    for name, (port, how) in SERVICES.items():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            lines.append(f"{name} is not reachable on 127.0.0.1:{port}: start it with `{how}`")
    return lines


if __name__ == "__main__":
    problems = missing()
    for line in problems:
        print(line, file=sys.stderr)
    sys.exit(3 if problems else 0)
