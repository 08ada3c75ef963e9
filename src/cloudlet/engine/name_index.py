"""Names of what exists, for shell completion: read-only sqlite3, never the ORM.

Completion runs on every Tab press, so it must answer within a few milliseconds and may
not wait: a locked, missing or odd database gives no names rather than an error.
"""

from __future__ import annotations

from cloudlet.config import Paths, default_home


def _query(sql: str, *args: str) -> list[str]:
    """The first column of ``sql`` on the state database; nothing on any failure."""
    import sqlite3  # only when the shell asks: the CLI's --help loads this module

    from cloudlet.store import readonly

    path = Paths(default_home()).database
    if not path.is_file():
        return []
    try:
        db = readonly.connect(path, timeout=0.05)
        try:
            return [str(row[0]) for row in db.execute(sql, args)]
        finally:
            db.close()
    except (sqlite3.Error, OSError):
        return []


def vms() -> list[str]:
    return _query("SELECT name FROM instances")


def volumes() -> list[str]:
    return _query("SELECT name FROM volumes")


def networks() -> list[str]:
    return _query("SELECT name FROM networks")


def snapshots(vm: str | None) -> list[str]:
    """The snapshots of ``vm`` (of every VM when None)."""
    if vm is None:
        return _query("SELECT name FROM snapshots")
    return _query(
        "SELECT s.name FROM snapshots s JOIN instances i ON s.instance_id = i.id WHERE i.name = ?",
        vm,
    )


def backups(vm: str | None) -> list[str]:
    """The backup ids of ``vm`` (of every VM when None)."""
    if vm is None:
        return _query("SELECT id FROM backups")
    return _query("SELECT id FROM backups WHERE instance_name = ?", vm)
