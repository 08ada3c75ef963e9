"""Making a finished image directory visible in one step."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cloudlet.host.qemu_users import SHARED_GID


def publish(out: Path, dest: Path, work: Path, manifest: dict[str, Any]) -> None:
    """Write image.json into ``out``, then move it to ``dest`` with renames only.

    The image is never half visible; an older ``dest`` is moved into ``work``
    first, to be deleted with it.
    """
    (out / "image.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _readable_by_qemu(out, dest.parent)
    if dest.exists() or dest.is_symlink():
        os.rename(dest, work / "previous")
    os.rename(out, dest)


def _readable_by_qemu(out: Path, image_dir: Path) -> None:
    """Every VM's QEMU user reads built images: give them to the shared QEMU group
    (never to other users), whatever umask built them. Only root can, and needs to."""
    if os.geteuid() != 0:
        return
    for path, mode in [(out, 0o750), (image_dir, None)] + [
        (entry, 0o640) for entry in out.iterdir() if entry.is_file() and not entry.is_symlink()
    ]:
        info = os.lstat(path)
        if mode is None:  # the image's own directory: only entered, never listed
            if info.st_mode & stat.S_IXOTH or info.st_uid != 0:
                continue
            mode = stat.S_IMODE(info.st_mode) | stat.S_IXGRP
        os.chown(path, 0, SHARED_GID)
        os.chmod(path, mode)
