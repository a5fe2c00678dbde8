"""The web page at ``/`` and the API docs at ``/docs`` and ``/redoc``, all served from files
in the package (``service/static``), so they work on a network without internet access.

The page holds no data: it is a static shell whose scripts call the API with the key the user
types in, so it is open even when the API needs a key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.deps import RootDep

STATIC = Path(__file__).resolve().parent.parent / "static"
VENDOR = "/static/vendor"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


docs_router = APIRouter(include_in_schema=False)


@docs_router.get("/docs")
def swagger(root: RootDep) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="RIIR API",
        swagger_js_url=f"{root}{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",  # FastAPI's default is a remote URL
        swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
    )


@docs_router.get("/redoc")
def redoc(root: RootDep) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title="RIIR API",
        redoc_js_url=f"{root}{VENDOR}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}/static/favicon.svg",
        with_google_fonts=False,  # fonts.googleapis.com is out of reach offline
    )


def install(app: FastAPI, docs: bool) -> None:
    """The page and its files; the docs too when ``docs`` (the schema is open)."""
    app.include_router(router)
    if docs:
        app.include_router(docs_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
