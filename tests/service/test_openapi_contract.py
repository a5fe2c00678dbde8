"""The OpenAPI document tells the truth about bodies and status codes (schemathesis reads it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.main import create_app

EXPECTED = {
    ("post", "/register"): {"202", "400", "401", "413", "415", "422", "502", "503"},
    ("post", "/register-series"): {"202", "400", "401", "413", "415", "422", "503"},
    ("get", "/jobs/{job_id}"): {"200", "401", "404", "422", "503"},
    ("delete", "/jobs/{job_id}"): {"200", "401", "404", "422", "503"},
    ("get", "/jobs/{job_id}/artifacts/{name}"): {"200", "401", "404", "409", "422", "503"},
    ("get", "/jobs/{job_id}/artifacts/displacements/{frame}"): {
        "200",
        "401",
        "404",
        "409",
        "422",
        "503",
    },
    ("get", "/jobs"): {"200", "401", "403", "422", "503"},
    ("get", "/jobs/{job_id}/inputs/{role}"): {"200", "401", "404", "422", "503"},
    ("get", "/models"): {"200", "401"},
    ("get", "/health"): {"200"},
    ("get", "/ready"): {"200", "401", "503"},
    ("get", "/metrics"): {"200", "401"},
}


@pytest.fixture(scope="module")
def spec(settings: Settings) -> dict[str, Any]:
    return TestClient(create_app(settings)).get("/openapi.json").json()


def test_every_route_documents_its_status_codes(spec: dict[str, Any]) -> None:
    operations = {
        (method, path): op for path, item in spec["paths"].items() for method, op in item.items()
    }
    assert set(operations) == set(EXPECTED)
    for key, codes in EXPECTED.items():
        responses = operations[key]["responses"]
        assert set(responses) == codes, key
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (key, code)


def test_upload_bodies_are_documented_as_multipart(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/register"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = body["schema"]
    assert schema["required"] == []  # an image may be named by UID in the PACS instead
    assert schema["properties"]["fixed"]["format"] == "binary"
    assert {"model", "steps", "init", "similarity", "fixed_labels"} <= set(schema["properties"])
    assert {"fixed_series_uid", "moving_study_uid", "store"} <= set(schema["properties"])
    series = spec["paths"]["/register-series"]["post"]["requestBody"]["content"]
    assert series["multipart/form-data"]["schema"]["required"] == ["series"]


def test_api_key_is_a_documented_security_scheme(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": scheme["description"],
    }
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/models"]["get"]["security"] == [{"APIKeyHeader": []}]


DOCUMENTED = [
    Path(__file__).parents[2] / "README.md",
    *sorted((Path(__file__).parents[2] / "docs").glob("*.md")),
]


def _resolve_ref(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def test_the_documented_example_requests_name_real_routes(spec: dict[str, Any]) -> None:
    """Every http://127.0.0.1:8000/… in the README and docs matches a route, and a path
    parameter with fixed values (an artifact's name) holds one of them: a user who copies a
    documented curl line gets the file, not a 422."""
    templates = []
    for path, item in spec["paths"].items():
        params = {
            p["name"]: _resolve_ref(spec, p["schema"])
            for op in item.values()
            for p in op.get("parameters", [])
            if p["in"] == "path"
        }
        pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path))
        templates.append((re.compile(pattern + "$"), params))
    urls = [
        (doc.name, url)
        for doc in DOCUMENTED
        for url in re.findall(r"http://127\.0\.0\.1:8000(/[^\s\"'`)]*)", doc.read_text())
    ]
    assert len(urls) >= 3
    for doc, url in urls:
        path = url.split("?")[0].rstrip("/") or "/"
        matches = [(m, params) for regex, params in templates if (m := regex.match(path))]
        # /docs and /openapi.json are FastAPI's own pages, / the web page (service.routes.page).
        assert matches or path in ("/", "/docs", "/openapi.json"), f"{doc}: {url}"
        for match, params in matches:
            for name, value in match.groupdict().items():
                allowed = params.get(name, {}).get("enum")
                if allowed is not None:
                    assert value in allowed, f"{doc}: {url} ({name} must be one of {allowed})"
