"""Copy directory trees into and out of a guest through the QEMU guest agent.

The agent can neither stream a program's stdin nor its stdout, so a tree travels as a
tar file in the guest: written chunk by chunk with guest-file-write and unpacked by the
guest's tar (copy in), or packed by the guest's tar and read chunk by chunk with
guest-file-read (copy out). Both need room for one archive in the guest. What the host
sends is checked by guest.tree_in, what the guest sends is landed by guest.tree_out.
The archive, and a tree that fails half way, are removed in the guest afterwards.
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import stat
from pathlib import Path

from cloudlet.driver.qemu import guest_files as files
from cloudlet.driver.qemu.agent import connect
from cloudlet.errors import CloudletError, InvalidInput
from cloudlet.guest import copy_rules as rules
from cloudlet.guest import tree_in, tree_out
from cloudlet.guest.accounts import ROOT, GuestOwner
from cloudlet.guest.copy_rules import TreeCopy
from cloudlet.guest.landing import PART_PREFIX, CopyLimits, Landing

# Seconds the guest's tar may take to pack or unpack one tree (TCG is slow).
TAR_TIMEOUT = 3600.0
ARCHIVE = "a.tar"


def copy_tree_in(
    agent_socket: Path,
    src: Path,
    dest: str,
    *,
    progress: rules.CopyProgress | None = None,
    owner: GuestOwner | None = None,
) -> TreeCopy:
    """Copy the host directory ``src`` to ``dest`` in the guest (Driver.copy_tree_in)."""
    if src.is_file():
        copied = files.copy_in(agent_socket, src, dest, progress=progress, owner=owner)
        return TreeCopy(copied, 1, 0)
    tree = tree_in.scan(src)
    rules.check_guest_path(dest)
    target = rules.guest_tree_target(
        dest, src, not dest.endswith("/") and files.guest_is_dir(agent_socket, dest)
    )
    parent = posixpath.dirname(target)
    _check_new_target(agent_socket, target, parent)
    part = posixpath.join(parent, PART_PREFIX + secrets.token_hex(8))
    archive = posixpath.join(part, ARCHIVE)
    files.exec_ok(agent_socket, ["mkdir", "-m", "700", "--", part], f"make {part}")
    try:
        with connect(agent_socket, files.AGENT_TIMEOUT) as conn:
            handle = files.open_file(conn, archive, "wb")
            try:
                writer = files.GuestWriter(conn, handle, archive)
                sent = tree_in.write_tar(tree, writer, owner or ROOT, progress)
                writer.flush()
            except BaseException:
                files.close_quietly(conn, handle)
                raise
            # Checked: buffered data reaches the guest's file only here (a full disk shows).
            conn.call("guest-file-close", {"handle": handle})
        files.exec_ok(
            agent_socket,
            ["tar", "-x", "--numeric-owner", "-f", archive, "-C", part],
            f"unpack the tree in {part}",
            TAR_TIMEOUT,
        )
        files.exec_ok(agent_socket, ["rm", "-f", "--", archive], f"remove {archive}")
        moved = posixpath.join(part, tree_in.TOP)
        files.exec_ok(agent_socket, ["mv", "--", moved, target], f"rename {moved} to {target}")
    except BaseException:
        with contextlib.suppress(CloudletError, OSError):
            files.run_short(agent_socket, ["rm", "-rf", "--", part])
        raise
    with contextlib.suppress(CloudletError, OSError):
        files.run_short(agent_socket, ["rmdir", "--", part])
    return TreeCopy(sent, tree.files, tree.dirs)


def _check_new_target(agent_socket: Path, target: str, parent: str) -> None:
    """A tree lands at a new name in an existing directory, never merged into another."""
    if files.run_short(agent_socket, ["stat", "-c", "%f", "--", target]).exit_code == 0:
        raise rules.guest_exists(target)
    if not files.guest_is_dir(agent_socket, parent):
        raise rules.guest_missing(parent)


def copy_tree_out(
    agent_socket: Path,
    src: str,
    dest: Path,
    *,
    progress: rules.CopyProgress | None = None,
    limits: CopyLimits | None = None,
) -> TreeCopy:
    """Copy the guest directory ``src`` to the host path ``dest`` (Driver.copy_tree_out)."""
    path = rules.guest_tree_source(src)
    guest_mode, _ = files.guest_stat(agent_socket, src)
    if stat.S_ISREG(guest_mode):
        copied = files.copy_out(agent_socket, src, dest, progress=progress, limits=limits)
        return TreeCopy(copied, 1, 0)
    if not stat.S_ISDIR(guest_mode):
        raise InvalidInput(
            f"{src} is not a directory or a regular file in the guest",
            hint="copy a directory or a file",
        )
    bounds = limits or CopyLimits()
    target = dest / posixpath.basename(path) if dest.is_dir() else dest
    tree_out.check_target(target)
    archive = f"/tmp/{PART_PREFIX}{secrets.token_hex(8)}.tar"
    try:
        # "-C src ." follows a link named by src, as cp does for the path it is given.
        files.exec_ok(
            agent_socket,
            ["tar", "-c", "-f", archive, "-C", path, "."],
            f"pack {path}",
            TAR_TIMEOUT,
        )
        _, size = files.guest_stat(agent_socket, archive)
        if size > tree_out.stream_cap(bounds):
            Landing.too_large(bounds)
        reader = files.GuestReader(progress, size)
        with connect(agent_socket, files.AGENT_TIMEOUT) as conn:
            handle = files.open_file(conn, archive, "rb")
            try:
                rules.report(progress, 0, size)
                return tree_out.land_tree(reader.reading(conn, handle), "", target, bounds)
            finally:
                files.close_quietly(conn, handle)
    finally:
        with contextlib.suppress(CloudletError, OSError):
            files.run_short(agent_socket, ["rm", "-f", "--", archive])
