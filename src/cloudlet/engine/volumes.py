"""Data volumes: create, attach (hot-plugged into a running VM), grow, detach, delete.

A volume has at most one VM; attached, it takes one of the VM's hot-plug slots (NICs
added later share them). Volumes outlive their VM: deleting a VM detaches them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine import locks, network_rows
from cloudlet.engine.pools import Pools
from cloudlet.engine.storage_rows import (
    DEFAULT_POOL,
    DETACH_TIMEOUT,
    OFFLINE,
    ONLINE,
    boot_disks,
    extra_disk,
    locked_vm_row,
    owner_name,
    volume_node,
)
from cloudlet.engine.storage_views import VolumeView
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec import names
from cloudlet.spec.states import VMState
from cloudlet.spec.storage import VolumeSpec
from cloudlet.spec.units import format_size
from cloudlet.storage.pools import check_thin_limit, open_pool
from cloudlet.store.models import InstanceRow, PoolRow, VolumeRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class Volumes:
    """Volume records, their files or LVs, and their slots in VMs."""

    def __init__(self, ctx: EngineContext, pools: Pools) -> None:
        self.ctx = ctx
        self.pools = pools

    def lookup(self, name: str) -> VolumeRow:
        """A volume's record; an unknown name is NotFound."""
        names.volume_name(name)
        with self.ctx.db.session() as s:
            row = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
        if row is None:
            raise NotFound(
                f"no volume named {name!r}",
                hint="list the volumes",
                next_steps=[step(Step.VOLUME_LIST)],
            )
        return row

    def view(self, row: VolumeRow) -> VolumeView:
        with self.ctx.db.session() as s:
            pool = s.get(PoolRow, row.pool)
            vm = s.get(InstanceRow, row.instance_id) if row.instance_id else None
        assert pool is not None
        backend = open_pool(pool.kind, pool.name, Path(pool.path))
        return VolumeView(
            name=row.name,
            pool=row.pool,
            size=row.size,
            allocated=backend.allocated(Path(row.path)),
            format=row.format,
            path=row.path,
            attached_to=vm.name if vm is not None else None,
            created_at=row.created_at,
        )

    def volumes(self) -> list[VolumeView]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(VolumeRow).order_by(VolumeRow.name)).all()
        return [self.view(r) for r in rows]

    def volume(self, name: str) -> VolumeView:
        return self.view(self.lookup(name))

    def volume_create(self, name: str, size: int, pool: str | None = None) -> VolumeView:
        names.volume_name(name)
        if pool is not None:
            names.pool_name(pool)
        spec = VolumeSpec(name=name, size=size, pool=pool or DEFAULT_POOL)
        pool_row, backend = self.pools.lookup(spec.pool)
        with self.pools.storage_lock():
            with self.ctx.db.session() as s:
                if s.scalar(select(VolumeRow.id).where(VolumeRow.name == name)) is not None:
                    raise Conflict(f"a volume named {name!r} already exists", hint="pick another")
            size = backend.round_size(spec.size)
            check_thin_limit(
                pool_row.name,
                backend.usage(),
                self.pools.overcommit(backend),
                self.pools.committed(pool_row.name),
                size,
                self.pools.limit_base(backend),
            )
            path = backend.create_volume(self.ctx.deps.disks, name, size)
            try:
                with self.ctx.db.session() as s:
                    s.add(
                        VolumeRow(
                            id=str(uuid.uuid4()),
                            name=name,
                            pool=pool_row.name,
                            path=str(path),
                            format=backend.volume_format,
                            size=size,
                        )
                    )
            except BaseException:
                backend.delete_volume(path)
                raise
        return self.volume(name)

    # ------------------------------------------------------------ volumes of a new VM
    @staticmethod
    def new_vm_volume_names(vm: str, count: int) -> list[str]:
        return [f"{vm}-vol{i}" for i in range(count)]

    def _reusable(self, name: str, size: int) -> bool:
        """A detached volume of this name and size (kept when its VM was deleted) is reused."""
        with self.ctx.db.session() as s:
            vol = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
        if vol is None:
            return False
        if vol.instance_id is not None or vol.size != size:
            raise Conflict(
                f"a volume named {name!r} already exists"
                + (
                    " and is attached"
                    if vol.instance_id
                    else f" with another size ({format_size(vol.size)})"
                ),
                hint="delete it, or pick another VM name",
            )
        return True

    def check_new_vm_volumes(self, vm: str, sizes: tuple[int, ...]) -> None:
        """Before a create: the volumes it asks for fit (slots, names, the pool's limit)."""
        if len(sizes) > HOTPLUG_SLOTS:
            raise InvalidInput(
                f"{len(sizes)} volumes asked for; a VM takes {HOTPLUG_SLOTS} at most",
                hint="ask for fewer, larger volumes",
            )
        new = 0
        for name, size in zip(self.new_vm_volume_names(vm, len(sizes)), sizes, strict=True):
            names.volume_name(name)
            if not self._reusable(name, size):
                new += size
        pool_row, backend = self.pools.lookup(DEFAULT_POOL)
        check_thin_limit(
            pool_row.name,
            backend.usage(),
            self.ctx.settings.storage_overcommit,
            self.pools.committed(pool_row.name),
            new,
        )

    def create_for_new_vm(self, instance_id: str, vm: str, sizes: tuple[int, ...]) -> list[str]:
        """Volumes attached to a VM being created (its lock held), one slot each.

        Returns the names of the volumes made here (reused ones are not listed).
        """
        made: list[str] = []
        try:
            for slot, (name, size) in enumerate(
                zip(self.new_vm_volume_names(vm, len(sizes)), sizes, strict=True)
            ):
                if not self._reusable(name, size):
                    self.volume_create(name, size)
                    made.append(name)
                with self.ctx.db.session() as s:
                    vol = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
                    assert vol is not None
                    vol.instance_id, vol.slot = instance_id, slot
        except BaseException:
            self.undo_new_vm_volumes(instance_id, made)
            raise
        return made

    def undo_new_vm_volumes(self, instance_id: str, made: list[str]) -> None:
        """A create failed: detach what it attached, delete what it made."""
        with self.ctx.db.session() as s:
            for vol in s.scalars(select(VolumeRow).where(VolumeRow.instance_id == instance_id)):
                vol.instance_id, vol.slot = None, None
        for name in made:
            self.volume_delete(name)

    def volume_attach(self, volume: str, vm: str) -> Done:
        names.vm_name(vm)
        self.lookup(volume)  # an unknown volume fails before the VM is looked at
        with self.ctx.lock(vm), locks.hold(self.ctx.paths.locks, f".vol-{volume}", what=volume):
            row = locked_vm_row(self.ctx, vm)
            vol = self.lookup(volume)
            if vol.instance_id is not None:
                other = owner_name(self.ctx, vol.instance_id)
                if vol.instance_id == row.id:
                    return Done(
                        "volume",
                        volume,
                        "attached",
                        f"volume {volume} is already attached to {vm}",
                        changed=False,
                    )
                raise Conflict(
                    f"volume {volume} is attached to {other}",
                    hint="detach it first",
                    next_steps=[step(Step.VOLUME_DETACH, volume=volume)],
                )
            self.ctx.require_state(row, ONLINE | OFFLINE, f"attach a volume to {vm}")
            if row.state == VMState.PAUSED:
                raise Conflict(f"cannot hot-plug into {vm}: it is paused", hint="resume it first")
            used = {d.slot for d in boot_disks(self.ctx, row.id)}
            used |= network_rows.used_slots(self.ctx, row.id)  # hot-plugged NICs share them
            free = [slot for slot in range(HOTPLUG_SLOTS) if slot not in used]
            if not free:
                raise Conflict(
                    f"{vm} has no free volume slot ({HOTPLUG_SLOTS} volumes at most)",
                    hint="detach a volume first",
                )
            vol.slot = free[0]
            vol.instance_id = row.id
            with self.ctx.operation(row, "volume-attach") as op_id:
                live = row.state == VMState.RUNNING
                if live:
                    self.ctx.driver.attach_disk(row.id, extra_disk(vol))
                try:
                    with self.ctx.db.session() as s:
                        fresh = s.get(VolumeRow, vol.id)
                        assert fresh is not None
                        fresh.instance_id, fresh.slot = row.id, vol.slot
                except BaseException:
                    if live:
                        self.ctx.driver.detach_disk(row.id, extra_disk(vol), DETACH_TIMEOUT)
                    raise
                self.ctx.event(vm, "volume-attached", f"volume {volume} attached", op_id)
        when = "now" if live else "at its next start"
        message = f"volume {volume} attached to {vm} ({when}; serial {vol.name[:20]})"
        return Done("volume", volume, "attached", message)

    def volume_detach(self, volume: str) -> Done:
        vol = self.lookup(volume)
        if vol.instance_id is None:
            return Done(
                "volume", volume, "detached", f"volume {volume} is not attached", changed=False
            )
        vm = owner_name(self.ctx, vol.instance_id)
        with self.ctx.lock(vm), locks.hold(self.ctx.paths.locks, f".vol-{volume}", what=volume):
            row = locked_vm_row(self.ctx, vm)
            vol = self.lookup(volume)
            if vol.instance_id != row.id:
                message = f"volume {volume} is not attached to {vm} any more"
                return Done("volume", volume, "detached", message, changed=False)
            self.ctx.require_state(row, ONLINE | OFFLINE, f"detach a volume from {vm}")
            if row.state == VMState.PAUSED:  # a paused guest cannot release the device
                raise Conflict(f"cannot unplug from {vm}: it is paused", hint="resume it first")
            with self.ctx.operation(row, "volume-detach") as op_id:
                if row.state in ONLINE:
                    self.ctx.driver.detach_disk(row.id, extra_disk(vol), DETACH_TIMEOUT)
                with self.ctx.db.session() as s:
                    fresh = s.get(VolumeRow, vol.id)
                    assert fresh is not None
                    fresh.instance_id = fresh.slot = None
                self.ctx.event(vm, "volume-detached", f"volume {volume} detached", op_id)
        return Done("volume", volume, "detached", f"volume {volume} detached from {vm}")

    def volume_resize(self, volume: str, size: int) -> Done:
        vol = self.lookup(volume)
        vm = owner_name(self.ctx, vol.instance_id) if vol.instance_id else None
        with self._maybe_vm_lock(vm), locks.hold(
            self.ctx.paths.locks, f".vol-{volume}", what=volume
        ):  # fmt: skip
            vol = self.lookup(volume)
            if size < vol.size:
                raise InvalidInput(
                    f"volume {volume} is {format_size(vol.size)}: shrinking to "
                    f"{format_size(size)} would destroy data",
                    hint="give a larger size; volumes only grow",
                )
            if size == vol.size:
                message = f"volume {volume} is already {format_size(size)}"
                return Done("volume", volume, "resized", message, changed=False)
            pool_row, backend = self.pools.lookup(vol.pool)
            size = backend.round_size(size)
            with self.pools.storage_lock():
                check_thin_limit(
                    pool_row.name,
                    backend.usage(),
                    self.pools.overcommit(backend),
                    self.pools.committed(pool_row.name),
                    size - vol.size,
                    self.pools.limit_base(backend),
                )
                row = locked_vm_row(self.ctx, vm) if vm is not None else None
                if row is not None and row.state not in ONLINE | OFFLINE:
                    raise Conflict(
                        f"cannot resize {volume}: its VM {vm} is {row.state}",
                        hint="wait for it to finish",
                    )
                online = row is not None and row.state in ONLINE
                if backend.block_device or not online:
                    # a block device grows first; QEMU is then told its new size
                    backend.grow_volume(self.ctx.deps.disks, Path(vol.path), size)
                if online:
                    assert row is not None
                    self.ctx.driver.resize_disk(row.id, volume_node(vol.id), size)
                how = "online" if online else "offline"
                with self.ctx.db.session() as s:
                    fresh = s.get(VolumeRow, vol.id)
                    assert fresh is not None
                    fresh.size = size
        message = f"volume {volume} grown to {format_size(size)} ({how})"
        return Done("volume", volume, "resized", message)

    @contextmanager
    def _maybe_vm_lock(self, vm: str | None) -> Iterator[None]:
        if vm is None:
            yield
            return
        with self.ctx.lock(vm):
            yield

    def volume_delete(self, volume: str) -> Done:
        names.volume_name(volume)
        with locks.hold(self.ctx.paths.locks, f".vol-{volume}", what=volume):
            vol = self.lookup(volume)
            if vol.instance_id is not None:
                raise Conflict(
                    f"volume {volume} is attached to {owner_name(self.ctx, vol.instance_id)}",
                    hint="detach it first",
                    next_steps=[step(Step.VOLUME_DETACH, volume=volume)],
                )
            _, backend = self.pools.lookup(vol.pool)
            backend.delete_volume(Path(vol.path))
            with self.ctx.db.session() as s:
                row = s.get(VolumeRow, vol.id)
                if row is not None:
                    s.delete(row)
        return Done("volume", volume, "deleted", f"volume {volume} deleted")
