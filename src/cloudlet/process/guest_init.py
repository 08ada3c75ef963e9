"""The guest side of a process VM: an initramfs init that runs one program at once.

The image's own busybox initramfs mounts the root disk as usual; instead of handing
over to the image's init (``switch_root``), the process-VM init stays in the
initramfs, mounts the shares, runs the program chrooted into the root disk with its
stdio on virtio-serial ports, reports the exit code and how many bytes it wrote to
each port, and powers off. No service of the image starts.

The host cannot see where a stream ends on a virtio-serial port (closing the
guest end sends no EOF), so the init reads the exact byte counts from the
kernel's own counters (debugfs ``virtio-ports/*/bytes_sent``) and the host reads
until it has them all.

Everything the guest needs is added as a second, uncompressed cpio appended to the
image's initramfs; later members replace earlier ones, so ``/init`` is ours.
"""

from __future__ import annotations

import gzip
import io
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from cloudlet.images.tiny import recipe as tiny_recipe
from cloudlet.images.tiny import scripts as tiny_scripts
from cloudlet.images.tiny.cpio import CpioWriter, read_newc

# Port names the init and the host agree on.
PORT_STATUS = "cloudlet.status"
PORT_STDIN = "cloudlet.stdin"
PORT_STDOUT = "cloudlet.stdout"
PORT_STDERR = "cloudlet.stderr"
PORT_TTY = "cloudlet.tty"


def copy_in_port(index: int) -> str:
    return f"cloudlet.in{index}"


def copy_out_port(index: int) -> str:
    return f"cloudlet.out{index}"


def share_tag(index: int) -> str:
    return f"cloudlet{index}"


