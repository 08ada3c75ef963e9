"""What defines the debian-12 image: packages, files, kernel command line, hooks.

Everything here goes into ``recipe_digest``; a stored image whose recorded digest
differs from the current one is stale and gets rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cloudlet.errors import InvalidInput
from cloudlet.images.tiny import recipe as tiny
from cloudlet.images.tiny import scripts as tiny_scripts

# Bump when the build procedure changes in a way the data below does not show.
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class Release:
    """One Debian release this builder knows."""

    codename: str
    version: str
    name: str
    os: str


RELEASES: dict[str, Release] = {
    "bookworm": Release("bookworm", "12", "debian-12", "Debian GNU/Linux 12 (bookworm)"),
}

ARCH = "x86_64"
KERNEL_META = "linux-image-cloud-amd64"
# The initramfs is cloudlet's (busybox-static, as for tiny), not the guest's.
BUSYBOX_PACKAGE = tiny.BUSYBOX_PACKAGE

# On top of --variant=minbase. udev loads the NIC/agent/rng drivers and names the
# NIC; dbus is what systemd-logind and hostnamectl talk over; e2fsprogs lets
# cloud-init grow the root file system when a VM gets a bigger disk.
PACKAGES: tuple[str, ...] = (
    KERNEL_META,
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "cloud-init",
    "qemu-guest-agent",
    "sudo",
    "e2fsprogs",
)
# Versions recorded in image.json (besides the concrete kernel package).
RECORDED = ("cloud-init", "openssh-server", "systemd", "qemu-guest-agent", "sudo")

MIRRORS: tuple[str, ...] = (
    "deb http://deb.debian.org/debian {codename} main",
    "deb http://deb.debian.org/debian {codename}-updates main",
    "deb http://deb.debian.org/debian-security {codename}-security main",
)

# Loaded by the initramfs to reach the root disk; the rest is udev's job.
INITRD_MODULES = tiny.INITRD_MODULES

# Same reasoning as tiny: the crypto self-tests cost about a second under TCG.
CMDLINE = (
    "console=ttyS0 root=/dev/vda rw quiet panic=-1"
    " cryptomgr.notests initcall_blacklist=crypto_kdf108_init"
)

DISK_SIZE = 2 * 1024 * 1024 * 1024
FS_LABEL = "cloudlet-root"
DEFAULT_USER = "debian"

# Masked: systemd-firstboot would prompt for a locale on the serial console (the
# image has an empty machine-id so each VM gets its own, which makes every boot of
# the image a "first boot"); the others wait for or poll hardware a VM lacks.
MASKED_UNITS: tuple[str, ...] = (
    "systemd-firstboot.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-repart.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "getty@tty1.service",
)
ENABLED_UNITS: tuple[str, ...] = ("systemd-networkd.service", "ssh.service")

# path -> (mode, text), written into the root after mmdebstrap.
FILES: dict[str, tuple[int, str]] = {
    "etc/cloud/cloud.cfg.d/99-cloudlet.cfg": (
        0o644,
        """\
# cloudlet: the seed is always a NoCloud ISO (label cidata); never probe the network
# for a metadata service, and never wait for one.
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    fs_label: cidata
# minbase has no locales package: generating en_US.UTF-8 fails (and costs seconds
# under TCG). The image stays on glibc's built-in C.UTF-8.
locale: false
""",
    ),
    "etc/systemd/network/50-cloudlet-dhcp.network": (
        0o644,
        """\
# cloudlet: DHCP on the first NIC (QEMU user networking or a cloudlet bridge).
# A network-config on the seed makes cloud-init write files that sort earlier.
[Match]
Name=en* eth*

[Network]
DHCP=yes

[DHCPv4]
UseDomains=yes
""",
    ),
    # Waiting for "online" only needs one configured link, not every NIC.
    "etc/systemd/system/systemd-networkd-wait-online.service.d/cloudlet.conf": (
        0o644,
        """\
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
""",
    ),
    "etc/fstab": (0o644, f"LABEL={FS_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"),
    "etc/hostname": (0o644, "debian\n"),
    "etc/hosts": (0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
}

# Files removed after the build so no two VMs share them: cloud-init makes new SSH
# host keys on first boot, systemd a new machine-id.
REMOVE_GLOBS: tuple[str, ...] = ("etc/ssh/ssh_host_*", "var/lib/dbus/machine-id")

# mmdebstrap runs hooks with sh; these are constant strings (no user text). The
# kernel's postinst would run update-initramfs (about 20 s for an initramfs the
# image never uses, since cloudlet boots its own): divert it to a no-op for the
# build and put it back afterwards.
ESSENTIAL_HOOKS: tuple[str, ...] = (
    'chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs'
    ' && printf "#!/bin/sh\\nexit 0\\n" > "$1/usr/sbin/update-initramfs"'
    ' && chmod 755 "$1/usr/sbin/update-initramfs"',
)
CUSTOMIZE_HOOKS: tuple[str, ...] = (
    'rm -f "$1/usr/sbin/update-initramfs"'
    ' && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs',
)


def release_info(release: str) -> Release:
    """The known release, or InvalidInput listing the supported ones."""
    try:
        return RELEASES[release]
    except KeyError:
        raise InvalidInput(
            f"cannot build a Debian image for release {release!r}",
            hint=f"supported: {', '.join(sorted(RELEASES))}",
        ) from None


def recipe(release: str = "bookworm") -> dict[str, object]:
    """Everything that defines the image, as plain data (read at call time)."""
    info = release_info(release)
    return {
        "builder_version": BUILDER_VERSION,
        "name": info.name,
        "release": info.codename,
        "arch": ARCH,
        "packages": list(PACKAGES),
        "busybox": BUSYBOX_PACKAGE,
        "initrd_modules": list(INITRD_MODULES),
        "initramfs_init": tiny_scripts.INITRAMFS_INIT,
        "cmdline": CMDLINE,
        "disk_size": DISK_SIZE,
        "fs_label": FS_LABEL,
        "masked": list(MASKED_UNITS),
        "enabled": list(ENABLED_UNITS),
        "files": {path: [mode, text] for path, (mode, text) in FILES.items()},
        "remove": list(REMOVE_GLOBS),
        "hooks": [list(ESSENTIAL_HOOKS), list(CUSTOMIZE_HOOKS)],
    }


def recipe_digest(release: str = "bookworm") -> str:
    """sha256 of the recipe: the image must be rebuilt when this changes."""
    blob = json.dumps(recipe(release), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
