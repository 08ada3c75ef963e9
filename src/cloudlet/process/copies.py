"""--copy-in and --copy-out as tar streams over a virtio-serial port.

Copy-in sends a tar of the host path (owners reset to root) and closes the socket,
which the guest reads as end of file. Copy-out reads what the guest sends as
untrusted input: only regular files and directories are written, only below the
destination the user named; links, devices and names that climb out are skipped
and reported. Both stream file by file, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tarfile
from collections.abc import Callable
from pathlib import PurePosixPath

from cloudlet.errors import CloudletError
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


def _safe_relative(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or any(part == ".." for part in path.parts):
        return None
    return path


def receive_tree(conn: socket.socket, spec: CopySpec) -> CopyWork:
    """Unpack the guest's tar (rooted at the guest path's last name) into spec.host."""
    base = PurePosixPath(spec.guest).name

    def work() -> None:
        skipped: list[str] = []
        with (
            conn.makefile("rb", buffering=0) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for member in tar:
                rel = _safe_relative(member.name)
                if rel is None or not rel.parts or rel.parts[0] != base:
                    skipped.append(member.name)
                    continue
                dest = spec.host.joinpath(*rel.parts[1:])
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    dest.chmod(0o755 | (member.mode & 0o777))
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.is_symlink() or dest.is_dir():
                        skipped.append(member.name)
                        continue
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(source, out, 1024 * 1024)
                    os.chmod(dest, member.mode & 0o777)
                else:
                    skipped.append(member.name)
        if skipped:
            shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
            raise CloudletError(
                f"skipped {len(skipped)} entries that are not plain files or directories ({shown})"
            )

    return work