# /cloudlet/run.sh: run one program, report, power off.
RUN_SCRIPT = r"""#!/bin/sh
# cloudlet process VM: run one program, report, power off.
# $1 is "initramfs" (run by the initramfs: the root disk is mounted at /newroot and
# nothing of the image has started) or "booted" (--boot: the image's own init booted
# the system; this runs from /.cloudlet, started through the guest agent).
mode=$1
here=${0%/*}
. "$here/plan"
say() { echo "cloudlet process VM: $*" > /dev/console; }
die() { say "$*"; [ -n "$status" ] && echo "fail $*" >&9; poweroff -f; }
if [ "$mode" = booted ]; then
    R=
    CHROOT=
    # The image's tools first; busybox's applets for whatever the image lacks.
    mkdir -p "$here/bin" && "$here/busybox" --install -s "$here/bin"
    export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$here/bin"
else
    R=/newroot
    CHROOT="chroot /newroot"
    for d in proc sys dev run tmp; do [ -d "$R/$d" ] || mkdir -p "$R/$d"; done
    mount -t proc proc "$R/proc"
    mount -t sysfs sysfs "$R/sys"
    mount -t devtmpfs devtmpfs "$R/dev"
    mkdir -p "$R/dev/pts" "$R/dev/shm"
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$R/dev/pts"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
fi
[ -d /sys/kernel/debug/virtio-ports ] || mount -t debugfs debugfs /sys/kernel/debug
$CHROOT modprobe -a $CL_MODULES || say "cannot load all of $CL_MODULES"
# Port devices by name (there is no udev): "port NAME" sets P; no subshells, since
# every fork costs milliseconds under TCG.
port() {
    P=
    for f in /sys/class/virtio-ports/*/name; do
        n=
        [ -r "$f" ] && read -r n < "$f"
        if [ "$n" = "$1" ]; then
            P="${f%/name}"
            P="/dev/${P##*/}"
            return 0
        fi
    done
    return 1
}
wait_port() {
    i=0
    until port "$1" && [ -c "$P" ]; do
        i=$((i + 1))
        [ "$i" -lt 1000 ] || die "no port $1"
        sleep 0.01
    done
}
sent() {  # device -> N: the bytes the kernel sent through that port
    N=0
    while read -r k v; do
        [ "$k" = "bytes_sent:" ] && N=$v
    done < "/sys/kernel/debug/virtio-ports/${1##*/}"
}
wait_port cloudlet.status
status=$P
exec 9<> "$status"
if [ "$mode" = initramfs ]; then
    hostname "$CL_HOSTNAME"
    ip link set lo up
fi
if [ "$mode" = initramfs ] && [ "$CL_NET" = 1 ]; then
    i=0
    until [ -e /sys/class/net/eth0 ] || [ "$i" -ge 500 ]; do i=$((i + 1)); sleep 0.01; done
    # QEMU's user-mode network always hands out the same addresses.
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 &&
        ip route add default via 10.0.2.2 || say "cannot configure eth0"
    rm -f "$R/etc/resolv.conf"
    echo "nameserver 10.0.2.3" > "$R/etc/resolv.conf"
fi
cl_share() {  # tag guest-path ro|rw
    mkdir -p "$R$2" && mount -t virtiofs -o "$3" "$1" "$R$2" ||
        die "cannot mount share $1 at $2"
}
cl_copy_in() {  # port guest-dir
    wait_port "$1"
    mkdir -p "$R$2" && tar -x -f "$P" -C "$R$2" || die "copy-in to $2 failed"
}
cl_copy_out() {  # index port guest-path
    wait_port "$2"
    p=$P
    g="$R$3"
    if [ -e "$g" ] || [ -L "$g" ]; then
        if tar -c -f "$p" -C "${g%/*}/" "${g##*/}"; then
            echo "copyout $1 ok" >&9
        else
            echo "copyout $1 failed" >&9
        fi
    else
        echo "copyout $1 missing" >&9
    fi
}
cl_setup
if [ "$CL_TTY" = 1 ]; then
    i=0
    until port cloudlet.tty && [ -c /dev/hvc0 ]; do
        i=$((i + 1))
        [ "$i" -lt 1000 ] || die "no terminal port"
        sleep 0.01
    done
    # In the background, setsid need not fork, so the exit code is the program's.
    # The size is set while the terminal is open: a tty closed by all forgets it.
    (
        exec < /dev/hvc0 > /dev/hvc0 2>&1
        stty rows "$CL_ROWS" cols "$CL_COLS"
        exec setsid -c $CHROOT "$@"
    ) &
    wait $!
    rc=$?
    sent "$P"
    out=$N
    err=0
else
    wait_port cloudlet.stdin
    in=$P
    wait_port cloudlet.stdout
    out=$P
    wait_port cloudlet.stderr
    err=$P
    # Redirected inside the subshell, so the shell's own "Killed" note for a program
    # that died of a signal goes to the console, not into the program's stderr.
    ( exec $CHROOT "$@" < "$in" > "$out" 2> "$err" )
    rc=$?
    sent "$out"
    out=$N
    sent "$err"
    err=$N
fi
cl_teardown
sync
echo "exit $rc $out $err" >&9
# Power off only once the host says it has every byte: QEMU drops what it still holds.
read -r _ <&9
poweroff -f
"""

# What the image's initramfs init does in place of its hand-over to the root's init.
INITRAMFS_RUN = "exec /bin/sh /cloudlet/run.sh initramfs\n"
# --boot: the hand-over happens, and the run files go along into the root.
BOOT_COPY = (
    "mkdir -p /newroot/.cloudlet && "
    "cp /bin/busybox /cloudlet/plan /cloudlet/run.sh /newroot/.cloudlet/\n"
)
# Started through the guest agent once a --boot VM is up; returns at once.
BOOTED_START = [
    "/.cloudlet/busybox", "sh", "-c",
    "/.cloudlet/busybox sh /.cloudlet/run.sh booted </dev/null >/dev/null 2>&1 &",
]  # fmt: skip


@dataclass(frozen=True)
class GuestPlan:
    """What the init does, resolved by the host: modules, mounts, copies, the argv."""

    hostname: str
    argv: tuple[str, ...]
    workdir: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    shares: tuple[tuple[str, str, bool], ...] = ()  # (tag, guest path, read only)
    copy_in: tuple[str, ...] = ()  # guest directories, one port each
    copy_out: tuple[str, ...] = ()  # guest paths, one port each
    network: bool = False
    tty: bool = False
    terminal_size: tuple[int, int] = (24, 80)


