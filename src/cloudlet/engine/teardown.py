"""Removing every trace of a VM: its process, runtime, files, rows, volumes' links, NICs."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from cloudlet.engine import network_rows, storage_rows
from cloudlet.engine.process_io import release
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def remove_everything(ctx: EngineContext, row: InstanceRow) -> None:
    ctx.driver.force_stop(row.id)
    ctx.driver.cleanup(row.id)
    release(ctx, row.id)
    shutil.rmtree(ctx.paths.instance_dir(row.id), ignore_errors=True)
    storage_rows.forget(ctx, row.id)
    network_rows.forget(ctx, row.id)
    with ctx.db.session() as s:
        existing = s.get(InstanceRow, row.id)
        if existing is not None:
            s.delete(existing)
