"""Disks for VMs: root overlays on images, volumes, snapshot layers (qcow2, qemu-img)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    def create_layer(self, backing: Path, backing_format: str, dest: Path) -> None:
        qcow2.create_overlay(backing, backing_format, dest)

    def resize(self, path: Path, size: int) -> None:
        qcow2.resize(path, size)

    def rebase(self, path: Path, backing: Path | None, backing_format: str) -> None:
        qcow2.rebase(path, backing, backing_format)

    def flatten(self, src: Path, dest: Path, src_format: str = "qcow2") -> None:
        qcow2.convert(src, dest, src_format)

    def check(self, path: Path) -> dict[str, Any]:
        return qcow2.check(path)

    def backing(self, path: Path) -> tuple[Path, str] | None:
        return qcow2.backing(path)

    def extents(self, path: Path, piece: int) -> Iterator[tuple[int, bytes | None, int]]:
        return qcow2.read_present(path, piece)

    def from_raw(self, raw: Path, dest: Path) -> None:
        qcow2.from_raw(raw, dest)

    def inspect_import(
        self, path: Path, max_size: int | None = None, label: str | None = None
    ) -> int:
        """Refuse an imported qcow2 that reads other host files, fails its check or is
        over ``max_size``; its virtual size."""
        from cloudlet.images.importer import inspect

        return int(inspect(path, "qcow2", max_size=max_size, label=label)["virtual-size"])
