"""What every pool backend shares: its usage figures and the volume-file maker it uses.

A module of its own so that backends (storage.lvm) need not import storage.pools,
which picks the backend for a kind and so imports them: no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class FsUsage:
    """The file system (or volume group) under a pool."""

    total: int
    free: int


class VolumeFiles(Protocol):
    """What a pool needs to make and grow its volume files (qemu-img or a fake)."""

    def create_blank(self, dest: Path, size: int) -> None: ...

    def resize(self, path: Path, size: int) -> None: ...
