"""The cap on virtual sizes: a 1 PiB image or disk is refused before anything is made.

A qcow2 header may claim any size; a VM made from it would be promised storage the host
can never hold (and qemu-img's tables grow with it). Unless ``images.max_virtual_size``
says otherwise, the cap is what the largest pool could ever hold: its size times its
overcommit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudlet.images.importer import check_size

if TYPE_CHECKING:
    from cloudlet.engine.engine import Engine


def image_size_cap(engine: Engine) -> int:
    """The largest virtual size this host accepts for an image or a VM's disk."""
    if engine.settings.max_image_size is not None:
        return engine.settings.max_image_size
    from cloudlet.engine.storage_ops import StorageOps

    return max(pool.limit for pool in StorageOps(engine).pools())


def check_disk_size(engine: Engine, vm: str, size: int) -> None:
    """Refuse a new VM whose disk would be larger than the cap, in one line."""
    check_size(f"the disk of {vm}", size, image_size_cap(engine))
