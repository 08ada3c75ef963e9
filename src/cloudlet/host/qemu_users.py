"""Which unprivileged user each VM's QEMU runs as, and whether this host can do it.

Every VM gets its own uid (and a private gid of the same number) from a reserved
range, so one VM's QEMU cannot read another VM's files; all of them share one
supplementary group that may traverse the state directory and read images. The
range sits in the block systemd leaves unused (above its container range), and a
uid that /etc/passwd already names is skipped. The table of slots lives in the
state directory (root only) and is pruned of VMs whose directory is gone.

Where the host cannot do this (cloudlet is not root, the state directory cannot
be reached by other users, the file system refuses foreign owners), QEMU runs as
root as before and ``reason`` says why: ``cloudlet host`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import CapacityExceeded
from cloudlet.host.run import Credentials

UID_BASE = 1_900_000_000  # the shared group's gid; VM slots are UID_BASE + 1 ...
SLOTS = 65_535
SHARED_GID = UID_BASE
KVM_DEVICE = Path("/dev/kvm")
OPT_OUT = "CLOUDLET_QEMU_USER"  # "root": keep QEMU as root on purpose


@dataclass(frozen=True)
class Mode:
    """Per-VM users (``unprivileged``) or root, and why not."""

    unprivileged: bool
    reason: str = ""

    def describe(self) -> str:
        if self.unprivileged:
            return f"a uid per VM from {UID_BASE + 1} (group {SHARED_GID})"
        if os.geteuid() != 0:
            return "the user running cloudlet"
        return f"QEMU runs as root: {self.reason}"


def _unreachable_ancestor(home: Path) -> Path | None:
    """The first directory above ``home`` that other users cannot traverse."""
    for parent in home.resolve().parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def detect(home: Path) -> Mode:
    """Decide once per engine; a probe chown shows the file system takes foreign owners."""
    if os.geteuid() != 0:
        return Mode(False, "cloudlet does not run as root (QEMU runs as the calling user)")
    if os.environ.get(OPT_OUT, "") == "root":
        return Mode(False, f"{OPT_OUT}=root is set")
    blocked = _unreachable_ancestor(home)
    if blocked is not None:
        return Mode(
            False,
            f"{blocked} cannot be traversed by other users "
            f"(mode {stat.S_IMODE(os.stat(blocked).st_mode):o}); chmod o+x it",
        )
    probe = home / f".owner-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch(mode=0o600)
        os.chown(probe, UID_BASE + 1, UID_BASE + 1)
    except OSError as exc:
        return Mode(False, f"{home} refuses files of other owners ({exc.strerror})")
    finally:
        probe.unlink(missing_ok=True)
    return Mode(True)


def credentials(uid: int) -> Credentials:
    """The VM's uid and private gid, the shared group, KVM's group, and no core dumps
    (they would hold guest memory)."""
    groups = [SHARED_GID]
    with contextlib.suppress(OSError):
        kvm = os.stat(KVM_DEVICE)
        if kvm.st_gid != 0 and kvm.st_mode & stat.S_IRWXG:
            groups.append(kvm.st_gid)
    import resource

    limits = ((resource.RLIMIT_CORE, 0, 0),)
    return Credentials(uid=uid, gid=uid, groups=tuple(groups), rlimits=limits)


def kvm_usable(creds: Credentials) -> bool:
    """Whether a process with ``creds`` may open /dev/kvm read-write."""
    try:
        info = os.stat(KVM_DEVICE)
    except OSError:
        return False
    if info.st_mode & stat.S_IROTH and info.st_mode & stat.S_IWOTH:
        return True
    group_rw = info.st_mode & stat.S_IRGRP and info.st_mode & stat.S_IWGRP
    return bool(group_rw) and info.st_gid in (creds.gid, *creds.groups)


class UidTable:
    """instance id -> uid, in a root-only JSON file; the caller holds the host lock."""

    def __init__(self, path: Path, instances: Path) -> None:
        self.path = path
        self.instances = instances

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(k): int(v)
            for k, v in data.items()
            if isinstance(v, int) and UID_BASE < v <= UID_BASE + SLOTS
        }

    def _save(self, table: dict[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table, sort_keys=True))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def uid_for(self, instance_id: str) -> int:
        """The VM's uid: the one it had, else the lowest free one of the range."""
        table = self._load()
        if instance_id in table:
            return table[instance_id]
        live = {k: v for k, v in table.items() if (self.instances / k).exists()}
        used = set(live.values())
        for uid in range(UID_BASE + 1, UID_BASE + SLOTS + 1):
            if uid in used or _named(uid):
                continue
            live[instance_id] = uid
            self._save(live)
            return uid
        raise CapacityExceeded(
            f"all {SLOTS} QEMU uids are in use", hint="delete VMs you no longer need"
        )


def _named(uid: int) -> bool:
    """A uid /etc/passwd (or NSS) already gives to someone: never reuse it."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
