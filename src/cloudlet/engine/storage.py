"""One storage object for frontends: pools, volumes, snapshots and clones together.

Each part is its own service on the shared context (pools.py, volumes.py,
snapshots.py, clones.py); this facade only forwards, so the CLI, the API and the
engine's other use cases reach all of storage through ``engine.storage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.engine import call_options
from cloudlet.engine.clones import Clones
from cloudlet.engine.pools import Pools
from cloudlet.engine.snapshots import Snapshots
from cloudlet.engine.storage_rows import owner_name
from cloudlet.engine.storage_views import PoolView, SnapshotView, VolumeView
from cloudlet.engine.views import Done
from cloudlet.engine.volumes import Volumes
from cloudlet.progress import CancelToken, ProgressSink
from cloudlet.store.models import InstanceRow, VolumeRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext
    from cloudlet.engine.views import InstanceView


class StorageService:
    """Pools, volumes, snapshots and clones, on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.pool_ops = Pools(ctx)
        self.volume_ops = Volumes(ctx, self.pool_ops)
        self.snapshot_ops = Snapshots(ctx)
        self.clone_ops = Clones(ctx, self.snapshot_ops)

    @property
    def notices(self) -> list[str]:
        """What the calls of this thread want said (such as a missing thin provisioning)."""
        return self.ctx.notices

    # ------------------------------------------------------------ pools
    def pools(self) -> list[PoolView]:
        return self.pool_ops.pools()

    def pool(self, name: str) -> PoolView:
        return self.pool_ops.pool(name)

    def pool_create(
        self, name: str, path: Path | None = None, kind: str = "dir", devices: tuple[str, ...] = ()
    ) -> PoolView:
        return self.pool_ops.pool_create(name, path, kind, devices)

    def pool_delete(self, name: str) -> Done:
        return self.pool_ops.pool_delete(name)

    def ensure_default_pool(self) -> None:
        self.pool_ops.ensure_default()

    # ------------------------------------------------------------ volumes
    def volumes(self) -> list[VolumeView]:
        return self.volume_ops.volumes()

    def volume(self, name: str) -> VolumeView:
        return self.volume_ops.volume(name)

    def volume_row(self, name: str) -> VolumeRow:
        return self.volume_ops.lookup(name)

    def volume_create(self, name: str, size: int, pool: str | None = None) -> VolumeView:
        return self.volume_ops.volume_create(name, size, pool)

    def volume_attach(self, volume: str, vm: str) -> Done:
        return self.volume_ops.volume_attach(volume, vm)

    def volume_detach(self, volume: str) -> Done:
        return self.volume_ops.volume_detach(volume)

    def volume_resize(self, volume: str, size: int) -> Done:
        return self.volume_ops.volume_resize(volume, size)

    def volume_delete(self, volume: str) -> Done:
        return self.volume_ops.volume_delete(volume)

    def owner_name(self, instance_id: str) -> str:
        return owner_name(self.ctx, instance_id)

    # ------------------------------------------------------------ volumes of a new VM
    @staticmethod
    def new_vm_volume_names(vm: str, count: int) -> list[str]:
        return Volumes.new_vm_volume_names(vm, count)

    def check_new_vm_volumes(self, vm: str, sizes: tuple[int, ...]) -> None:
        self.volume_ops.check_new_vm_volumes(vm, sizes)

    def create_for_new_vm(self, instance_id: str, vm: str, sizes: tuple[int, ...]) -> list[str]:
        return self.volume_ops.create_for_new_vm(instance_id, vm, sizes)

    def undo_new_vm_volumes(self, instance_id: str, made: list[str]) -> None:
        self.volume_ops.undo_new_vm_volumes(instance_id, made)

    # ------------------------------------------------------------ snapshots
    def snapshots(self, vm: str) -> list[SnapshotView]:
        return self.snapshot_ops.snapshots(vm)

    def snapshot_create(
        self,
        vm: str,
        name: str,
        *,
        memory: bool = False,
        progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> SnapshotView:
        """``progress`` hears the stages (freezing or pausing, the disk, the memory); a
        cancelled ``cancel`` (default: the call's) stops only before the snapshot begins."""
        track = call_options.tracker(progress, cancel)
        return self.snapshot_ops.snapshot_create(vm, name, memory=memory, track=track)

    def snapshot_revert(
        self,
        vm: str,
        name: str,
        *,
        force: bool = False,
        progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> Done:
        track = call_options.tracker(progress, cancel)
        return self.snapshot_ops.snapshot_revert(vm, name, force=force, track=track)

    def snapshot_delete(self, vm: str, name: str) -> Done:
        return self.snapshot_ops.snapshot_delete(vm, name)

    def freeze_guest(self, row: InstanceRow, what: str = "snapshot") -> bool:
        return self.snapshot_ops.freeze_guest(row, what)

    # ------------------------------------------------------------ clones
    def clone(
        self, source: str, name: str, *, linked: bool = False, snapshot: str | None = None
    ) -> InstanceView:
        return self.clone_ops.clone(source, name, linked=linked, snapshot=snapshot)
