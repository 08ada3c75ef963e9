"""What the storage services hand to frontends: pools, volumes and snapshots as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class PoolView:
    name: str
    kind: str
    path: str
    fs_total: int
    fs_free: int
    limit: int  # thin limit: overcommit x fs_total
    committed: int  # virtual sizes of its volumes
    allocated: int  # what its volumes really take
    volumes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeView:
    name: str
    pool: str
    size: int
    allocated: int
    format: str
    path: str
    attached_to: str | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


@dataclass(frozen=True)
class SnapshotView:
    name: str
    vm: str
    parent: str | None  # the snapshot below it in the chain
    created_at: datetime
    size: int  # bytes its layer takes
    live: bool
    frozen: bool
    linked_clones: list[str]
    memory: bool = False  # RAM and device state kept: a revert resumes the VM there

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data
