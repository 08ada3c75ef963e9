"""Per-VM QEMU users: when a host can have them, uid allocation, grants, private state."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from cloudlet.config import Paths, Settings
from cloudlet.driver.base import TapNic
from cloudlet.driver.qemu.argv import tap_netdev
from cloudlet.driver.qemu.confine import backing_chain
from cloudlet.engine.state_modes import loose, tighten
from cloudlet.host import ownership, qemu_users
from cloudlet.host.qemu_users import UID_BASE, UidTable, detect


def _home(tmp_path: Path, parent_mode: int) -> Path:
    """tmp_path is short_tmp (0711 under /tmp): only ``p`` may block the way."""
    parent = tmp_path / "p"
    home = parent / "h"
    home.mkdir(parents=True)
    parent.chmod(parent_mode)
    return home


def test_a_reachable_home_gets_per_vm_users(short_tmp: Path) -> None:
    mode = detect(_home(short_tmp, 0o711))
    assert mode.unprivileged, mode.reason
    assert "uid per VM" in mode.describe()


def test_each_reason_to_stay_root_is_named(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = short_tmp
    blocked = detect(_home(tmp_path, 0o700))
    assert not blocked.unprivileged
    assert str(tmp_path / "p") in blocked.reason and "o+x" in blocked.reason
    monkeypatch.setenv("CLOUDLET_QEMU_USER", "root")
    opted = detect(tmp_path / "p" / "h")
    assert opted.reason == "CLOUDLET_QEMU_USER=root is set"
    assert opted.describe() == "QEMU runs as root: CLOUDLET_QEMU_USER=root is set"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "not run as root" in detect(tmp_path / "p" / "h").reason
    assert detect(tmp_path).describe() == "the user running cloudlet"


def test_uids_are_distinct_stable_pruned_and_skip_named_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instances = tmp_path / "instances"
    for vm in ("a", "b", "c"):
        (instances / vm).mkdir(parents=True)
    monkeypatch.setattr(qemu_users, "_named", lambda uid: uid == UID_BASE + 2)
    table = UidTable(tmp_path / "host" / "uids.json", instances)
    a, b = table.uid_for("a"), table.uid_for("b")
    assert (a, b) == (UID_BASE + 1, UID_BASE + 3)
    assert table.uid_for("a") == a
    assert stat.S_IMODE((tmp_path / "host" / "uids.json").stat().st_mode) == 0o600
    (instances / "a").rmdir()  # a deleted VM's uid goes back to the range
    assert table.uid_for("c") == UID_BASE + 1
    (tmp_path / "host" / "uids.json").write_text('{"b": 0, "x": "1900000009"}')
    assert table.uid_for("b") == UID_BASE + 1  # a forged entry (uid 0) is not taken


def test_a_grant_is_remembered_and_taken_back_exactly(tmp_path: Path) -> None:
    volume = tmp_path / "v.qcow2"
    volume.write_bytes(b"x")
    os.chown(volume, 0, 6)
    volume.chmod(0o660)
    book = ownership.GrantBook(tmp_path / "vm.grants.json")
    book.give(volume, UID_BASE + 5, UID_BASE + 5)
    book.give(volume, UID_BASE + 5, UID_BASE + 5)  # a second give keeps the first owner
    given = volume.stat()
    assert (given.st_uid, given.st_gid, stat.S_IMODE(given.st_mode)) == (
        UID_BASE + 5,
        UID_BASE + 5,
        0o600,
    )
    book.take_back(volume)
    back = volume.stat()
    assert (back.st_uid, back.st_gid, stat.S_IMODE(back.st_mode)) == (0, 6, 0o660)
    assert not (tmp_path / "vm.grants.json").exists()
    book.give(volume, UID_BASE + 5, UID_BASE + 5)
    book.take_back_all()
    assert volume.stat().st_uid == 0


def test_backing_chain_is_read_from_qcow2_headers(tmp_path: Path) -> None:
    def qcow2(path: Path, backing: str) -> None:
        name = backing.encode()
        header = b"QFI\xfb" + struct.pack(">IQI", 3, 104 if name else 0, len(name))
        path.write_bytes(header.ljust(104, b"\0") + name)

    qcow2(tmp_path / "base.qcow2", "")
    qcow2(tmp_path / "mid.qcow2", "base.qcow2")
    qcow2(tmp_path / "top.qcow2", str(tmp_path / "mid.qcow2"))
    assert backing_chain(tmp_path / "top.qcow2") == [
        tmp_path / "mid.qcow2",
        tmp_path / "base.qcow2",
    ]
    qcow2(tmp_path / "odd.qcow2", 'json:{"file": "/etc/shadow"}')
    assert backing_chain(tmp_path / "odd.qcow2") == []


def test_a_tap_passed_as_fd_names_no_interface() -> None:
    nic = TapNic(node="tn1", tap="clt1", mac="52:54:00:00:00:01", fd=7)
    assert tap_netdev(nic) == {"type": "tap", "id": "tn1", "fd": "7"}


def test_old_state_is_tightened_on_open(tmp_path: Path) -> None:
    home = tmp_path / "h"
    settings = Settings(paths=Paths(home))
    for name in ("instances", "images", "host", "backups"):
        (home / name).mkdir(parents=True, mode=0o755)
        (home / name).chmod(0o755)
    home.chmod(0o755)
    (home / "cloudlet.db").write_text("")
    (home / "cloudlet.db").chmod(0o644)
    (home / "host" / "accel.json").write_text("{}")
    (home / "host" / "accel.json").chmod(0o644)
    assert loose(settings)  # the read path leaves this repair to a full open
    tighten(settings)
    assert not loose(settings)
    for path in (home, home / "instances", home / "images", home / "host", home / "backups"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    assert stat.S_IMODE((home / "cloudlet.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "host" / "accel.json").stat().st_mode) == 0o600


def test_links_the_vm_planted_are_never_followed(tmp_path: Path) -> None:
    """A VM owns files in its directory: a link it leaves there must not make root hand
    the link's target (a host file) to the VM, nor let its group read it."""
    host_file = tmp_path / "shadow"
    host_file.write_text("secret")
    host_file.chmod(0o600)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    (vm_dir / "layer.qcow2").symlink_to(host_file)
    (vm_dir / "sub").symlink_to(tmp_path)
    fifo = vm_dir / "f.qcow2"
    os.mkfifo(fifo)
    assert not ownership.give_own(vm_dir / "layer.qcow2", UID_BASE + 7, UID_BASE + 7)
    assert not ownership.share_own_dir(vm_dir / "sub", UID_BASE + 7, 0o1770)
    assert not ownership.give_own(fifo, UID_BASE + 7, UID_BASE + 7)
    assert (host_file.stat().st_uid, stat.S_IMODE(host_file.stat().st_mode)) == (0, 0o600)
    assert tmp_path.stat().st_gid != UID_BASE + 7
    real = vm_dir / "disk.qcow2"
    real.write_bytes(b"")
    assert ownership.give_own(real, UID_BASE + 7, UID_BASE + 7)
    assert real.stat().st_uid == UID_BASE + 7


