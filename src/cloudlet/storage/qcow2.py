"""qcow2 files through qemu-img, always with an explicit format (-f, and -F for backing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudlet.errors import CloudletError, HostCommandError, OutOfSpace, out_of_space
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


def _write(argv: list[str], dest: Path) -> None:
    """Run a qemu-img command that writes ``dest``; a full file system under it is an
    OutOfSpace naming where, so callers can say what is full (a pool, a VM's directory)."""
    try:
        run(argv)
    except HostCommandError as exc:
        if out_of_space(exc.message):
            raise OutOfSpace(
                f"qemu-img could not write {dest}: no space left on its file system",
                path=dest,
                hint="free space there and try again",
            ) from None
        raise


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
    _write(argv, dest)


def create_blank(dest: Path, size: int) -> None:
    """An empty thin qcow2 (for installs from ISO)."""
    _write([qemu_img(), "create", "-q", "-f", "qcow2", str(dest), str(size)], dest)


def resize(path: Path, size: int) -> None:
    """Grow a stopped VM's qcow2 (never shrink: callers refuse that first)."""
    _write([qemu_img(), "resize", "-q", "-f", "qcow2", str(path), str(size)], path)


def rebase(path: Path, backing: Path | None, backing_format: str) -> None:
    """Safe rebase: copy into ``path`` whatever differs from the new backing (None: all),
    so its content stays the same while the layers in between drop out."""
    argv = [qemu_img(), "rebase", "-q", "-f", "qcow2"]
    if backing is None:
        argv += ["-b", ""]
    else:
        argv += ["-b", str(backing.resolve()), "-F", backing_format]
    _write([*argv, str(path)], path)


def convert(src: Path, dest: Path, src_format: str = "qcow2") -> None:
    """A standalone qcow2 copy of a chain (or a raw volume), flattened (no backing file)."""
    _write([qemu_img(), "convert", "-f", src_format, "-O", "qcow2", str(src), str(dest)], dest)


def check(path: Path) -> dict[str, Any]:
    """``qemu-img check``: {"corruptions": n, "leaks": n, ...}; exits non-zero on findings."""
    proc = run([qemu_img(), "check", "-f", "qcow2", "--output=json", str(path)], check=False)
    if not proc.stdout.strip():
        from cloudlet.errors import HostCommandError

        raise HostCommandError(proc.args, proc.returncode, "", proc.stderr.decode(errors="replace"))
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def map_extents(path: Path) -> list[dict[str, Any]]:
    """``qemu-img map --output=json``: the guest ranges, and where a standalone qcow2
    keeps each one's data (``offset`` in the file) or that it reads as zeros.

    Confined: the file may come from a QEMU running guest code (a backup target)."""
    from cloudlet.images import untrusted

    return untrusted.map_extents(path, "qcow2", str(path))


def read_present(path: Path, piece: int) -> Iterator[tuple[int, bytes | None, int]]:
    """What a standalone, uncompressed qcow2 (a backup target) holds: (guest offset,
    bytes or None for zeros, length), in pieces that never cross a multiple of ``piece``.

    Ranges the file does not hold (``present`` false) are left out: in the target of an
    incremental backup those are the clusters that did not change.
    """
    with open(path, "rb") as f:
        for extent in map_extents(path):
            if not extent.get("present", True) or extent.get("depth", 0) != 0:
                continue
            start, length = int(extent["start"]), int(extent["length"])
            data = bool(extent.get("data"))
            if data and "offset" not in extent:
                raise CloudletError(f"{path}: data at {start} has no file offset (compressed?)")
            host = int(extent.get("offset", 0))
            end = start + length
            while start < end:
                stop = min(end, (start // piece + 1) * piece)
                if data:
                    f.seek(host)
                    chunk = f.read(stop - start)
                    if len(chunk) != stop - start:
                        raise CloudletError(f"{path} is shorter than its map says")
                    yield start, chunk, stop - start
                    host += stop - start
                else:
                    yield start, None, stop - start
                start = stop


def from_raw(raw: Path, dest: Path) -> None:
    """A standalone qcow2 with the content of a raw file (zeros stay unallocated)."""
    _write([qemu_img(), "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(dest)], dest)
