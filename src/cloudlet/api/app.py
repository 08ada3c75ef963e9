"""The FastAPI application: routes, error envelopes, body limit, the engine passed in.

``create_app(engine)`` is what the server runs and what tests run on the fake driver.
``openapi_schema()`` builds the same routes without an engine, for the checked-in
schema (docs/openapi.json).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cloudlet.api import errors
from cloudlet.api.event_stream import Streams
from cloudlet.api.limits import BodyLimit
from cloudlet.api.operations import OperationRunner
from cloudlet.api.routes import events, instances, operations
from cloudlet.engine.engine import Engine

OPENAPI_URL = "/api/v1/openapi.json"


def _routes() -> FastAPI:
    app = FastAPI(
        title="cloudlet",
        version="1",
        description="Self-hosted cloud engine for virtual machines on QEMU.",
        openapi_url=OPENAPI_URL,
        docs_url=None,
        redoc_url=None,
        responses=errors.ERRORS,
    )
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.include_router(instances.router)
    app.include_router(operations.router)
    app.include_router(events.router)
    return app


def create_app(engine: Engine) -> FastAPI:
    """The API on ``engine``; operations a dead server left running read "interrupted"."""
    app = _routes()
    app.state.engine = engine
    app.state.runner = OperationRunner(engine)
    app.state.streams = Streams()
    return app


def openapi_schema() -> dict[str, Any]:
    return _routes().openapi()
