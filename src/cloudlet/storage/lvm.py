"""LVM pools: one volume group over several block devices, volumes as (thin) LVs.

``cloudlet pool create big --lvm /dev/sdb /dev/sdc`` labels the devices as physical
volumes, puts them in the volume group ``cloudlet-big`` and, when the host can do thin
provisioning, fills most of it with one thin pool LV (``thinpool``). A volume is then a
thin LV ``vol-<name>`` (a raw block device, ``/dev/cloudlet-big/vol-<name>``) that may be
larger than any one device; without thin provisioning volumes are plain LVs.

Every LVM command runs through cloudlet.host.run with an explicit argv; reports are read
with ``--reportformat json --units b --nosuffix``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudlet.errors import Conflict, HostCommandError, InvalidInput, MissingDependency
from cloudlet.host import run as host_run
from cloudlet.spec.names import name_path
from cloudlet.storage.pool_types import FsUsage, VolumeFiles

VG_PREFIX = "cloudlet-"
THIN_POOL = "thinpool"
LV_PREFIX = "vol-"
THIN_POOL_SHARE = "90%FREE"  # the rest is left for the pool's metadata spare and growth
_HINT = "install lvm2 (and thin-provisioning-tools for thin volumes)"
_QUIET = {"LVM_SUPPRESS_FD_WARNINGS": "1"}  # inherited descriptors are not errors
UDEV_CONTROL = Path("/run/udev/control")  # what libudev checks to see whether udevd runs


def lvm_env() -> dict[str, str]:
    """Environment for LVM commands.

    Without a running udevd (a minimal host, a container, a chroot) LVM still expects
    udev to create the /dev/<vg>/<lv> nodes, and ``lvcreate`` fails with "Failed to wipe
    start of new LV". ``DM_DISABLE_UDEV=1`` makes libdevmapper create the nodes itself
    and not wait for udev; with udevd running, udev keeps doing it.
    """
    env = dict(_QUIET)
    if not UDEV_CONTROL.exists():
        env["DM_DISABLE_UDEV"] = "1"
    return env


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Every command of this module (tests replace it with a recording fake).

    "install lvm2" is the hint when a program is missing only: a failing LVM command
    says what went wrong itself, and an install hint behind it would mislead.
    """
    try:
        return host_run.run(argv, check=check, env=lvm_env())
    except MissingDependency as missing:
        raise MissingDependency(missing.message, hint=_HINT) from missing


def vg_name(pool: str) -> str:
    return VG_PREFIX + pool


def _report(argv: Sequence[str], key: str) -> list[dict[str, Any]]:
    out = json.loads(run(argv).stdout.decode() or "{}")
    rows: list[dict[str, Any]] = []
    for part in out.get("report", []):
        rows += part.get(key, [])
    return rows


def _num(value: object) -> int:
    text = str(value or "0").strip().rstrip("B")
    return int(float(text)) if text else 0


PROC_MISC = Path("/proc/misc")  # lists device-mapper once the driver is there


def device_mapper_available() -> bool:
    """LVs need the kernel's device-mapper (a container may have the node but no driver).

    A distribution kernel often has it as the module dm-mod, loaded on first use: it is
    loaded here, as LVM's own tools would, before the answer is no.
    """
    if _device_mapper_loaded():
        return True
    with contextlib.suppress(MissingDependency):
        run(["modprobe", "dm-mod"], check=False)
    return _device_mapper_loaded()


def _device_mapper_loaded() -> bool:
    try:
        return "device-mapper" in PROC_MISC.read_text()
    except OSError:
        return False


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _resolve(dev: str) -> str:
    """/dev/disk/by-id/... and other links name the device node they point to."""
    real = os.path.realpath(dev)
    return real if real.startswith("/dev/") else dev


