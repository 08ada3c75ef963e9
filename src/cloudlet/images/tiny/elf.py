"""Just enough ELF reading to pick files out of Debian packages without running them.

The image keeps only the shared libraries qemu-ga really links against (DT_NEEDED,
followed recursively) and the kernel modules a driver depends on (``depends=`` in a
module's .modinfo section). Reading the files directly avoids ldd (which runs the
binary's loader on the host) and depmod (an extra host tool), and works for any
architecture.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_SHT_DYNAMIC = 6
_PT_INTERP = 3
_DT_NEEDED = 1


class NotElf(ValueError):
    """The file is not a 64- or 32-bit ELF object."""


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int


class ElfFile:
    """A parsed ELF header with its section and program header tables."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF":
            raise NotElf("not an ELF file")
        self.data = data
        self.is64 = data[4] == 2
        self.endian = "<" if data[5] == 1 else ">"
        e = self.endian
        if self.is64:
            (self.phoff, self.shoff) = struct.unpack_from(e + "QQ", data, 0x20)
            (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
                struct.unpack_from(e + "HHHHH", data, 0x36)
            )
        else:
            (self.phoff, self.shoff) = struct.unpack_from(e + "II", data, 0x1C)
            (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
                struct.unpack_from(e + "HHHHH", data, 0x2A)
            )
        self.sections = self._read_sections()

    @classmethod
    def from_path(cls, path: Path) -> ElfFile:
        """Read and parse a file."""
        return cls(path.read_bytes())

    def _read_sections(self) -> list[_Section]:
        raw: list[tuple[int, int, int, int, int, int]] = []
        for i in range(self.shnum):
            off = self.shoff + i * self.shentsize
            if self.is64:
                name, typ, _flags, _addr, offset, size, link, _info, _align, entsize = (
                    struct.unpack_from(self.endian + "IIQQQQIIQQ", self.data, off)
                )
            else:
                name, typ, _flags, _addr, offset, size, link, _info, _align, entsize = (
                    struct.unpack_from(self.endian + "IIIIIIIIII", self.data, off)
                )
            raw.append((name, typ, offset, size, link, entsize))
        names = b""
        if raw and self.shstrndx < len(raw):
            _, _, off, size, _, _ = raw[self.shstrndx]
            names = self.data[off : off + size]
        return [_Section(_cstr(names, n), t, o, s, ln, es) for (n, t, o, s, ln, es) in raw]

    def section(self, name: str) -> bytes | None:
        """The raw contents of the named section, or None."""
        for s in self.sections:
            if s.name == name:
                return self.data[s.offset : s.offset + s.size]
        return None

    def interpreter(self) -> str | None:
        """The PT_INTERP path (the dynamic loader), None for static binaries."""
        for i in range(self.phnum):
            off = self.phoff + i * self.phentsize
            if self.is64:
                typ, _flags, offset, _va, _pa, filesz = struct.unpack_from(
                    self.endian + "IIQQQQ", self.data, off
                )
            else:
                typ, offset, _va, _pa, filesz = struct.unpack_from(
                    self.endian + "IIIII", self.data, off
                )
            if typ == _PT_INTERP:
                return self.data[offset : offset + filesz].rstrip(b"\0").decode()
        return None

    def needed(self) -> list[str]:
        """The DT_NEEDED sonames, in link order."""
        out: list[str] = []
        for s in self.sections:
            if s.type != _SHT_DYNAMIC or s.link >= len(self.sections):
                continue
            strtab = self.sections[s.link]
            strings = self.data[strtab.offset : strtab.offset + strtab.size]
            fmt, step = (self.endian + "qQ", 16) if self.is64 else (self.endian + "iI", 8)
            for off in range(s.offset, s.offset + s.size, step):
                tag, val = struct.unpack_from(fmt, self.data, off)
                if tag == 0:
                    break
                if tag == _DT_NEEDED:
                    out.append(_cstr(strings, val))
        return out

    def modinfo(self) -> dict[str, list[str]]:
        """The key=value pairs of a kernel module's .modinfo section."""
        info: dict[str, list[str]] = {}
        raw = self.section(".modinfo") or b""
        for item in raw.split(b"\0"):
            if b"=" in item:
                key, _, value = item.decode(errors="replace").partition("=")
                info.setdefault(key, []).append(value)
        return info


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode(errors="replace")
