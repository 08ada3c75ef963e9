"""A tiny writer (and reader) for the newc cpio format the kernel unpacks as initramfs.

Written here rather than calling ``cpio`` so the build needs no extra host tool and so
device nodes (``/dev/console``) can be added without root. Timestamps and inode
numbers are fixed so the same input always gives the same archive.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive, as parsed back by ``read_newc``."""

    name: str
    mode: int
    data: bytes
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class CpioWriter:
    """Append members to a newc archive; names are relative ("bin/sh", not "/bin/sh").

    Parents must be added before their children: the kernel's unpacker does not
    create missing directories.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._closed = False
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = name.strip("/") or "."
        if name in self._names:
            raise ValueError(f"duplicate cpio member {name!r}")
        self._names.add(name)
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,  # ino
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime: fixed for reproducible archives
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check (unused in newc)
        )
        header = _MAGIC + b"".join(b"%08x" % f for f in fields)
        self._out.write(header + encoded + b"\0" * _pad4(len(header) + len(encoded)))
        self._out.write(data + b"\0" * _pad4(len(data)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file with the given contents."""
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symbolic link (the target is stored as the member's data)."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Add a character device node such as /dev/console (5, 1)."""
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer; the archive is complete afterwards."""
        if not self._closed:
            self._entry(_TRAILER, 0, nlink=1)
            self._closed = True


def read_newc(data: bytes) -> list[CpioEntry]:
    """Parse a newc archive (used by tests and for inspecting a built initrd)."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != _MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = (
            fields[1],
            fields[6],
            fields[9],
            fields[10],
            fields[11],
        )
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + _pad4(110 + namesize)
        body = data[pos : pos + filesize]
        pos += filesize + _pad4(filesize)
        if name == _TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, body, rmaj, rmin))
