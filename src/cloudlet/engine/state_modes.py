"""The state directory kept private: what older versions left open is closed on open.

State made before files were private: directories others could enter become 0700 (0750
where the QEMU group was let in at a VM's start), and the database and host records 0600.
``loose`` says whether that repair is due without making it (for the read path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cloudlet.config import Settings
from cloudlet.host import qemu_users

_DIRS = ("pools", "images", "instances", "locks", "cache", "host", "backups", "run")


def _directories(settings: Settings) -> Iterator[tuple[Path, int]]:
    """Each directory with the mode bits it may keep."""
    home = settings.paths.home
    for directory in (home, settings.backup_store, *(home / n for n in _DIRS)):
        if directory.is_dir() and not directory.is_symlink():
            info = directory.stat()
            yield directory, 0o7750 if info.st_gid == qemu_users.SHARED_GID else 0o7700


def _files(settings: Settings) -> Iterator[Path]:
    """The database and host records (their modes keep owner bits only)."""
    home = settings.paths.home
    host_files = (home / "host").glob("*") if not (home / "host").is_symlink() else iter(())
    for path in [*home.glob(settings.paths.database.name + "*"), *host_files]:
        if path.is_file() and not path.is_symlink():
            yield path


def tighten(settings: Settings) -> None:
    """Close what others could enter or read."""
    for directory, keep in _directories(settings):
        directory.chmod(directory.stat().st_mode & keep)
    for path in _files(settings):
        path.chmod(path.stat().st_mode & 0o700)


def loose(settings: Settings) -> bool:
    """Something ``tighten`` would change is open now."""
    if any(d.stat().st_mode & 0o7777 & ~keep for d, keep in _directories(settings)):
        return True
    return any(p.stat().st_mode & 0o077 for p in _files(settings))
