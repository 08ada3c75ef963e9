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


def backing(path: Path) -> tuple[Path, str] | None:
    """A qcow2's backing file and its format, or None."""
    data = info(path, "qcow2")
    name = data.get("full-backing-filename") or data.get("backing-filename")
    if not name:
        return None
    return Path(str(name)), str(data.get("backing-filename-format") or "raw")


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


def resize(path: Path, size: int) -> None:
    """Grow a stopped VM's qcow2 (never shrink: callers refuse that first)."""
    run([qemu_img(), "resize", "-q", "-f", "qcow2", str(path), str(size)])


def rebase(path: Path, backing: Path | None, backing_format: str) -> None:
    """Safe rebase: copy into ``path`` whatever differs from the new backing (None: all),
    so its content stays the same while the layers in between drop out."""
    argv = [qemu_img(), "rebase", "-q", "-f", "qcow2"]
    if backing is None:
        argv += ["-b", ""]
    else:
        argv += ["-b", str(backing.resolve()), "-F", backing_format]
    run([*argv, str(path)])


def convert(src: Path, dest: Path) -> None:
    """A standalone copy of a chain, flattened (no backing file)."""
    run([qemu_img(), "convert", "-f", "qcow2", "-O", "qcow2", str(src), str(dest)])


def check(path: Path) -> dict[str, Any]:
    """``qemu-img check``: {"corruptions": n, "leaks": n, ...}; exits non-zero on findings."""
    proc = run([qemu_img(), "check", "-f", "qcow2", "--output=json", str(path)], check=False)
    if not proc.stdout.strip():
        from cloudlet.errors import HostCommandError

        raise HostCommandError(proc.args, proc.returncode, "", proc.stderr.decode(errors="replace"))
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
