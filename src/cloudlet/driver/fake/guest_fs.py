"""The fake guest's file system: an in-memory tree that file copies go in and out of.

It stands in for the guest's disk (it outlives a restart of the fake VM) and applies
the same rules as the QEMU driver's agent copy (guest.copy_rules), so a copy that the
real driver refuses is refused here with the same error; what comes out is written
through guest.landing.Landing with the same limits and protections.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cloudlet.errors import EntryRefused, GuestError
from cloudlet.guest import copy_rules as rules
from cloudlet.guest.copy_rules import CopyProgress
from cloudlet.guest.landing import CopyLimits, Landing

CHUNK = 256 * 1024


@dataclass
class FakeFile:
    mode: int  # permission bits, setuid and all, as the guest keeps them
    data: bytes


@dataclass
class FakeGuestFS:
    """Directories and regular files by absolute, normalised path (no links)."""

    dirs: set[str] = field(default_factory=lambda: {"/", "/root", "/tmp", "/etc", "/dev"})
    files: dict[str, FakeFile] = field(default_factory=dict)

    def is_dir(self, path: str) -> bool:
        return posixpath.normpath(path) in self.dirs

    def read(self, path: str) -> bytes | None:
        found = self.files.get(posixpath.normpath(path))
        return None if found is None else found.data

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Test hook: what a guest program would have written (parents are made)."""
        path = posixpath.normpath(path)
        parent = posixpath.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)
        self.files[path] = FakeFile(mode, data)

    def copy_in(self, src: Path, dest: str, progress: CopyProgress | None, mode: int | None) -> int:
        st = rules.host_source(src)
        rules.check_guest_path(dest)
        target = rules.guest_target(dest, src.name, not dest.endswith("/") and self.is_dir(dest))
        target = posixpath.normpath(target)
        parent = posixpath.dirname(target)
        if parent not in self.dirs:
            raise rules.guest_missing(parent)
        if target in self.dirs:
            raise GuestError(
                f"cannot rename {target}{rules.GUEST_PART_SUFFIX} to {target} in the guest: "
                "it is a directory",
                hint="check the guest's permissions and free space",
            )
        total, chunks = st.st_size, []
        rules.report(progress, 0, total)
        with open(src, "rb") as source:
            while data := source.read(CHUNK):
                chunks.append(data)
                done = sum(map(len, chunks))
                rules.report(progress, done, max(total, done))
        self.files[target] = FakeFile(
            stat.S_IMODE(st.st_mode) if mode is None else mode, b"".join(chunks)
        )
        return len(self.files[target].data)

    def copy_out(
        self, src: str, dest: Path, progress: CopyProgress | None, limits: CopyLimits | None
    ) -> int:
        rules.check_guest_path(src)
        path = posixpath.normpath(src)
        found = self.files.get(path)
        if path in self.dirs:
            guest_mode = stat.S_IFDIR | 0o755
        elif found is not None:
            guest_mode = stat.S_IFREG | found.mode
        else:
            raise rules.guest_missing(src)
        rules.guest_source_kind(src, guest_mode)
        assert found is not None
        target = rules.host_target(src, dest)
        bounds = limits or CopyLimits()
        if len(found.data) > bounds.max_bytes:
            Landing.too_large(bounds)
        reader = _Reader(found.data, progress)
        with Landing(target.parent, bounds) as landing:
            rules.report(progress, 0, len(found.data))
            try:
                landing.file((target.name,), guest_mode, reader.read)
            except EntryRefused as exc:
                raise rules.cannot_write(target, exc.message) from None
        return reader.done


@dataclass
class _Reader:
    data: bytes
    progress: CopyProgress | None
    done: int = 0

    def read(self, _size: int) -> bytes:
        chunk = self.data[self.done : self.done + CHUNK]
        self.done += len(chunk)
        if chunk:
            rules.report(self.progress, self.done, len(self.data))
        return chunk
