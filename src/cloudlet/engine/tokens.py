"""API tokens: made here, shown once, kept only as a hash, checked in constant time.

A token is 32 random bytes (URL-safe base64 with a ``clt_`` prefix so it is easy to spot
in a leaked file). With that much entropy a plain SHA-256 is the right hash: no password
stretching is needed, and a lookup by hash is one index probe. The comparison after the
lookup is ``hmac.compare_digest`` all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from cloudlet.engine.context import EngineContext
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.spec.names import VM, NameKind
from cloudlet.spec.units import parse_duration
from cloudlet.store.models import ApiTokenRow, utcnow

PREFIX = "clt_"
DEFAULT_PROJECT = "default"
MAX_LIFETIME = 3650 * 86400  # ten years: longer is a mistake (and overflows dates)
TOKEN = NameKind("token name", VM.pattern, VM.max_len, VM.rule)


@dataclass(frozen=True)
class TokenView:
    """A token as listed: never its secret."""

    name: str
    project: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        data["expires_at"] = self.expires_at.isoformat() + "Z" if self.expires_at else None
        return data


@dataclass(frozen=True)
class NewToken:
    """A token just made: ``secret`` is shown this once and stored nowhere."""

    token: TokenView
    secret: str

    def to_dict(self) -> dict[str, object]:
        return {**self.token.to_dict(), "secret": self.secret}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def _view(row: ApiTokenRow) -> TokenView:
    return TokenView(
        row.name, row.project, row.created_at, row.expires_at, row.revoked_at is not None
    )


def lifetime(text: str | None) -> timedelta | None:
    """ "30d", "12h", ... -> how long a token lives (None: until revoked)."""
    if text is None:
        return None
    seconds = parse_duration(text, what="token lifetime")
    if seconds > MAX_LIFETIME:
        raise InvalidInput(
            f"a token lifetime of {text!r} is too long", hint="give at most 3650 days"
        )
    return timedelta(seconds=seconds)


class Tokens:
    """Create, list, revoke and check API tokens (project ``default`` for now)."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def create(self, name: str, *, expires: timedelta | None = None) -> NewToken:
        TOKEN.check(name)
        secret = PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        with self.ctx.db.session() as s:
            taken = s.scalar(
                select(ApiTokenRow).where(
                    ApiTokenRow.project == DEFAULT_PROJECT, ApiTokenRow.name == name
                )
            )
            if taken is not None:
                raise Conflict(
                    f"a token named {name} exists already",
                    hint="give another name, or revoke the old token first",
                )
            row = ApiTokenRow(
                name=name,
                project=DEFAULT_PROJECT,
                secret_sha256=_digest(secret),
                created_at=now,
                expires_at=now + expires if expires is not None else None,
            )
            s.add(row)
        return NewToken(_view(row), secret)

    def list(self) -> list[TokenView]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name)).all()
        return [_view(r) for r in rows]

    def revoke(self, name: str) -> Done:
        TOKEN.check(name)
        with self.ctx.db.session() as s:
            row = s.scalar(
                select(ApiTokenRow).where(
                    ApiTokenRow.project == DEFAULT_PROJECT, ApiTokenRow.name == name
                )
            )
            if row is None:
                raise NotFound(f"no token named {name}", hint="list the tokens to see their names")
            if row.revoked_at is not None:
                return Done("token", name, "revoked", f"token {name} was revoked already", False)
            row.revoked_at = utcnow()
        return Done("token", name, "revoked", f"token {name} revoked")

    def check(self, secret: str) -> TokenView | None:
        """The live token whose secret this is; None when unknown, expired or revoked."""
        if not secret.startswith(PREFIX) or len(secret) > 200:
            return None
        digest = _digest(secret)
        with self.ctx.db.session() as s:
            row = s.scalar(select(ApiTokenRow).where(ApiTokenRow.secret_sha256 == digest))
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            return None
        if row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= utcnow():
            return None
        return _view(row)
