"""qcow2 files through qemu-img, always with an explicit format (-f, and -F for backing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudlet.host.qemu_binaries import qemu_img
from cloudlet.host.run import run


def info(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img info --output=json`` with the format pinned (never probed)."""
    out = run([qemu_img(), "info", "-f", fmt, "--output=json", "-U", str(path)]).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def virtual_size(path: Path, fmt: str) -> int:
    return int(info(path, fmt)["virtual-size"])


def create_overlay(base: Path, base_format: str, dest: Path, size: int | None = None) -> None:
    """A thin qcow2 on top of ``base``: costs the same whatever the base's size."""
    argv = [
        qemu_img(), "create", "-q", "-f", "qcow2",
        "-b", str(base.resolve()), "-F", base_format,
        str(dest),
    ]  # fmt: skip
    if size is not None:
        argv.append(str(size))
    run(argv)


def create_blank(dest: Path, size: int) -> None:
    """An empty thin qcow2 (for installs from ISO)."""
    run([qemu_img(), "create", "-q", "-f", "qcow2", str(dest), str(size)])