def _q(text: str) -> str:
    return shlex.quote(text)


def program_argv(plan: GuestPlan) -> list[str]:
    """env -i ... /bin/sh -c 'cd WORKDIR; exec ARGV': a clean environment (run.sh chroots)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "HOSTNAME": plan.hostname,
        "LANG": "C.UTF-8",
    }
    env.update(dict(plan.env))
    return [
        "env", "-i", *(f"{k}={v}" for k, v in env.items()),
        "/bin/sh", "-c",
        'cd -- "$1" || exit 125; shift; exec "$@"', "cloudlet-run", plan.workdir,
        *plan.argv,
    ]  # fmt: skip


def plan_script(plan: GuestPlan) -> str:
    """The shell file the init sources: values are quoted here, never interpreted."""
    modules = ["virtio_console"]
    if plan.shares:
        modules += ["fuse", "virtiofs"]
    if plan.network:
        modules.append("virtio_net")
    lines = [
        "# written by cloudlet for one process VM",
        f"CL_MODULES={_q(' '.join(modules))}",
        f"CL_HOSTNAME={_q(plan.hostname)}",
        f"CL_NET={1 if plan.network else 0}",
        f"CL_TTY={1 if plan.tty else 0}",
        f"CL_ROWS={int(plan.terminal_size[0])}",
        f"CL_COLS={int(plan.terminal_size[1])}",
        "cl_setup() {",
        "    :",
    ]
    for tag, guest, read_only in plan.shares:
        lines.append(f"    cl_share {_q(tag)} {_q(guest)} {'ro' if read_only else 'rw'}")
    for index, guest in enumerate(plan.copy_in):
        lines.append(f"    cl_copy_in {_q(copy_in_port(index))} {_q(guest)}")
    lines += ["}", "cl_teardown() {", "    :"]
    for index, guest in enumerate(plan.copy_out):
        lines.append(f"    cl_copy_out {index} {_q(copy_out_port(index))} {_q(guest)}")
    lines += ["}", "set -- " + " ".join(_q(a) for a in program_argv(plan)), ""]
    return "\n".join(lines)


def initrd_modules(base: bytes) -> list[str]:
    """The modules the image's initramfs carries (built-in ones are not there)."""
    data = gzip.decompress(base) if base[:2] == b"\x1f\x8b" else base
    present = {
        PurePosixPath(entry.name).stem for entry in read_newc(data) if entry.name.endswith(".ko")
    }
    return [m for m in tiny_recipe.INITRD_MODULES if m in present]


def init_script(modules: list[str], *, boot: bool = False) -> str:
    """The image initramfs's own init, running the program instead of handing over.

    With ``boot``, it hands over as usual after copying the run files into the root.
    """
    handover = "mount --move /dev /newroot/dev\n"
    base = tiny_scripts.INITRAMFS_INIT
    assert base.count(handover) == 1, "the tiny initramfs init changed its hand-over"
    at = base.index(handover)
    text = base[:at] + (BOOT_COPY + base[at:] if boot else INITRAMFS_RUN)
    return tiny_scripts.fill(
        text,
        {"MODULES": " ".join(modules), "ATA_MODULES": "", "FS_LABEL": tiny_recipe.FS_LABEL},
    )


def run_initrd(base: bytes, plan: GuestPlan, *, boot: bool = False) -> bytes:
    """The image's initramfs with our /init, run script and plan appended."""
    modules = initrd_modules(base)
    buf = io.BytesIO()
    buf.write(base)
    buf.write(b"\0" * ((4 - len(base) % 4) % 4))
    writer = CpioWriter(buf)
    writer.add_dir("cloudlet")
    writer.add_file("init", init_script(modules, boot=boot).encode(), 0o755)
    writer.add_file("cloudlet/run.sh", RUN_SCRIPT.encode(), 0o755)
    writer.add_file("cloudlet/plan", plan_script(plan).encode(), 0o644)
    writer.close()
    return buf.getvalue()
