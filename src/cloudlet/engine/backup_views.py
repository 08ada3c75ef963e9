"""What the backup use cases return: typed views of backups and of a verify run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from cloudlet.backup.store import Manifest, VerifyProblem
from cloudlet.next_steps import NextStep
from cloudlet.store.models import BackupRow


@dataclass(frozen=True)
class DiskSummary:
    name: str
    size: int
    read: int
    stored: int


@dataclass(frozen=True)
class BackupView:
    id: str
    vm: str
    created_at: datetime
    kind: str
    note: str
    consistency: str  # "file systems frozen", "crash-consistent" or "offline"
    size: int  # the disk's virtual size
    read: int  # bytes read from the disk
    stored: int  # bytes of new chunks this backup added to the store
    chunks: int
    verified: str  # "ok", "failed" or "" (never verified)
    # each disk: name ("root" or the volume's), size, read and stored bytes
    disks: tuple[DiskSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


@dataclass(frozen=True)
class VerifyReport:
    """A verify run: the backups read, the distinct chunks they hold, what was wrong
    (each problem typed: ``str()`` of one is the line the CLI prints)."""

    vm: str
    backups: list[str]
    chunks: int
    problems: list[VerifyProblem]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backup_view(row: BackupRow, manifest: Manifest | None) -> BackupView:
    """The view of a backup; ``manifest`` None (unreadable) lists it without its disks."""
    verified = "" if row.verify_ok is None else ("ok" if row.verify_ok else "failed")
    disks = tuple(
        DiskSummary(d.name, d.virtual_size, d.read_bytes, d.new_bytes)
        for d in (manifest.disks if manifest is not None else [])
    )
    return BackupView(
        id=row.id,
        vm=row.instance_name,
        created_at=row.created_at,
        kind=row.kind,
        note=row.note,
        consistency=row.consistency,
        size=row.virtual_size,
        read=row.read_bytes,
        stored=row.new_bytes,
        chunks=row.chunks,
        verified=verified,
        disks=disks,
    )


@dataclass(frozen=True)
class PruneResult:
    """What applying a VM's retention removed: the backups, and the bytes of chunks freed."""

    vm: str
    pruned: tuple[str, ...]  # ids of the backups deleted
    freed: int

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "pruned": list(self.pruned), "freed": self.freed}


@dataclass(frozen=True)
class DueBackup:
    """One VM a scheduled run took up: its new backup and what pruning took, or why it
    failed (``error``, one line)."""

    vm: str
    backup: BackupView | None
    pruned: tuple[str, ...] = ()
    error: str | None = None
    next_steps: tuple[NextStep, ...] = ()  # what to do about the error

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "backup": self.backup.to_dict() if self.backup is not None else None,
            "pruned": list(self.pruned),
            "error": self.error,
            "next_steps": [s.to_dict() for s in self.next_steps],
        }


@dataclass(frozen=True)
class RunDueResult:
    """A scheduled run: each VM that was due, in name order (none due: empty)."""

    runs: tuple[DueBackup, ...]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.runs if r.error is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs], "failed": self.failed}
