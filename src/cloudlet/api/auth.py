"""Bearer tokens: every route but the schema needs a live one (401 otherwise)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from cloudlet.engine.engine import Engine
from cloudlet.engine.tokens import TokenView
from cloudlet.errors import Unauthorized


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(engine_of)]


def caller(
    engine: EngineDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TokenView:
    """The token the request carries, if it is live."""
    if authorization is None:
        raise Unauthorized(
            "this API needs a token", hint="send 'Authorization: Bearer TOKEN' (make a token first)"
        )
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized(
            "the Authorization header is not a bearer token",
            hint="send 'Authorization: Bearer TOKEN'",
        )
    token = engine.tokens.check(secret.strip())
    if token is None:
        raise Unauthorized(
            "the token is unknown, expired or revoked", hint="make a new token and use it"
        )
    return token


Caller = Annotated[TokenView, Depends(caller)]
