"""Staging directories for half-made things (an image being imported, a VM import's
volumes), and the sweep that removes those a killed command left behind.

A staging entry is named ``.cloudlet-staging-*`` so that the sweep recognises it and
touches nothing else. Whoever stages holds a shared lock (flock) on the directory it
stages in for as long as it works; the sweep takes that lock exclusively without
waiting, so it only ever runs when no stager is alive there. Locking the directory
itself leaves no lock file behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = ".cloudlet-staging-"

# Earlier versions staged an image import in images/.import-XXXXXXXX (mkdtemp) and a VM
# import's volume as POOL/.import-<8 hex>.qcow2: leftovers of those are swept too.
LEGACY_IMAGE_STAGING = re.compile(r"\.import-[a-z0-9_]{8}")
LEGACY_VOLUME_STAGING = re.compile(r"\.import-[0-9a-f]{8}\.qcow2")


def _open_lock(parent: Path) -> int:
    # parent may be a link (a pool at a linked path): it is a path cloudlet chose
    return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextmanager
def staging(parent: Path) -> Iterator[Path]:
    """A private (0700) directory under ``parent``, removed afterwards; if this process
    dies first, the next sweep of ``parent`` removes it."""
    parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        work = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        os.close(fd)


def _is_staging(name: str, legacy: re.Pattern[str] | None) -> bool:
    return name.startswith(PREFIX) or bool(legacy and legacy.fullmatch(name))


def pending(parent: Path, legacy: re.Pattern[str] | None = None) -> bool:
    """Something under ``parent`` is staging that a sweep would look at (read only)."""
    try:
        with os.scandir(parent) as entries:
            return any(_is_staging(entry.name, legacy) for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def sweep(parent: Path, legacy: re.Pattern[str] | None = None) -> list[str]:
    """Remove the staging entries under ``parent`` that no live process holds; their
    names. Links are removed, never followed; nothing else is touched but names in
    full match of ``legacy`` (what earlier versions staged under other names)."""
    if not parent.is_dir():
        return []
    fd = _open_lock(parent)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # an import is running here; a later sweep will do it
        removed = []
        with os.scandir(parent) as entries:
            for entry in entries:
                if not _is_staging(entry.name, legacy):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
        return sorted(removed)
    finally:
        os.close(fd)
