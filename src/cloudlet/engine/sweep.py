"""Recovery's share of staging: what a killed image import or VM import left behind.

Image imports stage under the image store, VM imports stage volumes in the pool they go
to; both name their work so storage/staging.py can tell it from anything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine.views import Cleanup
from cloudlet.storage.staging import LEGACY_IMAGE_STAGING, LEGACY_VOLUME_STAGING, sweep
from cloudlet.store.models import PoolRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def sweep_staging(ctx: EngineContext) -> list[Cleanup]:
    """Remove stale staging under the image store and every directory pool; notes."""
    with ctx.db.session() as s:
        pools = s.scalars(select(PoolRow.path).where(PoolRow.kind == "dir")).all()
    notes = []
    places = [(ctx.paths.images, LEGACY_IMAGE_STAGING)]
    places += [(Path(p), LEGACY_VOLUME_STAGING) for p in pools]
    for parent, legacy in places:
        removed = sweep(parent, legacy)
        if removed:
            notes.append(
                Cleanup(
                    "staging",
                    str(parent),
                    "removed",
                    f"removed {len(removed)} staging file(s) of an interrupted import in {parent}",
                )
            )
    return notes
