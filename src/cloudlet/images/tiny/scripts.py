"""The text of every script and config file the tiny image carries.

Kept as data (not files on disk) so ``recipe_digest`` can hash exactly what ends up in
the image: editing any of these rebuilds the image. ``@NAME@`` placeholders are
filled in at build time with values found in the downloaded packages.
"""

from __future__ import annotations

import re

# The initramfs: load the disk drivers, mount the root disk, hand over to its init.
INITRAMFS_INIT = r"""#!/bin/sh
# cloudlet tiny initramfs: load the disk drivers, mount the root disk, switch to it.
# Few commands on purpose: under TCG every process start costs milliseconds.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
modprobe -a @MODULES@ || echo "cloudlet tiny: initramfs: cannot load @MODULES@"
# IDE drivers only where there is an IDE controller (the legacy profile's PIIX).
ata="@ATA_MODULES@"
if [ -n "$ata" ]; then
    for f in /sys/bus/pci/devices/*/class; do
        class=
        [ -r "$f" ] && read -r class < "$f"
        case "$class" in
            0x0101*) modprobe -a $ata || echo "cloudlet tiny: initramfs: cannot load $ata"
                     break ;;
        esac
    done
fi
root=LABEL=@FS_LABEL@
fstype=ext4
mode=rw
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        root=?*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        ro) mode=ro ;;
    esac
done
# LABEL=/UUID= name the file system whatever disk it is on (vda, sda): ask findfs.
# IDE disks are probed asynchronously and slowly under a loaded TCG host, so wait up
# to 60 s of guest uptime (read without starting a process) before giving up.
spec=$root
read -r up _ < /proc/uptime
deadline=$((${up%.*} + 60))
while :; do
    case "$spec" in
        LABEL=*|UUID=*) root=$(findfs "$spec" 2>/dev/null) ;;
    esac
    [ -b "$root" ] && break
    read -r up _ < /proc/uptime
    [ "${up%.*}" -lt "$deadline" ] || break
    sleep 0.02
done
if ! mount -t "$fstype" -o "$mode" "$root" /newroot; then
    echo "cloudlet tiny: initramfs: cannot mount $spec ($root); dropping to a shell"
    exec setsid cttyhack sh
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/init
"""

INITTAB = """\
# cloudlet tiny: busybox init
::sysinit:/etc/init.d/rcS
::respawn:/usr/libexec/cloudlet/qemu-ga-run
::respawn:/sbin/acpid -f -l /run/acpid.log
::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
::restart:/sbin/init
"""

RCS = r"""#!/bin/sh
# cloudlet tiny: bring the system up (run once by init before anything else).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -a
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

# Drivers the initramfs did not need: agent port, network, entropy, power button.
# First, so the guest agent's port shows up while the rest of this script runs.
modprobe -a @MODULES@ || echo "cloudlet tiny: cannot load all of @MODULES@"

# The host passes the instance name as cloudlet.hostname=NAME.
name=tiny
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        cloudlet.hostname=?*) name="${arg#cloudlet.hostname=}" ;;
    esac
done
hostname "$name"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost\n' "$name" > /run/hosts

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    udhcpc -f -i eth0 -s /etc/udhcpc/default.script -x "hostname:$name" \
        > /run/udhcpc.log 2>&1 &
fi
"""

RCK = r"""#!/bin/sh
# cloudlet tiny: stop everything, flush and remount the root read-only before power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "cloudlet tiny: shutting down"
kill -TERM -1 2>/dev/null
sleep 0.2
kill -KILL -1 2>/dev/null
sync
i=0
until mount -o remount,ro /; do
    i=$((i + 1))
    [ "$i" -lt 20 ] || break
    sleep 0.05
done
sync
# Requests that came through shutdown (qemu-ga) or the ACPI power button say what
# they want here, so the file system is already clean and init's fixed pauses
# (about 2 s) can be skipped. Otherwise init finishes the job itself.
if [ -r /run/cloudlet-shutdown ]; then
    read -r action < /run/cloudlet-shutdown
    case "$action" in
        poweroff|reboot|halt) echo "cloudlet tiny: $action"; "$action" -f ;;
    esac
fi
"""

# qemu-ga for guest-shutdown runs "/sbin/shutdown -h -P +0 MSG"; busybox has no shutdown.
SHUTDOWN = r"""#!/bin/sh
# cloudlet tiny: the sysvinit-style shutdown that qemu-ga calls, mapped to busybox.
action=poweroff
for arg in "$@"; do
    case "$arg" in
        -r) action=reboot ;;
        -H) action=halt ;;
        -P) action=poweroff ;;
    esac
done
echo "$action" > /run/cloudlet-shutdown
exec "/sbin/$action"
"""

