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

from cloudlet.errors import CloudletError
from cloudlet.guest.landing import CopyLimits, Landing
from cloudlet.guest.tree_out import BoundedTarInfo, land_member, relative, shown
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
                tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar,
            ):
                for member in tar:
                    if landing is None:
                        # A single file lands at spec.host itself, so in its parent.
                        single = member.isfile() and relative(member.name, base) == ()
                        root = spec.host.parent if single else spec.host
                        made_root = not root.exists()
                        root.mkdir(parents=True, exist_ok=True)
                        landing = Landing(root, bounds)
                        prefix = (spec.host.name,) if single else ()
                    landing.count_entry()
                    _land(landing, tar, member, relative(member.name, base), prefix)
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
        landing.skip(shown(member.name), "outside the copied path")
        return
    land_member(landing, tar, member, prefix + rel)
