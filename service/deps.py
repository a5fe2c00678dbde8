"""Dependencies of the routes, as ``Annotated`` aliases; the objects live on ``app.state``
(built once by ``service.main.create_app``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from jobs.settings import Settings
from jobs.storage import Storage
from jobs.store import JobStore
from service.errors import Unauthorized


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


def _storage(request: Request) -> Storage:
    return request.app.state.storage  # type: ignore[no-any-return]


def _celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
StorageDep = Annotated[Storage, Depends(_storage)]
CeleryDep = Annotated[Celery, Depends(_celery)]

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="required on every route but /health when the server sets RIIR_API_KEY",
)


def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None
) -> None:
    expected = settings.api_key
    if expected is None:
        return
    # compare_digest: the time taken does not tell how much of a guess was right.
    secret = expected.get_secret_value().encode()
    if key is None or not secrets.compare_digest(key.encode(), secret):
        raise Unauthorized("send the service's API key in the X-API-Key header")


def root_path(request: Request) -> str:
    """The prefix a proxy mounts the API under (ASGI root_path), for the URLs we hand out."""
    return str(request.scope.get("root_path", "")).rstrip("/")


RootDep = Annotated[str, Depends(root_path)]
