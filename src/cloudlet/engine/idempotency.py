"""Idempotency-Key records: the first answer to a keyed request, kept 24 h for retries.

A request with a key claims a row (unique per project, token and key) before it acts;
the database's unique constraint makes one of two concurrent claims win. The winner
stores its answer; a retry (or the concurrent loser, once the answer is there) gets
that answer back instead of acting again. A key sent with another request is refused.
A claim whose server died before answering is taken over, so a crash never makes a
key unusable for a day.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from cloudlet.engine.context import EngineContext
from cloudlet.errors import Busy, IdempotencyKeyReused
from cloudlet.host import processes
from cloudlet.store.models import ApiIdempotencyRow, utcnow

WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Answer:
    """What the first request answered: its status, JSON body and Location."""

    status: int
    body_json: str
    location: str | None


@dataclass(frozen=True)
class Claim:
    """This request is the first with its key: it acts, then completes or releases."""

    row_id: int


class IdempotencyRecords:
    """Claim, complete and release keyed requests' answers."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def claim(self, project: str, token: str, key: str, fingerprint: str) -> Answer | Claim | None:
        """The stored answer, a claim to act on, or None while another request with
        this key is still being answered."""
        for _ in range(3):
            try:
                return self._claim(project, token, key, fingerprint)
            except IntegrityError:
                continue  # a concurrent request claimed it first: read its row
        raise Busy(f"Idempotency-Key {key!r} is contended", hint="try again in a moment")

    def _claim(self, project: str, token: str, key: str, fingerprint: str) -> Answer | Claim | None:
        now = utcnow()
        with self.ctx.db.session() as s:
            s.execute(delete(ApiIdempotencyRow).where(ApiIdempotencyRow.created_at < now - WINDOW))
            row = s.scalar(
                select(ApiIdempotencyRow).where(
                    ApiIdempotencyRow.project == project,
                    ApiIdempotencyRow.token == token,
                    ApiIdempotencyRow.key == key,
                )
            )
            if row is not None:
                if row.fingerprint != fingerprint:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {key!r} was sent with another request before",
                        hint="use a new key for a new request; a retry must repeat the first",
                    )
                if row.status is not None and row.body_json is not None:
                    return Answer(row.status, row.body_json, row.location)
                if processes.is_alive(row.owner_pid, row.owner_start):
                    return None
                s.delete(row)  # its server died before it answered
                s.flush()
            pid = os.getpid()
            new = ApiIdempotencyRow(
                project=project,
                token=token,
                key=key,
                fingerprint=fingerprint,
                owner_pid=pid,
                owner_start=processes.start_time(pid),
                created_at=now,
            )
            s.add(new)
            s.flush()
            return Claim(new.id)

    def complete(self, claim: Claim, answer: Answer) -> None:
        with self.ctx.db.session() as s:
            row = s.get(ApiIdempotencyRow, claim.row_id)
            if row is not None:
                row.status = answer.status
                row.body_json = answer.body_json
                row.location = answer.location

    def release(self, claim: Claim) -> None:
        """The request failed and changed nothing: a retry with its key acts anew."""
        with self.ctx.db.session() as s:
            row = s.get(ApiIdempotencyRow, claim.row_id)
            if row is not None:
                s.delete(row)
