"""Finding QEMU and asking its version."""

from __future__ import annotations

import re
import shutil
from functools import cache

from cloudlet.errors import InvalidInput
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


def qemu_version(arch: str = "x86_64") -> str:
    """ "7.2.19" from "QEMU emulator version 7.2.19 (Debian ...)"."""
    return _version_of(arch)  # one cache entry per arch, however the caller spells it


@cache
def _version_of(arch: str) -> str:
    out = run([qemu_binary(arch), "--version"]).stdout.decode()
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.splitlines()[0]
