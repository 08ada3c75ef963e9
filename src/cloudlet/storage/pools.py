"""Storage pools: where volumes live, and how full they may get.

A pool backend is small on purpose (``PoolBackend``): a directory of qcow2 files
(``DirPool``) or an LVM volume group of (thin) LVs (``storage.lvm.LvmPool``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cloudlet.errors import (
    CapacityExceeded,
    Conflict,
    InvalidInput,
    OutOfSpace,
)
from cloudlet.next_steps import Step, step
from cloudlet.spec.names import name_path
from cloudlet.spec.units import format_size
from cloudlet.storage.pool_types import FsUsage as FsUsage
from cloudlet.storage.pool_types import VolumeFiles as VolumeFiles


class PoolBackend(Protocol):
    kind: str
    name: str
    path: Path
    block_device: bool  # volumes are host block devices (grown before QEMU is told)
    volume_format: str  # qcow2 or raw

    @property
    def thin(self) -> bool:
        """Volumes take space as they are written (so the overcommit limit applies)."""

    def check(self) -> None:
        """Refuse (InvalidInput) a pool that cannot work; may create what is missing."""

    def usage(self) -> FsUsage: ...

    def volume_path(self, volume_name: str) -> Path: ...

    def round_size(self, size: int) -> int:
        """The size a volume asked to be ``size`` really gets."""

    def create_volume(self, files: VolumeFiles, volume_name: str, size: int) -> Path: ...

    def grow_volume(self, files: VolumeFiles, path: Path, size: int) -> None: ...

    def delete_volume(self, path: Path) -> None: ...

    def allocated(self, path: Path) -> int:
        """Bytes a volume really takes (thin volumes take less than their size)."""

    def destroy(self) -> None:
        """The pool is forgotten: remove what cloudlet made for it (if anything)."""


class DirPool:
    """Volumes are ``<name>.qcow2`` files in one directory."""

    kind = "dir"
    block_device = False
    volume_format = "qcow2"
    thin = True

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def check(self) -> None:
        if not self.path.is_absolute():
            raise InvalidInput(
                f"pool path {self.path} is relative",
                hint="give an absolute path, such as /srv/fast",
            )
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInput(f"{self.path} is not a directory", hint="pick a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise InvalidInput(f"cannot write to {self.path}", hint="fix its permissions")

    def usage(self) -> FsUsage:
        st = os.statvfs(self.path)
        return FsUsage(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)

    def volume_path(self, volume_name: str) -> Path:
        return name_path(self.path, volume_name, ".qcow2")

    def round_size(self, size: int) -> int:
        return size

    def create_volume(self, files: VolumeFiles, volume_name: str, size: int) -> Path:
        path = self.volume_path(volume_name)
        if path.exists():
            raise Conflict(
                f"{path} already exists and is not a volume cloudlet knows",
                hint="move that file away or pick another volume name",
            )
        try:
            files.create_blank(path, size)
        except OutOfSpace:
            path.unlink(missing_ok=True)
            raise self._full() from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def grow_volume(self, files: VolumeFiles, path: Path, size: int) -> None:
        try:
            files.resize(path, size)
        except OutOfSpace:
            raise self._full() from None

    def _full(self) -> OutOfSpace:
        """What a write into a full pool says: which pool, how much is left, what to do."""
        return OutOfSpace(
            f"pool {self.name} is full: its file system at {self.path} has "
            f"{self.usage().free >> 20} MiB free",
            path=self.path,
            hint="free space there, delete volumes you no longer need, or use another pool",
            next_steps=[step(Step.VOLUME_LIST), step(Step.POOL_LIST)],
        )

    def delete_volume(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def allocated(self, path: Path) -> int:
        try:
            return os.stat(path).st_blocks * 512
        except FileNotFoundError:
            return 0

    def destroy(self) -> None:
        """The directory and anything left in it stay."""


def open_pool(kind: str, name: str, path: Path) -> PoolBackend:
    if kind == "dir":
        return DirPool(name, path)
    if kind == "lvm":
        from cloudlet.storage.lvm import LvmPool

        return LvmPool(name, path)
    raise InvalidInput(f"unknown pool kind {kind!r}", hint="pools are dir or lvm")


def check_thin_limit(
    pool: str,
    usage: FsUsage,
    overcommit: float,
    committed: int,
    wanted: int,
    under: str = "file system",
) -> None:
    """Refuse ``wanted`` more bytes of virtual size beyond the pool's thin limit."""
    limit = int(usage.total * overcommit)
    left = max(0, limit - committed)
    if wanted > left:
        raise CapacityExceeded(
            f"pool {pool} cannot take {format_size(wanted)} more: {format_size(left)} left of "
            f"its {format_size(limit)} limit ({overcommit:g} x {format_size(usage.total)} "
            f"{under})",
            hint="use a smaller size, another pool, or raise storage.overcommit in config.toml",
            next_steps=[step(Step.POOL_LIST)],
        )
