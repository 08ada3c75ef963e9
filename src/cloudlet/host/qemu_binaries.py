"""Finding QEMU and asking its version."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from cloudlet.errors import InvalidInput
from cloudlet.host.files import write_atomic
from cloudlet.host.run import run, which

ARCH_BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
# Debian's package for each emulator (qemu-system-aarch64 comes with qemu-system-arm).
ARCH_PACKAGES = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}
INSTALL_HINT = "install QEMU: apt-get install qemu-system-x86 qemu-utils"


def install_hint(arch: str = "x86_64") -> str:
    """What to install to run guests of ``arch``."""
    return f"install QEMU: apt-get install {ARCH_PACKAGES.get(arch, 'qemu-system')} qemu-utils"


def qemu_binary(arch: str = "x86_64") -> str:
    try:
        binary = ARCH_BINARIES[arch]
    except KeyError:
        raise InvalidInput(
            f"no QEMU emulator is known for {arch}",
            hint=f"supported: {', '.join(sorted(ARCH_BINARIES))}",
        ) from None
    return which(binary, hint=install_hint(arch))


def available_arches() -> dict[str, str]:
    """Guest architecture -> emulator path, for the emulators installed on this host."""
    found: dict[str, str] = {}
    for arch, binary in ARCH_BINARIES.items():
        path = shutil.which(binary)
        if path is not None:
            found[arch] = path
    return found


def qemu_img() -> str:
    return which("qemu-img", hint=INSTALL_HINT)


def qemu_version(arch: str = "x86_64", *, remembered: Path | None = None) -> str:
    """ "7.2.19" from "QEMU emulator version 7.2.19 (Debian ...)".

    Asked once per process. With ``remembered`` (a file in the state directory), once
    per QEMU binary: the file keeps each emulator's version with the binary's size,
    times and inode, so a boot need not start QEMU (50 ms and more) only to read it."""
    if arch in _known:
        return _known[arch]
    if remembered is None:
        version = _ask(qemu_binary(arch))
    else:
        binary = qemu_binary(arch)
        stamp = binary_stamp(binary)
        entries = _read_remembered(remembered)
        version = entries.get(arch, {}).get(stamp) or _ask(binary)
        if entries.get(arch) != {stamp: version}:
            entries[arch] = {stamp: version}
            with contextlib.suppress(OSError):  # a read-only state: asked again next time
                write_atomic(remembered, json.dumps(entries))
    _known[arch] = version
    return version


# arch -> version, for this process (one entry per arch, however the caller spells it)
_known: dict[str, str] = {}
_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


def _ask(binary: str) -> str:
    out = run([binary, "--version"]).stdout.decode()
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.splitlines()[0]


def binary_stamp(binary: str) -> str:
    """What changes when the binary is replaced (an upgrade, a rebuild)."""
    real = os.path.realpath(binary)
    info = os.stat(real)
    return f"{real}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}"


def _read_remembered(path: Path) -> dict[str, dict[str, str]]:
    """arch -> {stamp: version}; anything else in the file is dropped, not trusted."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        arch: {stamp: version}
        for arch, entry in data.items()
        if arch in ARCH_BINARIES and isinstance(entry, dict) and len(entry) == 1
        for stamp, version in entry.items()
        if isinstance(stamp, str) and isinstance(version, str) and _VERSION.fullmatch(version)
    }
