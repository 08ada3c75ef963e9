"""Root disks for VMs: a qcow2 overlay on the image, grown to the requested size."""

from __future__ import annotations

from pathlib import Path

from cloudlet.images.store import Image
from cloudlet.storage import qcow2


class Qcow2Disks:
    """The real disk backend (qemu-img)."""

    def create_overlay(self, image: Image, dest: Path, size: int | None) -> None:
        qcow2.create_overlay(image.disk, image.disk_format, dest, size)

    def create_blank(self, dest: Path, size: int) -> None:
        qcow2.create_blank(dest, size)

    def virtual_size(self, path: Path) -> int:
        return qcow2.virtual_size(path, "qcow2")
