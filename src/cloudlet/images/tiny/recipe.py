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
# util-linux's script: busybox has no applet that opens a pseudo-terminal, and
# `cloudlet shell` / `exec -t` run the guest's program on one. Only the binary is
# taken (it needs the C library qemu-ga already brings), not the package's other tools.
TOOLS_PACKAGE = "bsdutils"
TOOLS: tuple[str, ...] = ("usr/bin/script",)

# Loaded by the initramfs to reach the root disk (built-ins are skipped).
INITRD_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")
# Loaded by the initramfs only when the machine has an IDE controller (PCI class 0101,
# the legacy profile's PIIX): the disk is then /dev/sda. Modern machines skip them.
INITRD_ATA_MODULES: tuple[str, ...] = ("ata_piix", "ata_generic", "sd_mod")
# Loaded by the root file system: agent port, network, entropy, ACPI power button.
ROOTFS_MODULES: tuple[str, ...] = (
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    "button",
    "evdev",
)
# In the root file system but loaded only when asked: virtiofs shares of process VMs.
ROOTFS_ON_DEMAND_MODULES: tuple[str, ...] = ("fuse", "virtiofs")

FS_LABEL = "cloudlet-root"

# Under TCG the kernel's crypto self-tests take about a second of a 4-5 s boot; they
# only check that the built-in algorithm implementations compute correctly, so the
# guest skips them (cryptomgr.notests; crypto_kdf108_init is nothing but a self-test).
# panic=-1 reboots on a kernel panic, which QEMU's -no-reboot turns into an exit.
# The root is found by its label so the same image boots from /dev/vda (virtio) and
# /dev/sda (IDE, legacy profile). The console device is per architecture.
CMDLINE = (
    f"root=LABEL={FS_LABEL} rw quiet panic=-1"
    " cryptomgr.notests initcall_blacklist=crypto_kdf108_init"
)

DISK_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Arch:
    """How one guest architecture maps onto Debian and its kernel."""

    name: str
    deb_arch: str
    multiarch: str
    kernel_meta: str
    console: str
    # Extra modules (and whether any) for IDE disks; empty where machines have no IDE.
    ata_modules: tuple[str, ...] = ()


ARCHES: dict[str, Arch] = {
    # Debian's cloud kernel has ata_piix/sd_mod as modules but no e1000 (nor any other
    # emulated legacy NIC): a legacy-profile tiny guest has its agent but no network.
    # The generic kernel has e1000 but boots about twice as slowly under TCG.
    "x86_64": Arch(
        "x86_64",
        "amd64",
        "x86_64-linux-gnu",
        "linux-image-cloud-amd64",
        "ttyS0",
        INITRD_ATA_MODULES,
    ),
    # The arm64 cloud kernel has the virt machine's PL011 console, PCIe host bridge and
    # PL031 RTC built in; virtio (PCI and MMIO) is modular, as on x86_64.
    "aarch64": Arch("aarch64", "arm64", "aarch64-linux-gnu", "linux-image-cloud-arm64", "ttyAMA0"),
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


def cmdline(arch: str = "x86_64") -> str:
    """The kernel command line the image boots with on ``arch``."""
    return f"console={arch_info(arch).console} {CMDLINE}"


def recipe(arch: str = "x86_64") -> dict[str, object]:
    """Everything that defines the image, as plain data (read at call time)."""
    info = arch_info(arch)
    return {
        "builder_version": BUILDER_VERSION,
        "name": IMAGE_NAME,
        "arch": info.name,
        "deb_arch": info.deb_arch,
        "packages": [info.kernel_meta, BUSYBOX_PACKAGE, AGENT_PACKAGE, TOOLS_PACKAGE],
        "tools": list(TOOLS),
        "initrd_modules": list(INITRD_MODULES),
        "initrd_ata_modules": list(info.ata_modules),
        "rootfs_modules": list(ROOTFS_MODULES),
        "rootfs_on_demand_modules": list(ROOTFS_ON_DEMAND_MODULES),
        "cmdline": cmdline(arch),
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
