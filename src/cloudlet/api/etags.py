"""ETags of the JSON a read answers; If-None-Match (304) on reads, If-Match on changes.

A tag is a hash of the JSON itself, so two servers (or a restart) give one resource
the same tag, and any change to what a client sees changes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from cloudlet.errors import PreconditionFailed

NOT_MODIFIED: dict[str, Any] = {"description": "unchanged since the ETag in If-None-Match"}


def etag_of(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def _tags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def tagged(request: Request, data: Any) -> Response:
    """``data`` as JSON with its ETag; 304 with no body when If-None-Match names it
    (compared weakly, as RFC 9110 says for GET)."""
    tag = etag_of(data)
    asked = request.headers.get("if-none-match")
    if asked is not None:
        tags = [t.removeprefix("W/") for t in _tags(asked)]
        if "*" in tags or tag in tags:
            return Response(status_code=304, headers={"ETag": tag})
    return JSONResponse(data, headers={"ETag": tag})


def require_match(if_match: str | None, current: Any, what: str) -> None:
    """Refuse (412) a change whose If-Match does not name ``current``'s tag (compared
    strongly: a weak tag never matches); no If-Match is no condition."""
    if if_match is None:
        return
    tags = _tags(if_match)
    if "*" in tags or etag_of(current) in tags:
        return
    raise PreconditionFailed(
        f"{what} changed since the version in If-Match",
        hint="read it again and send its new ETag, or leave out If-Match",
    )
