"""The host side of a process VM's I/O: its socket directory and share daemons.

Apart from ``process_vms`` so that tearing any VM down (``teardown``) can release
them without importing the run use case.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.process import virtiofs

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def io_dir(ctx: EngineContext, instance_id: str) -> Path:
    """Sockets and share records of a process VM; apart from the driver's runtime dir."""
    return ctx.paths.run / f"{instance_id}.io"


def release(ctx: EngineContext, instance_id: str) -> None:
    """Share daemons, mounts and sockets of a process VM. Idempotent."""
    directory = io_dir(ctx, instance_id)
    if directory.exists():
        virtiofs.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)
