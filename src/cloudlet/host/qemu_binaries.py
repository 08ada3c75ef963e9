"""Finding QEMU and asking its version."""

from __future__ import annotations

import re
from functools import cache

from cloudlet.host.run import run, which

ARCH_BINARIES = {"x86_64": "qemu-system-x86_64"}
INSTALL_HINT = "install QEMU: apt-get install qemu-system-x86 qemu-utils"


def qemu_binary(arch: str = "x86_64") -> str:
    return which(ARCH_BINARIES[arch], hint=INSTALL_HINT)


def qemu_img() -> str:
    return which("qemu-img", hint=INSTALL_HINT)


@cache
def qemu_version(arch: str = "x86_64") -> str:
    """ "7.2.19" from "QEMU emulator version 7.2.19 (Debian ...)"."""
    out = run([qemu_binary(arch), "--version"]).stdout.decode()
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.splitlines()[0]
