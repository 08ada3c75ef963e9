"""A host directory tree on its way into a guest: checked first, then sent as a tar stream.

The tree is the user's own, but what lands in the guest must not reach outside it: only
directories, regular files and symlinks that stay inside the tree are taken (a link
never counts on where the tree lands: no absolute target, no ``..`` once inside a
name); devices, fifos and sockets are refused before anything moves. The tar the
guest unpacks carries the owner's numbers, so the files land owned by them.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import CopyProgress, report
from cloudlet.guest.landing import MAX_DEPTH

# The name the tree's top directory has inside the archive (renamed when it lands).
TOP = "tree"


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class HostEntry:
    path: Path
    rel: str  # below the tree's root, "/"-separated; "" for the root itself
    kind: str  # "dir", "file" or "link"
    size: int


@dataclass(frozen=True)
class HostTree:
    root: Path
    entries: tuple[HostEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind == "file")

    @property
    def dirs(self) -> int:
        return sum(1 for e in self.entries if e.kind == "dir")


def _refuse(path: Path, why: str) -> InvalidInput:
    return InvalidInput(
        f"cannot copy {path}: {why}", hint="remove it from the tree or copy another directory"
    )


def check_link(path: Path, rel: str, target: str) -> None:
    """A link is taken only if it resolves inside the tree wherever the tree lands."""
    if target.startswith("/"):
        raise _refuse(path, f"it is a symlink to the absolute path {target!r}")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    depth = rel.count("/")  # directories between the root and the link
    if ups > depth or ".." in parts[ups:]:
        raise _refuse(path, f"it is a symlink that points outside the tree ({target!r})")


def scan(root: Path) -> HostTree:
    """Every entry below ``root`` (a directory), links not followed, or InvalidInput."""
    try:
        st = root.stat()
    except FileNotFoundError:
        raise NotFound(f"{root} does not exist", hint="check the local path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"{root} is not a directory", hint="name a directory to copy")
    return HostTree(root, tuple(_walk(root)))


def _walk(root: Path) -> Iterator[HostEntry]:
    yield HostEntry(root, "", "dir", 0)
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        directory, rel_dir = pending.pop()
        if rel_dir.count("/") + 1 >= MAX_DEPTH:
            raise _refuse(directory, f"it is more than {MAX_DEPTH} directories deep")
        try:
            with os.scandir(directory) as found:
                children = sorted(found, key=lambda e: e.name)
        except OSError as exc:
            raise _refuse(directory, exc.strerror or str(exc)) from None
        for child in children:
            path = Path(child.path)
            rel = posixpath.join(rel_dir, child.name) if rel_dir else child.name
            mode = child.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                check_link(path, rel, os.readlink(path))
                yield HostEntry(path, rel, "link", 0)
            elif stat.S_ISDIR(mode):
                yield HostEntry(path, rel, "dir", 0)
                pending.append((path, rel))
            elif stat.S_ISREG(mode):
                yield HostEntry(path, rel, "file", child.stat(follow_symlinks=False).st_size)
            else:
                raise _refuse(path, "it is not a regular file, directory or symlink")


_TAR_KIND = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "link": tarfile.SYMTYPE}


class _Counted:
    """A file read by tarfile, reporting the tree's bytes as they go; a read error or a
    file that shrank since it was measured is the user's to fix, not an internal error."""

    def __init__(
        self, path: Path, source: IO[bytes], sent: list[int], total: int,
        progress: CopyProgress | None,
    ) -> None:  # fmt: skip
        self.path, self.source, self.sent, self.total = path, source, sent, total
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.source.read(size)
        except OSError as exc:
            raise _refuse(self.path, f"cannot read it ({exc.strerror or exc})") from None
        if size > 0 and len(data) < size:
            raise _refuse(self.path, "it shrank while it was being copied")
        if data:
            self.sent[0] += len(data)
            report(self.progress, self.sent[0], max(self.total, self.sent[0]))
        return data


def write_tar(
    tree: HostTree, sink: Sink, owner: GuestOwner, progress: CopyProgress | None = None
) -> int:
    """Write the tree as a tar (top directory TOP) into ``sink``; return the file bytes."""
    sent = [0]
    total = tree.total_bytes
    report(progress, 0, total)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for entry in tree.entries:
            arcname = posixpath.join(TOP, entry.rel) if entry.rel else TOP
            info = tar.gettarinfo(str(entry.path), arcname=arcname)
            hard_link = info is not None and info.islnk() and entry.kind == "file"
            if info is None or (info.type != _TAR_KIND[entry.kind] and not hard_link):
                raise _refuse(entry.path, "it changed while it was being copied")
            if info.issym():
                check_link(entry.path, entry.rel, info.linkname)
            info.uid, info.gid = owner.uid, owner.gid
            info.mtime = int(info.mtime)  # a float needs a pax header per member
            info.uname = info.gname = ""
            if info.isreg():
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as exc:
                    raise _refuse(entry.path, f"cannot open it ({exc.strerror})") from None
                with open(fd, "rb") as source:
                    tar.addfile(info, _Counted(entry.path, source, sent, total, progress))
            else:
                tar.addfile(info)
    return sent[0]