def check_devices(devices: Sequence[str]) -> list[str]:
    """Refuse (one line, before anything changes) devices that are not free to take.

    Returns the device nodes (links resolved), in the order given.
    """
    if not devices:
        raise InvalidInput("an LVM pool needs at least one block device", hint="name the devices")
    for dev in devices:
        if not dev.startswith("/dev/"):
            raise InvalidInput(f"{dev} is not under /dev", hint="give a block device path")
        if not _is_block_device(dev):
            raise InvalidInput(f"{dev} is not a block device", hint="give a disk or loop device")
    devices = [_resolve(dev) for dev in devices]
    if len(set(devices)) != len(devices):
        raise InvalidInput("a device is named twice", hint="name each device once")
    tree = _report_lsblk(devices)
    for dev in devices:
        node = tree.get(dev)
        if node is None:
            raise InvalidInput(f"lsblk does not know {dev}", hint="give a disk or loop device")
        if _mounted(node):
            raise Conflict(f"{dev} is mounted", hint="unmount it, or pick another device")
        if node.get("children"):
            raise Conflict(
                f"{dev} is partitioned or in use (it has partitions or holders)",
                hint="pick an unused device, or wipe it first (wipefs -a)",
            )
        probe = _blkid(dev)
        if probe.get("TYPE") == "LVM2_member":
            raise Conflict(f"{dev} is already an LVM physical volume", hint="pick another device")
        if "PTTYPE" in probe:
            raise Conflict(
                f"{dev} carries a {probe['PTTYPE']} partition table",
                hint="pick an unused device, or wipe it first (wipefs -a)",
            )
        if "TYPE" in probe:
            raise Conflict(
                f"{dev} holds a {probe['TYPE']} file system or signature",
                hint="pick an unused device, or wipe it first (wipefs -a)",
            )
    return devices


def _report_lsblk(devices: Sequence[str]) -> dict[str, dict[str, Any]]:
    argv = ["lsblk", "--json", "--bytes", "--output", "PATH,TYPE,MOUNTPOINT", *devices]
    data = json.loads(run(argv).stdout.decode() or "{}")
    return {str(d.get("path")): d for d in data.get("blockdevices", [])}


def _mounted(node: dict[str, Any]) -> bool:
    if node.get("mountpoint"):
        return True
    return any(_mounted(child) for child in node.get("children", []) or [])


def _blkid(dev: str) -> dict[str, str]:
    """Low-level probe (no cache): exit 2 means no signature at all."""
    proc = run(["blkid", "-p", "-o", "export", dev], check=False)
    if proc.returncode == 2:
        return {}
    if proc.returncode != 0:
        raise InvalidInput(f"cannot probe {dev}", hint=proc.stderr.decode().strip()[:200])
    found = {}
    for line in proc.stdout.decode().splitlines():
        key, _, value = line.partition("=")
        found[key] = value
    return found


def thin_available() -> bool:
    """thin_check is installed and the kernel has (or can load) the thin-pool target."""
    if shutil.which("thin_check") is None and not Path("/usr/sbin/thin_check").exists():
        return False
    with contextlib.suppress(MissingDependency):
        run(["modprobe", "dm-thin-pool"], check=False)
    try:
        targets = run(["dmsetup", "targets"], check=False).stdout.decode()
    except MissingDependency:
        return False
    return any(line.split()[:1] == ["thin-pool"] for line in targets.splitlines())


def create_pool(pool: str, devices: Sequence[str], *, thin: bool) -> None:
    """pvcreate, vgcreate and (thin) the thin pool LV; undone when a step fails."""
    vg = vg_name(pool)
    run(["pvcreate", "--yes", *devices])
    try:
        run(["vgcreate", "--yes", vg, *devices])
        try:
            if thin:
                run(
                    [
                        "lvcreate",
                        "--yes",
                        "--type",
                        "thin-pool",
                        "--extents",
                        THIN_POOL_SHARE,
                        "--name",
                        THIN_POOL,
                        vg,
                    ]
                )
        except BaseException:
            run(["vgremove", "--yes", vg], check=False)
            raise
    except BaseException:
        run(["pvremove", "--yes", *devices], check=False)
        raise


def existing_vgs() -> set[str]:
    rows = _report(["vgs", "--reportformat", "json", "--options", "vg_name"], "vg")
    return {str(r.get("vg_name")) for r in rows}


