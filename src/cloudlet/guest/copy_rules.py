"""What every driver's file copy checks the same way, whatever carries the bytes.

The QEMU driver moves bytes through the guest agent, the fake through an in-memory
tree: both refuse the same inputs with the same errors, pick the same target names
and write what comes back through landing.Landing (limits, no links, masked modes).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import InvalidInput, NotFound

# Bytes done, bytes expected (the expected count may grow when a guest lied about it).
CopyProgress = Callable[[int, int], None]
# A file copied into a guest is written under this suffix and renamed at the end.
GUEST_PART_SUFFIX = ".cloudlet-part"


@dataclass(frozen=True)
class TreeCopy:
    """What one recursive copy moved: file bytes, files and directories made, and the
    entries it left out, each with why (links, devices ... of a guest's tree)."""

    data_bytes: int
    files: int
    dirs: int
    skipped: tuple[str, ...] = ()


def report(progress: CopyProgress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def check_guest_path(path: str) -> None:
    """Guest paths must be absolute: the agent's working directory means nothing to a user."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidInput(
            f"guest path {path!r} is not absolute", hint="give the full path, such as /root/file"
        )


def host_source(src: Path) -> os.stat_result:
    """The host file to copy in: it must exist and be one regular file."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise NotFound(f"{src} does not exist", hint="check the local path") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInput(
            f"{src} is a directory", hint="copy it recursively, as a tree, or name a file"
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{src} is not a regular file", hint="copy a regular file")
    return st


def guest_target(dest: str, name: str, dest_is_dir: bool) -> str:
    """``dest`` ending in "/" or naming a directory in the guest gets ``name`` appended."""
    return posixpath.join(dest, name) if dest.endswith("/") or dest_is_dir else dest


def guest_missing(path: str, detail: str = "") -> NotFound:
    return NotFound(
        f"{path} does not exist in the guest" + (f" ({detail})" if detail else ""),
        hint="check the path with 'ls' in the guest",
    )


def guest_source_kind(src: str, mode: int) -> None:
    """The guest file to copy out must be one regular file (after links are followed)."""
    if stat.S_ISDIR(mode):
        raise InvalidInput(
            f"{src} is a directory in the guest",
            hint="copy it recursively, as a tree, or name a file",
        )
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{src} is not a regular file in the guest", hint="copy a regular file")


def cannot_write(target: Path, why: str) -> InvalidInput:
    """The landing refused the target (a symlink, a directory ...): the user picks another."""
    return InvalidInput(f"cannot write {target}: {why}", hint="choose another local path")


def host_target(src: str, dest: Path) -> Path:
    """``dest`` naming an existing local directory gets the guest file's name appended."""
    return dest / posixpath.basename(src.rstrip("/")) if dest.is_dir() else dest


def guest_tree_source(src: str) -> str:
    """The guest directory a tree copy reads, normalised; never the whole file system."""
    check_guest_path(src)
    path = posixpath.normpath(src)
    if path == "/":
        raise InvalidInput(
            "the guest's whole file system cannot be copied", hint="name a directory in it"
        )
    return path


def guest_tree_target(dest: str, src: Path, dest_is_dir: bool) -> str:
    """Where a host tree lands in the guest (as guest_target), normalised."""
    return posixpath.normpath(guest_target(dest, src.resolve().name or "root", dest_is_dir))


def guest_exists(target: str) -> InvalidInput:
    """A tree lands at a new name: it is never merged into what is there."""
    return InvalidInput(
        f"{target} already exists in the guest",
        hint="remove it first or copy into another directory",
    )
