"""What defines the tiny image: packages, modules, kernel command line, scripts.

Everything here goes into ``recipe_digest``; a stored image whose recorded digest
differs from the current one is stale and gets rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cloudlet.errors import InvalidInput
from cloudlet.images.tiny import scripts

# Bump when the build procedure changes in a way the data below does not show.
BUILDER_VERSION = "1"

IMAGE_NAME = "tiny"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PACKAGE = "qemu-guest-agent"

# Loaded by the initramfs to reach the root disk (built-ins are skipped).
INITRD_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")
# Loaded by the root file system: agent port, network, entropy, ACPI power button.
ROOTFS_MODULES: tuple[str, ...] = (
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    "button",
    "evdev",
)

# Under TCG the kernel's crypto self-tests take about a second of a 4-5 s boot; they
# only check that the built-in algorithm implementations compute correctly, so the
# guest skips them (cryptomgr.notests; crypto_kdf108_init is nothing but a self-test).
# panic=-1 reboots on a kernel panic, which QEMU's -no-reboot turns into an exit.
CMDLINE = (
    "console=ttyS0 root=/dev/vda rw quiet panic=-1"
    " cryptomgr.notests initcall_blacklist=crypto_kdf108_init"
)

DISK_SIZE = 256 * 1024 * 1024
FS_LABEL = "cloudlet-root"


@dataclass(frozen=True)
class Arch:
    """How one guest architecture maps onto Debian."""

    name: str
    deb_arch: str
    multiarch: str
    kernel_meta: str


ARCHES: dict[str, Arch] = {
    "x86_64": Arch("x86_64", "amd64", "x86_64-linux-gnu", "linux-image-cloud-amd64"),
}


def arch_info(arch: str) -> Arch:
    """The Debian names for a guest architecture, or InvalidInput."""
    try:
        return ARCHES[arch]
    except KeyError:
        raise InvalidInput(
            f"the tiny image cannot be built for {arch}",
            hint=f"supported: {', '.join(sorted(ARCHES))}",
        ) from None


def recipe(arch: str = "x86_64") -> dict[str, object]:
    """Everything that defines the image, as plain data (read at call time)."""
    info = arch_info(arch)
    return {
        "builder_version": BUILDER_VERSION,
        "name": IMAGE_NAME,
        "arch": info.name,
        "deb_arch": info.deb_arch,
        "packages": [info.kernel_meta, BUSYBOX_PACKAGE, AGENT_PACKAGE],
        "initrd_modules": list(INITRD_MODULES),
        "rootfs_modules": list(ROOTFS_MODULES),
        "cmdline": CMDLINE,
        "disk_size": DISK_SIZE,
        "fs_label": FS_LABEL,
        "initramfs_init": scripts.INITRAMFS_INIT,
        "files": {path: [mode, text] for path, (mode, text) in scripts.ROOTFS_FILES.items()},
        "symlinks": dict(scripts.ROOTFS_SYMLINKS),
        "dirs": list(scripts.ROOTFS_DIRS),
    }


def recipe_digest(arch: str = "x86_64") -> str:
    """sha256 of the recipe: the image must be rebuilt when this changes."""
    blob = json.dumps(recipe(arch), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