class LvmPool:
    """Volumes are LVs (thin when the VG has a thin pool) in the VG ``cloudlet-<pool>``."""

    kind = "lvm"
    block_device = True
    volume_format = "raw"

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path  # /dev/<vg>
        self.vg = path.name

    # -------------------------------------------------------------- reports
    def _lvs(self, *fields: str) -> list[dict[str, Any]]:
        argv = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix"]
        argv += ["--options", ",".join(("lv_name", *fields)), self.vg]
        return _report(argv, "lv")

    def _lv(self, lv: str, *fields: str) -> dict[str, Any] | None:
        return next((r for r in self._lvs(*fields) if r.get("lv_name") == lv), None)

    def _vg(self) -> dict[str, Any]:
        argv = ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix"]
        argv += ["--options", "vg_name,vg_size,vg_free,vg_extent_size", self.vg]
        rows = _report(argv, "vg")
        if not rows:
            raise InvalidInput(f"volume group {self.vg} is gone", hint="check 'vgs'")
        return rows[0]

    @property
    def thin(self) -> bool:
        try:
            return self._lv(THIN_POOL) is not None
        except HostCommandError:
            return False

    # -------------------------------------------------------------- PoolBackend
    def check(self) -> None:
        self._vg()

    def usage(self) -> FsUsage:
        """The thin pool's size and free data space (the VG's without one); 0 when gone."""
        try:
            return self._usage()
        except HostCommandError:  # the VG went away behind cloudlet's back
            return FsUsage(total=0, free=0)

    def _usage(self) -> FsUsage:
        pool = self._lv(THIN_POOL, "lv_size", "data_percent")
        if pool is not None:
            size = _num(pool.get("lv_size"))
            used = int(size * float(pool.get("data_percent") or 0) / 100)
            return FsUsage(total=size, free=max(0, size - used))
        vg = self._vg()
        return FsUsage(total=_num(vg.get("vg_size")), free=_num(vg.get("vg_free")))

    def round_size(self, size: int) -> int:
        """LVs come in whole extents (4 MiB by default)."""
        extent = _num(self._vg().get("vg_extent_size")) or 4 << 20
        return -(-size // extent) * extent

    def volume_path(self, volume_name: str) -> Path:
        # /dev/VG/LV is udev's link to /dev/dm-N: the entry may be a link, never a path
        return name_path(self.path, LV_PREFIX + volume_name, links=True)

    def create_volume(self, files: VolumeFiles, volume_name: str, size: int) -> Path:
        lv = LV_PREFIX + volume_name
        if self._lv(lv) is not None:
            raise Conflict(
                f"{self.vg}/{lv} already exists and is not a volume cloudlet knows",
                hint="remove that LV or pick another volume name",
            )
        argv = ["lvcreate", "--yes", "--name", lv]
        if self.thin:
            argv += ["--type", "thin", "--virtualsize", f"{size}b", "--thinpool", THIN_POOL]
        else:
            argv += ["--size", f"{size}b", "--wipesignatures", "y", "--zero", "y"]
        run([*argv, self.vg])
        return self.volume_path(volume_name)

    def grow_volume(self, files: VolumeFiles, path: Path, size: int) -> None:
        run(["lvextend", "--yes", "--size", f"{size}b", f"{self.vg}/{path.name}"])

    def delete_volume(self, path: Path) -> None:
        if self._lv(path.name) is not None:
            run(["lvremove", "--yes", f"{self.vg}/{path.name}"])

    def allocated(self, path: Path) -> int:
        try:
            row = self._lv(path.name, "lv_size", "data_percent")
        except HostCommandError:
            return 0
        if row is None:
            return 0
        size = _num(row.get("lv_size"))
        percent = row.get("data_percent")
        return int(size * float(percent) / 100) if percent not in (None, "") else size

    def destroy(self) -> None:
        """Remove the thin pool, the VG and the PV labels this pool made."""
        argv = ["pvs", "--reportformat", "json", "--options", "pv_name,vg_name"]
        pvs = [str(r["pv_name"]) for r in _report(argv, "pv") if r.get("vg_name") == self.vg]
        others = sorted(str(r.get("lv_name")) for r in self._lvs() if r.get("lv_name") != THIN_POOL)
        if others:
            raise Conflict(
                f"volume group {self.vg} still holds LVs cloudlet does not know: "
                f"{', '.join(others)}",
                hint=f"remove them yourself (lvremove {self.vg}/NAME) if they can go",
            )
        if self._lv(THIN_POOL) is not None:
            run(["lvremove", "--yes", f"{self.vg}/{THIN_POOL}"])
        run(["vgremove", "--yes", self.vg])
        if pvs:
            run(["pvremove", "--yes", *pvs])
