"""Before QEMU starts: pick its user, hand it the files it opens, open what it may not.

The launcher's half (rlimits, groups, gid, uid, exec) is host/run.Credentials; this
module decides them for one VM and prepares the files, like libvirt's DAC driver:
- the run and instance directories stay root's but get the VM's private group with
  mode 1770 (sticky): QEMU creates its sockets, pid file and snapshot layers there, but
  cannot replace root's files (the runtime record, keys);
- the disk layers, seed and serial log become the VM user's; images are made readable
  by the shared QEMU group (never by others);
- pool volumes and device nodes are given on attach and taken back on detach;
- TAPs and backup targets are opened by root and passed as file descriptors.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from cloudlet.driver.base import LaunchConfig
from cloudlet.host import ownership, qemu_users
from cloudlet.host.run import Credentials

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_MAX_CHAIN = 32


def open_tap(name: str) -> int:
    """An fd on the TAP ``name`` (opened as root: /dev/net/tun may be root-only)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        request = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, request)
    except OSError:
        os.close(fd)
        raise
    return fd


def backing_chain(path: Path) -> list[Path]:
    """The backing files below a qcow2 image, read from the headers (no qemu-img)."""
    chain: list[Path] = []
    current = path
    for _ in range(_MAX_CHAIN):
        try:
            with open(current, "rb") as f:
                header = f.read(20)
                if len(header) < 20 or header[:4] != b"QFI\xfb":
                    break
                offset, size = struct.unpack(">QI", header[8:20])
                if not offset or not size or size > 4096:
                    break
                f.seek(offset)
                name = f.read(size).decode(errors="replace")
        except OSError:
            break
        if name.startswith("json:"):
            break
        current = (current.parent / name) if not name.startswith("/") else Path(name)
        chain.append(current)
    return chain


@dataclass
class Launch:
    """What start() needs: the config with TAP fds, the child's credentials, the fds."""

    config: LaunchConfig
    credentials: Credentials | None
    fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class Confinement:
    """Per-VM QEMU users for one state directory (or root, with the reason)."""

    def __init__(self, home: Path, run_root: Path) -> None:
        self.home = home
        self.run_root = run_root
        self._mode: qemu_users.Mode | None = None

    @property
    def mode(self) -> qemu_users.Mode:
        if self._mode is None:
            self._mode = qemu_users.detect(self.home)
        return self._mode

    def book(self, instance_id: str) -> ownership.GrantBook:
        return ownership.GrantBook(self.run_root / f"{instance_id}.grants.json")

    def _uid(self, instance_id: str) -> int:
        lock = self.home / "locks" / ".qemu-users"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            table = qemu_users.UidTable(
                self.home / "host" / "qemu-users.json", self.home / "instances"
            )
            return table.uid_for(instance_id)

    def prepare(self, config: LaunchConfig) -> tuple[Launch, str]:
        """The launch for ``config`` and, when QEMU stays root, why (else "")."""
        mode = self.mode
        if not mode.unprivileged:
            return Launch(config, None), mode.reason
        if config.linked_base is not None:
            # Its chain runs through another VM's private directory.
            return Launch(config, None), "a linked clone reads another VM's snapshot layer"
        creds = qemu_users.credentials(self._uid(config.instance_id))
        if config.accel == "kvm" and not qemu_users.kvm_usable(creds):
            return Launch(config, None), "/dev/kvm is open to root only (give it a group)"
        launch = Launch(config, creds)
        try:
            self._give_files(config, creds)
        except OSError as exc:  # a file system that refuses owners: QEMU stays root
            self.book(config.instance_id).take_back_all()
            return Launch(config, None), f"the VM's files cannot be handed to its user ({exc})"
        try:
            nics = []
            for nic in config.tap_nics:
                fd = open_tap(nic.tap)
                launch.fds.append(fd)
                nics.append(replace(nic, fd=fd))
            launch.config = replace(config, tap_nics=tuple(nics))
        except BaseException:
            launch.close_fds()
            raise
        return launch, ""

    def _give_files(self, config: LaunchConfig, creds: Credentials) -> None:
        uid, gid, shared = creds.uid, creds.gid, qemu_users.SHARED_GID
        for directory in (self.home, self.run_root, self.home / "instances"):
            ownership.share_dir(directory, shared, 0o750)
        ownership.share_dir(config.runtime_dir, gid, 0o1770)
        # The instance directory is the VM's to write in: nothing there is followed.
        instance_dir = config.serial_log.parent
        ownership.share_dir(instance_dir, gid, 0o1770)
        for root, dirs, files in os.walk(instance_dir):
            for name in dirs:
                ownership.share_own_dir(Path(root) / name, gid, 0o1770)
            for name in files:
                if name.endswith(".qcow2"):
                    ownership.give_own(Path(root) / name, uid, gid)
        for owned in (config.serial_log, config.seed_iso, config.initrd, config.kernel):
            if owned is not None and instance_dir in owned.parents:
                ownership.give_own(owned, uid, gid)
        for shared_file in self._read_only(config, instance_dir):
            ownership.allow_group_read(shared_file, shared, self.home)
        for disk in config.extra_disks:
            self.give_volume(config.instance_id, disk.path, creds)
        for sock in [c.socket for c in config.channels] + [s.socket for s in config.shares]:
            ownership.share_dir(sock.parent, gid, 0o710)
            ownership.give(sock, uid, gid)

    def _read_only(self, config: LaunchConfig, instance_dir: Path) -> list[Path]:
        """Image files QEMU only reads. The disk's backing chain is read from headers
        the VM could have rewritten: only names inside the image store are believed."""
        images = Path(os.path.normpath(self.home / "images"))
        chain = [
            p for p in backing_chain(config.disk) if images in Path(os.path.normpath(p)).parents
        ]
        found = [config.kernel, config.initrd, config.install_iso, *chain]
        return [p for p in found if p is not None and p.exists() and instance_dir not in p.parents]

    def give_volume(self, instance_id: str, path: Path, creds: Credentials) -> None:
        """A pool volume or device node for the VM, remembered to be taken back."""
        self.book(instance_id).give(path, creds.uid, creds.gid)
        ownership.allow_traverse(path.parent, qemu_users.SHARED_GID, self.home)

    def credentials_of(self, pid: int) -> Credentials | None:
        """The credentials a running QEMU has (None: it runs as root)."""
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return None
        return qemu_users.credentials(uid) if uid != 0 else None
