"""Write what a guest hands back below one host directory, trusting none of it.

The guest chooses names, kinds, modes and sizes, so every entry is made through
directory file descriptors: each step down is opened with O_NOFOLLOW|O_DIRECTORY,
and each file is created with O_EXCL|O_NOFOLLOW under a temporary name and renamed
into place only over a regular file. A symlink, whether the guest sends it or it
already sits in the destination, is never followed nor replaced; links, devices and
fifos are never made; setuid, setgid, sticky and world-write bits are masked off;
directories the copy did not make keep their modes. Byte and entry limits stop the
copy, and a copy that stops half way removes what it made.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from cloudlet.errors import CapacityExceeded, CloudletError, EntryRefused, InvalidInput, NotFound
from cloudlet.spec.units import GIB, format_size

# No setuid, setgid, sticky or world-write on anything a guest hands back.
MODE_MASK = 0o775
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1024 * 1024
PART_PREFIX = ".cloudlet-part-"
NAME_MAX = 255
# Each entry is reached by opening every directory above it: a bound on depth keeps
# a hostile tree from costing depth x entries system calls.
MAX_DEPTH = 256

Read = Callable[[int], bytes]


@dataclass(frozen=True)
class CopyLimits:
    """How much one copy out of a guest may write; generous enough not to hit by accident."""

    max_bytes: int = 10 * GIB
    max_entries: int = 100_000


def check_name(name: str) -> None:
    """One path component from a guest: no separator, no climbing, no NUL, not too long."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise EntryRefused(f"the name {name!r} is not a plain file name")
    if len(os.fsencode(name)) > NAME_MAX:
        raise EntryRefused(f"the name {name[:40]!r}... is longer than {NAME_MAX} bytes")


@dataclass
class Landing:
    """One copy into ``root`` (a directory the user named, opened once)."""

    root: Path
    limits: CopyLimits
    bytes_written: int = 0
    entries: int = 0
    skipped: list[str] = field(default_factory=list)
    replaced: int = 0
    _made: list[tuple[str, ...]] = field(default_factory=list)
    _made_dirs: list[tuple[str, ...]] = field(default_factory=list)
    _root_fd: int = -1

    def __post_init__(self) -> None:
        # The root is the user's choice: it may be a symlink they made, so it is followed.
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(
                f"{self.root} does not exist", hint="create the local directory first"
            ) from None
        except NotADirectoryError:
            raise InvalidInput(
                f"{self.root} is not a directory", hint="name a directory to copy into"
            ) from None

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> Landing:
        return self

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        if exc_type is not None:
            self.remove_partial()
        self.close()

    # ------------------------------------------------------------------ limits
    def count_entry(self) -> None:
        """Every entry the guest sends counts, written or skipped."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise CapacityExceeded(
                f"the copy has more than {self.limits.max_entries} entries "
                "(the copy-out entry limit); nothing of it was kept",
                hint="raise copy_max_entries in [guest] of config.toml "
                "(or CLOUDLET_COPY_MAX_ENTRIES)",
            )

    def _count_bytes(self, count: int) -> None:
        self.bytes_written += count
        if self.bytes_written > self.limits.max_bytes:
            self.too_large(self.limits)

    @staticmethod
    def too_large(limits: CopyLimits) -> NoReturn:
        raise CapacityExceeded(
            f"the copy is larger than {format_size(limits.max_bytes)} "
            "(the copy-out byte limit); nothing of it was kept",
            hint="raise copy_max_bytes in [guest] of config.toml (or CLOUDLET_COPY_MAX_BYTES)",
        )

    # ------------------------------------------------------------------ entries
    def skip(self, name: str, why: str) -> None:
        self.skipped.append(f"{name} ({why})")

    def directory(self, parts: tuple[str, ...], mode: int) -> None:
        """Make a directory (owner keeps rwx); an existing one keeps its mode."""
        if not parts:
            return
        with self._open_dir(parts[:-1]) as parent:
            name = parts[-1]
            try:
                os.mkdir(name, (mode & MODE_MASK) | 0o700, dir_fd=parent)
            except FileExistsError:
                os.close(self._enter(parent, name, parts))
                return
            self._made_dirs.append(parts)

    def file(self, parts: tuple[str, ...], mode: int, read: Read) -> int:
        """Write a regular file from ``read`` (called until it returns b""); return its size."""
        if not parts:
            raise EntryRefused("a file needs a name")
        with self._open_dir(parts[:-1]) as parent:
            name = parts[-1]
            check_name(name)
            existed = self._existing_file(parent, parts)
            part = PART_PREFIX + secrets.token_hex(8)
            fd = os.open(part, FILE_FLAGS, mode & MODE_MASK, dir_fd=parent)
            size = 0
            try:
                with open(fd, "wb") as out:
                    while data := read(CHUNK):
                        self._count_bytes(len(data))
                        out.write(data)
                        size += len(data)
                # Checked again: the name must still not be a link or a directory.
                self._existing_file(parent, parts)
                os.rename(part, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=parent)
                raise
        if existed:
            self.replaced += 1
        else:
            self._made.append(parts)
        return size

    def remove_partial(self) -> None:
        """Remove the files and directories this copy made (replaced files stay replaced)."""
        for parts in reversed(self._made):
            with (
                contextlib.suppress(OSError, CloudletError),
                self._open_dir(parts[:-1], create=False) as parent,
            ):
                os.unlink(parts[-1], dir_fd=parent)
        for parts in reversed(self._made_dirs):
            with (
                contextlib.suppress(OSError, CloudletError),
                self._open_dir(parts[:-1], create=False) as parent,
            ):
                os.rmdir(parts[-1], dir_fd=parent)
        self._made.clear()
        self._made_dirs.clear()

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _open_dir(self, parts: tuple[str, ...], *, create: bool = True) -> Iterator[int]:
        """An fd for root/parts, making missing directories; never through a symlink."""
        if len(parts) >= MAX_DEPTH:
            raise EntryRefused(f"the path is more than {MAX_DEPTH} directories deep")
        fd = os.dup(self._root_fd)
        try:
            for depth, name in enumerate(parts, start=1):
                check_name(name)
                try:
                    if not create:
                        raise FileExistsError
                    os.mkdir(name, 0o755, dir_fd=fd)
                    self._made_dirs.append(parts[:depth])
                    # Made without an entry of its own: it counts, or one deep name
                    # could make a million directories.
                    self.count_entry()
                except FileExistsError:
                    pass
                child = self._enter(fd, name, parts[:depth])
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _enter(self, parent: int, name: str, parts: tuple[str, ...]) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError:
            raise EntryRefused(f"{'/'.join(parts)} is a symlink or not a directory here") from None

    def _existing_file(self, parent: int, parts: tuple[str, ...]) -> bool:
        """True if a regular file is there; EntryRefused for anything else but nothing."""
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            raise EntryRefused(f"{'/'.join(parts)} is a symlink or not a regular file here")
        return True

    def summary(self) -> str | None:
        """A one-line note on what was skipped or replaced, if anything."""
        if not self.skipped:
            return None
        shown = ", ".join(self.skipped[:3]) + (" ..." if len(self.skipped) > 3 else "")
        count = len(self.skipped)
        return f"skipped {count} entries that are not plain files or directories: {shown}"
