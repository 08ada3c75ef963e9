"""What the engine needs from the outside world, gathered so tests can swap each part."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cloudlet.driver.base import Driver
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.store import Image, Progress


class ImageProvider(Protocol):
    def get(
        self,
        name: str,
        *,
        progress: Progress | None = None,
        build: bool = True,
        arch: str | None = None,
    ) -> Image: ...

    def names(self) -> list[str]: ...

    def images(self) -> list[Image]: ...

    def delete(self, name: str) -> list[Path]: ...


class DiskBackend(Protocol):
    def create_overlay(self, image: Image, dest: Path, size: int | None) -> None: ...

    def virtual_size(self, path: Path) -> int: ...

    def create_blank(self, dest: Path, size: int) -> None: ...

    def create_layer(self, backing: Path, backing_format: str, dest: Path) -> None: ...

    def resize(self, path: Path, size: int) -> None: ...

    def rebase(self, path: Path, backing: Path | None, backing_format: str) -> None: ...

    def flatten(self, src: Path, dest: Path, src_format: str = "qcow2") -> None: ...

    def check(self, path: Path) -> dict[str, Any]: ...

    def backing(self, path: Path) -> tuple[Path, str] | None: ...

    # backups
    def extents(self, path: Path, piece: int) -> Iterable[tuple[int, bytes | None, int]]: ...

    def from_raw(self, raw: Path, dest: Path) -> None: ...

    def inspect_import(
        self, path: Path, max_size: int | None = None, label: str | None = None
    ) -> int: ...


@dataclass
class EngineDeps:
    driver: Driver
    images: ImageProvider
    disks: DiskBackend
    accel: Callable[[Image], AccelVerdict]
    host_cpus: int
    host_memory: int
    hypervisor_version: Callable[[], str]
    arches: Callable[[], dict[str, str]]
