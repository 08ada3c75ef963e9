"""qemu-img on files we did not make: confined, by descriptor, with the format pinned.

qemu-img parses every byte of an image's header and tables; a crafted file has crashed,
hung or exhausted parsers before. So, as OpenStack Nova does for ``qemu_img_info``, each
call runs under a timeout and rlimits (address space, CPU time, file size) and, when we
are root, as ``nobody``. That user cannot open our 0700 directories, so the file is
handed over as an inherited descriptor (``/dev/fd/N``); reopening it that way checks only
the file's own mode, so a copy that is not world-readable is made readable (just for
the call) inside its private directory.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloudlet.errors import InvalidInput
from cloudlet.host.qemu_binaries import qemu_img
from cloudlet.host.run import Limits, run, run_confined, unprivileged_ids
from cloudlet.spec.units import GIB, MIB

INFO_LIMITS = Limits(wall=120, cpu=30, memory=1 * GIB)
CHECK_LIMITS = Limits(wall=900, cpu=300, memory=1 * GIB)


def convert_limits(virtual_size: int) -> Limits:
    """A conversion may write at most the image plus its qcow2 tables."""
    return Limits(
        wall=3600, cpu=1800, memory=1 * GIB, file_size=virtual_size + virtual_size // 64 + 64 * MIB
    )


@contextmanager
def _descriptor(path: Path, flags: int = os.O_RDONLY) -> Iterator[int]:
    """``path`` opened (never through a link), readable by others while in use."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if not mode & stat.S_IROTH and flags == os.O_RDONLY:
            os.fchmod(fd, mode | stat.S_IROTH)
        try:
            yield fd
        finally:
            if not mode & stat.S_IROTH and flags == os.O_RDONLY:
                os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _json(out: bytes, label: str, kind: type) -> Any:
    """qemu-img's JSON report, which must be a ``kind`` (dict or list)."""
    try:
        result = json.loads(out)
    except ValueError:
        result = None
    if not isinstance(result, kind):
        raise InvalidInput(f"qemu-img gave no report on {label}", hint="use another file")
    return result


def _query(
    command: str, path: Path, fmt: str, label: str, limits: Limits, *, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``qemu-img COMMAND -f FMT --output=json /dev/fd/N`` on ``path``, confined."""
    with _descriptor(path) as fd:
        argv = [qemu_img(), command, "-f", fmt, "--output=json", f"/dev/fd/{fd}"]
        return run_confined(argv, limits=limits, what=label, pass_fds=[fd], check=check)


def info(path: Path, fmt: str, label: str) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` (called ``label`` in messages)."""
    proc = _query("info", path, fmt, label, INFO_LIMITS)
    result: dict[str, Any] = _json(proc.stdout, label, dict)
    return result


def check(path: Path, fmt: str, label: str) -> dict[str, Any]:
    """``qemu-img check`` of ``path``: its report (it exits non-zero when it finds
    something, so the report is what counts)."""
    proc = _query("check", path, fmt, label, CHECK_LIMITS, check=False)
    if not proc.stdout.strip():
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidInput(
            f"{label} cannot be checked: {tail[-1] if tail else 'qemu-img check failed'}",
            hint="the file is damaged or not a valid image; use another file",
        )
    result: dict[str, Any] = _json(proc.stdout, label, dict)
    return result


def map_extents(path: Path, fmt: str, label: str) -> list[dict[str, Any]]:
    """``qemu-img map`` of ``path`` (a backup target is written by a QEMU that runs
    guest code: its tables are not ours to trust)."""
    result: list[dict[str, Any]] = _json(
        _query("map", path, fmt, label, CHECK_LIMITS).stdout, label, list
    )
    return result


def convert_to_qcow2(src: Path, fmt: str, dest: Path, virtual_size: int, label: str) -> None:
    """Write ``src`` as a new standalone qcow2 ``dest``, confined.

    We create ``dest`` ourselves (only a size goes in), give it to the confined user,
    and have qemu-img fill it through a descriptor. The caller copies the result to a
    file of its own before trusting it: no descriptor the confined user held reaches that.
    """
    run([qemu_img(), "create", "-q", "-f", "qcow2", str(dest), str(virtual_size)])
    ids = unprivileged_ids()
    if ids is not None:
        os.chown(dest, *ids)
    dest.chmod(0o600)
    with _descriptor(src) as fd_in, _descriptor(dest, os.O_RDWR) as fd_out:
        argv = [
            qemu_img(), "convert", "-q", "-n", "--target-is-zero",
            "-f", fmt, "-O", "qcow2", f"/dev/fd/{fd_in}", f"/dev/fd/{fd_out}",
        ]  # fmt: skip
        run_confined(
            argv, limits=convert_limits(virtual_size), what=label, pass_fds=[fd_in, fd_out]
        )
