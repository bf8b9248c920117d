"""``GET /openapi.json`` is true to the app: every route documented, every documented path served, valid
OpenAPI 3.1, and docs/API.md's endpoint index generated from it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from openapi_spec_validator import validate

from api import openapi
from api.app import create_app, plain_routes
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
_PARAM = re.compile(r"\{[^}]+\}")


def _norm(path: str) -> str:
    # The app's routes may name a parameter differently from the document ({task_id} vs {taskId}).
    return _PARAM.sub("{}", path)


def _served(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(settings)
    out: set[tuple[str, str]] = set()
    for path, route in plain_routes(app.routes):
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                out.add((method.lower(), _norm(path)))
    return out


def _documented() -> set[tuple[str, str]]:
    return {(m, _norm(p)) for p, methods in openapi.document()["paths"].items() for m in methods}


def test_every_route_is_documented_and_every_documented_path_served(settings: Settings) -> None:
    served, documented = _served(settings), _documented()
    assert served - documented == set(), "served but not in api/openapi.py: document them"
    assert documented - served == set(), "documented in api/openapi.py but not served"


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_operation_documents_its_errors_with_the_error_object() -> None:
    doc = openapi.document()
    schemes = set(doc["components"]["securitySchemes"])
    assert schemes == {"apiKey", "adminToken"}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            assert any(s.startswith("2") for s in operation["responses"]), (method, path)
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":  # /readyz's 503 is its own report
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            for requirement in operation["security"]:
                assert set(requirement) <= schemes
            # Every authenticated operation says what a missing credential gets.
            if operation["security"]:
                assert "401" in operation["responses"], (method, path)


def test_docs_api_md_index_is_generated_from_the_document() -> None:
    text = (ROOT / "docs" / "API.md").read_text()
    assert openapi.with_index(text) == text, "docs/API.md's endpoint index is stale: run `python -m api.openapi`"


async def test_served_at_openapi_json(client: httpx.AsyncClient) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == openapi.document()