# There is no udev: find the agent's virtio-serial port by name, then run qemu-ga on it.
QGA_RUN = r"""#!/bin/sh
# cloudlet tiny: run the QEMU guest agent on its virtio-serial port (respawned by init).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec >> /run/qemu-ga.log 2>&1
want=org.qemu.guest_agent.0
port=
i=0
while [ -z "$port" ] && [ "$i" -lt 50 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        name=
        [ -r "$f" ] && read -r name < "$f"
        if [ "$name" = "$want" ]; then
            port="${f%/name}"
            port="${port##*/}"
        fi
    done
    [ -n "$port" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -z "$port" ]; then
    if [ ! -e /run/cloudlet-ready ]; then
        : > /run/cloudlet-ready
        echo "cloudlet tiny: ready (no guest agent port)" > /dev/console
    fi
    exec sleep 60
fi
mkdir -p /dev/virtio-ports
ln -sf "../$port" "/dev/virtio-ports/$want"
if [ ! -e /run/cloudlet-ready ]; then
    : > /run/cloudlet-ready
    echo "cloudlet tiny: ready" > /dev/console
fi
exec qemu-ga -m virtio-serial -p "/dev/$port"
"""

# busybox acpid runs /etc/acpi/PWRF/00000080 for the ACPI power button.
ACPI_POWER = """#!/bin/sh
# cloudlet tiny: ACPI power button (QMP system_powerdown) means a clean poweroff.
echo poweroff > /run/cloudlet-shutdown
exec /sbin/poweroff
"""

FSTAB = """\
# cloudlet tiny: mounted by "mount -a" in rcS (the initramfs mounts /, /dev, /proc, /sys)
devpts  /dev/pts  devpts  gid=5,mode=620,ptmxmode=000        0 0
tmpfs   /dev/shm  tmpfs   mode=1777,nosuid,nodev             0 0
tmpfs   /run      tmpfs   mode=755,nosuid,nodev              0 0
tmpfs   /tmp      tmpfs   mode=1777,nosuid,nodev             0 0
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# cloudlet tiny: apply a DHCP lease from busybox udhcpc to the interface.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        if [ -n "$router" ]; then
            ip route del default 2>/dev/null
            for r in $router; do
                ip route add default via "$r" dev "$interface" && break
            done
        fi
        : > /run/resolv.conf.new
        [ -n "$domain" ] && echo "search $domain" >> /run/resolv.conf.new
        for d in $dns; do echo "nameserver $d" >> /run/resolv.conf.new; done
        mv /run/resolv.conf.new /run/resolv.conf
        ;;
esac
exit 0
"""

PROFILE = r"""# cloudlet tiny: login shell settings
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# A login shell cloudlet started for a user already has that user's HOME.
[ -n "$HOME" ] && [ "$HOME" != / ] || export HOME=/root
export PS1='\h:\w\$ '
"""

OS_RELEASE = """\
PRETTY_NAME="cloudlet tiny (busybox @BUSYBOX_VERSION@, Debian @DEBIAN_VERSION@ kernel)"
NAME="cloudlet tiny"
ID=cloudlet-tiny
VERSION_ID="@BUILDER_VERSION@"
VERSION="@BUILDER_VERSION@ (busybox @BUSYBOX_VERSION@, kernel @KERNEL_RELEASE@)"
VARIANT="busybox on the Debian @DEBIAN_VERSION@ cloud kernel"
VARIANT_ID=tiny
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\ntty:x:5:\n"
SHADOW = "root:*:19000:0:99999:7:::\n"

# Path in the root file system -> (mode, text).
ROOTFS_FILES: dict[str, tuple[int, str]] = {
    "etc/inittab": (0o644, INITTAB),
    "etc/fstab": (0o644, FSTAB),
    "etc/init.d/rcS": (0o755, RCS),
    "etc/init.d/rcK": (0o755, RCK),
    "usr/sbin/shutdown": (0o755, SHUTDOWN),
    "usr/libexec/cloudlet/qemu-ga-run": (0o755, QGA_RUN),
    "etc/acpi/PWRF/00000080": (0o755, ACPI_POWER),
    "etc/udhcpc/default.script": (0o755, UDHCPC_SCRIPT),
    "etc/profile": (0o644, PROFILE),
    "usr/lib/os-release": (0o644, OS_RELEASE),
    "etc/passwd": (0o644, PASSWD),
    "etc/group": (0o644, GROUP),
    "etc/shadow": (0o600, SHADOW),
}

# Symlinks in the root file system: path -> target.
ROOTFS_SYMLINKS: dict[str, str] = {
    "bin": "usr/bin",
    "sbin": "usr/sbin",
    "lib": "usr/lib",
    "lib64": "usr/lib64",
    "var/run": "/run",
    "etc/os-release": "../usr/lib/os-release",
    "etc/resolv.conf": "/run/resolv.conf",
    "etc/hosts": "/run/hosts",
    "etc/mtab": "/proc/mounts",
}

ROOTFS_DIRS: tuple[str, ...] = (
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "mnt",
    "root",
    "home",
    "var",
    "var/log",
    "var/lib",
    "var/tmp",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib64",
    "usr/libexec/cloudlet",
    "etc/init.d",
    "etc/acpi/PWRF",
    "etc/udhcpc",
)


def fill(template: str, values: dict[str, str]) -> str:
    """Replace ``@KEY@`` placeholders; an unknown placeholder is a bug, so it raises."""
    out = template
    for key, value in values.items():
        out = out.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", out)
    if left:
        raise KeyError(f"unfilled placeholders: {', '.join(sorted(set(left)))}")
    return out
