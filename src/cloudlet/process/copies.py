"""--copy-in and --copy-out as tar streams over a virtio-serial port.

Copy-in sends a tar of the host path (owners reset to root) and closes the socket,
which the guest reads as end of file. Copy-out reads what the guest sends as
untrusted input: only regular files and directories are written, only below the
destination the user named; links, devices and names that climb out are skipped
and reported. Both stream file by file, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import socket
import tarfile
from collections.abc import Callable
from pathlib import PurePosixPath

from cloudlet.errors import CloudletError, EntryRefused, GuestError
from cloudlet.guest.landing import CopyLimits, Landing
from cloudlet.spec.process import CopySpec

CopyWork = Callable[[], None]


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def copy_in_target(spec: CopySpec) -> tuple[str, str]:
    """Where the guest unpacks a copy-in, and the name the tar gives the host path.

    A directory's contents land in the guest path; a single file lands at the guest
    path, so it is unpacked into its parent under the guest path's last name.
    """
    if spec.host.is_dir():
        return spec.guest, "."
    guest = PurePosixPath(spec.guest)
    return str(guest.parent), guest.name


def send_copy(spec: CopySpec, conn: socket.socket) -> CopyWork:
    """Stream a tar of the host path (owners reset to root), then end the stream."""
    _, arcname = copy_in_target(spec)

    def work() -> None:
        try:
            with (
                conn.makefile("wb") as stream,
                tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.add(str(spec.host), arcname=arcname, filter=_as_root)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)

    return work


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


class _BoundedTarInfo(tarfile.TarInfo):
    """A header whose pax or long-name payload is refused past MAX_META bytes."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META:
            raise GuestError(
                f"the guest sent a tar header of {self.size} bytes (more than {MAX_META})",
                hint="the guest is misbehaving; nothing more was read from it",
            )
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


def _relative(name: str, base: str) -> tuple[str, ...] | None:
    """The parts of a member's name below the guest path's last name; None if elsewhere."""
    if name.startswith("/") or "\0" in name:
        return None
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if not parts or parts[0] != base or ".." in parts:
        return None
    return parts[1:]


def receive_tree(conn: socket.socket, spec: CopySpec, limits: CopyLimits | None = None) -> CopyWork:
    """Unpack the guest's tar (rooted at the guest path's last name) into spec.host.

    Written through landing.Landing: nothing outside spec.host changes, whatever the
    guest sends; a limit or a broken stream removes what this copy made.
    """
    base = PurePosixPath(spec.guest).name
    bounds = limits or CopyLimits()

    def work() -> None:
        landing: Landing | None = None
        made_root = False
        prefix: tuple[str, ...] = ()
        try:
            with (
                conn.makefile("rb", buffering=0) as stream,
                tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar,
            ):
                for member in tar:
                    if landing is None:
                        # A single file lands at spec.host itself, so in its parent.
                        single = member.isfile() and _relative(member.name, base) == ()
                        root = spec.host.parent if single else spec.host
                        made_root = not root.exists()
                        root.mkdir(parents=True, exist_ok=True)
                        landing = Landing(root, bounds)
                        prefix = (spec.host.name,) if single else ()
                    landing.count_entry()
                    _land(landing, tar, member, _relative(member.name, base), prefix)
        except BaseException:
            if landing is not None:
                landing.remove_partial()
                if made_root:
                    with contextlib.suppress(OSError):
                        landing.root.rmdir()
            raise
        finally:
            if landing is not None:
                landing.close()
        note = landing.summary() if landing is not None else None
        if note:
            raise CloudletError(note)

    return work


def _land(
    landing: Landing,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: tuple[str, ...] | None,
    prefix: tuple[str, ...],
) -> None:
    """Write one member, or note why it was skipped."""
    if rel is None:
        landing.skip(member.name, "outside the copied path")
        return
    parts = prefix + rel
    try:
        if member.isdir():
            landing.directory(parts, member.mode)
        elif member.isfile():
            source = tar.extractfile(member)
            assert source is not None
            landing.file(parts, member.mode, source.read)
        else:
            landing.skip(member.name, _KINDS.get(member.type, "not a plain file"))
    except EntryRefused as exc:
        landing.skip(member.name, exc.message)


_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}
