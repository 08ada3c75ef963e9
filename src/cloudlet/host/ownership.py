"""Handing files to a VM's QEMU user and taking them back (as libvirt's DAC driver does).

A grant remembers the owner, group and mode a path had, so detaching a pool volume
or an LVM device node restores exactly what was there. Records live in a file only
root can write: a QEMU that owns its directory cannot rewrite what root restores.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Grant:
    """What ``path`` was before it was given away."""

    path: str
    uid: int
    gid: int
    mode: int


def give(path: Path, uid: int, gid: int, mode: int = 0o600) -> Grant:
    """Make ``path`` (a file or a device node; links followed) the VM user's."""
    info = os.stat(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return Grant(str(path), info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))


def take_back(grant: Grant) -> None:
    """Restore what ``give`` changed; a path that is gone needs nothing."""
    try:
        os.chown(grant.path, grant.uid, grant.gid)
        os.chmod(grant.path, grant.mode)
    except FileNotFoundError:
        pass


def share_dir(path: Path, gid: int, mode: int) -> None:
    """A directory root keeps but a group may enter (and, with 0o1770, add files to)."""
    os.chown(path, 0, gid)
    os.chmod(path, mode)


def _change_unfollowed(path: Path, flags: int, kind: int, uid: int, gid: int, mode: int) -> bool:
    """chown+chmod what ``path`` itself is, through an fd opened without following a
    link, and only if it is of ``kind``: the VM may have put a link or a fifo there."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # a link (ELOOP), gone, or not openable: leave it alone
        return False
    try:
        if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
            return False
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def give_own(path: Path, uid: int, gid: int) -> bool:
    """``give`` for a file in a directory the VM may write: links are never followed
    (a link there would otherwise hand a host file to the VM)."""
    return _change_unfollowed(path, os.O_RDONLY, stat.S_IFREG, uid, gid, 0o600)


def share_own_dir(path: Path, gid: int, mode: int) -> bool:
    """``share_dir`` for a directory inside one the VM may write (links not followed)."""
    return _change_unfollowed(path, os.O_RDONLY | os.O_DIRECTORY, stat.S_IFDIR, 0, gid, mode)


def allow_group_read(path: Path, gid: int, top: Path) -> None:
    """Let ``gid`` read a root-owned file and traverse its directories up to ``top``.

    Files others can read already are left as they are; the directories between the
    file and ``top`` get the group and g+x (r too for the file), never o+anything.
    """
    info = os.stat(path)
    if not info.st_mode & stat.S_IROTH and info.st_uid == 0:
        os.chown(path, 0, gid)
        os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_IRGRP)
    allow_traverse(path.parent, gid, top)


def allow_traverse(directory: Path, gid: int, top: Path) -> None:
    """g+x (with the group ``gid``) on root's directories from ``directory`` up to ``top``,
    along the path as written and along the path its links lead to."""
    for start, end in (
        (Path(os.path.abspath(directory)), Path(os.path.abspath(top))),
        (directory.resolve(), top.resolve()),
    ):
        while start != end and end in start.parents:
            found = os.stat(start)
            if not found.st_mode & stat.S_IXOTH and found.st_uid == 0:
                os.chown(start, 0, gid)
                os.chmod(start, stat.S_IMODE(found.st_mode) | stat.S_IXGRP)
            start = start.parent


class GrantBook:
    """The grants of one VM, kept in a root-only JSON file beside its run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Grant]:
        try:
            data = json.loads(self.path.read_text())
            return [
                Grant(str(g["path"]), int(g["uid"]), int(g["gid"]), int(g["mode"])) for g in data
            ]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _save(self, grants: list[Grant]) -> None:
        if not grants:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps([asdict(g) for g in grants]))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def give(self, path: Path, uid: int, gid: int) -> None:
        """Give ``path`` to the VM, remembering its first owner (a re-give keeps it)."""
        grants = self.load()
        known = {g.path for g in grants}
        grant = give(path, uid, gid)
        if str(path) not in known:
            grants.append(grant)
            self._save(grants)

    def take_back(self, path: Path) -> None:
        grants = self.load()
        for grant in grants:
            if grant.path == str(path):
                take_back(grant)
        self._save([g for g in grants if g.path != str(path)])

    def take_back_all(self) -> None:
        for grant in self.load():
            take_back(grant)
        self.path.unlink(missing_ok=True)
