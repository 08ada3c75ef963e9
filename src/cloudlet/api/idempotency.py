"""``Idempotency-Key`` on the routes that start work: a retry gets the first answer.

The key is scoped to the caller's token; the request it came with is remembered by a
fingerprint (method, path, query and the JSON body in canonical form), so sending the
key with another request is a 422 naming the key. Only a successful answer is kept: a
refused request changed nothing, so its retry acts anew.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from cloudlet.api.auth import Caller, engine_of
from cloudlet.engine.engine import Engine
from cloudlet.engine.idempotency import Answer, Claim
from cloudlet.engine.tokens import TokenView
from cloudlet.errors import Busy, InvalidInput

KEY = re.compile(r"[\x21-\x7e]{1,255}")
WAIT = 10.0  # how long a concurrent duplicate waits for the first request's answer
REPLAYED = "Idempotent-Replayed"


def fingerprint(method: str, path: str, query: list[tuple[str, str]], body: bytes) -> str:
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = body.hex()
    text = json.dumps([method, path, sorted(query), canonical])
    return hashlib.sha256(text.encode()).hexdigest()


def _replay(answer: Answer) -> Response:
    headers = {REPLAYED: "true"}
    if answer.location is not None:
        headers["Location"] = answer.location
    return Response(
        answer.body_json, status_code=answer.status, media_type="application/json",
        headers=headers,
    )  # fmt: skip


@dataclass(frozen=True)
class Once:
    """Runs a route's answer at most once per key (no key: every time)."""

    engine: Engine
    caller: TokenView
    key: str | None
    fingerprint: str

    def run(self, answer: Callable[[], JSONResponse]) -> Response:
        if self.key is None:
            return answer()
        claim = self._claim(self.key)
        if isinstance(claim, Answer):
            return _replay(claim)
        records = self.engine.idempotency
        try:
            response = answer()
        except BaseException:
            records.release(claim)
            raise
        if 200 <= response.status_code < 300:
            body = bytes(response.body).decode()
            records.complete(
                claim, Answer(response.status_code, body, response.headers.get("location"))
            )
        else:
            records.release(claim)
        return response

    def _claim(self, key: str) -> Answer | Claim:
        deadline = time.monotonic() + WAIT
        while True:
            got = self.engine.idempotency.claim(
                self.caller.project, self.caller.name, key, self.fingerprint
            )
            if got is not None:
                return got
            if time.monotonic() > deadline:
                raise Busy(
                    f"a request with Idempotency-Key {key!r} is still being answered",
                    hint="try again in a moment",
                )
            time.sleep(0.05)


async def once(
    request: Request,
    caller: Caller,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="a retry with the same key (and request) within 24 h gets the "
            "first answer instead of acting again"
        ),
    ] = None,
) -> Once:
    if idempotency_key is None:
        return Once(engine_of(request), caller, None, "")
    if not KEY.fullmatch(idempotency_key):
        raise InvalidInput(
            f"invalid Idempotency-Key {idempotency_key[:40]!r}",
            hint="send 1 to 255 visible ASCII characters, such as a UUID",
        )
    body = await request.body()
    print_ = fingerprint(request.method, request.url.path, request.query_params.multi_items(), body)
    return Once(engine_of(request), caller, idempotency_key, print_)


Idempotent = Annotated[Once, Depends(once)]
