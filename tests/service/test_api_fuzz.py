"""Schemathesis against the OpenAPI schema, in-process: no generated request (valid or not)
gets a server error, and every answer's status code, content type and body are the ones
the schema documents. Bounded (few examples per route, derandomized) to stay fast."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs import broker
from jobs.settings import Settings
from service.main import create_app

EXAMPLES = 10  # per operation and mode; 12 operations
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(settings: Settings, models_dir: object) -> Iterator[schemathesis.BaseSchema]:
    """The app on the session's Redis. Workers are taken as present: whether one answers a
    ping in time on a loaded machine is /ready's business (test_health), not the fuzzer's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(broker, "workers", lambda celery, timeout: ["fuzz@localhost"])
        app: FastAPI = create_app(settings)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_fuzz(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []
    fixed: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            calls.append(response.status_code)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid: a route without parameters
            assert mode == GenerationMode.NEGATIVE and not operation.path_parameters
            fixed.append(operation.label)
    assert len(operations) == 12 and calls
    assert not [code for code in calls if code >= 500]
    with capsys.disabled():
        print(
            f"\n[reliability] schemathesis ({mode.value}): {len(calls)} requests over "
            f"{len(operations) - len(fixed)} operations, status codes "
            f"{sorted(set(calls))}, 0 server errors"
            + (f" (no invalid input exists for {', '.join(fixed)})" if fixed else "")
        )