def test_a_backing_name_outside_the_image_store_is_not_opened_to_qemu(tmp_path: Path) -> None:
    from cloudlet.driver.base import LaunchConfig
    from cloudlet.driver.qemu.confine import Confinement

    home = tmp_path / "h"
    instance = home / "instances" / "i1"
    instance.mkdir(parents=True)
    (home / "images" / "tiny").mkdir(parents=True)
    base = home / "images" / "tiny" / "disk.qcow2"
    host_file = tmp_path / "shadow"
    for target in (base, host_file):
        target.write_bytes(b"QFI\xfb".ljust(104, b"\0"))
    disk = instance / "disk.qcow2"
    for backing, expected in ((str(base), [base]), (str(host_file), [])):
        name = backing.encode()
        header = b"QFI\xfb" + struct.pack(">IQI", 3, 104, len(name))
        disk.write_bytes(header.ljust(104, b"\0") + name)
        config = LaunchConfig(
            instance_id="i1", name="vm", arch="x86_64", accel="tcg", cpus=1, memory_mib=64,
            disk=disk, disk_format="qcow2", runtime_dir=home / "run" / "i1",
            serial_log=instance / "serial.log",
        )  # fmt: skip
        assert Confinement(home, home / "run")._read_only(config, instance) == expected


def test_a_linked_clone_keeps_qemu_root_and_says_why(tmp_path: Path) -> None:
    from cloudlet.driver.base import LaunchConfig
    from cloudlet.driver.qemu.confine import Confinement

    home = tmp_path / "h"
    confinement = Confinement(home, home / "run")
    confinement._mode = qemu_users.Mode(True)
    config = LaunchConfig(
        instance_id="i2", name="clone", arch="x86_64", accel="tcg", cpus=1, memory_mib=64,
        disk=home / "instances" / "i2" / "disk.qcow2", disk_format="qcow2",
        runtime_dir=home / "run" / "i2", serial_log=home / "instances" / "i2" / "serial.log",
        linked_base=home / "instances" / "i1" / "disk.qcow2",
    )  # fmt: skip
    launch, why = confinement.prepare(config)
    assert launch.credentials is None and launch.fds == []
    assert why == "a linked clone reads another VM's snapshot layer"
    assert not home.exists()  # nothing was handed over
