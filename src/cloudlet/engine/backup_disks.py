"""The disks of a VM as a backup sees them, and which of them can be read incrementally.

A VM's backup holds all its disks at one instant: the root disk (its active layer) and
each attached volume. Each disk keeps its own dirty bitmap between backups; whether a
disk's bitmap can be trusted is decided per disk, so a volume attached since the last
backup is read whole while the root disk is read incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.backup.store import ROOT, DiskManifest, Manifest
from cloudlet.driver.base import DirtyBitmap
from cloudlet.engine.storage_rows import active_disk, attached_volumes, volume_node
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

WHOLE = "read the whole disk, stored only the chunks that changed"


@dataclass(frozen=True)
class VmDisk:
    """One disk to back up: ``node`` None is the root disk, else the volume's block node."""

    name: str
    path: Path
    size: int
    format: str = "qcow2"
    node: str | None = None
    pool: str = ""
    volume_id: str = ""

    @property
    def label(self) -> str:
        return "the root disk" if self.node is None else f"volume {self.name}"

    @property
    def keeps_bitmaps(self) -> bool:
        """Persistent dirty bitmaps live in qcow2 files; a raw (LVM) volume has none."""
        return self.format == "qcow2"

    def manifest(self, chunks: list[str | None], bitmap: str | None) -> DiskManifest:
        return DiskManifest(
            name=self.name,
            virtual_size=self.size,
            chunks=chunks,
            format=self.format,
            pool=self.pool,
            volume_id=self.volume_id,
            bitmap={"layer": str(self.path), "name": bitmap} if bitmap else None,
        )


def vm_disks(ctx: EngineContext, row: InstanceRow) -> list[VmDisk]:
    """The root disk (its active layer; call with the VM's lock held), then each volume."""
    layer = active_disk(ctx, row.id, heal=True)
    disks = [VmDisk(ROOT, layer, ctx.deps.disks.virtual_size(layer))]
    for vol in attached_volumes(ctx, row.id):
        path = Path(vol.path)
        size = ctx.deps.disks.virtual_size(path) if vol.format == "qcow2" else vol.size
        disks.append(
            VmDisk(vol.name, path, size, vol.format, volume_node(vol.id), vol.pool, vol.id)
        )
    return disks


def prior_disk(parent: Manifest, disk: VmDisk) -> DiskManifest | None:
    """The same disk in an earlier backup: the root, or the volume with the same id."""
    for candidate in parent.disks:
        if disk.node is None and candidate.is_root:
            return candidate
        if disk.node is not None and candidate.volume_id == disk.volume_id:
            return candidate
    return None


def usable_bitmap(
    parent: Manifest, disk: VmDisk, bitmaps: list[DirtyBitmap]
) -> tuple[str | None, str]:
    """The bitmap this disk's incremental reads from (the parent is usable as a whole),
    or None and why this disk is read whole."""
    prior = prior_disk(parent, disk)
    since = f"since backup {parent.id}"
    if prior is None:
        return None, f"{disk.label} is new {since}: {WHOLE}"
    if not disk.keeps_bitmaps:
        return None, f"{disk.label} is {disk.format}, which keeps no dirty bitmap: {WHOLE}"
    if prior.virtual_size != disk.size:
        return None, f"the size of {disk.label} changed {since}: {WHOLE}"
    if prior.bitmap is None:
        return None, f"backup {parent.id} left no dirty bitmap on {disk.label}: {WHOLE}"
    if prior.bitmap["layer"] != str(disk.path):
        if disk.node is None:
            return None, (
                f"a snapshot changed the disk's active layer {since}, "
                f"so its dirty bitmap is gone: {WHOLE}"
            )
        return None, f"{disk.label} moved to another file {since}: {WHOLE}"
    found = {b.name: b for b in bitmaps}.get(prior.bitmap["name"])
    if found is None:
        return None, (
            f"the dirty bitmap of backup {parent.id} on {disk.label} is lost (QEMU stopped "
            f"without saving it, or the disk was replaced): {WHOLE}"
        )
    if found.inconsistent or not found.recording:
        return None, (
            f"the dirty bitmap of backup {parent.id} on {disk.label} is inconsistent (QEMU "
            f"was killed while it recorded): {WHOLE}"
        )
    return found.name, ""
