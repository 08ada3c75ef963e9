"""The volumes of a VM made from a backup or an export: checked, made and attached.

A restore as a new VM and an import both bring volumes with them; each gets a fresh
name (``NAME-data``) in a pool of this host that can hold it, all checked before
anything is made, and made all or nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine.storage import StorageService
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.names import validate_name
from cloudlet.store.models import PoolRow, VolumeRow


@dataclass(frozen=True)
class NewVolume:
    """A volume to create for a restore or an import, from a checked qcow2 ``file``
    (a temporary file in the pool's directory, renamed into place)."""

    name: str
    pool: str
    size: int
    file: Path


def pool_dir(storage: StorageService, pool: str, volume: str, source: str) -> Path:
    """The directory of the pool a volume is restored into; refused (in one line, with
    what to do) when the pool is gone or keeps its volumes on block devices."""
    storage.ensure_default_pool()
    with storage.ctx.db.session() as s:
        row = s.get(PoolRow, pool)
    if row is None:
        raise NotFound(
            f"volume {volume} of {source} lived in pool {pool}, which is gone",
            hint=f"create pool {pool} again, then run the restore again",
            next_steps=[step(Step.POOL_CREATE, pool=pool)],
        )
    if row.kind != "dir":
        raise InvalidInput(
            f"volume {volume} of {source} lives in {row.kind} pool {pool}: cloudlet cannot "
            "restore volumes on block devices yet",
            hint="restore it by hand with 'qemu-img convert' from an export of a restored copy",
        )
    return Path(row.path)


def check_new_volumes(storage: StorageService, volumes: list[tuple[str, str]], source: str) -> None:
    """Before anything is made: each new volume's (name, pool) is a valid, free name, no
    two alike, in a pool that can take it."""
    if len(volumes) > HOTPLUG_SLOTS:
        raise InvalidInput(f"{source} has {len(volumes)} volumes; a VM takes {HOTPLUG_SLOTS}")
    names = [n for n, _ in volumes]
    for name, pool in volumes:
        validate_name(name, what="volume name")
        if names.count(name) > 1:
            raise Conflict(f"two volumes of {source} would both be named {name}")
        with storage.ctx.db.session() as s:
            if s.scalar(select(VolumeRow.id).where(VolumeRow.name == name)) is not None:
                raise Conflict(
                    f"a volume named {name!r} already exists: nothing was created",
                    hint="pick another VM name, or delete that volume",
                )
        pool_dir(storage, pool, name, source)


def install_new_volumes(
    storage: StorageService, instance_id: str, volumes: list[NewVolume]
) -> list[str]:
    """Create each volume, take its checked file, attach it to the (stopped) VM.

    All or nothing: on a failure, the volumes made here are deleted again.
    """
    made: list[str] = []
    try:
        for slot, new in enumerate(volumes):
            view = storage.volume_create(new.name, new.size, new.pool)
            made.append(new.name)
            os.replace(new.file, view.path)
            with storage.ctx.db.session() as s:
                vol = s.scalar(select(VolumeRow).where(VolumeRow.name == new.name))
                assert vol is not None
                vol.instance_id, vol.slot = instance_id, slot
    except BaseException:
        storage.undo_new_vm_volumes(instance_id, made)
        for new in volumes:
            new.file.unlink(missing_ok=True)
        raise
    return made


def new_volume_name(vm: str, source_vm: str, volume: str) -> str:
    """``NAME-data`` for volume ``data`` (or ``web1-data`` of VM web1) of a restored VM."""
    return f"{vm}-{volume.removeprefix(source_vm + '-')}"
