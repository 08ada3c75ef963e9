"""Idempotency-Key rows: answers kept 24 h, claims of dead servers taken over."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from cloudlet.engine.engine import Engine
from cloudlet.engine.idempotency import WINDOW, Answer, Claim
from cloudlet.errors import IdempotencyKeyReused
from cloudlet.store.models import ApiIdempotencyRow, utcnow
from tests.fakes import make_fake_engine


@pytest.fixture
def engine(short_tmp: Path) -> Engine:
    return make_fake_engine(short_tmp / "home")


def test_an_answer_is_replayed_until_its_day_is_over(engine: Engine) -> None:
    records = engine.idempotency
    claim = records.claim("default", "ci", "k", "f1")
    assert isinstance(claim, Claim)
    assert records.claim("default", "ci", "k", "f1") is None  # still being answered
    records.complete(claim, Answer(202, '{"id": "x"}', "/api/v1/operations/x"))
    assert records.claim("default", "ci", "k", "f1") == Answer(
        202, '{"id": "x"}', "/api/v1/operations/x"
    )
    with pytest.raises(IdempotencyKeyReused, match="'k'"):
        records.claim("default", "ci", "k", "f2")
    assert isinstance(records.claim("default", "other", "k", "f2"), Claim)
    with engine.db.session() as s:
        for row in s.query(ApiIdempotencyRow).all():
            row.created_at = utcnow() - WINDOW - timedelta(seconds=1)
    assert isinstance(records.claim("default", "ci", "k", "f2"), Claim)  # expired: acts anew
    with engine.db.session() as s:
        assert s.query(ApiIdempotencyRow).count() == 1  # the old ones were purged


def test_a_claim_whose_server_died_is_taken_over_and_a_released_one_is_free(
    engine: Engine,
) -> None:
    records = engine.idempotency
    dead = records.claim("default", "ci", "k", "f")
    assert isinstance(dead, Claim)
    with engine.db.session() as s:
        row = s.get(ApiIdempotencyRow, dead.row_id)
        assert row is not None
        row.owner_pid, row.owner_start = 2**22 + 1, 1
    taken = records.claim("default", "ci", "k", "f")
    assert isinstance(taken, Claim)
    with engine.db.session() as s:
        row = s.get(ApiIdempotencyRow, taken.row_id)
        assert row is not None and row.owner_pid == os.getpid()
    records.release(taken)
    assert isinstance(records.claim("default", "ci", "k", "f"), Claim)
