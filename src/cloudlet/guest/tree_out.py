"""A guest's tar stream landed as a directory tree on the host, trusting none of it.

The stream is parsed here with tarfile (never extracted by it): each member goes through
landing.Landing, so names that are absolute or climb, links, devices and fifos never
become files, modes lose setuid, setgid, sticky and world-write, and the byte and
entry limits hold. The tree lands in a temporary directory beside the target that is
renamed into place only when the whole stream has landed: a copy that fails half way
leaves nothing behind. Files belong to the local user running cloudlet.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from cloudlet.errors import EntryRefused, GuestError, InvalidInput, NotFound
from cloudlet.guest.copy_rules import TreeCopy
from cloudlet.guest.landing import MODE_MASK, PART_PREFIX, CopyLimits, Landing

Read = Callable[[int], bytes]

# Members that only carry names or attributes for the next one: tarfile reads each
# whole into memory, so a guest could make one as large as it likes.
_META_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
MAX_META = 1024 * 1024
# Bytes of headers and padding a stream may carry per entry beyond its files' bytes.
OVERHEAD_PER_ENTRY = 4096

KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}


class BoundedTarInfo(tarfile.TarInfo):
    """A header whose pax or long-name payload is refused past MAX_META bytes."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META:
            raise GuestError(
                f"the guest sent a tar header of {self.size} bytes (more than {MAX_META})",
                hint="the guest is misbehaving; nothing more was read from it",
            )
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


def relative(name: str, base: str) -> tuple[str, ...] | None:
    """The parts of a member's name below ``base`` ("": the archive's root, "."); None if
    it is elsewhere or climbs."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        return None
    if not base:
        return parts
    if not parts or parts[0] != base:
        return None
    return parts[1:]


def land_member(
    landing: Landing, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
) -> bool:
    """Write one member below the landing's root; False (and noted) if it was skipped."""
    try:
        if member.isdir():
            landing.directory(parts, member.mode)
        elif member.isfile():
            source = tar.extractfile(member)
            assert source is not None
            landing.file(parts, member.mode, source.read)
        else:
            landing.skip(shown(member.name), KINDS.get(member.type, "not a plain file"))
            return False
    except EntryRefused as exc:
        landing.skip(shown(member.name), exc.message)
        return False
    return True


def shown(name: str) -> str:
    """A guest's name fit to print: no terminal escapes, not too long."""
    return "".join(ch if ch.isprintable() else "?" for ch in name[:200])


class _Capped:
    """The guest's stream as a file for tarfile, cut off past ``cap`` bytes."""

    def __init__(self, read: Read, cap: int, limits: CopyLimits) -> None:
        self._read, self.cap, self.limits, self.done = read, cap, limits, 0

    def read(self, size: int = -1) -> bytes:
        data = self._read(size if size > 0 else 1 << 20)
        self.done += len(data)
        if self.done > self.cap:
            Landing.too_large(self.limits)
        return data


def stream_cap(limits: CopyLimits) -> int:
    """The most bytes a tar stream within ``limits`` can take, headers and padding too."""
    return limits.max_bytes + (limits.max_entries + 2) * OVERHEAD_PER_ENTRY + 2 * MAX_META


def check_target(target: Path) -> None:
    """The tree lands at a new name: an existing entry there is never merged into."""
    if os.path.lexists(target):
        raise InvalidInput(
            f"{target} already exists", hint="remove it first or copy into another directory"
        )
    if not target.parent.is_dir():
        raise NotFound(f"{target.parent} does not exist", hint="create the local directory first")


def land_tree(read: Read, base: str, target: Path, limits: CopyLimits) -> TreeCopy:
    """Unpack the tar from ``read`` (its tree rooted at the name ``base``, or at "." when
    ``base`` is "") as ``target``; raise, leaving nothing, if any of it is refused."""
    check_target(target)
    part = target.parent / (PART_PREFIX + secrets.token_hex(8))
    os.mkdir(part, 0o700)
    landing: Landing | None = None
    try:
        landing = Landing(part, limits)
        top_mode = 0o755
        files = dirs = 0
        stream = _Capped(read, stream_cap(limits), limits)
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:  # type: ignore[call-overload]
            for member in tar:
                landing.count_entry()
                parts = relative(member.name, base)
                if parts is None:
                    raise GuestError(
                        f"the guest's archive holds {member.name[:80]!r}, outside the copied "
                        "directory; nothing of the copy was kept",
                        hint="the guest is misbehaving",
                    )
                if not parts:
                    if not member.isdir():
                        raise GuestError(
                            f"the guest's archive holds {base!r} as something other than "
                            "a directory; nothing of the copy was kept",
                            hint="did it change while it was copied? try again",
                        )
                    top_mode = member.mode
                    dirs += 1
                elif land_member(landing, tar, member, parts):
                    files += member.isfile()
                    dirs += member.isdir()
    except (tarfile.TarError, EOFError) as exc:
        _discard(landing, part)
        raise GuestError(
            f"the guest sent a broken archive ({exc}); nothing of the copy was kept",
            hint="check the guest's free space and its tar command",
        ) from None
    except BaseException:
        _discard(landing, part)
        raise
    try:
        os.chmod(part, (top_mode & MODE_MASK) | 0o700)
        check_target(target)
        os.rename(part, target)
    except BaseException:
        _discard(landing, part)
        raise
    landing.close()
    return TreeCopy(landing.bytes_written, files, dirs, tuple(landing.skipped))


def _discard(landing: Landing | None, part: Path) -> None:
    """Remove what a failed copy made: the landing's entries, then its directory."""
    if landing is not None:
        landing.remove_partial()
        with contextlib.suppress(OSError):
            landing.close()
    shutil.rmtree(part, ignore_errors=True)
