"""docker-compose.yml as a real Compose implementation reads it (``docker compose config`` or Debian's
``docker-compose`` 1.29: ``config`` needs no Docker engine): safe by default, the simulator only in the ``dev``
profile, a worker healthcheck, nothing depending on the simulator. CI installs Compose (.ci/run); elsewhere the
test is skipped when no Compose is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> list[str] | None:
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if r.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE = _compose()
pytestmark = pytest.mark.skipif(
    COMPOSE is None and not os.environ.get("CI"), reason="no Compose installed (CI installs it)"
)


def _config(*args: str, token: str | None = "t0k3n") -> subprocess.CompletedProcess[str]:  # noqa: S107
    assert COMPOSE is not None, "CI must have a Compose implementation: see .ci/run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITQ_", "KIE_", "COMPOSE_"))}
    if token is not None:
        env["CREDITQ_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(ROOT), *args, "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _services(*args: str) -> dict[str, Any]:
    r = _config(*args)
    assert r.returncode == 0, r.stderr
    services: dict[str, Any] = yaml.safe_load(r.stdout)["services"]
    return services


def _ports(service: dict[str, Any]) -> list[str]:
    """Each published port as ``host_ip:published`` (Compose v2 writes long syntax, 1.29 short)."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append(f"{p.get('host_ip', '')}:{p.get('published')}")
        else:
            parts = str(p).split(":")
            out.append(f"{parts[0]}:{parts[1]}" if len(parts) == 3 else f":{parts[0]}")
    return out


def test_admin_token_is_required() -> None:
    r = _config(token=None)
    assert r.returncode != 0
    assert "CREDITQ_ADMIN_TOKEN" in r.stderr


def test_default_profile_has_no_simulator_and_nothing_depends_on_it() -> None:
    services = _services()
    # Compose v2 leaves out the services of inactive profiles; 1.29 lists them with their profiles.
    assert "sim" not in services or services["sim"]["profiles"] == ["dev"]
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(services)
    for name, s in services.items():
        if name != "sim":
            assert "sim" not in (s.get("depends_on") or {}), name
    assert services["api"]["environment"]["CREDITQ_ADMIN_TOKEN"] == "t0k3n"
    assert _ports(services["api"]) == ["127.0.0.1:8000"]
    for name in ("postgres", "redis", "worker", "migrate"):  # reached on the compose network only
        assert not services[name].get("ports"), name


def test_dev_profile_runs_the_simulator_on_loopback_only() -> None:
    services = _services("--profile", "dev")
    assert services["sim"]["profiles"] == ["dev"]
    assert _ports(services["sim"]) == ["127.0.0.1:8100"]
    assert services["worker"]["environment"]["KIE_BASE_URL"] == "http://sim:8100"


def test_worker_has_a_healthcheck() -> None:
    check = _services()["worker"]["healthcheck"]
    assert check["test"] == ["CMD", "creditq", "worker", "--check"]
